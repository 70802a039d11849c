"""benchmarks/ on CPU: the tiny benchmark run (every variant, the frozen vision tower gets no grad),
results written after each variant, the goals fields, and the bitsandbytes wheel repacking."""

import csv
import io
import json
import math
import subprocess
import sys
import zipfile

import pytest

import benchmarks.bench_11b as bench
from benchmarks.bench_11b import VARIANTS, main, model_flops_per_sample, summary
from benchmarks.pack_wheels import check_record, cuda_versions, pick_cuda_lib, record_hash, repack_wheel
from utils.memory import config_11b

GOAL_KEYS = ("goal_8bit_peak_le_18gib", "ratio_8bit_t6_over_bf16", "goal_8bit_step_le_1.5x_bf16",
             "stretch_8bit_step_le_1.25x_bf16", "goal_planner_load_within_10pct", "planner_load_error_max",
             "nf4_over_8bit_peak", "nf4_over_8bit_step", "nf4_beats_8bit_memory_and_speed",
             "ratio_8bit_cached_over_8bit")


def test_model_flops_11b():
    lora = model_flops_per_sample(config_11b(), text_tokens=512, tiles=4, lora_only=True)
    full = model_flops_per_sample(config_11b(), text_tokens=512, tiles=4, lora_only=False)
    # LoRA over a frozen base, batch of 1 image (4 tiles) + 512 tokens: about 40 TFLOP per sample.
    assert 35e12 < lora["model_flops"] < 45e12
    assert lora["hardware_flops"] > lora["model_flops"]
    assert math.isclose(full["model_flops"], 3 * full["forward"])
    assert lora["backward"] < lora["forward"]  # frozen base: no weight grads, no vision backward


