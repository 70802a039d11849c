"""Which profile and weight precision fit this machine, from the memory plan (notebooks' setup, the CLI).

Above utils/memory.py (which it needs) and utils/config.py (the bottom floor, which imports no other utils
module): config -> memory -> config and config -> tiny -> config were import circles while this lived in config.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

import utils.config as config
from utils.config import (LOAD_PRECISIONS, REFERENCE_BATCH_SIZE, REFERENCE_SEQ_LEN, LoraSettings,
                          required_gib)
from utils.i18n import tr


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
        where = (tr("of {gpu:.1f} GiB GPU memory", gpu=self.gpu_gib) if self.gpu_gib > 0
                 else tr("(no CUDA GPU: CPU run)"))
        warn = tr(" - may not fit, expect out-of-memory") if self.fits is False else ""
        return tr("setup: {profile} in {precision} | planned training peak {peak} {where}{warn} | {reason}",
                  profile=self.profile, precision=self.precision, peak=peak, where=where, warn=warn, reason=self.reason)

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
    - the 11B model in 8bit when its plan (~14.6 GiB) plus headroom fits the card (22-24 GB cards
      and up), else in 4bit when that fits (a 15 GB T4: ~10.6 GiB planned), else the tiny profile.
    `gpu_gib` is the card's total memory (default: GPU 0 as measured, 0 without CUDA).
    """
    profile, profile_from = _pick(profile, "LLAMA_VISION_PROFILE", ("tiny", "11b"), "profile")
    precision, precision_from = _pick(precision, "LLAMA_VISION_PRECISION", LOAD_PRECISIONS, "precision")
    gpu = float(config.gpu_memory_gib() if gpu_gib is None else gpu_gib)
    # `reason` is for people (str(setup)): in the notebook's language (utils.i18n)
    notes = [tr("{what} set by {source}", what=what, source=tr("argument") if src == "argument" else src)
             for what, src in (("profile", profile_from), ("precision", precision_from)) if src not in ("auto",)]

    if gpu <= 0:
        profile = "tiny" if profile == "auto" else profile
        precision = "8bit" if precision == "auto" else precision
        reason = tr("no CUDA GPU: the tiny profile runs on CPU") if profile == "tiny" else \
            tr("no CUDA GPU: the 11b profile on CPU will be very slow")
        return Setup(profile, precision, round(planned_peak_gib(profile, precision, False), 4), 0.0,
                     "; ".join(notes + [reason]), None)

    def need(p: str) -> float:
        return required_gib(planned_peak_gib("11b", p))

    if profile == "tiny":
        precision = "8bit" if precision == "auto" else precision
        reason = tr("the tiny profile")
    elif precision == "auto":
        if need("8bit") <= gpu:
            profile, precision = "11b", "8bit"
            reason = tr("8bit needs {gib:.1f} GiB with headroom", gib=need("8bit"))
        elif need("4bit") <= gpu or profile == "11b":
            profile, precision = "11b", "4bit"
            reason = tr("8bit would need {gib8:.1f} GiB with headroom, 4bit {gib4:.1f} GiB", gib8=need("8bit"),
                        gib4=need("4bit"))
        else:
            profile, precision = "tiny", "8bit"
            reason = tr("the 11B model needs {gib:.1f} GiB with headroom even in 4bit: the tiny profile",
                        gib=need("4bit"))
    elif need(precision) <= gpu or profile == "11b":
        profile, reason = "11b", tr("11b in {precision} needs {gib:.1f} GiB with headroom", precision=precision,
                                    gib=need(precision))
    else:
        profile, reason = "tiny", tr("11b in {precision} would need {gib:.1f} GiB with headroom: the tiny profile",
                                     precision=precision, gib=need(precision))
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
    if config.gpu_memory_gib() <= 0:
        return "tiny"
    return choose_setup(profile, precision).profile


def resolve_precision(precision: str | None = None, profile: str | None = None) -> str:
    """A weight precision to load with (one of LOAD_PRECISIONS); None or 'auto' reads
    LLAMA_VISION_PRECISION, then asks `choose_setup` (8bit without a GPU)."""
    chosen, _ = _pick(precision, "LLAMA_VISION_PRECISION", LOAD_PRECISIONS, "precision")
    if chosen != "auto":
        return chosen
    if config.gpu_memory_gib() <= 0:
        return "8bit"
    return choose_setup(profile, precision).precision
