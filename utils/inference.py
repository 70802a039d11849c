"""One shared answer helper, eval loss and the before/after table (notebooks 02 and 05)."""

from __future__ import annotations

import html
import re

import torch

from utils.batching import IMAGE_TOKEN, Collator, render, to_device
from utils.config import PINNED_DATE
from utils.data import Example, open_image

STOP_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


@torch.no_grad()
def generate_answer(model, processor, example: Example, max_new_tokens: int = 48,
                    date_string: str = PINNED_DATE) -> dict:
    """Greedy answer to an example's prompt. Returns {"answer", "stopped"}: stopped is True when the
    model ended its turn with <|eot_id|> within max_new_tokens."""
    prompt, _ = render(processor, example, date_string)
    images = [open_image(p) for p in example.images] or None
    inputs = processor(text=prompt, images=images, add_special_tokens=False, return_tensors="pt")
    inputs = to_device(dict(inputs), model)
    tok = processor.tokenizer
    stop_ids = [tok.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    was_training = model.training
    model.eval()
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                            pad_token_id=tok.pad_token_id)
    model.train(was_training)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    stopped = any(t in stop_ids for t in new)
    if stopped:
        new = new[: min(new.index(t) for t in stop_ids if t in new)]
    return {"answer": tok.decode(new, skip_special_tokens=True).strip(), "stopped": stopped}


def normalize(text: str) -> str:
    """Case, spaces and final punctuation do not count in exact match."""
    return re.sub(r"\s+", " ", text.strip().rstrip(".").lower())


def evaluate_answers(model, processor, examples: list[Example], max_new_tokens: int = 48) -> dict:
    """Exact match and stop rate of greedy answers on held-out examples, with every row for display."""
    rows = []
    for ex in examples:
        out = generate_answer(model, processor, ex, max_new_tokens)
        rows.append({"source": ex.source, "prompt": ex.prompt_text.replace(IMAGE_TOKEN, ""),
                     "image": str(ex.images[0]) if ex.images else None, "expected": ex.answer,
                     "answer": out["answer"], "stopped": out["stopped"],
                     "exact": normalize(out["answer"]) == normalize(ex.answer)})
    n = max(len(rows), 1)
    return {"exact_match": sum(r["exact"] for r in rows) / n, "stop_rate": sum(r["stopped"] for r in rows) / n,
            "rows": rows}



@torch.no_grad()
def eval_loss(model, processor, encoded_rows: list[dict], batch_size: int = 4) -> float:
    """Mean token loss over the answer tokens of `encoded_rows` (utils.batching.encode_all), like Trainer's
    eval: modality-pure batches, each moved to the model's device."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in Collator(processor).batches(encoded_rows, batch_size):
        batch = to_device(batch, model)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**batch).loss.float().item() * n
        tokens += n
    model.train(was_training)
    return total / max(tokens, 1)


def before_after_html(before: dict, after: dict, max_chars: int = 80) -> str:
    """One table of evaluate_answers() rows: prompt, expected, base answer, adapted answer (✓ exact, ⏹ stopped)."""
    def cell(row):
        marks = ("✓ " if row["exact"] else "") + ("⏹" if row["stopped"] else "…")
        return f"{html.escape(row['answer'][:max_chars])} <small>{marks}</small>"

    head = "<tr><th>prompt</th><th>image</th><th>expected</th><th>before</th><th>after</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(b['prompt'][:max_chars])}</td><td>{'🖼' if b['image'] else ''}</td>"
        f"<td>{html.escape(b['expected'][:max_chars])}</td><td>{cell(b)}</td><td>{cell(a)}</td></tr>"
        for b, a in zip(before["rows"], after["rows"]))
    summary = "".join(
        f"<tr><th>{k}</th><td>{before[k]:.3f}</td><td>{after[k]:.3f}</td></tr>"
        for k in ("exact_match", "stop_rate", "eval_loss") if k in before and k in after)
    return (f"<table><tr><th></th><th>before</th><th>after</th></tr>{summary}</table><br>"
            f"<table style='font-size:90%'>{head}{body}</table>"
            "<small>✓ exact match · ⏹ stopped at &lt;|eot_id|&gt; · … ran to max_new_tokens</small>")
