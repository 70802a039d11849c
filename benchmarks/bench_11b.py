"""Benchmark LoRA training of Mllama in bf16, 8-bit (LLM.int8) and 4-bit (nf4) on one GPU.

    python -m benchmarks.bench_11b --shape 11b --out benchmarks/results   # CUDA GPU >= 40 GB
    python -m benchmarks.bench_11b --shape tiny --out /tmp/bench          # same code, CPU, seconds
    bash benchmarks/gpu_run.sh                                            # the prepared lent-GPU run (README)

Weights are random (seeded) but go through the real loading path: the model is built on the
`meta` device, filled with random values on the GPU (on the CPU without CUDA), saved once with
`save_pretrained` (to /dev/shm when it has room, else .cache/), and every variant loads it with
`from_pretrained(..., quantization_config=...)` (utils.modeling.load_model).

results.json / results.md are rewritten after every variant, so a run cut short (timeout, OOM
that kills the process) still leaves what it measured; a variant that raises is recorded with its
error and the run goes on. `--profile-slowest`, after every variant is timed, loads the slowest one again and
runs one step under torch.profiler (not counted in step_s): its top three kernels.

Model FLOPs per sample (`model_flops_per_sample`), counted from the module shapes:
- forward: 2 x params x tokens for every Linear, with the right token count per module:
  text tokens for the decoder and lm_head, image tokens (tiles x 1601) for the vision tower,
  projector and the cross-attention k/v projections; attention scores 4 x q_len x kv_len x dim
  per layer (QK^T and AV, no causal discount); vision patch conv.
- backward with a frozen base (LoRA): only activation gradients, ~2 x params x tokens for the
  text path (not 4: no weight gradients), 2x forward for attention scores; nothing for the
  vision tower (run without autograd) or for the cross k/v base matmuls (their input needs no
  grad). LoRA's own forward+backward is 6 x lora params x tokens. `lora_only=False` gives the
  full fine-tuning count (backward = 2 x forward everywhere) for comparison.
- gradient checkpointing recomputes the decoder forward: counted in 'hardware_flops', not in
  'model_flops' (MFU uses model FLOPs, as in the PaLM paper).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import torch

from utils.config import CACHE_DIR, DEFAULT_SKIP_MODULES, LoraSettings, compute_dtype
from utils.lora import add_lora, count_parameters, expected_lora_parameters
from utils.memory import config_11b, measured_quant_state_bytes, meta_model, plan_load_memory, plan_training_memory
from utils.modeling import load_model
from utils.tiny import tiny_config
from utils.train import freeze_vision_tower, prepare_for_training, vision_tower

IMAGE_TOKEN_ID, BOS_ID = 128256, 128000
# Peak dense bf16 tensor-core TFLOP/s (no sparsity), matched against torch.cuda.get_device_name.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312}
# Most important first: a run cut short still has the 8-bit vs bf16 comparison.
VARIANTS = [  # name, precision, gradient checkpointing, int8 threshold, cached vision features
    ("8bit t=6.0", "8bit", True, 6.0, False),
    ("bf16", "bf16", True, 6.0, False),
    ("nf4", "4bit", True, 6.0, False),
    ("8bit t=0.0", "8bit", True, 0.0, False),
    ("bf16 no-GC", "bf16", False, 6.0, False),
    # The same batch with cross_attention_states precomputed (utils/vision_cache.py): the frozen vision
    # tower and projector are not run in the timed steps. Compared with "8bit t=6.0" in the summary.
    ("8bit cached", "8bit", True, 6.0, True),
]
SHAPES = {  # batch, text tokens, warm-up steps, timed steps
    "11b": dict(config=config_11b, batch=2, seq=512, warmup=2, steps=5),
    "tiny": dict(config=tiny_config, batch=2, seq=64, warmup=1, steps=2),
}
GIB = 2**30
GOAL_8BIT_PEAK_GIB = 18.0
GOAL_8BIT_OVER_BF16 = 1.5
STRETCH_8BIT_OVER_BF16 = 1.25
GOAL_PLANNER_LOAD_ERROR = 0.10
NOT_MEASURED = "not measured (no CUDA GPU in this run)"


def patches_per_tile(config) -> int:
    v = config.vision_config
    return (v.image_size // v.patch_size) ** 2 + 1  # + class token: 1601 at 560 px


def model_flops_per_sample(config, text_tokens: int = 512, tiles: int = 4, lora_only: bool = True,
                           lora_settings: LoraSettings | None = None) -> dict[str, float]:
    """FLOPs of one training sample (1 image, `tiles` tiles, `text_tokens` tokens); see the module docstring."""
    t, v = config.text_config, config.vision_config
    image_tokens = tiles * patches_per_tile(config)
    padded = tiles * 8 * math.ceil(patches_per_tile(config) / 8)  # the vision encoder pads each tile to 8k
    f = dict.fromkeys(("vision", "projector", "text_linear", "cross_kv", "text_attention"), 0.0)
    for name, m in meta_model(config).named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        n = m.weight.numel()
        if ".vision_model." in f".{name}.":
            f["vision"] += 2 * n * padded
        elif "multi_modal_projector" in name:
            f["projector"] += 2 * n * image_tokens
        elif ".cross_attn.k_proj" in name or ".cross_attn.v_proj" in name:
            f["cross_kv"] += 2 * n * image_tokens
        else:
            f["text_linear"] += 2 * n * text_tokens
    v_layers = v.num_hidden_layers + v.num_global_layers
    f["vision"] += 4 * padded**2 * v.hidden_size * v_layers  # attention over all tiles
    f["vision"] += 2 * (v.num_channels * v.patch_size**2 * v.hidden_size) * tiles * (patches_per_tile(config) - 1)
    n_cross = len(t.cross_attention_layers)
    f["text_attention"] = 4 * text_tokens * t.hidden_size * (
        text_tokens * (t.num_hidden_layers - n_cross) + image_tokens * n_cross)
    n_lora = expected_lora_parameters(config, lora_settings or LoraSettings())
    forward = sum(f.values())
    if lora_only:
        backward = 2 * f["text_attention"] + f["text_linear"] + 4 * n_lora * text_tokens
        forward += 2 * n_lora * text_tokens
    else:
        backward = 2 * forward
    recompute = f["text_linear"] + f["cross_kv"] + f["text_attention"]
    return {**f, "forward": forward, "backward": backward, "model_flops": forward + backward,
            "hardware_flops": forward + backward + recompute}


# Outlier features as LLM.int8 (Dettmers et al. 2022, section 4) describes them for models of 6.7B parameters and
# up: a handful of hidden dimensions (about 6) carry values of magnitude up to ~20 (more at 13B+) in most
# sequence positions (~75%) and in every layer, in the inputs of the attention projections and the first MLP
# layer; the down_proj inputs have few. With every weight N(0, 0.02) instead, none of the 4,096 q/k/v/gate/up
# input columns exceeded the 6.0 threshold and 97% of the down_proj input columns did, which no real model
# shows. So: the RMSNorm weights before attention and MLP are OUTLIER_SCALE on OUTLIER_DIMS fixed (seeded)
# dimensions (an RMS-normalised input of unit scale then reaches ~20 x N(0, 1) there: above 6.0 in ~76% of the
# positions), and gate/up weights get the std that gives their outputs a std of ~GATE_UP_OUTPUT_STD, so the
# down_proj input (silu(gate) x up) rarely passes 6.0. The share actually measured per layer is in results.json
# (`outlier_column_share`).
OUTLIER_DIMS, OUTLIER_SCALE, GATE_UP_OUTPUT_STD, INIT_STD = 6, 20.0, 0.5, 0.02
OUTLIER_THRESHOLD = 6.0


def outlier_dims(hidden_size: int, seed: int = 0) -> list[int]:
    """The systematic outlier dimensions: OUTLIER_DIMS of them (1 per 64 hidden dims at most, for tiny shapes)."""
    k = max(1, min(OUTLIER_DIMS, hidden_size // 64))
    return sorted(torch.randperm(hidden_size, generator=torch.Generator().manual_seed(seed + 1))[:k].tolist())


def build_random_checkpoint(config, path: Path, dtype: torch.dtype, seed: int = 0, device: str | None = None) -> Path:
    """Seeded random weights saved with save_pretrained; reused when `path` already holds them.

    N(0, INIT_STD) everywhere, norms 1, except the outlier pattern described above (OUTLIER_DIMS). The weights
    are generated on `device` (default: cuda when available): for the 11B shape that is ~20 GiB of bf16 filled
    in about a second on a GPU instead of minutes on the CPU."""
    path = Path(path)
    if (path / "bench_done.json").exists() and json.loads((path / "bench_done.json").read_text()).get("outliers"):
        return path
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = meta_model(config).to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    t = config.text_config
    dims = outlier_dims(t.hidden_size, seed)
    scale = float(t.hidden_size + len(dims) * (OUTLIER_SCALE**2 - 1)) ** 0.5  # RMS-normalised input's norm
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.fill_(1.0)
                if "language_model.layers." in name and name.endswith(("input_layernorm.weight",
                                                                         "post_attention_layernorm.weight")):
                    p[dims] = OUTLIER_SCALE
            elif "language_model.layers." in name and name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
                p.normal_(0.0, GATE_UP_OUTPUT_STD / scale, generator=gen)
            else:
                p.normal_(0.0, INIT_STD, generator=gen)
    model.save_pretrained(path, max_shard_size="5GB")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    (path / "bench_done.json").write_text(json.dumps({"seed": seed, "dtype": str(dtype), "device": device,
                                                      "outliers": {"dims": dims, "scale": OUTLIER_SCALE}}))
    return path


class OutlierColumns:
    """Forward pre-hooks on the decoder's linear layers that record, for one forward pass, the share of input
    columns (hidden features) holding any |x| > OUTLIER_THRESHOLD: what LLM.int8 sends through 16-bit.
    `shares()`: {"q/k/v" | "o_proj" | "gate/up" | "down_proj": [share per decoder layer]}."""

    KINDS = {"q_proj": "q/k/v", "o_proj": "o_proj", "gate_proj": "gate/up", "down_proj": "down_proj"}

    def __init__(self, model):
        import re

        self.seen, self.hooks = {}, []
        for name, module in model.named_modules():
            m = re.search(r"language_model\.layers\.(\d+)\..*\.(q_proj|o_proj|gate_proj|down_proj)$", name)
            if m and hasattr(module, "in_features"):
                key = (self.KINDS[m.group(2)], int(m.group(1)))
                self.hooks.append(module.register_forward_pre_hook(self._hook(key)))

    def _hook(self, key):
        def record(module, args):
            if key not in self.seen:
                x = args[0].detach().reshape(-1, args[0].shape[-1])
                self.seen[key] = (x.abs() > OUTLIER_THRESHOLD).any(dim=0).float().mean().item()
        return record

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def shares(self) -> dict[str, list[float]]:
        out = {}
        for (kind, layer), share in sorted(self.seen.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            out.setdefault(kind, []).append(round(share, 5))
        return out


def default_weights_dir(name: str, needed_bytes: int) -> Path:
    """/dev/shm/<name> when /dev/shm exists and has room (loading from RAM), else .cache/<name>."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        existing = shm / name
        if (existing / "bench_done.json").exists() or shutil.disk_usage(shm).free > 1.15 * needed_bytes:
            return existing
    return CACHE_DIR / name


