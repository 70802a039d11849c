"""Chat-template encoding, label masks, truncation and batching (notebooks 01 and 04).

Only the assistant's answers and their <|eot_id|> carry labels (every answer of a multi-turn chat, or only the
last with `mask_history`); prompt, padding and <|image|> positions are -100. Token ids are built here once
(prompt and answer pieces tokenized separately, so the label boundaries are exact) and the collator only pads
them and adds the image tensors.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.models.mllama.processing_mllama import (
    convert_sparse_cross_attention_mask_to_dense,
    get_cross_attention_token_mask,
)

from utils.config import PINNED_DATE
from utils.data import Example, open_image
from utils.i18n import tr

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


def _apply(processor, messages, date_string, add_generation_prompt=False) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                         date_string=date_string)


def render_turns(processor, example: Example, date_string: str = PINNED_DATE) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_answer) pieces that join to the whole text: every assistant
    answer with its <|eot_id|> is an answer piece, everything between them a prompt piece.

    Each answer is what the template adds for that message after the generation prompt (rendering the turns up
    to it), then found in the whole conversation from the end of the previous answer on, behind that generation
    prompt. Finding rather than cutting prefixes matters for the released template: whether the system turn
    with the dates appears depends on an image anywhere in the conversation, so a prefix before the image's
    turn renders differently from the same turns inside the whole conversation."""
    messages = example.messages
    full = _apply(processor, messages, date_string)
    pieces, pos = [], 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _apply(processor, messages[:k], date_string, add_generation_prompt=True)
        with_answer = _apply(processor, messages[:k + 1], date_string)
        if not with_answer.startswith(before):
            raise ValueError(f"{example.source}: chat template output does not start with the prompt; cannot mask labels")
        header = before[len(_apply(processor, messages[:k], date_string)):]  # the generation prompt
        answer = with_answer[len(before):]
        start = full.find(header + answer, pos)
        if start < 0 or not answer:
            raise ValueError(f"{example.source}: answer {k} not found in the rendered chat; cannot mask labels")
        start += len(header)
        pieces += [(full[pos:start], False), (answer, True)]
        pos = start + len(answer)
    if pos < len(full):
        pieces.append((full[pos:], False))
    return [p for p in pieces if p[0]]


def _last_index_of(seq: list[int], sub: list[int]) -> int:
    """Start of the last occurrence of `sub` in `seq`, or -1."""
    for start in range(len(seq) - len(sub), -1, -1):
        if seq[start:start + len(sub)] == sub:
            return start
    return -1


def encode(processor, example: Example, max_seq_length: int, date_string: str = PINNED_DATE,
           mask_history: bool = False) -> dict:
    """Token ids and labels for one example; a too-long prompt loses the middle of its last user text.

    Labels: every assistant answer and its <|eot_id|> (what TRL's assistant_only_loss and LLaMA-Factory train),
    or with `mask_history` only the last one (LLaMA-Factory's mask_history). Kept whole when truncating:
    everything up to the last user header (system turn, earlier turns and their answers, `<|image|>`), the start
    of the last user text (a third of what fits) and its end (the rest: for seed rows the `input` term being
    asked about), then `<|eot_id|>`, the assistant header and the last answer, which is never cut.
    Returns a dict with input_ids, labels, image (path or None), source, truncated; or with
    `skip` set to the reason when the row cannot fit (nothing is dropped silently).
    """
    tok = processor.tokenizer
    pieces = render_turns(processor, example, date_string)
    answers = [i for i, (_, is_answer) in enumerate(pieces) if is_answer]
    if not answers:
        raise ValueError(f"{example.source}: no assistant answer to train (utils.data checks rows for one)")
    last = answers[-1]
    prompt_ids, prompt_labels = [], []
    for i, (text, is_answer) in enumerate(pieces[:last]):
        ids = tok(text, add_special_tokens=False).input_ids
        prompt_ids += ids
        prompt_labels += ids if is_answer and not mask_history else [IGNORE_INDEX] * len(ids)
    answer_ids = tok(pieces[last][0], add_special_tokens=False).input_ids
    tail_ids = [t for text, _ in pieces[last + 1:] for t in tok(text, add_special_tokens=False).input_ids]
    out = {"image": str(example.images[0]) if example.images else None, "source": example.source, "truncated": False}
    overflow = len(prompt_ids) + len(answer_ids) + len(tail_ids) - max_seq_length
    if overflow > 0:
        header = tok("<|start_header_id|>user<|end_header_id|>\n\n", add_special_tokens=False).input_ids
        start = _last_index_of(prompt_ids, header)
        start = start + len(header) if start >= 0 else 1
        image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        if image_id in prompt_ids[start:]:
            start = start + prompt_ids[start:].index(image_id) + 1
        # The user text ends at the last <|eot_id|> (the assistant header follows it).
        end = len(prompt_ids) - 1 - prompt_ids[::-1].index(tok.convert_tokens_to_ids("<|eot_id|>"))
        keep = (end - start) - overflow
        if keep < min(16, end - start):
            return {**out, "skip": f"answer is {len(answer_ids)} tokens and the prompt outside the user text is "
                                   f"{len(prompt_ids) - (end - start)}; the row does not fit "
                                   f"max_seq_length={max_seq_length}"}
        head = keep // 3
        prompt_ids = prompt_ids[:start + head] + prompt_ids[end - (keep - head):]
        prompt_labels = prompt_labels[:start + head] + prompt_labels[end - (keep - head):]
        out["truncated"] = True
    out["input_ids"] = prompt_ids + answer_ids + tail_ids
    out["labels"] = prompt_labels + answer_ids + [IGNORE_INDEX] * len(tail_ids)
    return out


