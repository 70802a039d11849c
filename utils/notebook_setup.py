"""The setup every notebook starts with, in one call (after the Colab install cell):

    cfg, OUT, FIG, setup = setup_notebook(profile, precision, output_dir, "04_training")

prints the library versions and the GPU, picks profile and precision with
`utils.setup.choose_setup` (a precision chosen in notebook 02 is taken from the run config when
the parameter is "auto"), resolves the output folder and returns the notebook's `cfg` (the profile's
defaults, which parameters and widgets change). `reset_run_config=True` first deletes the run config,
so nothing a rehearsal chose (a panel's r, a slider's max_seq_length) reaches this run.

    describe(cfg, ["profile", "precision", "max_seq_length"])

prints the few settings a notebook uses, one line each with what it means (instead of the whole `cfg`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from utils.config import profile_defaults
from utils.i18n import N_, tr
from utils.run_config import KEYS, clear_run_config, read_run_config, run_config_path
from utils.setup import choose_setup


def find_root(start=None) -> Path:
    """The repo root: the first folder upwards from `start` (default: the working directory) holding utils/."""
    root = Path(start or Path.cwd()).resolve()
    while not (root / "utils").is_dir() and root != root.parent:
        root = root.parent
    return root


def output_path(output_dir, root=None) -> Path:
    """`output_dir` as an absolute path; a relative one is relative to ROOT/notebooks (the notebooks' folder)."""
    path = Path(output_dir)
    return path if path.is_absolute() else (find_root(root) / "notebooks" / path).resolve()


def print_versions() -> None:
    import bitsandbytes
    import peft
    import torch
    import transformers

    for lib in (torch, transformers, peft, bitsandbytes):
        print(f"{lib.__name__:13s} {lib.__version__}")
    print("CUDA:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else tr("not available (CPU)"))


def setup_notebook(profile: str = "auto", precision: str = "auto", output_dir="../outputs", notebook: str = "",
                   versions: bool = True, reset_run_config: bool = False, lang: str = "en"):
    """(cfg, OUT, FIG, setup) for a notebook; prints versions, the setup line and where the precision came from.

    precision "auto" (or None) with LLAMA_VISION_PRECISION unset takes the run config's precision when the
    run config was written for the same profile (notebook 02 writes both), else `choose_setup` decides.
    `reset_run_config=True` deletes OUT/run_config.json first (and says so): every setting then comes from the
    parameters and the profile defaults, as in a fresh clone. `lang` ("en" or "ko") is the language utils/ prints
    and draws in from here on (utils.i18n).
    """
    from utils.i18n import set_language

    set_language(lang)
    # On CPU, bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" at every 8-bit matmul: expected.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # peft's get_peft_model asks transformers 5 for is_gradient_checkpointing, which warns about its new name
    # (is_activation_checkpointing) at every call: not something a learner can act on.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
    if versions:
        print_versions()
    OUT = output_path(output_dir)
    FIG = OUT / "figures"
    FIG.mkdir(parents=True, exist_ok=True)
    if reset_run_config:
        path = run_config_path(OUT)
        if clear_run_config(OUT):
            print(tr("reset_run_config=True: deleted {path}; the choices of earlier runs (data files, "
                     "max_seq_length, precision, LoRA) are forgotten", path=path))
        else:
            print(tr("reset_run_config=True: nothing to delete ({path} does not exist yet)", path=path))
    setup = choose_setup(profile, precision)
    run = read_run_config(OUT)
    env_precision = os.environ.get("LLAMA_VISION_PRECISION", "").strip().lower() not in ("", "auto")
    taken = (str(precision or "auto").lower() == "auto" and not env_precision and run.get("precision")
             and run.get("model") == setup.profile and run["precision"] != setup.precision)
    if taken:
        setup = choose_setup(setup.profile, run["precision"])
    print(setup)  # the decision, the planned training peak next to this GPU's memory
    if taken:
        print(tr("precision {precision} <- run config (set by {notebook})", precision=setup.precision,
                 notebook=run.get("_set_by", {}).get("precision", "?")))
    cfg = {"profile": setup.profile, "precision": setup.precision, "output_dir": str(OUT), "notebook": notebook,
           "lang": lang, **profile_defaults(setup.profile)}
    return cfg, OUT, FIG, setup


# What each setting means, for describe(): cfg's keys, LoraConfig's and BitsAndBytesConfig's fields, and the
# run config's keys (utils.run_config.KEYS).
MEANINGS = {**KEYS,
    "profile": N_("the model: tiny (offline, CPU) or 11b (meta-llama/Llama-3.2-11B-Vision-Instruct)"),
    "precision": N_("the base weights: 8bit (LLM.int8), 4bit (nf4), bf16 or fp32"),
    "output_dir": N_("every notebook reads and writes here"),
    "max_seq_length": N_("longest row in tokens (prompt + answer); longer prompts are shortened"),
    "per_device_train_batch_size": N_("rows per training step"),
    "gradient_accumulation_steps": N_("steps summed into one optimizer update"),
    "max_steps": N_("optimizer updates in training (-1: whole epochs)"),
    "num_train_epochs": N_("passes over the training rows (when max_steps is -1)"),
    "learning_rate": N_("peak learning rate of the adapter"),
    "max_train_rows": N_("training rows used (None: all)"),
    "max_eval_rows": N_("held-out rows for the eval loss (None: all)"),
    "lora": N_("LoRA: rank r, alpha (the update is scaled by alpha / r), dropout, target modules, scope"),
    "r": N_("LoRA rank: A is r x in_features, B is out_features x r"),
    "lora_alpha": N_("the update B·A is scaled by lora_alpha / r"),
    "lora_dropout": N_("dropout on the adapter's input"),
    "target_modules": N_("the Linear layers that get adapters (short names; in LoraConfig a regex over full names)"),
    "bias": N_("base biases stay frozen (none)"),
    "task_type": N_("the loss: next-token prediction on the language model's output"),
    "load_in_8bit": N_("LLM.int8: Linear weights in int8, one scale per output row"),
    "load_in_4bit": N_("nf4: Linear weights in 4 bits, one scale per block"),
    "llm_int8_threshold": N_("input columns with any |x| above this are multiplied in 16-bit (the outliers)"),
    "llm_int8_skip_modules": N_("kept in 16-bit (each name in both forms: transformers 5 matches from the start)"),
    "bnb_4bit_quant_type": N_("the 4-bit number format"),
    "bnb_4bit_use_double_quant": N_("the block scales are quantized too"),
    "bnb_4bit_compute_dtype": N_("4-bit weights are unpacked to this dtype for each matmul"),
}


def _shown(value) -> str:
    """A value as a person reads it: lists comma-joined, a LoRA dict on one line, floats without trailing noise."""
    if isinstance(value, dict) and "r" in value and "target_modules" in value:
        return tr("r={r}, alpha={alpha} (scale {scale:g}), dropout {dropout:g}, on {targets} in scope {scope}",
                  r=value["r"], alpha=value.get("lora_alpha"), scale=value.get("lora_alpha", 0) / value["r"],
                  dropout=value.get("lora_dropout", 0), targets=",".join(value["target_modules"]),
                  scope=value.get("scope", "language"))
    if isinstance(value, (list, tuple, set)):
        return ", ".join(map(str, value))
    return str(getattr(value, "value", value))  # enums (peft's TaskType) by their value


def describe(settings, keys, title: str | None = N_("this notebook uses")) -> None:
    """Print `keys` of `settings` (a dict such as cfg, or a config object such as LoraConfig or
    BitsAndBytesConfig: its attributes), one line each: name, value and what it means (MEANINGS).
    A readable stand-in for showing a whole dict or a 45-field repr. Used by every notebook after setup."""
    def get(key):
        return settings[key] if isinstance(settings, dict) else getattr(settings, key)

    rows = [(key, _shown(get(key)), tr(MEANINGS.get(key, ""))) for key in keys]
    width = max((len(k) for k, _, _ in rows), default=0)
    value_width = max((len(v) for _, v, _ in rows if len(v) <= 40), default=0)
    lines = [f"{tr(title)}:"] if title else []
    for key, value, meaning in rows:
        if len(value) > value_width and meaning:  # a long value (a path, a module list): its meaning below it
            lines += [f"  {key:{width}s}  {value}", f"  {'':{width}s}  {'':{value_width}s}  {meaning}"]
        else:
            lines.append(f"  {key:{width}s}  {value:{value_width}s}  {meaning}".rstrip())
    print("\n".join(lines))


def in_colab() -> bool:
    return "google.colab" in sys.modules