def synthetic_batch(config, batch: int, seq: int, tiles: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """The processor's output shapes for `batch` rows of <|begin_of_text|><|image|> + text, 4 tiles each.

    Labels are -100 on the first half (prompt, including the image token) and train the rest.
    """
    gen = torch.Generator().manual_seed(seed)
    v = config.vision_config
    ids = torch.randint(0, BOS_ID, (batch, seq), generator=gen)
    ids[:, 0], ids[:, 1] = BOS_ID, IMAGE_TOKEN_ID
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    cross = torch.ones(batch, seq, 1, tiles, dtype=torch.long)
    cross[:, 0] = 0  # tokens before the image do not attend to it
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
        "pixel_values": torch.randn(batch, 1, v.max_num_tiles, v.num_channels, v.image_size, v.image_size,
                                    generator=gen),
        "aspect_ratio_ids": torch.full((batch, 1), 6),  # 2x2 tiles
        "aspect_ratio_mask": torch.ones(batch, 1, v.max_num_tiles, dtype=torch.long),
        "cross_attention_mask": cross,
    }


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_tflops(device_name: str | None) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # "H100 PCIe" is checked before "H100"
        if device_name and key in device_name:
            return float(value)
    return None


def top_kernels(prof, cuda: bool, n: int = 3) -> list[dict]:
    """The `n` kernels with the most self CUDA time in a torch.profiler run (without CUDA: ops by self CPU time)."""
    from torch.autograd import DeviceType

    events = list(prof.key_averages())
    if cuda:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA] or events
        timed = [(e, e.self_device_time_total) for e in kernels]
    else:
        timed = [(e, e.self_cpu_time_total) for e in events]
    total = sum(t for _, t in timed) or 1.0
    timed.sort(key=lambda et: et[1], reverse=True)
    return [{"name": e.key, "time_ms": t / 1e3, "share": t / total, "calls": e.count,
             "clock": "cuda" if cuda else "cpu"} for e, t in timed[:n]]


