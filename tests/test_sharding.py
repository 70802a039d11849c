"""Data-parallel batches through accelerate's real dataloader preparation (no processes needed).

`accelerate.data_loader.prepare_data_loader(..., num_processes=N, process_index=r)` builds exactly the loader
process r gets under `accelerate launch` (BatchSamplerShard with even_batches, as Trainer prepares it). Every
process must get the same number of batches (Trainer gathers on every eval batch and all-reduces on every step:
a process with one batch fewer leaves the others waiting forever), every row is used once per epoch, and the
global batches of N processes with batch b are the batches of one process with batch N x b.
"""

import itertools

import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader

from utils.batching import IGNORE_INDEX, ModalityBatchSampler, modality_batches


def make_rows(n_image, n_text):
    rows = [{"input_ids": [1] * (3 + (7 * i) % 11), "image": "x.png", "source": f"img:{i}"} for i in range(n_image)]
    rows += [{"input_ids": [1] * (3 + (5 * i) % 13), "image": None, "source": f"txt:{i}"} for i in range(n_text)]
    for r in rows:
        r["labels"] = [7] * len(r["input_ids"])
    return rows


def process_batches(rows, n_processes, batch_size, shuffle, epoch=0, seed=0):
    """What each of n_processes gets in one epoch: a list (per process) of lists of row dicts."""
    out = []
    for rank in range(n_processes):
        sampler = ModalityBatchSampler(rows, batch_size, shuffle=shuffle, seed=seed, num_replicas=n_processes)
        sampler.set_epoch(epoch)
        dataset = sampler.dataset() if hasattr(sampler, "dataset") else rows
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=list)
        prepared = prepare_data_loader(loader, num_processes=n_processes, process_index=rank, put_on_device=False)
        batches = list(prepared)
        assert len(batches) == len(prepared)  # what Trainer plans its steps with
        out.append(batches)
    return out


SIZES = [(0, 1), (0, 2), (0, 5), (0, 6), (0, 16), (1, 0), (1, 1), (3, 5), (2, 7), (5, 6), (4, 12), (9, 0),
         (13, 50), (7, 17), (0, 64), (32, 32)]


@pytest.mark.parametrize("n_processes, batch_size", [(2, 1), (2, 2), (3, 2), (8, 1), (8, 2), (3, 4)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_process_gets_the_same_batches_count_and_every_row_once(n_processes, batch_size, shuffle):
    for n_image, n_text in SIZES:
        rows = make_rows(n_image, n_text)
        per_process = process_batches(rows, n_processes, batch_size, shuffle, epoch=1)
        counts = [len(b) for b in per_process]
        assert len(set(counts)) == 1, (n_image, n_text, counts)
        # every slice has exactly batch_size rows, all of one modality (duplicates included)
        for batch in itertools.chain(*per_process):
            assert len(batch) == batch_size
            assert len({bool(r["image"]) for r in batch}) == 1
        real = [r["source"] for batch in itertools.chain(*per_process) for r in batch if not r.get("duplicate")]
        assert sorted(real) == sorted(r["source"] for r in rows), (n_image, n_text)  # each row exactly once
        # duplicates carry no label: they add nothing to the loss or to its token count
        for r in (r for batch in itertools.chain(*per_process) for r in batch if r.get("duplicate")):
            assert set(r["labels"]) == {IGNORE_INDEX} and len(r["labels"]) == len(r["input_ids"])
        # global batch k = slice k of process 0, 1, ...: minus duplicates, one process's batch k at N x batch
        one = modality_batches(rows, n_processes * batch_size, shuffle, seed=0 + 1)
        assert counts[0] == len(one)
        for k, expected in enumerate(one):
            glob = [r["source"] for p in per_process for r in p[k] if not r.get("duplicate")]
            assert glob == [rows[i]["source"] for i in expected], (n_image, n_text, k)


def test_one_process_is_unchanged():
    rows = make_rows(5, 7)
    sampler = ModalityBatchSampler(rows, 4, shuffle=True, seed=3)
    assert list(sampler) == modality_batches(rows, 4, True, 3)  # short last batches, nothing padded
    assert len(sampler) == 2 + 2


def test_duplicates_collate_to_ignored_labels(processor):
    from utils.batching import Collator

    rows = make_rows(0, 3)
    for r in rows:
        r["input_ids"] = processor.tokenizer("hello there", add_special_tokens=False).input_ids
        r["labels"] = list(r["input_ids"])
    (second,) = process_batches(rows, 2, 2, shuffle=False)[1]  # one global batch of 3 rows + 1 duplicate
    assert [bool(r.get("duplicate")) for r in second] == [False, True]
    batch = Collator(processor)(second)
    assert (batch["labels"][1] == IGNORE_INDEX).all() and (batch["labels"][0] != IGNORE_INDEX).any()
    assert batch["attention_mask"][1].sum() == len(rows[0]["input_ids"])  # the row itself is there, unlabelled


@pytest.mark.parametrize("n_processes", [1, 2, 3])
def test_gather_for_metrics_keeps_every_gathered_eval_loss(n_processes):
    """accelerate's gather_for_metrics cuts the last eval batch's gathered values to the prepared loader's
    `remainder` (its dataset's length modulo the global batch). Eval losses are gathered one per slot of every
    slice (duplicates give 0: no labels), so nothing may be cut: the remainder must be 0."""
    rows = make_rows(3, 3)
    sampler = ModalityBatchSampler(rows, 2, shuffle=False, num_replicas=n_processes)
    loader = DataLoader(sampler.dataset(), batch_sampler=sampler, collate_fn=list)
    prepared = prepare_data_loader(loader, num_processes=n_processes, process_index=0, put_on_device=False)
    assert len(prepared.dataset) == len(rows)  # Trainer's "Num examples"
    prepared.begin()
    try:
        assert prepared.remainder == 0
    finally:
        prepared.end()
