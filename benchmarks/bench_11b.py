"""Benchmark LoRA training of Mllama in bf16, 8-bit (LLM.int8) and 4-bit (nf4) on one GPU.

    python -m benchmarks.bench_11b --shape 11b --out benchmarks/results   # CUDA GPU >= 40 GB
    python -m benchmarks.bench_11b --shape tiny --out /tmp/bench          # same code, CPU, seconds

Weights are random (seeded) but go through the real loading path: the model is built on the
`meta` device, filled with random values, saved once with `save_pretrained`, and every variant
loads it with `from_pretrained(..., quantization_config=...)` (utils.modeling.load_model).

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
import platform
import tempfile
import time
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
VARIANTS = [  # name, precision, gradient checkpointing, int8 threshold
    ("bf16", "bf16", True, 6.0),
    ("bf16 no-GC", "bf16", False, 6.0),
    ("8bit t=6.0", "8bit", True, 6.0),
    ("8bit t=0.0", "8bit", True, 0.0),
    ("nf4", "4bit", True, 6.0),
]
SHAPES = {  # batch, text tokens, warm-up steps, timed steps
    "11b": dict(config=config_11b, batch=2, seq=512, warmup=2, steps=5),
    "tiny": dict(config=tiny_config, batch=2, seq=64, warmup=1, steps=2),
}
GIB = 2**30


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


def build_random_checkpoint(config, path: Path, dtype: torch.dtype, seed: int = 0) -> Path:
    """Seeded random weights saved with save_pretrained; reused when `path` already holds them."""
    path = Path(path)
    if (path / "bench_done.json").exists():
        return path
    model = meta_model(config).to(dtype).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02))
    model.save_pretrained(path, max_shard_size="5GB")
    (path / "bench_done.json").write_text(json.dumps({"seed": seed, "dtype": str(dtype)}))
    return path


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


def run_variant(name, precision, gc_on, threshold, checkpoint_dir, config, shape, flops) -> dict:
    """Load one variant, train `warmup + steps` LoRA steps on the synthetic batch, return its metrics."""
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
    seen = {}
    hooks = [vision_tower(model).register_forward_hook(
                 lambda m, i, o: seen.__setitem__("vision", o[0].requires_grad)),
             model.get_base_model().model.multi_modal_projector.register_forward_hook(
                 lambda m, i, o: seen.__setitem__("projector", o.requires_grad))]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    device = next(p.device for p in model.parameters() if p.device.type != "meta")
    batch = {k: v.to(device) for k, v in synthetic_batch(config, shape["batch"], shape["seq"]).items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, times, frozen_with_grad = [], [], None
    for step in range(shape["warmup"] + shape["steps"]):
        _sync()
        t0 = time.perf_counter()
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        if frozen_with_grad is None:  # the frozen vision tower and projector must get no gradient
            base = model.get_base_model().model
            frozen_with_grad = sum(p.grad is not None for m in (base.vision_model, base.multi_modal_projector)
                                   for p in m.parameters())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        losses.append(loss.item())
        if step >= shape["warmup"]:
            times.append(time.perf_counter() - t0)
    for h in hooks:
        h.remove()

    step_s = sum(times) / len(times)
    text_tokens = int(batch["attention_mask"].sum())
    peak = peak_tflops(torch.cuda.get_device_name(0) if cuda else None)
    model_flops = flops["model_flops"] * shape["batch"]
    plan = plan_training_memory(config, precision, LoraSettings(scope="language"), shape["batch"], shape["seq"],
                                gradient_checkpointing=gc_on, compute_dtype=dtype)
    result = {
        "variant": name, "precision": precision, "gradient_checkpointing": gc_on,
        "int8_threshold": threshold if precision == "8bit" else None, "attn_implementation": attn,
        "trainable_params": count_parameters(model)[0],
        "load_s": load_s,
        "footprint_gib": footprint / GIB,
        "planned_load_gib": plan_load_memory(config, precision, DEFAULT_SKIP_MODULES, dtype)["total"] / GIB,
        "gpu_after_load_gib": gpu_after_load,
        "planned_peak_gib": plan["total"] / GIB,
        "peak_train_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
        "step_s": step_s, "text_tokens_per_s": text_tokens / step_s,
        "tflops_per_s": model_flops / step_s / 1e12,
        "mfu": model_flops / step_s / (peak * 1e12) if peak else None,
        "loss_first": losses[0], "loss_last": losses[-1],
        "padding_fraction": 1 - text_tokens / batch["attention_mask"].numel(),
        "vision_runs_without_grad": no_grad_tower,
        "vision_output_requires_grad": seen.get("vision"),
        "projector_output_requires_grad": seen.get("projector"),
        "frozen_vision_params_with_grad": frozen_with_grad,
    }
    del model, optimizer, batch, loss
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def environment() -> dict:
    import bitsandbytes
    import peft
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__, "cuda": torch.version.cuda,
           "gpu": None, "driver": None, "peak_bf16_tflops": None}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["peak_bf16_tflops"] = peak_tflops(env["gpu"])
        try:
            import subprocess

            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return env


def summary(rows: dict[str, dict]) -> dict:
    """The goals: 8-bit peak <= 18 GiB, 8-bit step <= 1.5 x bf16 step; and whether nf4 beats 8-bit."""
    bf16, int8, nf4 = rows["bf16"], rows["8bit t=6.0"], rows["nf4"]
    ratio = int8["step_s"] / bf16["step_s"]
    mem = int8["peak_train_gib"]
    nf4_mem_better = None if mem is None else nf4["peak_train_gib"] < mem
    return {
        "ratio_8bit_t6_over_bf16": ratio,
        "ratio_8bit_t0_over_bf16": rows["8bit t=0.0"]["step_s"] / bf16["step_s"],
        "goal_8bit_peak_le_18gib": None if mem is None else mem <= 18,
        "goal_8bit_ratio_le_1.5": ratio <= 1.5,
        "nf4_beats_8bit_memory_and_speed": None if nf4_mem_better is None
        else nf4_mem_better and nf4["step_s"] < int8["step_s"],
    }


def markdown(results: dict) -> str:
    env, rows = results["environment"], results["variants"]
    cols = ["variant", "load_s", "footprint_gib", "planned_load_gib", "gpu_after_load_gib", "planned_peak_gib",
            "peak_train_gib", "step_s", "text_tokens_per_s", "mfu"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = [f"# Mllama LoRA benchmark ({results['shape']})", "",
             f"Device: {env['gpu'] or 'CPU (no CUDA: GPU metrics n/a)'}; torch {env['torch']}, transformers "
             f"{env['transformers']}, peft {env['peft']}, bitsandbytes {env['bitsandbytes']}.",
             f"Batch {results['batch']} x {results['seq']} text tokens + 1 image (4 tiles); attention: "
             f"{rows[0]['attn_implementation']}; padding fraction {rows[0]['padding_fraction']:.2f}; "
             f"model FLOPs/sample {results['flops_per_sample']['model_flops'] / 1e12:.2f} TFLOP.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", *(f"- {k}: {fmt(v)}" for k, v in results["summary"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="11b")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--weights-dir", default=None, help="where the random checkpoint is saved (11b: ~21 GB)")
    parser.add_argument("--variants", nargs="*", default=None, help="subset of variant names")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    args = parser.parse_args(argv)
    shape = dict(SHAPES[args.shape])
    shape.update({k: getattr(args, k) for k in ("steps", "warmup") if getattr(args, k) is not None})
    if args.shape == "11b" and not torch.cuda.is_available():
        parser.error("--shape 11b needs a CUDA GPU (>= 40 GB); use --shape tiny on CPU")
    config = shape["config"]()
    cuda = torch.cuda.is_available()
    tmp = None
    if args.weights_dir:
        weights_dir = Path(args.weights_dir)
    elif args.shape == "tiny":
        tmp = tempfile.TemporaryDirectory()
        weights_dir = Path(tmp.name)
    else:
        weights_dir = CACHE_DIR / "bench-mllama-11b-random-bf16"
    start = time.perf_counter()
    build_random_checkpoint(config, weights_dir, compute_dtype("bf16" if cuda else "fp32"))
    print(f"random checkpoint in {weights_dir} ({time.perf_counter() - start:.1f} s)")
    flops = model_flops_per_sample(config, shape["seq"], config.vision_config.max_num_tiles)
    print(f"model FLOPs per sample: {flops['model_flops'] / 1e12:.2f} TFLOP "
          f"(hardware, with recompute: {flops['hardware_flops'] / 1e12:.2f})")
    rows = []
    for name, precision, gc_on, threshold in VARIANTS:
        if args.variants and name not in args.variants:
            continue
        r = run_variant(name, precision, gc_on, threshold, weights_dir, config, shape, flops)
        print(f"[{name}] attn={r['attn_implementation']} padding={r['padding_fraction']:.2f} load {r['load_s']:.1f} s, "
              f"footprint {r['footprint_gib']:.3f} GiB (planned {r['planned_load_gib']:.3f}), peak "
              f"{r['peak_train_gib']} GiB (planned {r['planned_peak_gib']:.3f}), step {r['step_s']:.3f} s, "
              f"{r['text_tokens_per_s']:.0f} tok/s, MFU {r['mfu']}; vision output requires grad: "
              f"{r['vision_output_requires_grad']}, frozen params with grad: {r['frozen_vision_params_with_grad']}")
        rows.append(r)
    results = {"shape": args.shape, "batch": shape["batch"], "seq": shape["seq"], "warmup": shape["warmup"],
               "steps": shape["steps"], "environment": environment(), "flops_per_sample": flops, "variants": rows}
    by_name = {r["variant"]: r for r in rows}
    needed = {"bf16", "8bit t=6.0", "8bit t=0.0", "nf4"}
    results["summary"] = summary(by_name) if needed <= set(by_name) else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    if tmp:
        tmp.cleanup()
    return results


if __name__ == "__main__":
    main()
