"""The environment for running Python with torchvision, as on Colab, where this machine has none.

`scripts/setup.sh` installs torchvision's Python code into .cache/torchvision-site/lib (the PyPI build's
compiled ops do not load against the CPU torch) with a sitecustomize.py that makes it importable; a
subprocess with PYTHONPATH on that folder then gets the torchvision Mllama image processor from
AutoProcessor. Used by tests/test_torchvision_backend.py.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("LLAMA_VISION_LORA_CACHE", REPO / ".cache")) / "torchvision-site"
EXPECT_VAR = "LLAMA_VISION_EXPECT_TORCHVISION"  # tests/conftest.py then checks the torchvision backend is in use
HOW_TO_INSTALL = (f"torchvision is not importable here and {SITE} is missing: run `bash scripts/setup.sh` "
                  f"(it installs torchvision's Python code there, for the tests only)")


def torchvision_env() -> dict | None:
    """os.environ plus what a subprocess needs to import torchvision (and LLAMA_VISION_EXPECT_TORCHVISION=1),
    or None when neither this Python nor .cache/torchvision-site has it."""
    env = {**os.environ, EXPECT_VAR: "1", "PYTHONUNBUFFERED": "1"}
    if importlib.util.find_spec("torchvision") is not None:  # installed for real (Colab, a GPU machine)
        return env
    if not ((SITE / "sitecustomize.py").is_file() and (SITE / "lib/torchvision/__init__.py").is_file()):
        return None
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env
