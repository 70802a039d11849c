"""Shared fixtures: the tiny model is built once per test session into the repo's .cache/."""

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
