"""Profiles, precision choices and paths shared by every notebook (taught in notebook 02)."""

from __future__ import annotations

import functools
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
# Weight precisions `load_model` loads; "auto" lets `choose_setup` pick one for the card.
LOAD_PRECISIONS = ("8bit", "4bit", "bf16", "fp16", "fp32")
PRECISIONS = LOAD_PRECISIONS + ("auto",)
# Modules kept in 16-bit when the language model is quantized: bitsandbytes' CPU int8 path
# crashes on the vision tower's 4-D inputs, and quantizing them saves only ~0.8 GiB (docs/facts.md).
DEFAULT_SKIP_MODULES = ("vision_model", "multi_modal_projector", "lm_head")
# Kept for older callers; the 'auto' choice now comes from the memory plan (choose_setup).
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


@dataclass(frozen=True)
class Setup:
    """What `choose_setup` decided: profile, weight precision, the planned training peak and why.

    `fits` is None without a GPU (the plan is about GPU memory), else whether the planned peak plus
    headroom fits `gpu_gib`. `str(setup)` / `setup.describe()` is one line for notebooks and the CLI.
    """

    profile: str
    precision: str
    planned_peak_gib: float
    gpu_gib: float
    reason: str
    fits: bool | None = None

    def describe(self) -> str:
        peak = (f"{self.planned_peak_gib:.1f} GiB" if self.planned_peak_gib >= 0.1
                else f"{self.planned_peak_gib * 1024:.0f} MiB")
        where = f"of {self.gpu_gib:.1f} GiB GPU memory" if self.gpu_gib > 0 else "(no CUDA GPU: CPU run)"
        warn = " - may not fit, expect out-of-memory" if self.fits is False else ""
        return (f"setup: {self.profile} in {self.precision} | planned training peak {peak} {where}"
                f"{warn} | {self.reason}")

    def __str__(self) -> str:
        return self.describe()


def _pick(value: str | None, env_var: str, allowed: tuple[str, ...], what: str) -> tuple[str, str]:
    """(choice, where it came from). None or 'auto' defers to the env var, which defers to 'auto'."""
    if value is not None and str(value).lower() != "auto":
        value = str(value).lower()
        if value not in allowed:
            raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        return value, "argument"
    env = os.environ.get(env_var, "").strip().lower()
    if env and env != "auto":
        if env not in allowed:
            raise ValueError(f"{env_var} must be one of {allowed}, got {env!r}")
        return env, env_var
    return "auto", "auto"


@functools.lru_cache(maxsize=None)
def planned_peak_gib(profile: str, precision: str, on_gpu: bool = True) -> float:
    """Planned training peak (GiB) of `profile` at the reference setup: batch 2 x 512 tokens + 1 image,
    LoRA r=8 on q,k,v,o, gradient checkpointing (utils.memory.plan_training_memory)."""
    from utils.memory import config_11b, plan_training_memory

    if profile == "11b":
        model_config = config_11b()
    else:
        from utils.tiny import tiny_config

        model_config = tiny_config()
    dtype = torch.bfloat16 if on_gpu else torch.float32  # fp16 is the same size as bf16
    plan = plan_training_memory(model_config, precision, LoraSettings(), batch_size=REFERENCE_BATCH_SIZE,
                                seq_len=REFERENCE_SEQ_LEN, image=True, compute_dtype=dtype)
    return plan["total"] / 2**30