def run_variant(name, precision, gc_on, threshold, checkpoint_dir, config, shape, flops,
                profile: bool = False, cached: bool = False) -> dict:
    """Load one variant, train `warmup + steps` LoRA steps on the synthetic batch, return its metrics.

    With `cached`, the projector output of the batch's images is computed once before the steps (as
    utils.vision_cache does per image) and the steps get `cross_attention_states` instead of pixel
    values: the step time without the frozen vision tower. Its model FLOPs leave the tower and projector out.

    With `profile`, one more step runs under torch.profiler after the timed ones (and after the
    peak memory is read); its top three kernels go into 'profile_top_kernels'."""
    cuda = torch.cuda.is_available()
    if not cuda and precision == "bf16":
        precision = "fp32"  # CPU runs 16-bit variants in fp32 (see mixed_precision)
    dtype = compute_dtype("bf16" if cuda else "fp32")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = load_model(model_name_or_path=str(checkpoint_dir), precision=precision, int8_threshold=threshold,
                       attn_implementation="sdpa")
    _sync()
    load_s = time.perf_counter() - start
    gpu_after_load = torch.cuda.memory_allocated() / GIB if cuda else None
    footprint = model.get_memory_footprint() + measured_quant_state_bytes(model)
    attn = model.config.text_config._attn_implementation

    model = add_lora(model, LoraSettings(scope="language"))
    prepare_for_training(model, gradient_checkpointing=gc_on)  # the same setup as utils.train.build_trainer
    no_grad_tower = freeze_vision_tower(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    device = next(p.device for p in model.parameters() if p.device.type != "meta")
    batch = {k: v.to(device) for k, v in synthetic_batch(config, shape["batch"], shape["seq"]).items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    cache_s = None
    if cached:
        from utils.vision_cache import projector_output

        _sync()
        t0 = time.perf_counter()
        with autocast:
            states = projector_output(model, batch.pop("pixel_values"), batch.pop("aspect_ratio_ids"),
                                      batch.pop("aspect_ratio_mask"))
        batch["cross_attention_states"] = states.reshape(-1, states.shape[-2], states.shape[-1])
        _sync()
        cache_s = time.perf_counter() - t0
    seen, vision_calls = {}, []
    def on_vision(module, inputs, output):  # returns None: a forward hook's return value would replace the output
        seen["vision"] = output[0].requires_grad
        vision_calls.append(1)

    hooks = [vision_tower(model).register_forward_hook(on_vision),
             model.get_base_model().model.multi_modal_projector.register_forward_hook(
                 lambda m, i, o: seen.__setitem__("projector", o.requires_grad))]

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, times, frozen_with_grad = [], [], None
    outliers = OutlierColumns(model)  # records the first forward pass only

    def train_step():
        nonlocal frozen_with_grad
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        if frozen_with_grad is None:  # the frozen vision tower and projector must get no gradient
            base = model.get_base_model().model
            frozen_with_grad = sum(p.grad is not None for m in (base.vision_model, base.multi_modal_projector)
                                   for p in m.parameters())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for step in range(shape["warmup"] + shape["steps"]):
        _sync()
        t0 = time.perf_counter()
        loss = train_step()
        _sync()
        losses.append(loss.item())
        if step >= shape["warmup"]:
            times.append(time.perf_counter() - t0)
    for h in hooks:
        h.remove()
    outliers.remove()
    peak_train = torch.cuda.max_memory_allocated() / GIB if cuda else None
    profile_top = profile_error = None
    if profile:  # a profiler failure (e.g. no CUPTI) must not cost the variant's measurements
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        try:
            with torch_profile(activities=activities) as prof:
                train_step()
                _sync()
            profile_top = top_kernels(prof, cuda)
        except Exception as err:
            profile_error = f"{type(err).__name__}: {err}"[:500]

    step_s = sum(times) / len(times)
    text_tokens = int(batch["attention_mask"].sum())
    peak = peak_tflops(torch.cuda.get_device_name(0) if cuda else None)
    per_sample = flops["model_flops"] - (flops["vision"] + flops["projector"] if cached else 0)
    model_flops = per_sample * shape["batch"]
    plan = plan_training_memory(config, precision, LoraSettings(scope="language"), shape["batch"], shape["seq"],
                                gradient_checkpointing=gc_on, compute_dtype=dtype)
    result = {
        "variant": name, "precision": precision, "gradient_checkpointing": gc_on, "cached_vision_features": cached,
        "vision_cache_s": cache_s, "vision_calls_in_steps": len(vision_calls), "model_flops_per_sample": per_sample,
        "int8_threshold": threshold if precision == "8bit" else None, "attn_implementation": attn,
        "trainable_params": count_parameters(model)[0],
        "load_s": load_s,
        "footprint_gib": footprint / GIB,
        "planned_load_gib": plan_load_memory(config, precision, DEFAULT_SKIP_MODULES, dtype)["total"] / GIB,
        "gpu_after_load_gib": gpu_after_load,
        "planned_peak_gib": plan["total"] / GIB,
        "peak_train_gib": peak_train,
        "step_s": step_s, "text_tokens_per_s": text_tokens / step_s,
        "tflops_per_s": model_flops / step_s / 1e12,
        "mfu": model_flops / step_s / (peak * 1e12) if peak else None,
        "loss_first": losses[0], "loss_last": losses[-1],
        "padding_fraction": 1 - text_tokens / batch["attention_mask"].numel(),
        "vision_runs_without_grad": no_grad_tower,
        "vision_output_requires_grad": seen.get("vision"),
        "projector_output_requires_grad": seen.get("projector"),
        "frozen_vision_params_with_grad": frozen_with_grad,
        "outlier_column_share": outliers.shares(),
        "profile_top_kernels": profile_top, "profile_error": profile_error,
        "error": None,
    }
    del model, optimizer, batch, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception as err:  # bitsandbytes may be missing or fail to load its library: still run bf16
        return f"unavailable ({type(err).__name__}: {err})"[:200]


def environment() -> dict:
    import peft
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "bitsandbytes": _version("bitsandbytes"), "cuda": torch.version.cuda,
           "gpu": None, "driver": None, "peak_bf16_tflops": None, "gpu_total_gib": None}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["peak_bf16_tflops"] = peak_tflops(env["gpu"])
        env["gpu_total_gib"] = torch.cuda.get_device_properties(0).total_memory / GIB
        try:
            import subprocess

            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return env


def _ok(rows: dict, name: str) -> dict | None:
    row = rows.get(name)
    return row if row and not row.get("error") else None


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def summary(rows: dict[str, dict], measured: bool | None = None) -> dict:
    """The goals, as computed fields: None where not measured (no CUDA, or the variant is missing or failed).

    - 8-bit (t=6.0) peak training memory <= 18 GiB;
    - 8-bit step time <= 1.5 x the bf16 step time of the same run (stretch: <= 1.25 x); the t=0.0 ratio too;
    - the planner's load memory within 10% of the GPU memory measured after loading, for every variant;
    - nf4 vs 8-bit: peak memory and step time ratios, and whether nf4 beats 8-bit on both.
    `measured` defaults to whether CUDA is available; step times on the CPU are not the GPU goals.
    """
    measured = torch.cuda.is_available() if measured is None else measured
    bf16, int8, int8_t0, nf4, cached = (_ok(rows, n) for n in ("bf16", "8bit t=6.0", "8bit t=0.0", "nf4",
                                                                "8bit cached"))
    get = lambda row, key: row[key] if (measured and row) else None  # noqa: E731
    ratio = _ratio(get(int8, "step_s"), get(bf16, "step_s"))
    peak = get(int8, "peak_train_gib")
    errors = {}
    for name, row in rows.items():
        if _ok(rows, name) and measured and row.get("gpu_after_load_gib") is not None:
            errors[name] = abs(row["planned_load_gib"] - row["gpu_after_load_gib"]) / row["gpu_after_load_gib"]
    nf4_mem, nf4_step = _ratio(get(nf4, "peak_train_gib"), peak), _ratio(get(nf4, "step_s"), get(int8, "step_s"))
    done = [r for r in rows.values() if not r.get("error")]
    slowest = max(done, key=lambda r: r["step_s"]) if done else None
    return {
        "status": "measured" if measured else NOT_MEASURED,
        "peak_8bit_t6_gib": peak,
        "goal_8bit_peak_le_18gib": None if peak is None else peak <= GOAL_8BIT_PEAK_GIB,
        "ratio_8bit_t6_over_bf16": ratio,
        "ratio_8bit_t0_over_bf16": _ratio(get(int8_t0, "step_s"), get(bf16, "step_s")),
        "goal_8bit_step_le_1.5x_bf16": None if ratio is None else ratio <= GOAL_8BIT_OVER_BF16,
        "stretch_8bit_step_le_1.25x_bf16": None if ratio is None else ratio <= STRETCH_8BIT_OVER_BF16,
        "planner_load_error_by_variant": errors or None,
        "planner_load_error_max": max(errors.values()) if errors else None,
        "goal_planner_load_within_10pct": None if not errors else max(errors.values()) <= GOAL_PLANNER_LOAD_ERROR,
        "nf4_over_8bit_peak": nf4_mem,
        "nf4_over_8bit_step": nf4_step,
        "nf4_beats_8bit_memory_and_speed": None if nf4_mem is None or nf4_step is None
        else nf4_mem < 1 and nf4_step < 1,
        "ratio_8bit_cached_over_8bit": _ratio(get(cached, "step_s"), get(int8, "step_s")),
        # measured on any device (it is the random weights' pattern, not a GPU number): per decoder layer
        "outlier_column_share_8bit": int8.get("outlier_column_share") if int8 else None,
        "slowest_variant": slowest["variant"] if slowest else None,
        "slowest_variant_top_kernels": slowest.get("profile_top_kernels") if slowest else None,
        "failed_variants": {r["variant"]: r["error"] for r in rows.values() if r.get("error")} or None,
    }


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def markdown(results: dict) -> str:
    env, rows = results["environment"], results["variants"]
    cols = ["variant", "load_s", "footprint_gib", "planned_load_gib", "gpu_after_load_gib", "planned_peak_gib",
            "peak_train_gib", "step_s", "text_tokens_per_s", "mfu"]
    done = [r for r in rows if not r.get("error")]
    first = done[0] if done else {}
    lines = [f"# Mllama LoRA benchmark ({results['shape']})", "",
             f"Device: {env['gpu'] or 'CPU (no CUDA: GPU metrics n/a)'}; driver {_fmt(env['driver'])}, CUDA "
             f"{_fmt(env['cuda'])}; torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
             f"bitsandbytes {env['bitsandbytes']}.",
             f"Batch {results['batch']} x {results['seq']} text tokens + 1 image (4 tiles); attention: "
             f"{first.get('attn_implementation', 'n/a')}; padding fraction {_fmt(first.get('padding_fraction'))}; "
             f"model FLOPs/sample {results['flops_per_sample']['model_flops'] / 1e12:.2f} TFLOP.",
             f"Variants done: {len(rows)} of {len(results['variant_order'])} "
             f"({'complete' if results['complete'] else 'incomplete: the run stopped or is still going'}).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in done]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['variant']} | failed: {r['error'].splitlines()[0][:120]} |" + " |" * (len(cols) - 2))
    lines += ["", "## Goals", ""]
    for k, v in results["summary"].items():
        if k in ("slowest_variant_top_kernels", "planner_load_error_by_variant", "failed_variants",
                 "outlier_column_share_8bit"):
            continue
        shown = "not measured" if v is None and results["summary"]["status"] != "measured" else _fmt(v)
        lines.append(f"- {k}: {shown}")
    shares = results["summary"].get("outlier_column_share_8bit")
    if shares:
        lines += ["", f"Input columns with any |x| > {OUTLIER_THRESHOLD} (LLM.int8's 16-bit part), 8bit t=6.0, per "
                      "decoder layer (mean / max):", ""]
        lines += [f"- {kind}: {100 * sum(v) / len(v):.2f}% / {100 * max(v):.2f}% over {len(v)} layers"
                  for kind, v in shares.items()]
    kernels = results["summary"].get("slowest_variant_top_kernels")
    if kernels:
        lines += ["", f"Top kernels of the slowest variant ({results['summary']['slowest_variant']}, one profiled step, "
                      f"{kernels[0]['clock']} time):", ""]
        lines += [f"- {k['time_ms']:.2f} ms ({100 * k['share']:.0f}%, {k['calls']} calls): `{k['name'][:100]}`"
                  for k in kernels]
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: dict) -> None:
    """results.json and results.md, written to temporary names and renamed (a kill leaves the last complete pair)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=1)), ("results.md", markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def select_variants(names: list[str] | None) -> list[tuple]:
    """VARIANTS in the order given by `names` (all, in the default order, when None)."""
    if not names:
        return list(VARIANTS)
    by_name = {v[0]: v for v in VARIANTS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(by_name)}")
    return [by_name[n] for n in names]


def profile_slowest(rows: list[dict], weights_dir, config, shape, flops) -> dict | None:
    """After every variant is timed: load the slowest one again and profile one step (after one unprofiled step)
    under torch.profiler; its top three kernels go into that variant's row (`profile_top_kernels`). Last, so a
    run that is cut short loses this and none of the timed variants."""
    done = [r for r in rows if not r.get("error")]
    if not done:
        return None
    slowest = max(done, key=lambda r: r["step_s"])
    spec = next(v for v in VARIANTS if v[0] == slowest["variant"])
    print(f"[{spec[0]}] profiling one step (the slowest variant) ...", flush=True)
    try:
        profiled = run_variant(spec[0], spec[1], spec[2], spec[3], weights_dir, config, {**shape, "warmup": 0, "steps": 1},
                               flops, profile=True, cached=spec[4])
        slowest["profile_top_kernels"], slowest["profile_error"] = profiled["profile_top_kernels"], profiled["profile_error"]
    except Exception as err:  # the timed results stay as they are
        slowest["profile_error"] = f"{type(err).__name__}: {err}"[:500]
    return slowest


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="11b")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--weights-dir", default=None,
                        help="where the random checkpoint is saved (11b: ~20 GiB; default /dev/shm if it has room, "
                             "else .cache/)")
    parser.add_argument("--keep-weights", action="store_true",
                        help="keep the 11b checkpoint in /dev/shm after the run (it holds ~20 GiB of RAM)")
    parser.add_argument("--variants", nargs="*", default=None, help="variant names, run in the order given")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--profile-slowest", action="store_true",
                        help="after all variants are timed, load the slowest again and profile one step: its top "
                             "3 kernels")
    args = parser.parse_args(argv)
    shape = dict(SHAPES[args.shape])
    shape.update({k: getattr(args, k) for k in ("steps", "warmup") if getattr(args, k) is not None})
    if args.shape == "11b" and not torch.cuda.is_available():
        parser.error("--shape 11b needs a CUDA GPU (>= 40 GB); use --shape tiny on CPU")
    variants = select_variants(args.variants)
    config = shape["config"]()
    cuda = torch.cuda.is_available()
    dtype = compute_dtype("bf16" if cuda else "fp32")
    needed = plan_load_memory(config, "bf16" if cuda else "fp32")["total"]
    tmp = None
    if args.weights_dir:
        weights_dir = Path(args.weights_dir)
    elif args.shape == "tiny":
        tmp = tempfile.TemporaryDirectory(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
        weights_dir = Path(tmp.name)
    else:
        weights_dir = default_weights_dir("bench-mllama-11b-random-bf16", needed)
    start = time.perf_counter()
    build_random_checkpoint(config, weights_dir, dtype)
    build_s = time.perf_counter() - start
    print(f"random checkpoint in {weights_dir} ({needed / GIB:.2f} GiB, {build_s:.1f} s)", flush=True)
    flops = model_flops_per_sample(config, shape["seq"], config.vision_config.max_num_tiles)
    print(f"model FLOPs per sample: {flops['model_flops'] / 1e12:.2f} TFLOP "
          f"(hardware, with recompute: {flops['hardware_flops'] / 1e12:.2f})", flush=True)
    out = Path(args.out)
    rows = []
    results = {"shape": args.shape, "batch": shape["batch"], "seq": shape["seq"], "warmup": shape["warmup"],
               "steps": shape["steps"], "environment": environment(), "flops_per_sample": flops,
               "weights_dir": str(weights_dir), "checkpoint_build_s": build_s,
               "variant_order": [v[0] for v in variants], "complete": False, "variants": rows}
    results["summary"] = summary({})
    write_results(out, results)
    try:
        for name, precision, gc_on, threshold, cached in variants:
            print(f"[{name}] loading ...", flush=True)
            try:
                r = run_variant(name, precision, gc_on, threshold, weights_dir, config, shape, flops, cached=cached)
                print(f"[{name}] attn={r['attn_implementation']} padding={r['padding_fraction']:.2f} load "
                      f"{r['load_s']:.1f} s, footprint {r['footprint_gib']:.3f} GiB (planned {r['planned_load_gib']:.3f}, "
                      f"GPU after load {r['gpu_after_load_gib']}), peak {r['peak_train_gib']} GiB (planned "
                      f"{r['planned_peak_gib']:.3f}), step {r['step_s']:.3f} s, {r['text_tokens_per_s']:.0f} tok/s, "
                      f"MFU {r['mfu']}; vision output requires grad: {r['vision_output_requires_grad']}, frozen "
                      f"params with grad: {r['frozen_vision_params_with_grad']}", flush=True)
            except Exception as err:  # an OOM or a bitsandbytes failure: record it, free memory, go on
                r = {"variant": name, "precision": precision, "gradient_checkpointing": gc_on,
                     "int8_threshold": threshold if precision == "8bit" else None,
                     "error": f"{type(err).__name__}: {err}"[:2000],
                     "traceback": traceback.format_exc()[-4000:]}
                print(f"[{name}] FAILED: {r['error'][:500]}", flush=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            rows.append(r)
            results["summary"] = summary({row["variant"]: row for row in rows})
            write_results(out, results)
        results["complete"] = True
        write_results(out, results)
        if args.profile_slowest:
            profile_slowest(rows, weights_dir, config, shape, flops)
            results["summary"] = summary({row["variant"]: row for row in rows})
            write_results(out, results)
    finally:
        if tmp:
            tmp.cleanup()
        elif not args.weights_dir and not args.keep_weights and str(weights_dir).startswith("/dev/shm/"):
            shutil.rmtree(weights_dir, ignore_errors=True)  # ~20 GiB of RAM
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
