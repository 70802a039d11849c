"""The setup every notebook starts with, in one call (after the Colab install cell):

    cfg, OUT, FIG, setup = setup_notebook(profile, precision, output_dir, "04_training")

prints the library versions and the GPU, picks profile and precision with
`utils.setup.choose_setup` (a precision chosen in notebook 02 is taken from the run config when
the parameter is "auto"), resolves the output folder and returns the notebook's `cfg` (the profile's
defaults, which parameters and widgets change).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from utils.config import profile_defaults
from utils.run_config import read_run_config
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
    print("CUDA:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available (CPU)")


def setup_notebook(profile: str = "auto", precision: str = "auto", output_dir="../outputs", notebook: str = "",
                   versions: bool = True):
    """(cfg, OUT, FIG, setup) for a notebook; prints versions, the setup line and where the precision came from.

    precision "auto" (or None) with LLAMA_VISION_PRECISION unset takes the run config's precision when the
    run config was written for the same profile (notebook 02 writes both), else `choose_setup` decides.
    """
    # On CPU, bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" at every 8-bit matmul: expected.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if versions:
        print_versions()
    OUT = output_path(output_dir)
    FIG = OUT / "figures"
    FIG.mkdir(parents=True, exist_ok=True)
    setup = choose_setup(profile, precision)
    run = read_run_config(OUT)
    env_precision = os.environ.get("LLAMA_VISION_PRECISION", "").strip().lower() not in ("", "auto")
    taken = (str(precision or "auto").lower() == "auto" and not env_precision and run.get("precision")
             and run.get("model") == setup.profile and run["precision"] != setup.precision)
    if taken:
        setup = choose_setup(setup.profile, run["precision"])
    print(setup)  # the decision, the planned training peak next to this GPU's memory
    if taken:
        print(f"precision {setup.precision} <- run config (set by {run.get('_set_by', {}).get('precision', '?')})")
    cfg = {"profile": setup.profile, "precision": setup.precision, "output_dir": str(OUT), "notebook": notebook,
           **profile_defaults(setup.profile)}
    return cfg, OUT, FIG, setup


def in_colab() -> bool:
    return "google.colab" in sys.modules
