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


def sample_rows(processor, n_image: int, n_text: int, max_seq_length: int) -> list[dict]:
    """The first `n_image` image rows and `n_text` text rows of the sample train set, encoded."""
    from utils.batching import encode_all
    from utils.data import load_examples

    examples = load_examples(REPO / "data" / "construction_train.jsonl")
    picked = [e for e in examples if e.images][:n_image] + [e for e in examples if not e.images][:n_text]
    return encode_all(processor, picked, max_seq_length, verbose=False)
