"""benchmarks/bench_11b.py at the tiny shape on CPU: every variant runs and the frozen vision tower gets no grad."""

import json
import math

from benchmarks.bench_11b import VARIANTS, main, model_flops_per_sample
from utils.memory import config_11b


def test_model_flops_11b():
    lora = model_flops_per_sample(config_11b(), text_tokens=512, tiles=4, lora_only=True)
    full = model_flops_per_sample(config_11b(), text_tokens=512, tiles=4, lora_only=False)
    assert 35e12 < lora["model_flops"] < 45e12  # DESIGN: "about 40 TFLOP per sample"
    assert lora["hardware_flops"] > lora["model_flops"]
    assert math.isclose(full["model_flops"], 3 * full["forward"])
    assert lora["backward"] < lora["forward"]  # frozen base: no weight grads, no vision backward


def test_tiny_benchmark_run(tmp_path):
    main(["--shape", "tiny", "--out", str(tmp_path), "--warmup", "1", "--steps", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in results["variants"]}
    assert set(rows) == {v[0] for v in VARIANTS}
    for r in rows.values():
        assert math.isfinite(r["step_s"]) and r["step_s"] > 0
        assert math.isfinite(r["loss_first"])
        assert r["attn_implementation"] == "sdpa"
        assert r["vision_runs_without_grad"] is True
        assert r["vision_output_requires_grad"] is False and r["projector_output_requires_grad"] is False
        assert r["frozen_vision_params_with_grad"] == 0
        assert r["trainable_params"] > 0
        assert abs(r["footprint_gib"] - r["planned_load_gib"]) < 1e-9  # the plan is exact
        assert r["peak_train_gib"] is None and r["mfu"] is None  # no GPU numbers on CPU
    assert "ratio_8bit_t6_over_bf16" in results["summary"]
    assert "| nf4 |" in (tmp_path / "results.md").read_text()
