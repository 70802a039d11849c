"""One shared answer helper for before/after comparisons (notebooks 02 and 05)."""

from __future__ import annotations

import re

import torch
from PIL import Image

from utils.batching import IMAGE_TOKEN, render
from utils.config import PINNED_DATE
from utils.data import Example

STOP_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


def _model_device(model) -> torch.device:
    return next(p.device for p in model.parameters() if p.device.type != "meta")


@torch.no_grad()
def generate_answer(model, processor, example: Example, max_new_tokens: int = 48,
                    date_string: str = PINNED_DATE) -> dict:
    """Greedy answer to an example's prompt. Returns {"answer", "stopped"}: stopped is True when the
    model ended its turn with <|eot_id|> within max_new_tokens."""
    prompt, _ = render(processor, example, date_string)
    images = [Image.open(p).convert("RGB") for p in example.images] or None
    inputs = processor(text=prompt, images=images, add_special_tokens=False, return_tensors="pt")
    inputs = {k: v.to(_model_device(model)) for k, v in inputs.items()}
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