def test_tiny_benchmark_run(tmp_path):
    main(["--shape", "tiny", "--out", str(tmp_path), "--warmup", "1", "--steps", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in results["variants"]}
    assert set(rows) == {v[0] for v in VARIANTS}
    assert results["complete"] is True and results["variant_order"] == [v[0] for v in VARIANTS]
    for r in rows.values():
        assert r["error"] is None
        assert math.isfinite(r["step_s"]) and r["step_s"] > 0
        assert math.isfinite(r["loss_first"])
        assert r["attn_implementation"] == "sdpa"
        assert r["vision_runs_without_grad"] is True
        if r["cached_vision_features"]:  # the tower and projector ran once before the steps, not in them
            assert r["variant"] == "8bit cached" and r["vision_calls_in_steps"] == 0
            assert r["vision_output_requires_grad"] is None and r["projector_output_requires_grad"] is None
            assert r["vision_cache_s"] > 0 and r["model_flops_per_sample"] < rows["8bit t=6.0"]["model_flops_per_sample"]
        else:
            assert r["vision_calls_in_steps"] == 2 and r["vision_cache_s"] is None  # warm-up + timed step
            assert r["vision_output_requires_grad"] is False and r["projector_output_requires_grad"] is False
        assert r["frozen_vision_params_with_grad"] == 0
        assert r["trainable_params"] > 0
        assert abs(r["footprint_gib"] - r["planned_load_gib"]) < 1e-9  # the plan is exact
        assert r["peak_train_gib"] is None and r["mfu"] is None  # no GPU numbers on CPU
        assert r["profile_top_kernels"] is None  # only with --profile-slowest
    # the random weights' outlier pattern (LLM.int8-like): exactly the chosen dimensions in the q/k/v and gate/up
    # inputs of every decoder layer, (almost) none in o_proj and down_proj inputs
    from utils.tiny import tiny_config

    hidden = tiny_config().text_config.hidden_size
    share = len(bench.outlier_dims(hidden)) / hidden
    for r in rows.values():
        shares = r["outlier_column_share"]
        assert set(shares) == {"q/k/v", "o_proj", "gate/up", "down_proj"} and all(len(v) == 4 for v in shares.values())
        assert shares["q/k/v"] == shares["gate/up"] == [pytest.approx(share, abs=1e-5)] * 4, shares
        assert max(shares["down_proj"]) < 0.05 and max(shares["o_proj"]) < 0.05, shares
    assert results["summary"]["outlier_column_share_8bit"] == rows["8bit t=6.0"]["outlier_column_share"]
    # same batch, same weights, LoRA B = 0 at the first step: the cached features give the same loss
    assert rows["8bit cached"]["loss_first"] == pytest.approx(rows["8bit t=6.0"]["loss_first"], rel=1e-5)
    s = results["summary"]
    assert s["status"] == bench.NOT_MEASURED
    for key in GOAL_KEYS:  # the goals are GPU goals: on CPU they exist and are not measured
        assert key in s and s[key] is None, key
    md = (tmp_path / "results.md").read_text()
    assert "| nf4 |" in md and "- goal_8bit_peak_le_18gib: not measured" in md


def test_results_written_after_each_variant(tmp_path, monkeypatch):
    """The 1st variant (real, tiny) is on disk before the 2nd starts; the 2nd raises and is recorded with its
    error; the run goes on; a 4th that is interrupted (as by a timeout) leaves the first three on disk."""
    real = bench.run_variant
    seen_on_disk = {}

    def run_variant(name, *args, **kwargs):
        if name == "8bit t=6.0":
            return real(name, *args, **kwargs)
        on_disk = json.loads((tmp_path / "results.json").read_text())
        seen_on_disk[name] = [r["variant"] for r in on_disk["variants"]]
        if name == "bf16":
            raise RuntimeError("CUDA out of memory (simulated)")
        if name == "nf4":
            return {**on_disk["variants"][0], "variant": "nf4", "precision": "4bit"}
        raise KeyboardInterrupt  # 8bit t=0.0: the process is stopped

    monkeypatch.setattr(bench, "run_variant", run_variant)
    with pytest.raises(KeyboardInterrupt):
        main(["--shape", "tiny", "--out", str(tmp_path), "--warmup", "0", "--steps", "1", "--profile-slowest"])
    assert seen_on_disk == {"bf16": ["8bit t=6.0"], "nf4": ["8bit t=6.0", "bf16"],
                            "8bit t=0.0": ["8bit t=6.0", "bf16", "nf4"]}
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in results["variants"]}
    assert list(rows) == ["8bit t=6.0", "bf16", "nf4"] and results["complete"] is False
    assert rows["8bit t=6.0"]["error"] is None and rows["8bit t=6.0"]["step_s"] > 0
    assert "CUDA out of memory (simulated)" in rows["bf16"]["error"] and "Traceback" in rows["bf16"]["traceback"]
    assert results["summary"]["failed_variants"] == {"bf16": rows["bf16"]["error"]}
    # --profile-slowest profiles only after every variant is timed: this run never got there
    assert rows["8bit t=6.0"]["profile_top_kernels"] is None
    md = (tmp_path / "results.md").read_text()
    assert "| bf16 | failed: RuntimeError: CUDA out of memory (simulated) |" in md and "incomplete" in md


def _row(name, step_s, peak, after_load, planned_load, error=None):
    return {"variant": name, "step_s": step_s, "peak_train_gib": peak, "gpu_after_load_gib": after_load,
            "planned_load_gib": planned_load, "error": error, "profile_top_kernels": [{"name": name}]}


