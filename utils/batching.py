"""Chat-template encoding, label masks, truncation and batching (notebooks 01 and 04).

Only the assistant's answer and its <|eot_id|> carry labels; prompt, padding and <|image|>
positions are -100. Token ids are built here once (prompt and answer tokenized separately, so
the label boundary is exact) and the collator only pads them and adds the image tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from PIL import Image
from transformers.models.mllama.processing_mllama import (
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)

from utils.config import PINNED_DATE
from utils.data import Example

IGNORE_INDEX = -100
IMAGE_TOKEN = "<|image|>"
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def render(processor, example: Example, date_string: str = PINNED_DATE) -> tuple[str, str]:
    """(prompt text ending with the assistant header, answer text ending with <|eot_id|>)."""
    prompt = processor.apply_chat_template(example.messages[:-1], add_generation_prompt=True, tokenize=False,
                                           date_string=date_string)
    full = processor.apply_chat_template(example.messages, tokenize=False, date_string=date_string)
    if not full.startswith(prompt):
        raise ValueError(f"{example.source}: chat template output does not start with the prompt; cannot mask labels")
    return prompt, full[len(prompt):]


def encode(processor, example: Example, max_seq_length: int, date_string: str = PINNED_DATE) -> dict:
    """Token ids and labels for one example, cutting the middle of the prompt if it is too long.

    Returns a dict with input_ids, labels, image (path or None), source, truncated; or with
    `skip` set to the reason when the row cannot fit (nothing is dropped silently).
    """
    tok = processor.tokenizer
    prompt, answer = render(processor, example, date_string)
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    answer_ids = tok(answer, add_special_tokens=False).input_ids
    out = {"image": str(example.images[0]) if example.images else None, "source": example.source, "truncated": False}
    overflow = len(prompt_ids) + len(answer_ids) - max_seq_length
    if overflow > 0:
        # Keep the head (BOS, headers, <|image|>) and the tail (end of the user turn + assistant header).
        tail = len(tok(processor.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True,
                                                     tokenize=False, date_string=date_string).split(IMAGE_TOKEN)[-1]
                       .rsplit("<|eot_id|>", 1)[-1], add_special_tokens=False).input_ids) + 1
        head = len(prompt_ids) - tail - overflow
        image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        needs_image = image_id in prompt_ids
        min_head = (prompt_ids.index(image_id) + 1) if needs_image else 8
        if head < min_head:
            return {**out, "skip": f"answer is {len(answer_ids)} tokens; with the shortest prompt the row "
                                   f"does not fit max_seq_length={max_seq_length}"}
        prompt_ids = prompt_ids[:head] + prompt_ids[-tail:]
        out["truncated"] = True
    out["input_ids"] = prompt_ids + answer_ids
    out["labels"] = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    return out


def encode_all(processor, examples: list[Example], max_seq_length: int, date_string: str = PINNED_DATE,
               verbose: bool = True) -> list[dict]:
    """Encode every example; prints how many were truncated or skipped, and why."""
    encoded, skipped = [], []
    for ex in examples:
        row = encode(processor, ex, max_seq_length, date_string)
        (skipped if "skip" in row else encoded).append(row)
    if verbose:
        n_trunc = sum(r["truncated"] for r in encoded)
        print(f"encoded {len(encoded)} rows (max_seq_length={max_seq_length}): {n_trunc} with a shortened prompt, "
              f"{len(skipped)} skipped")
        for row in skipped:
            print(f"  skipped {row['source']}: {row['skip']}")
    if not encoded:
        raise ValueError(f"no row fits max_seq_length={max_seq_length}")
    return encoded


@dataclass
class Collator:
    """Pads encoded rows into a batch; image rows get pixel values and a cross-attention mask,
    text-only rows in the same batch get an all-zero cross-attention mask."""

    processor: object

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        tok = self.processor.tokenizer
        width = max(len(r["input_ids"]) for r in rows)
        pad = tok.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            attention_mask[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if any(r.get("image") for r in rows):
            images = [[Image.open(r["image"]).convert("RGB")] if r.get("image") else [] for r in rows]
            pixels = self.processor.image_processor(images=images, return_tensors="pt")
            num_tiles = pixels.pop("num_tiles")
            image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
            sparse = [get_cross_attention_token_mask(ids.tolist(), image_id) for ids in input_ids]
            mask = convert_sparse_cross_attention_mask_to_dense(
                sparse, num_tiles=num_tiles, max_num_tiles=self.processor.image_processor.max_image_tiles, length=width)
            batch.update({k: torch.as_tensor(v) for k, v in pixels.items()})
            batch["cross_attention_mask"] = torch.as_tensor(mask)
        return batch


def model_device(model) -> torch.device:
    """Where the model's first real (non-meta) parameter lives: cuda:0 on a GPU, cpu here."""
    return next(p.device for p in model.parameters() if p.device.type != "meta")


def to_device(batch: dict, model_or_device) -> dict:
    """Every tensor of a batch on the model's device (the one place batches are moved).

    A single-device `device_map={"": 0}` adds no hooks that move inputs, so a CPU batch given
    to a model on cuda:0 fails; Trainer moves its own batches, everything else calls this.
    """
    device = model_or_device if isinstance(model_or_device, (str, torch.device)) else model_device(model_or_device)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def token_lengths(processor, examples: list[Example], date_string: str = PINNED_DATE) -> list[dict]:
    """Per row: prompt/answer/total token counts, language (ko if the answer or prompt has Hangul), has_image."""
    tok = processor.tokenizer
    rows = []
    for ex in examples:
        prompt, answer = render(processor, ex, date_string)
        p, a = len(tok(prompt, add_special_tokens=False).input_ids), len(tok(answer, add_special_tokens=False).input_ids)
        lang = "ko" if HANGUL.search(ex.prompt_text + ex.answer) else "en"
        rows.append({"source": ex.source, "prompt": p, "answer": a, "total": p + a, "lang": lang,
                     "has_image": bool(ex.images)})
    return rows


def truncated_share(lengths: list[dict], max_seq_length: int) -> float:
    """Share of rows longer than max_seq_length (they get a shortened prompt or are skipped)."""
    return sum(r["total"] > max_seq_length for r in lengths) / max(len(lengths), 1)


def recommend_max_seq_length(lengths: list[dict], quantile: float = 1.0, multiple: int = 64) -> int:
    """Smallest multiple of `multiple` covering `quantile` of the rows (all rows by default)."""
    totals = sorted(r["total"] for r in lengths)
    k = min(len(totals) - 1, max(0, int(round(quantile * len(totals))) - 1))
    return int(-(-totals[k] // multiple) * multiple)
