"""Profiles, precision choices and paths shared by every notebook (taught in notebook 02).

The bottom floor of utils/: it imports no other utils module. What needs the memory plan (choose_setup and the
'auto' profile / precision) lives in utils/setup.py, above utils/memory.py."""

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
# Weight precisions `load_model` loads; "auto" lets `utils.setup.choose_setup` pick one for the card.
LOAD_PRECISIONS = ("8bit", "4bit", "bf16", "fp16", "fp32")
PRECISIONS = LOAD_PRECISIONS + ("auto",)
# Modules kept in 16-bit when the language model is quantized: bitsandbytes' CPU int8 path
# crashes on the vision tower's 4-D inputs, and quantizing them saves only ~0.8 GiB (docs/facts.md).
DEFAULT_SKIP_MODULES = ("vision_model", "multi_modal_projector", "lm_head")
# Kept for older callers; the 'auto' choice now comes from the memory plan (utils.setup.choose_setup).
MIN_GPU_GIB_FOR_11B = 22.0
# The plan leaves out the CUDA context (~0.5 GiB), allocator fragmentation, cuBLAS workspaces and
# the transient peak inside the no-grad vision tower: a precision is chosen only when
# plan * (1 + HEADROOM_FRACTION) + HEADROOM_GIB fits the card.
HEADROOM_GIB = 1.0
HEADROOM_FRACTION = 0.10
# The reference setup the plan is made for (PROFILE_DEFAULTS["11b"], LoraSettings() defaults).
REFERENCE_BATCH_SIZE, REFERENCE_SEQ_LEN = 2, 512
# The released chat template prints today's date; training pins it so token ids are reproducible.
PINNED_DATE = "26 Jul 2024"


# Per-profile defaults the notebooks and the CLI start from (the parameters cell or a flag can override each).
# This is the one place these values live: LoraSettings() and utils.train.TrainSettings() take their defaults from
# the 11b profile, and scripts/run_lora_finetune.py fills unset flags from the chosen profile.
# 11b: the reference A100 setup on the whole sample set (494 rows).
# tiny: the recipe that lets a 4-layer, 128-wide model visibly learn in about two minutes on 2 CPU cores:
#   - data: the workshop set (data/construction_tiny_*.jsonl, made by data/build_dataset.py): both translation
#     directions of 20 glossary terms plus 4 sign rows. Short answers (1-5 tokens) are what such a model can learn
#     by heart in a few hundred steps; a one-sentence definition (15-25 tokens) is not (measured: 25% exact after
#     150 steps on mixed rows, against 94% on translations alone).
#   - 250 steps at batch 4 (about 23 passes over the 44 rows), learning rate 5e-3 with a linear decay: 25x the
#     11B's 2e-4, because a random-init 128-wide model with r=16 needs large steps to move in 250 of them; 1e-2
#     diverged (loss back to 7), and a constant 5e-3 ended noisier than the decay.
#   - r=16 (an eighth of the width), alpha=32, no dropout, on every Linear of the text decoder (attention and MLP).
PROFILE_DEFAULTS = {
    "tiny": {"data_path": "data/construction_tiny_train.jsonl", "eval_data_path": "data/construction_tiny_eval.jsonl",
             "max_train_rows": 160, "max_eval_rows": 24, "max_seq_length": 128, "per_device_train_batch_size": 4,
             "gradient_accumulation_steps": 1, "max_steps": 250, "num_train_epochs": 3, "learning_rate": 5e-3,
             "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                      "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      "scope": "language"}},
    "11b": {"data_path": "data/construction_train.jsonl", "eval_data_path": "data/construction_eval.jsonl",
            "max_train_rows": None, "max_eval_rows": None, "max_seq_length": 512, "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 2, "max_steps": -1, "num_train_epochs": 3, "learning_rate": 2e-4,
            "lora": {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "scope": "language"}},
}
# Training defaults shared by both profiles (TrainSettings and the CLI). The CLI leaves max_steps at -1
# (epochs decide) whatever the profile; notebooks take the profile's max_steps.
TRAIN_DEFAULTS = {"max_steps": -1, "warmup_ratio": 0.03, "lr_scheduler_type": "linear", "logging_steps": 10,
                  "eval_on_start": True,
                  "eval_steps": 50, "save_steps": 50, "save_total_limit": 2, "seed": 42,
                  "gradient_checkpointing": True, "group_by_length": True}
_LORA_11B = PROFILE_DEFAULTS["11b"]["lora"]


@dataclass
class LoraSettings:
    """The seed's LoRA options plus a scope (see utils.lora.SCOPES); defaults: the 11b profile's."""

    r: int = _LORA_11B["r"]
    lora_alpha: int = _LORA_11B["lora_alpha"]
    lora_dropout: float = _LORA_11B["lora_dropout"]
    target_modules: list[str] = field(default_factory=lambda: list(_LORA_11B["target_modules"]))
    bias: str = "none"
    scope: str = _LORA_11B["scope"]

    def to_dict(self) -> dict:
        return asdict(self)



def gpu_memory_gib() -> float:
    """Total memory of GPU 0 in GiB, or 0.0 without CUDA."""
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def required_gib(planned_gib: float) -> float:
    """GPU memory needed for a planned training peak, headroom included."""
    return planned_gib * (1 + HEADROOM_FRACTION) + HEADROOM_GIB


def mixed_precision() -> str:
    """The training precision for this hardware: 'bf16' (compute capability 8.0+: A100, L4, H100),
    'fp16' with loss scaling (T4, V100: `torch.cuda.is_bf16_supported()` is True there too, but it
    counts emulation) or 'fp32' (CPU)."""
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if tuple(torch.cuda.get_device_capability(0)) >= (8, 0) else "fp16"


def compute_dtype(precision: str | None = None) -> torch.dtype:
    """dtype of the 16-bit (non-quantized) weights and of autocast for the given training precision
    ('bf16' | 'fp16' | 'fp32'; None or 'auto': `mixed_precision()`)."""
    if precision in (None, "auto"):
        precision = mixed_precision()
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def profile_defaults(profile: str) -> dict:
    """A copy of PROFILE_DEFAULTS for 'tiny' or '11b' ('auto' is decided first: utils.setup.resolve_profile)."""
    import copy

    if profile not in PROFILE_DEFAULTS:
        raise ValueError(f"profile_defaults takes 'tiny' or '11b' (resolve 'auto' with utils.setup.resolve_profile), "
                         f"got {profile!r}")
    return copy.deepcopy(PROFILE_DEFAULTS[profile])