def test_goals_computed_when_measured():
    rows = {r["variant"]: r for r in [
        _row("8bit t=6.0", 1.3, 17.0, 11.0, 10.5), _row("bf16", 1.0, 30.0, 20.0, 19.9),
        _row("nf4", 1.5, 12.0, 7.0, 7.5), _row("8bit t=0.0", 1.1, 16.5, 11.0, 10.5),
        _row("8bit cached", 0.52, 16.0, 11.0, 10.5)]}
    s = summary(rows, measured=True)
    assert s["status"] == "measured"
    assert s["goal_8bit_peak_le_18gib"] is True and s["peak_8bit_t6_gib"] == 17.0
    assert math.isclose(s["ratio_8bit_t6_over_bf16"], 1.3) and math.isclose(s["ratio_8bit_t0_over_bf16"], 1.1)
    assert s["goal_8bit_step_le_1.5x_bf16"] is True and s["stretch_8bit_step_le_1.25x_bf16"] is False
    assert math.isclose(s["planner_load_error_max"], 0.5 / 7.0)  # nf4: |7.5 - 7| / 7
    assert s["goal_planner_load_within_10pct"] is True
    assert math.isclose(s["nf4_over_8bit_peak"], 12 / 17) and math.isclose(s["nf4_over_8bit_step"], 1.5 / 1.3)
    assert s["nf4_beats_8bit_memory_and_speed"] is False  # less memory, but slower
    assert math.isclose(s["ratio_8bit_cached_over_8bit"], 0.4)
    assert s["slowest_variant"] == "nf4" and s["slowest_variant_top_kernels"] == [{"name": "nf4"}]
    rows["bf16"] = _row("bf16", None, None, None, 19.9, error="OutOfMemoryError: ...")  # a failed variant
    s = summary(rows, measured=True)
    assert s["ratio_8bit_t6_over_bf16"] is None and s["goal_8bit_step_le_1.5x_bf16"] is None
    assert s["goal_8bit_peak_le_18gib"] is True and s["failed_variants"] == {"bf16": "OutOfMemoryError: ..."}


def _fake_wheel(path, cuda=("126", "128", "130")):
    """A small wheel shaped like bitsandbytes' manylinux one, with a correct RECORD."""
    files = {"bitsandbytes/__init__.py": b"__version__ = '0.50.2'\n", "bitsandbytes/nn/__init__.py": b"",
             "bitsandbytes/libbitsandbytes_cpu.so": b"cpu" * 10, "bitsandbytes/libbitsandbytes_rocm64.so": b"rocm",
             "bitsandbytes/libbitsandbytes_xpu2025.so": b"xpu",
             **{f"bitsandbytes/libbitsandbytes_cuda{c}.so": c.encode() * 1000 for c in cuda},
             "bitsandbytes-0.50.2.dist-info/METADATA": b"Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n",
             "bitsandbytes-0.50.2.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                                                     b"Tag: py3-none-manylinux_2_24_x86_64\n",
             "bitsandbytes-0.50.2.dist-info/top_level.txt": b"bitsandbytes\n"}
    record = "".join(f"{n},{record_hash(d)},{len(d)}\n" for n, d in files.items())
    record += "bitsandbytes-0.50.2.dist-info/RECORD,,\n"
    wheel = path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record)
    return wheel


def test_repack_wheel_keeps_one_cuda_library(tmp_path):
    src = _fake_wheel(tmp_path)
    assert check_record(src) == []
    out = repack_wheel(src, tmp_path / "packed", cuda=["130"])
    assert out.name == src.name and out.parent.name == "packed"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        record = {r[0]: r for r in csv.reader(io.StringIO(z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()))}
    assert cuda_versions(names) == ["130"]
    assert "bitsandbytes/libbitsandbytes_cpu.so" in names
    assert not any("rocm" in n or "xpu" in n for n in names)
    assert set(record) == names  # every file listed, nothing else
    assert check_record(out) == []  # ... with the right hashes and sizes
    assert record["bitsandbytes/libbitsandbytes_cuda130.so"][2] == "3000"
    with pytest.raises(ValueError, match=r"has no CUDA library for \['124'\]; it has CUDA \['126', '128', '130'\]"):
        repack_wheel(src, tmp_path / "other", cuda=["124"])
    # pip accepts the repacked wheel: an offline install into a throwaway folder
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", str(tmp_path / "site"), str(out)], check=True)
    installed = {p.name for p in (tmp_path / "site" / "bitsandbytes").iterdir()}
    assert installed >= {"__init__.py", "libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"}
    assert not any("cuda126" in n or "cuda128" in n for n in installed)


