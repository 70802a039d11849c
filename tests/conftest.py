"""Shared fixtures: the tiny model is built once per test session into the repo's .cache/."""

import os
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")


@pytest.fixture(scope="session")
def tiny_dir():
    from utils.tiny import tiny_model_dir

    return str(tiny_model_dir())


@pytest.fixture(scope="session")
def processor(tiny_dir):
    from utils.modeling import load_processor

    return load_processor(model_name_or_path=tiny_dir)


@pytest.fixture(scope="session", autouse=True)
def expect_torchvision_backend():
    """Set by tests/test_torchvision_backend.py for its rerun of the image_processing tests: the rerun must
    really use the torchvision image processor, not silently fall back to the PIL one."""
    if os.environ.get("LLAMA_VISION_EXPECT_TORCHVISION") != "1":
        return
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    from utils.tiny import tiny_model_dir

    assert is_torchvision_available(), "LLAMA_VISION_EXPECT_TORCHVISION=1 but transformers finds no torchvision"
    image_processor = AutoProcessor.from_pretrained(str(tiny_model_dir())).image_processor
    name = type(image_processor).__name__
    assert not name.endswith("Pil"), f"LLAMA_VISION_EXPECT_TORCHVISION=1 but AutoProcessor gave {name}"
