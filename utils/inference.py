"""One shared answer helper, eval loss and the before/after table (notebooks 02 and 05)."""

from __future__ import annotations

import html
import re

import torch

from utils.batching import IMAGE_TOKEN, Collator, render, to_device
from utils.config import PINNED_DATE
from utils.data import Example, open_image
from utils.i18n import N_, tr

STOP_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
# Notebook 05's groups of rows (its dict keys stay English); the table and the chart translate them when shown.
GROUP_NAMES = (N_("training rows"), N_("held-out, seen answer"), N_("held-out, new answer"))
MARKS_NOTE = N_("✓ exact match · ⏹ stopped at &lt;|eot_id|&gt; · … ran to max_new_tokens")


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


def script(text: str) -> str:
    """'ko' (Hangul, no Latin letters), 'en' (Latin letters, no Hangul), 'mixed', or 'other' (digits, symbols)."""
    hangul, latin = bool(re.search("[\uac00-\ud7a3]", text)), bool(re.search("[A-Za-z]", text))
    return "mixed" if hangul and latin else "ko" if hangul else "en" if latin else "other"


def right_form(answer: str, expected: str, stopped: bool) -> bool:
    """The answer has the expected answer's form, whatever its content: it ended its turn (<|eot_id|>), is
    written in the same language (script) and is at most twice as long (+8 characters). A translation
    question answered by one short term in the target language passes; a paragraph or an empty answer fails."""
    answer, expected = normalize(answer), normalize(expected)
    return (stopped and bool(answer) and script(answer) == script(expected)
            and len(answer) <= 2 * len(expected) + 8)


def split_by_answer(examples: list[Example], train_examples: list[Example]) -> dict[str, list[Example]]:
    """Held-out rows in two groups: "seen answer" (the answer of some training row: a fact the adapter was
    trained on, asked in words it never saw) and "new answer" (an answer that never occurs in training)."""
    seen = {normalize(e.answer) for e in train_examples}
    groups = {"seen answer": [], "new answer": []}
    for e in examples:
        groups["seen answer" if normalize(e.answer) in seen else "new answer"].append(e)
    return groups


def spread(examples: list, n: int) -> list:
    """`n` rows evenly spread over `examples` (all of them when n >= len): a sample that is the same in
    every run and covers the whole file, not only its first rows."""
    if n >= len(examples):
        return list(examples)
    return [examples[i * len(examples) // n] for i in range(n)]


def evaluate_answers(model, processor, examples: list[Example], max_new_tokens: int = 48) -> dict:
    """Exact match, stop rate and right-form rate (`right_form`) of greedy answers, with every row for display."""
    rows = []
    for ex in examples:
        out = generate_answer(model, processor, ex, max_new_tokens)
        rows.append({"source": ex.source, "prompt": ex.prompt_text.replace(IMAGE_TOKEN, ""),
                     "image": str(ex.images[0]) if ex.images else None, "expected": ex.answer,
                     "answer": out["answer"], "stopped": out["stopped"],
                     "exact": normalize(out["answer"]) == normalize(ex.answer),
                     "form": right_form(out["answer"], ex.answer, out["stopped"])})
    n = max(len(rows), 1)
    return {"exact_match": sum(r["exact"] for r in rows) / n, "stop_rate": sum(r["stopped"] for r in rows) / n,
            "form_rate": sum(r["form"] for r in rows) / n, "n": len(rows), "rows": rows}



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

    head = "<tr>" + "".join(f"<th>{tr(name)}</th>" for name in (
        N_("prompt"), N_("image"), N_("expected"), N_("before"), N_("after"))) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(b['prompt'][:max_chars])}</td><td>{'🖼' if b['image'] else ''}</td>"
        f"<td>{html.escape(b['expected'][:max_chars])}</td><td>{cell(b)}</td><td>{cell(a)}</td></tr>"
        for b, a in zip(before["rows"], after["rows"]))
    summary = "".join(
        f"<tr><th>{k}</th><td>{before[k]:.3f}</td><td>{after[k]:.3f}</td></tr>"
        for k in ("exact_match", "stop_rate", "eval_loss") if k in before and k in after)
    return (f"<table><tr><th></th><th>{tr('before')}</th><th>{tr('after')}</th></tr>{summary}</table><br>"
            f"<table style='font-size:90%'>{head}{body}</table>"
            f"<small>{tr(MARKS_NOTE)}</small>")


METRICS = (("exact_match", N_("exact match"), "{:.0%}"), ("form_rate", N_("right form"), "{:.0%}"),
           ("eval_loss", N_("answer loss (nats/token)"), "{:.2f}"))


def results_table_html(groups: dict) -> str:
    """One table of notebook 05's results: {group: {"before": evaluate_answers(...) + eval_loss, "after": ...}}
    -> rows = group x metric, columns base / adapted (k/n for the shares)."""
    head = "<tr>" + "".join(f"<th>{tr(name)}</th>" for name in (
        N_("rows"), N_("metric"), N_("base"), N_("adapted"))) + "</tr>"
    body = []
    for name, sides in groups.items():
        n = sides["before"]["n"]
        for key, label, fmt in METRICS:
            if key not in sides["before"]:
                continue
            cells = []
            for side in ("before", "after"):
                v = sides[side][key]
                cells.append(fmt.format(v) + (f" ({round(v * n)}/{n})" if fmt.endswith("%}") else ""))
            body.append(f"<tr><td>{html.escape(tr(name))} ({n})</td><td>{tr(label)}</td><td>{cells[0]}</td>"
                        f"<td>{cells[1]}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"
