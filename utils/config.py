"""Profiles, precision choices and paths shared by every notebook (taught in notebook 02)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
CACHE_DIR = Path(os.environ.get("LLAMA_VISION_LORA_CACHE", REPO_ROOT / ".cache"))
OUTPUT_DIR = REPO_ROOT / "outputs"

MODEL_ID_11B = "meta-llama/Llama-3.2-11B-Vision-Instruct"
PROFILES = ("tiny", "11b", "auto")
PRECISIONS = ("8bit", "4bit", "bf16", "fp16", "fp32")
# Modules kept in 16-bit when the language model is quantized (see DESIGN: the CPU int8
# path crashes on the vision tower's 4-D inputs, and quantizing them saves little).
DEFAULT_SKIP_MODULES = ("vision_model", "multi_modal_projector", "lm_head")
# Enough for 8-bit LoRA on the 11B model at the reference setup (weights ~11 GiB + training).
MIN_GPU_GIB_FOR_11B = 22.0
# The released chat template prints today's date; training pins it so token ids are reproducible.
PINNED_DATE = "26 Jul 2024"


def gpu_memory_gib() -> float:
    """Total memory of GPU 0 in GiB, or 0.0 without CUDA."""
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def resolve_profile(profile: str | None = None) -> str:
    """'tiny' or '11b'. `None` reads the env var LLAMA_VISION_PROFILE (default 'auto').

    'auto' picks 11b on a CUDA GPU with at least MIN_GPU_GIB_FOR_11B GiB, else tiny.
    """
    profile = (profile or os.environ.get("LLAMA_VISION_PROFILE") or "auto").lower()
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if profile == "auto":
        return "11b" if gpu_memory_gib() >= MIN_GPU_GIB_FOR_11B else "tiny"
    return profile


def mixed_precision() -> str:
    """The training precision for this hardware: 'bf16' (A100/H100), 'fp16' (T4, V100) or 'fp32' (CPU)."""
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def compute_dtype(precision: str | None = None) -> torch.dtype:
    """dtype of the 16-bit (non-quantized) weights and of autocast for the given training precision."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision or mixed_precision()]


@dataclass
class LoraSettings:
    """The seed's LoRA options plus a scope (see utils.lora.SCOPES)."""

    r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"
    scope: str = "language"

    def to_dict(self) -> dict:
        return asdict(self)


# Per-profile defaults the notebooks and the CLI start from (the parameters cell can override each).
# tiny: small enough for Run All on 2 CPU cores in minutes; 11b: the reference A100 setup.
PROFILE_DEFAULTS = {
    "tiny": {"max_train_rows": 160, "max_eval_rows": 16, "max_seq_length": 256, "per_device_train_batch_size": 4,
             "gradient_accumulation_steps": 1, "max_steps": 80, "num_train_epochs": 3, "learning_rate": 5e-3,
             "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                      "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      "scope": "language"}},
    "11b": {"max_train_rows": None, "max_eval_rows": None, "max_seq_length": 512, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2, "max_steps": -1, "num_train_epochs": 3, "learning_rate": 2e-4,
            "lora": {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "scope": "language"}},
}


def profile_defaults(profile: str) -> dict:
    """A copy of PROFILE_DEFAULTS for 'tiny' or '11b' (resolving 'auto')."""
    import copy

    return copy.deepcopy(PROFILE_DEFAULTS[resolve_profile(profile)])
