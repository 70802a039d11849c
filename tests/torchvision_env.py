"""The Python that runs the tests with torchvision, as on Colab, where this machine's Python has none.

`scripts/setup.sh` builds .cache/torchvision-venv (under CI, or with LLAMA_VISION_TORCHVISION_VENV=1): a virtual
environment with --system-site-packages and a real torch + torchvision pair (PyPI's CUDA build, whose ops run on
the CPU). Its python gets the torchvision Mllama image processor from AutoProcessor. Used by
tests/test_torchvision_backend.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("LLAMA_VISION_LORA_CACHE", REPO / ".cache")) / "torchvision-venv"
EXPECT_VAR = "LLAMA_VISION_EXPECT_TORCHVISION"  # tests/conftest.py then checks the torchvision backend is in use
HOW_TO_INSTALL = (f"torchvision is not importable here and {VENV} is missing: run "
                  "`LLAMA_VISION_TORCHVISION_VENV=1 bash scripts/setup.sh` (a separate virtual environment with "
                  "torch + torchvision, 5.3 GB, for these tests only; .ci/run builds it)")


def torchvision_python() -> tuple[str, dict] | None:
    """(python, environment) for a subprocess that imports a real torchvision (with
    LLAMA_VISION_EXPECT_TORCHVISION=1), or None when neither this Python nor .cache/torchvision-venv has one."""
    env = {**os.environ, EXPECT_VAR: "1", "PYTHONUNBUFFERED": "1"}
    if importlib.util.find_spec("torchvision") is not None:  # installed for real (Colab, a GPU machine)
        return sys.executable, env
    python = VENV / "bin" / "python"
    if not (python.is_file() and list(VENV.glob("lib/python*/site-packages/torchvision/__init__.py"))):
        return None
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return str(python), env
