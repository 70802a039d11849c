"""The planner's activation term (utils.memory.planned_activation_bytes) against the bytes a tiny-model LoRA step
keeps for backward and holds at its backward peak (utils.retention), within 10%. The same check at 11B width
(benchmarks/activation_memory.py, results in benchmarks/results/) takes minutes on 2 cores, so it is a benchmark."""

import json
from pathlib import Path

import pytest
import torch

from utils.batching import Collator
from utils.config import LoraSettings
from utils.lora import add_lora
from utils.memory import planned_activation_bytes
from utils.modeling import load_model
from utils.retention import retained_bytes
from utils.tiny import tiny_config
from utils.train import prepare_for_training

from .conftest import REPO, sample_rows


@pytest.mark.parametrize("precision", ["fp32", "8bit"])
@pytest.mark.parametrize("image", [True, False], ids=["image", "text"])
def test_tiny_activation_plan_within_10_percent(tiny_dir, processor, precision, image):
    batch = next(Collator(processor).batches(sample_rows(processor, 2 * image, 2 * (not image), 128), 2))
    model = prepare_for_training(add_lora(load_model(model_name_or_path=tiny_dir, precision=precision),
                                          LoraSettings()), gradient_checkpointing=True).train()
    vocab = tiny_config().text_config.vocab_size
    kept, peak = retained_bytes(model, batch, classify=lambda t: t.shape[-1:] == (vocab,), backward_peak=True)
    b, s = batch["input_ids"].shape
    plan = planned_activation_bytes(tiny_config(), LoraSettings(), b, s, image, compute_dtype=torch.float32,
                                    tiles=batch["pixel_values"].shape[2] if image else None, parts=True,
                                    precision=precision)
    assert plan["kept"] == pytest.approx(kept[False], rel=0.10)
    assert plan["kept"] + plan["recompute"] == pytest.approx(peak[False], rel=0.10)


def test_slice_benchmark_result_within_10_percent():
    """The committed 11B-width measurement agrees with today's planner."""
    from utils.retention import slice_11b_config

    rows = json.loads((REPO / "benchmarks" / "results" / "activation_memory.json").read_text())["rows"]
    assert {(r["precision"], r["image"]) for r in rows} == {(p, i) for p in ("bf16", "8bit") for i in (True, False)}
    for r in rows:
        plan = planned_activation_bytes(slice_11b_config(), LoraSettings(), 1, r["seq_len"], r["image"], tiles=4,
                                        precision=r["precision"])
        assert plan == pytest.approx(r["measured_peak"], rel=0.10), r
