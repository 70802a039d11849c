"""Training precision per GPU generation, and the planner-based choice of profile and weight precision.

No GPU is needed: the CUDA queries are replaced by stand-ins, and `choose_setup` takes the card's
memory as an argument.
"""

import pytest
import torch

import utils.config as config
import utils.setup as setup_choice
from utils.config import PRECISIONS, compute_dtype, mixed_precision
from utils.setup import Setup, choose_setup, resolve_precision, resolve_profile


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    monkeypatch.delenv("LLAMA_VISION_PROFILE", raising=False)
    monkeypatch.delenv("LLAMA_VISION_PRECISION", raising=False)


def fake_gpu(monkeypatch, capability, bf16_supported=True):
    """A stand-in CUDA device: is_bf16_supported() says True even on T4/V100 (it counts emulation)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 0), "fp16"),
                                                  ((8, 0), "bf16"), ((8, 6), "bf16"), ((9, 0), "bf16")])
def test_mixed_precision_uses_bf16_only_from_ampere(monkeypatch, capability, expected):
    fake_gpu(monkeypatch, capability)  # bf16 "supported" everywhere: the emulation must not count
    assert mixed_precision() == expected
    assert compute_dtype() == {"fp16": torch.float16, "bf16": torch.bfloat16}[expected]


def test_mixed_precision_is_fp32_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: pytest.fail("no CUDA to ask"))
    assert mixed_precision() == "fp32" and compute_dtype() == torch.float32


def test_no_gpu_runs_tiny_in_8bit_on_cpu():
    setup = choose_setup("auto", "auto", gpu_gib=0)
    assert (setup.profile, setup.precision, setup.gpu_gib) == ("tiny", "8bit", 0.0)
    # 2 x 512 tokens x 128,256-entry vocabulary: the fp32 logits dominate the tiny model's plan
    assert 1.0 < setup.planned_peak_gib < 2.5
    assert "no CUDA GPU" in setup.reason and "CPU" in str(setup)


def test_t4_gets_11b_in_4bit():
    setup = choose_setup("auto", "auto", gpu_gib=15)
    assert (setup.profile, setup.precision) == ("11b", "4bit")
    assert 10.4 < setup.planned_peak_gib < 10.8  # README: 10.6 GiB for nf4 at the reference setup
    assert setup.fits and "8bit" in setup.reason  # says why not 8-bit


@pytest.mark.parametrize("gpu_gib", [22.5, 24, 40, 80])
def test_bigger_cards_get_11b_in_8bit(gpu_gib):
    setup = choose_setup("auto", "auto", gpu_gib=gpu_gib)
    assert (setup.profile, setup.precision) == ("11b", "8bit")
    assert 14.4 < setup.planned_peak_gib < 14.9 and setup.fits
    assert setup.gpu_gib == gpu_gib


def test_card_too_small_even_for_4bit_falls_back_to_tiny():
    setup = choose_setup("auto", "auto", gpu_gib=8)
    assert setup.profile == "tiny" and "4bit" in setup.reason


def test_headroom_is_applied():
    # The 8-bit plan alone (14.6 GiB) is below 15.5, but the plan leaves out the CUDA context,
    # fragmentation and workspaces: 8-bit is not chosen on a card that only just holds the plan.
    assert choose_setup("auto", "auto", gpu_gib=15.5).precision == "4bit"
    assert config.required_gib(14.65) > 15.5


def test_explicit_choices_override_the_plan():
    assert choose_setup("tiny", "auto", gpu_gib=80).profile == "tiny"
    pinned = choose_setup("auto", "4bit", gpu_gib=80)
    assert (pinned.profile, pinned.precision) == ("11b", "4bit")
    forced = choose_setup("11b", "8bit", gpu_gib=15)  # asked for: honoured, with the warning in the line
    assert (forced.profile, forced.precision, forced.fits) == ("11b", "8bit", False)
    assert "may not fit" in forced.describe()
    assert choose_setup("11b", "auto", gpu_gib=15).precision == "4bit"
    # auto profile with a precision that does not fit the card: the tiny profile, and why
    too_big = choose_setup("auto", "8bit", gpu_gib=15)
    assert too_big.profile == "tiny" and "8bit" in too_big.reason


def test_env_vars_override_auto_but_not_arguments(monkeypatch):
    monkeypatch.setenv("LLAMA_VISION_PROFILE", "tiny")
    monkeypatch.setenv("LLAMA_VISION_PRECISION", "4bit")
    setup = choose_setup(None, None, gpu_gib=80)
    assert (setup.profile, setup.precision) == ("tiny", "4bit")
    assert choose_setup("auto", "auto", gpu_gib=80).profile == "tiny"  # "auto" reads the env var too
    assert "LLAMA_VISION_PROFILE" in setup.reason
    assert choose_setup("11b", "8bit", gpu_gib=80).precision == "8bit"
    monkeypatch.setenv("LLAMA_VISION_PROFILE", "auto")
    assert choose_setup(None, None, gpu_gib=80).profile == "11b"
    monkeypatch.setenv("LLAMA_VISION_PRECISION", "int3")
    with pytest.raises(ValueError, match="LLAMA_VISION_PRECISION"):
        choose_setup(None, None, gpu_gib=80)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="profile must be one of"):
        choose_setup("7b", gpu_gib=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_setup("auto", "int3", gpu_gib=0)


def test_description_is_one_line_with_plan_and_card():
    setup = choose_setup("auto", "auto", gpu_gib=15)
    line = setup.describe()
    assert str(setup) == line and "\n" not in line
    assert "11b" in line and "4bit" in line and "10.6 GiB" in line and "15.0 GiB" in line
    assert isinstance(setup, Setup)


def test_measured_gpu_memory_is_used_when_not_given(monkeypatch):
    monkeypatch.setattr(config, "gpu_memory_gib", lambda: 14.7)
    assert choose_setup().precision == "4bit" and choose_setup().gpu_gib == 14.7
    # resolve_profile delegates: a T4 now trains the 11B model (in 4-bit) instead of the tiny one
    assert resolve_profile("auto") == "11b" and resolve_profile(None) == "11b"
    assert resolve_precision("auto") == "4bit" and resolve_precision("8bit") == "8bit"
    monkeypatch.setattr(config, "gpu_memory_gib", lambda: 0.0)
    assert resolve_profile("auto") == "tiny" and resolve_precision(None) == "8bit"


def test_auto_is_a_precision_choice():
    assert "auto" in PRECISIONS


def test_explicit_or_cpu_choices_do_not_build_the_plan(monkeypatch):
    # resolve_profile runs in every notebook's first cell and in model_source: only 'auto' on a GPU plans
    monkeypatch.setattr(setup_choice, "planned_peak_gib", lambda *a, **k: pytest.fail("planned without need"))
    monkeypatch.setattr(config, "gpu_memory_gib", lambda: 80.0)
    assert resolve_profile("tiny") == "tiny" and resolve_precision("4bit") == "4bit"
    monkeypatch.setenv("LLAMA_VISION_PROFILE", "11b")
    assert resolve_profile("auto") == "11b"
    monkeypatch.delenv("LLAMA_VISION_PROFILE")
    monkeypatch.setattr(config, "gpu_memory_gib", lambda: 0.0)
    assert resolve_profile("auto") == "tiny" and resolve_precision("auto") == "8bit"


def test_config_is_the_bottom_floor():
    """utils/config.py imports no other utils module, not even inside a function (choose_setup used to import
    utils.memory and utils.tiny there, which import config: two circles)."""
    import ast

    tree = ast.parse((config.REPO_ROOT / "utils" / "config.py").read_text())
    imported = [node.module if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [None])]
    assert not [m for m in imported if m and m.split(".")[0] == "utils"], imported
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, utils.config; "
                             "print(sorted(m for m in sys.modules if m.startswith('utils')))"],
                            cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=120).stdout.strip()
    assert loaded == "['utils', 'utils.config']", loaded
