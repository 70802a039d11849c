"""Saving, reloading and merging the LoRA adapter (notebook 05)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import AutoProcessor

from utils.batching import to_device

SEED_STATE_DICT = "lora_adapter_state_dict.pt"


def export_adapter(model, processor, out_dir, train_settings: dict | None = None,
                   lora_settings: dict | None = None) -> dict[str, int]:
    """PEFT adapter files + processor files + the run's settings, and the seed's state-dict file.

    Returns {file name: size in bytes} of everything written. Only the main process writes (under
    `accelerate launch` every process holds the same adapter); the others return {}.
    """
    from utils.train import is_main_process

    if not is_main_process():
        return {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # adapter_config.json, adapter_model.safetensors
    processor.save_pretrained(out)
    torch.save(get_peft_model_state_dict(model), out / SEED_STATE_DICT)
    settings = {"train": train_settings or {}, "lora": lora_settings or {}}
    (out / "training_args.json").write_text(json.dumps(settings, indent=1, ensure_ascii=False))
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}


def load_adapter(base_model, adapter_dir) -> PeftModel:
    """A fresh base model with the saved adapter on top, ready for inference."""
    return PeftModel.from_pretrained(base_model, str(adapter_dir)).eval()


@torch.no_grad()
def max_logit_difference(model_a, model_b, batch: dict) -> float:
    """Largest absolute difference of the two models' logits on one batch (the reload check).

    The batch is moved to each model's device (a model on cuda:0 gets no input-moving hooks).
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    a = model_a.eval()(**to_device(inputs, model_a)).logits.float().cpu()
    b = model_b.eval()(**to_device(inputs, model_b)).logits.float().cpu()
    return (a - b).abs().max().item()


@torch.no_grad()
def reload_check(peft_model: PeftModel, adapter_dir, batch: dict, adapter_name: str = "reloaded") -> float:
    """Load the saved adapter onto the same base under a second name and compare logits with the
    active adapter: no second copy of the base model (which would not fit beside an 11B one).

    Returns the largest absolute logit difference; the reloaded adapter is deleted afterwards.
    """
    active = peft_model.active_adapter
    inputs = to_device({k: v for k, v in batch.items() if k != "labels"}, peft_model)
    peft_model.eval()
    trained = peft_model(**inputs).logits.float()
    peft_model.load_adapter(str(adapter_dir), adapter_name=adapter_name)
    try:
        peft_model.set_adapter(adapter_name)
        reloaded = peft_model(**inputs).logits.float()
    finally:
        peft_model.set_adapter(active)
        peft_model.delete_adapter(adapter_name)
    return (trained - reloaded).abs().max().item()


# safetensors builds each shard whole in host RAM before writing it: 2 GB shards keep that small (one 21 GB
# shard of the 11B in bf16 gets a 12.7 GB Colab runtime killed).
MERGE_SHARD_SIZE = "2GB"
MERGE_HEADROOM = 1.15  # the 16-bit copy plus the merge's temporaries (one B·A per layer) and allocator slack


def merge_device(need_bytes: int, gpu_free: int | None = None, host_free: int | None = None) -> tuple[str | None, str]:
    """Where to merge: "cuda" when the GPU's free memory holds the 16-bit base (`need_bytes`, plus 15%), else
    "cpu" when the RAM available does (slower, same result), else None. Returns (device, one line saying why).
    Free memory is read now (torch.cuda.mem_get_info, psutil) unless given; free the 8-bit model first."""
    import psutil

    if gpu_free is None and torch.cuda.is_available():
        gpu_free = torch.cuda.mem_get_info()[0]
    if host_free is None:
        host_free = psutil.virtual_memory().available
    from utils.i18n import tr

    need, gib = need_bytes * MERGE_HEADROOM, 2**30
    gpu = tr("{gib:.1f} GiB free on the GPU", gib=gpu_free / gib) if gpu_free is not None else tr("no GPU")
    have = tr("{gpu}, {gib:.1f} GiB of RAM available", gpu=gpu, gib=host_free / gib)
    if gpu_free is not None and gpu_free >= need:
        return "cuda", tr("merging on the GPU: it needs {need:.1f} GiB ({have})", need=need / gib, have=have)
    if host_free >= need:
        return "cpu", tr("merging on the CPU: it needs {need:.1f} GiB ({have})", need=need / gib, have=have)
    return None, tr("not merging: a 16-bit copy of the base needs {need:.1f} GiB free on the GPU or in RAM, and this "
                    "runtime has {have}. The adapter works unmerged (PeftModel.from_pretrained); to merge, run "
                    "utils.export.merge_adapter on a machine with that much RAM or GPU memory.", need=need / gib, have=have)


def merge_adapter(base_model, adapter_dir, out_dir=None, max_shard_size: str = MERGE_SHARD_SIZE):
    """Fold the adapter into a 16/32-bit base (not a quantized one) and optionally save the result, in
    safetensors shards of at most `max_shard_size`.

    The saved folder also gets the processor files from `adapter_dir`, so it loads on its own with
    AutoProcessor and MllamaForConditionalGeneration.from_pretrained.
    """
    if any(type(m).__name__ in ("Linear8bitLt", "Linear4bit") for m in base_model.modules()):
        raise ValueError("merge into a 16-bit base: load it with precision='bf16' (or 'fp32' on CPU), not 8bit/4bit")
    merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    if out_dir:
        merged.save_pretrained(out_dir, max_shard_size=max_shard_size)
        AutoProcessor.from_pretrained(str(adapter_dir)).save_pretrained(out_dir)
    return merged