def test_check_record_finds_a_stale_entry(tmp_path):
    src = _fake_wheel(tmp_path)
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:  # drop a library, keep the old RECORD
        for info in zin.infolist():
            if not info.filename.endswith("cuda126.so"):
                zout.writestr(info, zin.read(info))
    assert check_record(bad) == ["RECORD lists bitsandbytes/libbitsandbytes_cuda126.so, which is not in the wheel"]


def test_pick_cuda_lib_follows_bitsandbytes_rule():
    assert pick_cuda_lib(["128", "130"], "13.0") == "130"
    assert pick_cuda_lib(["130"], "13.2") == "130"  # same major, highest lower minor
    assert pick_cuda_lib(["128", "130"], "12.9") == "128"
    assert pick_cuda_lib(["128"], "12.6") == "128"  # same major, lowest higher minor
    assert pick_cuda_lib(["130"], "12.8") is None  # never across majors
    assert pick_cuda_lib(["130"], None) is None


def test_profile_slowest_runs_after_all_timed_variants(tmp_path, monkeypatch):
    """The profiled step is a reload of the slowest variant after all of them are timed, never inside a timed one."""
    real = bench.run_variant
    calls = []

    def run_variant(name, *args, profile=False, **kwargs):
        calls.append((name, profile))
        if name == "8bit t=6.0":  # real (tiny, CPU) and made the slowest
            return {**real(name, *args, profile=profile, **kwargs), "step_s": 1e3}
        return {"variant": name, "step_s": 1e-3, "error": None, "profile_top_kernels": None}

    monkeypatch.setattr(bench, "run_variant", run_variant)
    results = main(["--shape", "tiny", "--out", str(tmp_path), "--warmup", "0", "--steps", "1", "--profile-slowest",
                    "--variants", "nf4", "8bit t=6.0", "bf16"])
    assert calls == [("nf4", False), ("8bit t=6.0", False), ("bf16", False), ("8bit t=6.0", True)]
    rows = {r["variant"]: r for r in results["variants"]}
    kernels = rows["8bit t=6.0"]["profile_top_kernels"]  # one profiled step, CPU time here
    assert rows["8bit t=6.0"]["profile_error"] is None and rows["8bit t=6.0"]["step_s"] == 1e3  # timed one kept
    assert len(kernels) == 3 and all(k["time_ms"] > 0 and k["clock"] == "cpu" for k in kernels)
    assert kernels[0]["time_ms"] >= kernels[1]["time_ms"] >= kernels[2]["time_ms"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["summary"]["slowest_variant_top_kernels"] == kernels


def _pure_wheel(folder, name, version, tag):
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()}
    record = "".join(f"{n},{record_hash(d)},{len(d)}\n" for n, d in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    wheel = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr(f"{name}-{version}.dist-info/RECORD", record)
    return wheel


def test_install_carried_takes_the_wheel_for_this_python(tmp_path):
    """multiprocess is published per Python version; the carried folder holds several, the device installs its own."""
    from benchmarks.pack_wheels import best_wheels, install_carried, wheel_supported

    here = f"py{sys.version_info.major}{sys.version_info.minor}"
    carried = tmp_path / "whl"
    carried.mkdir()
    mine = _pure_wheel(carried, "fakemp", "1.0", f"{here}-none-any")
    other = _pure_wheel(carried, "fakemp", "1.0", "py27-none-any")
    older = _pure_wheel(carried, "fakemp", "1.0", f"py{sys.version_info.major}{sys.version_info.minor - 1}-none-any")
    assert wheel_supported(mine) and not wheel_supported(other)
    assert wheel_supported(older)  # pip would take it too: the best-ranked one must win
    assert best_wheels(carried) == [mine]
    assert install_carried(carried, tmp_path / "site") == ["fakemp"]  # once
    assert (tmp_path / "site" / "fakemp" / "__init__.py").is_file()