def choose_setup(profile: str | None = "auto", precision: str | None = "auto",
                 gpu_gib: float | None = None) -> Setup:
    """Profile and weight precision for this machine, from the memory plan of the reference setup.

    An explicit `profile` ('tiny' | '11b') or `precision` (one of LOAD_PRECISIONS) is kept; None or
    'auto' reads LLAMA_VISION_PROFILE / LLAMA_VISION_PRECISION, and where those are unset or 'auto':
    - no CUDA GPU: the tiny profile in 8bit on CPU (11b in 8bit if asked for);
    - the 11B model in 8bit when its plan (~13.8 GiB) plus headroom fits the card (22-24 GB cards
      and up), else in 4bit when that fits (a 15 GB T4: ~9.8 GiB planned), else the tiny profile.
    `gpu_gib` is the card's total memory (default: GPU 0 as measured, 0 without CUDA).
    """
    profile, profile_from = _pick(profile, "LLAMA_VISION_PROFILE", ("tiny", "11b"), "profile")
    precision, precision_from = _pick(precision, "LLAMA_VISION_PRECISION", LOAD_PRECISIONS, "precision")
    gpu = float(gpu_memory_gib() if gpu_gib is None else gpu_gib)
    notes = [f"{what} set by {src}" for what, src in (("profile", profile_from), ("precision", precision_from))
             if src not in ("auto",)]

    if gpu <= 0:
        profile = "tiny" if profile == "auto" else profile
        precision = "8bit" if precision == "auto" else precision
        reason = "no CUDA GPU: the tiny profile runs on CPU" if profile == "tiny" else \
            "no CUDA GPU: the 11b profile on CPU will be very slow"
        return Setup(profile, precision, round(planned_peak_gib(profile, precision, False), 4), 0.0,
                     "; ".join(notes + [reason]), None)

    def need(p: str) -> float:
        return required_gib(planned_peak_gib("11b", p))

    if profile == "tiny":
        precision = "8bit" if precision == "auto" else precision
        reason = "the tiny profile"
    elif precision == "auto":
        if need("8bit") <= gpu:
            profile, precision = "11b", "8bit"
            reason = f"8bit needs {need('8bit'):.1f} GiB with headroom"
        elif need("4bit") <= gpu or profile == "11b":
            profile, precision = "11b", "4bit"
            reason = f"8bit would need {need('8bit'):.1f} GiB with headroom, 4bit {need('4bit'):.1f} GiB"
        else:
            profile, precision = "tiny", "8bit"
            reason = f"the 11B model needs {need('4bit'):.1f} GiB with headroom even in 4bit: the tiny profile"
    elif need(precision) <= gpu or profile == "11b":
        profile, reason = "11b", f"11b in {precision} needs {need(precision):.1f} GiB with headroom"
    else:
        profile, reason = "tiny", f"11b in {precision} would need {need(precision):.1f} GiB with headroom: the tiny profile"
    peak = planned_peak_gib(profile, precision)
    ok = required_gib(peak) <= gpu
    return Setup(profile, precision, round(peak, 4), gpu, "; ".join(notes + [reason]), ok)


def resolve_profile(profile: str | None = None, precision: str | None = None) -> str:
    """'tiny' or '11b'. `None` or 'auto' reads the env var LLAMA_VISION_PROFILE (default 'auto').

    'auto' follows `choose_setup`: the 11B model when it fits the GPU in the chosen (or given)
    precision, else tiny. Only 'auto' on a GPU needs the memory plan; the rest is decided at once.
    """
    chosen, _ = _pick(profile, "LLAMA_VISION_PROFILE", ("tiny", "11b"), "profile")
    if chosen != "auto":
        return chosen
    if gpu_memory_gib() <= 0:
        return "tiny"
    return choose_setup(profile, precision).profile


def resolve_precision(precision: str | None = None, profile: str | None = None) -> str:
    """A weight precision to load with (one of LOAD_PRECISIONS); None or 'auto' reads
    LLAMA_VISION_PRECISION, then asks `choose_setup` (8bit without a GPU)."""
    chosen, _ = _pick(precision, "LLAMA_VISION_PRECISION", LOAD_PRECISIONS, "precision")
    if chosen != "auto":
        return chosen
    if gpu_memory_gib() <= 0:
        return "8bit"
    return choose_setup(profile, precision).precision


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
    """A copy of PROFILE_DEFAULTS for 'tiny' or '11b' (resolving 'auto')."""
    import copy

    return copy.deepcopy(PROFILE_DEFAULTS[resolve_profile(profile)])