ENCODE_VERSION = 2  # bump when encode() changes: the token cache (.cache/encoded/) is keyed on it


def examples_dataset(examples: list[Example]):
    """One `datasets.Dataset` with one schema for every row: messages whose every content is a list of typed
    parts ({"type", "text"}; a plain string becomes one text part, so Arrow infers one type), the image paths
    (an image given as bytes or a PIL image is stored once as a file, utils.data.store_image) and the source."""
    import datasets

    from utils.data import store_image

    def path(image):
        return str(image if isinstance(image, (str, Path)) else store_image(image))

    def parts(content):
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        return [{"type": c["type"], "text": c.get("text")} for c in content]

    rows = {"messages": [[{"role": m["role"], "content": parts(m["content"])} for m in ex.messages] for ex in examples],
            "images": [[path(p) for p in ex.images] for ex in examples],
            "source": [ex.source for ex in examples]}
    features = datasets.Features({
        "messages": [{"role": datasets.Value("string"),
                      "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
        "images": [datasets.Value("string")], "source": datasets.Value("string")})
    return datasets.Dataset.from_dict(rows, features=features)


def example_from_row(row: dict) -> Example:
    """The Example of an examples_dataset row (system content back to a string, as utils.data loads it)."""
    messages = []
    for m in row["messages"]:
        content = [{k: v for k, v in c.items() if v is not None} for c in m["content"]]
        if m["role"] == "system":
            content = "".join(c.get("text", "") for c in content)
        messages.append({"role": m["role"], "content": content})
    return Example(messages, [Path(p) for p in row["images"]], row["source"])


def _encode_row(row: dict, processor, max_seq_length: int, date_string: str, mask_history: bool) -> dict:
    out = encode(processor, example_from_row(row), max_seq_length, date_string, mask_history)
    return {"input_ids": out.get("input_ids", []), "labels": out.get("labels", []), "image": out["image"],
            "source": out["source"], "truncated": out["truncated"], "skip": out.get("skip")}


def encode_cache_key(processor, dataset, max_seq_length: int, date_string: str, mask_history: bool = False) -> str:
    """Hash of the rows' content, the tokenizer and chat template, max_seq_length, the pinned date, the label
    choice (mask_history) and ENCODE_VERSION: an in-memory Dataset has a random fingerprint, so the cache file is
    named by this."""
    import hashlib

    tok = processor.tokenizer
    digest = hashlib.sha256()
    import pyarrow as pa

    for batch in dataset.with_format("arrow").iter(batch_size=1000):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_table(batch)
        digest.update(sink.getvalue().to_pybytes())
    template = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None) or ""
    for part in (type(tok).__name__, str(getattr(tok, "name_or_path", "")), str(len(tok)), str(template),
                 str(max_seq_length), date_string, f"mask_history={bool(mask_history)}", str(ENCODE_VERSION)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def default_num_proc() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


def encode_all(processor, examples: list[Example], max_seq_length: int, date_string: str = PINNED_DATE,
               verbose: bool = True, num_proc: int | None = None, cache_dir=None,
               mask_history: bool = False) -> list[dict]:
    """Encode every example through one `datasets.Dataset`: `.map(encode, num_proc)` cached in
    `cache_dir` (default .cache/encoded/, named by encode_cache_key, so a rerun does not re-tokenize) and
    `.filter` for rows that cannot fit. Prints how many were truncated or skipped, and why (file:line).

    Labels: every assistant answer, or only the last with `mask_history` (encode).
    Returns a list of row dicts (input_ids, labels, image, source, truncated): `len`, `rows[i]`, `rows[:n]`."""
    from utils.config import CACHE_DIR

    dataset = examples_dataset(examples)
    key = encode_cache_key(processor, dataset, max_seq_length, date_string, mask_history)
    folder = Path(cache_dir) if cache_dir else CACHE_DIR / "encoded"
    folder.mkdir(parents=True, exist_ok=True)
    n = num_proc or default_num_proc()
    n = max(1, min(n, len(dataset) // 8 or 1))  # a process per handful of rows only
    encoded = dataset.map(_encode_row, fn_kwargs={"processor": processor, "max_seq_length": max_seq_length,
                                                  "date_string": date_string, "mask_history": mask_history},
                          remove_columns=dataset.column_names, num_proc=n if n > 1 else None,
                          cache_file_name=str(folder / f"{key}.arrow"), new_fingerprint=key,
                          desc=tr("tokenizing") if verbose else None)
    fits = encoded.filter(lambda skip: skip is None, input_columns="skip",
                          cache_file_name=str(folder / f"{key}-fits.arrow"), new_fingerprint=key + "-fits")
    skipped = [r for r in encoded.select_columns(["source", "skip"]) if r["skip"] is not None]
    encoded_rows = [{k: v for k, v in r.items() if k != "skip"} for r in fits]
    if verbose:
        n_trunc = sum(r["truncated"] for r in encoded_rows)
        labels = tr("the last answer only (mask_history)") if mask_history else tr("every assistant answer")
        print(tr("encoded {n} rows (max_seq_length={max_seq_length}): {n_trunc} with a shortened prompt, {n_skipped} "
                 "skipped; labels on {labels}", n=len(encoded_rows), max_seq_length=max_seq_length, n_trunc=n_trunc,
                 n_skipped=len(skipped), labels=labels))
        for row in skipped:
            print(tr("  skipped {source}: {reason}", source=row["source"], reason=row["skip"]))  # the reason: English
    if not encoded_rows:
        raise ValueError(f"no row fits max_seq_length={max_seq_length}")
    return encoded_rows


def modality_batches(rows: list[dict], batch_size: int, shuffle: bool = False, seed: int = 0,
                     group_by_length: bool = True) -> list[list[int]]:
    """Row indices in batches that are all-image or all-text, never mixed.

    Why: (1) in transformers' Mllama a text row batched with an image row gets an all-zero
    cross-attention mask, which becomes "attend to everything": the row attends to the padded
    blank image (its attention output is not masked, transformers issue 39379), while at inference
    a text-only prompt skips the cross-attention layers; (2) the torchvision MllamaImageProcessor
    (what AutoProcessor picks when torchvision is installed, as on Colab) drops rows or raises
    IndexError when some rows of a batch have no image.

    Within a modality, rows of similar length go together (less padding) when `group_by_length`:
    with `shuffle` the rows are shuffled, cut into chunks of 50 batches, each chunk sorted by length
    and cut into batches, then the batches of both modalities are shuffled (as transformers'
    LengthGroupedSampler does). Without `shuffle` the order is fixed (eval).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    batches = []
    for has_image in (True, False):
        idx = [i for i, r in enumerate(rows) if bool(r.get("image")) == has_image]
        if shuffle:
            rng.shuffle(idx)
        if group_by_length:
            chunk = max(len(idx), 1) if not shuffle else 50 * batch_size
            idx = [i for c in range(0, len(idx), chunk)
                   for i in sorted(idx[c:c + chunk], key=lambda i: -len(rows[i]["input_ids"]))]
        batches += [idx[b:b + batch_size] for b in range(0, len(idx), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def shard_batches(batches: list[list[int]], num_replicas: int, per_replica: int | None = None,
                  duplicate_offset: int = 0) -> list[list[int]]:
    """Each global batch padded to `num_replicas` x `per_replica` rows and cut into `num_replicas` consecutive
    slices of exactly `per_replica` rows, listed slice by slice (batch 0 slice 0, batch 0 slice 1, ...,
    batch 1 slice 0, ...). `per_replica` defaults to the largest batch's share (rounded up).

    accelerate's BatchSamplerShard (even_batches, what Trainer's prepared loader uses) gives batch i to process
    i % num_processes only while every batch has the sampler's `batch_size`: a shorter one is dropped mid-epoch
    and the leftover goes to one process, so processes get different batch counts and Trainer's per-batch
    gathers and all-reduces wait forever. Slices of exactly `per_replica` rows, a multiple of `num_replicas` of
    them, pass through unchanged: process r trains on slice r of every global batch.

    A short global batch (the last of each modality) is padded by repeating its own rows (same modality); a
    padded entry is `duplicate_offset + row`, so a dataset of n rows with `duplicate_offset=n` can tell the
    duplicates apart (DuplicateMarkedRows gives them no labels: they add nothing to the loss).
    """
    if num_replicas <= 1:
        return [list(b) for b in batches]
    per_replica = per_replica or max((-(-len(b) // num_replicas) for b in batches), default=1)
    size = num_replicas * per_replica
    out = []
    for batch in batches:
        if len(batch) > size:
            raise ValueError(f"a batch of {len(batch)} rows does not fit {num_replicas} x {per_replica}")
        rows = list(batch) + [duplicate_offset + batch[k % len(batch)] for k in range(size - len(batch))]
        out += [rows[r * per_replica:(r + 1) * per_replica] for r in range(num_replicas)]
    return out


class DuplicateMarkedRows(torch.utils.data.Dataset):
    """The rows of a ModalityBatchSampler, plus the padding it asks for: index n + i (n rows) is row i again
    with every label -100 and `duplicate` set, so a padded row is computed (every process steps in lockstep)
    but adds nothing to the loss or to its token count (Trainer's num_items_in_batch).

    `total_dataset_length` (= `total_length`: the rows all processes' loaders yield per epoch, duplicates
    included, a multiple of the global batch) is what accelerate's prepared loader computes its eval remainder
    from; with len(rows) instead, gather_for_metrics would cut the last eval batch's gathered losses to
    len(rows) % global batch and weigh them wrongly."""

    def __init__(self, rows, total_length: int | None = None):
        self.rows = rows
        self.total_length = self.total_dataset_length = len(rows) if total_length is None else total_length

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        n = len(self.rows)
        if index < n:
            return self.rows[index]
        row = self.rows[index - n]
        return {**row, "labels": [IGNORE_INDEX] * len(row["labels"]), "duplicate": True}


class ModalityBatchSampler(torch.utils.data.Sampler):
    """A batch sampler over encoded rows that yields modality_batches(); a new order per epoch.

    Deterministic in (seed, epoch): Trainer calls set_epoch() before each epoch, so a resumed run
    skips exactly the batches the interrupted run had already seen.

    With `num_replicas` > 1 (data-parallel training, one process per device) the batches are built at
    the global size batch_size * num_replicas and cut into per-process slices of exactly batch_size rows
    (shard_batches): the short last global batch of each modality is padded with duplicates of its own rows,
    which `dataset()` marks and gives no labels. So every process gets the same number of batches for any
    number of rows (nothing hangs), every row is used once per epoch, and N processes with batch b train on
    the batches of one process with batch N x b. Load the rows through `dataset()`, not the plain list.
    """

    def __init__(self, rows: list[dict], batch_size: int, shuffle: bool = True, seed: int = 0,
                 group_by_length: bool = True, num_replicas: int = 1):
        self.rows, self.batch_size, self.shuffle = rows, batch_size, shuffle
        self.seed, self.group_by_length, self.epoch = seed, group_by_length, 0
        self.num_replicas = max(1, int(num_replicas))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (batch_size x num_replicas rows, the last of each modality shorter)."""
        return modality_batches(self.rows, self.batch_size * self.num_replicas, self.shuffle,
                                self.seed + self.epoch, self.group_by_length)

    def __iter__(self):
        yield from shard_batches(self.global_batches(), self.num_replicas, self.batch_size, len(self.rows))

    def __len__(self) -> int:
        size = self.batch_size * self.num_replicas
        n_image = sum(bool(r.get("image")) for r in self.rows)
        return (-(-n_image // size) + -(-(len(self.rows) - n_image) // size)) * self.num_replicas

    def dataset(self) -> DuplicateMarkedRows:
        """The rows as the DataLoader's dataset, with the duplicates this sampler pads with marked."""
        return DuplicateMarkedRows(self.rows, len(self) * self.batch_size)


class MixedBatchError(ValueError):
    """A batch mixes image rows and text-only rows (see modality_batches for why that is refused)."""


@dataclass
class Collator:
    """Pads encoded rows into a batch. A batch is all-image (pixel values, aspect ratios and a
    cross-attention mask are added) or all-text (no image inputs: Mllama skips its cross-attention
    layers, as at inference). Mixed batches raise MixedBatchError: batch with modality_batches().

    With a `vision_cache` (utils.vision_cache.VisionFeatureCache) an image batch carries the cached
    `cross_attention_states` (CPU tensors; Trainer / to_device move them) instead of pixel values and
    aspect ratios, which only the vision tower reads; the cross-attention mask is the same."""

    processor: object
    vision_cache: object | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        tok = self.processor.tokenizer
        with_image = [bool(r.get("image")) for r in rows]
        if any(with_image) and not all(with_image):
            raise MixedBatchError(
                f"batch mixes {sum(with_image)} image row(s) and {len(rows) - sum(with_image)} text-only row(s) "
                f"({', '.join(str(r.get('source', '?')) for r in rows)}); a text row would attend to a blank image. "
                "Batch rows with utils.batching.modality_batches / ModalityBatchSampler.")
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
        if all(with_image) and self.vision_cache is not None:
            states, num_tiles = self.vision_cache.batch([r["image"] for r in rows])
            pixels = {"cross_attention_states": states}
        elif all(with_image):
            images = [[open_image(r["image"])] for r in rows]  # opened only now, one batch at a time
            pixels = self.processor.image_processor(images=images, return_tensors="pt")
            num_tiles = pixels.pop("num_tiles")
        if all(with_image):
            image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
            sparse = [get_cross_attention_token_mask(ids.tolist(), image_id) for ids in input_ids]
            mask = convert_sparse_cross_attention_mask_to_dense(
                sparse, num_tiles=num_tiles, max_num_tiles=self.processor.image_processor.max_image_tiles, length=width)
            batch.update({k: torch.as_tensor(v) for k, v in pixels.items()})
            batch["cross_attention_mask"] = torch.as_tensor(mask)
        return batch

    def batches(self, rows: list[dict], batch_size: int):
        """Collated, modality-pure batches of `rows` in a fixed order (eval loss, reload checks)."""
        for idx in modality_batches(rows, batch_size):
            yield self([rows[i] for i in idx])


def padding_fraction(rows: list[dict], batches: list[list[int]]) -> float:
    """Share of the padded batch positions (batch size x longest row, summed over batches) that are padding."""
    total = sum(max(len(rows[i]["input_ids"]) for i in b) * len(b) for b in batches if b)
    real = sum(len(rows[i]["input_ids"]) for b in batches for i in b)
    return 1 - real / total if total else 0.0


def model_device(model) -> torch.device:
    """Where the model's inputs go: its `.device` (Hugging Face models and PeftModel have one; cuda:0
    on a GPU, cpu here), else its first parameter that is not on the meta device."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
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
