"""Saving, reloading and merging the LoRA adapter (notebook 05)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict

SEED_STATE_DICT = "lora_adapter_state_dict.pt"


def export_adapter(model, processor, out_dir, train_settings: dict | None = None,
                   lora_settings: dict | None = None) -> dict[str, int]:
    """PEFT adapter files + processor files + the run's settings, and the seed's state-dict file.

    Returns {file name: size in bytes} of everything written.
    """
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
    """Largest absolute difference of the two models' logits on one batch (the reload check)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    a, b = model_a.eval()(**inputs).logits.float(), model_b.eval()(**inputs).logits.float()
    return (a - b).abs().max().item()


def merge_adapter(base_model, adapter_dir, out_dir=None):
    """Fold the adapter into a 16/32-bit base (not a quantized one) and optionally save the result."""
    if any(type(m).__name__ in ("Linear8bitLt", "Linear4bit") for m in base_model.modules()):
        raise ValueError("merge into a 16-bit base: load it with precision='bf16' (or 'fp32' on CPU), not 8bit/4bit")
    merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    if out_dir:
        merged.save_pretrained(out_dir)
    return merged
