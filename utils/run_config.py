"""One run config that carries a run's settings through notebooks 01 -> 05 and to the command line.

A JSON file, `OUTPUT_DIR/run_config.json`, whose keys are the command-line flags of
scripts/run_lora_finetune.py (the seed's names), so a notebook run can be replayed from the shell:

    python scripts/run_lora_finetune.py --data_path ... --max_seq_length ...   # the same keys

Each notebook writes what it decides (01: data files and max_seq_length, 02: precision, 03: LoRA
settings, 04: the run folder) with `update_run_config`, which also records which notebook set which
key; later notebooks read it with `read_run_config` and print what they took from where.
"""

from __future__ import annotations

import json
from pathlib import Path

from utils.i18n import N_, tr

RUN_CONFIG_NAME = "run_config.json"
# Key -> what it is. Names follow the CLI flags (scripts/run_lora_finetune.py).
KEYS = {
    "data_path": N_("training JSONL (notebooks: train_file)"),
    "eval_data_path": N_("held-out JSONL for the eval loss (notebooks: eval_file)"),
    "model": N_("profile: tiny or 11b"),
    "model_name_or_path": N_("a local folder or Hub id instead of the profile's model"),
    "precision": N_("weights: 8bit, 4bit, bf16, fp16, fp32"),
    "max_seq_length": N_("longest row in tokens; longer prompts lose the middle of the user text"),
    "mask_history": N_("true: train only the last assistant answer of a multi-turn chat (default: every answer)"),
    "lora_rank": "LoRA r", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "target_modules": N_("comma-separated module names, e.g. q_proj,k_proj,v_proj,o_proj"),
    "lora_scope": N_("language, cross_attention or language_vision"),
    "output_dir": N_("the run folder: checkpoints, loss_history.json (local or Google Drive)"),
    "per_device_train_batch_size": N_("rows per device and step"), "gradient_accumulation_steps": N_("steps per update"),
    "num_train_epochs": N_("epochs"), "max_steps": N_("steps (overrides epochs when > 0)"), "learning_rate": N_("peak LR"),
}


def run_config_path(out_dir) -> Path:
    return Path(out_dir) / RUN_CONFIG_NAME


def read_run_config(out_dir) -> dict:
    """The run config of `out_dir` ({} when none was written yet); "_set_by" maps each key to its writer."""
    path = run_config_path(out_dir)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def update_run_config(out_dir, set_by: str, **values) -> dict:
    """Merge `values` into the run config of `out_dir` and record `set_by` (e.g. "01_data_inspection")
    for each key. Unknown keys are refused, so a typo cannot silently not reach training."""
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise KeyError(f"unknown run config key(s) {unknown}; known: {', '.join(KEYS)}")
    config = read_run_config(out_dir)
    config.update(values)
    config.setdefault("_set_by", {}).update({key: set_by for key in values})
    path = run_config_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=1, ensure_ascii=False), encoding="utf-8")
    return config


def clear_run_config(out_dir) -> bool:
    """Delete the run config of `out_dir` (a rehearsal's choices must not reach the next run); True when one
    was there. Used by `setup_notebook(..., reset_run_config=True)` and `scripts/run_notebooks.py --fresh`."""
    path = run_config_path(out_dir)
    if not path.is_file():
        return False
    path.unlink()
    return True


def cli_arguments(config: dict) -> list[str]:
    """The run config as command-line flags for scripts/run_lora_finetune.py."""
    args = []
    for key, value in config.items():
        if key.startswith("_") or value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        args += [f"--{key}", str(value)]
    return args


# ---------------------------------------------------------------- what the notebooks take from it
# LoRA settings as the notebooks keep them (cfg["lora"], utils.config.LoraSettings) <-> run config keys.
LORA_KEYS = {"r": "lora_rank", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
             "target_modules": "target_modules", "scope": "lora_scope"}


def lora_to_run_config(lora: dict) -> dict:
    """cfg["lora"] ({"r": 16, "scope": ...}) as run config keys ({"lora_rank": 16, "lora_scope": ...})."""
    return {key: lora[name] for name, key in LORA_KEYS.items() if name in lora}


def lora_from_run_config(values: dict, defaults: dict) -> dict:
    """cfg["lora"] from run config values (missing or None ones keep `defaults`); target_modules may be
    the CLI's comma-separated string."""
    lora = dict(defaults)
    for name, key in LORA_KEYS.items():
        if values.get(key) is not None:
            value = values[key]
            if name == "target_modules" and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            lora[name] = value
    return lora


def resolve(out_dir, params: dict, defaults: dict | None = None, show: bool = True) -> tuple[dict, dict]:
    """Each key of `params` (run config keys): the notebook's parameter when it is not None, else the run
    config's value, else `defaults[key]`. Returns (values, sources); a source reads "parameter",
    "run config (set by 01_data_inspection)" or "default". Prints one line per key when `show`."""
    config = read_run_config(out_dir)
    set_by = config.get("_set_by", {})
    values, sources = {}, {}
    for key, value in params.items():
        if key not in KEYS:
            raise KeyError(f"unknown run config key {key!r}; known: {', '.join(KEYS)}")
        if value is not None:
            values[key], sources[key] = value, "parameter"
        elif config.get(key) is not None:
            values[key], sources[key] = config[key], f"run config (set by {set_by.get(key, '?')})"
        else:
            values[key], sources[key] = (defaults or {}).get(key), "default"
    if show:
        width = max((len(k) for k in values), default=0)
        for key in values:
            source = sources[key]  # the returned sources stay English; only the printout is translated
            shown = (tr("run config (set by {notebook})", notebook=set_by.get(key, "?")) if source.startswith("run config")
                     else tr("parameter") if source == "parameter" else tr("default"))
            print(f"{key:{width}s} = {values[key]!r:40s} <- {shown}")
    return values, sources
