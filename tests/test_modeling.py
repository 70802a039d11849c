"""Profiles, precision choices and the 11B access errors (no network needed)."""

import pytest
import torch

from utils.config import compute_dtype, mixed_precision, resolve_profile
from utils.modeling import HubAccessError, _hub_errors, get_hf_token, load_model, quantization_config


def test_auto_profile_is_tiny_without_a_gpu(monkeypatch):
    monkeypatch.delenv("LLAMA_VISION_PROFILE", raising=False)
    assert resolve_profile("auto") == ("11b" if torch.cuda.is_available() else "tiny")
    monkeypatch.setenv("LLAMA_VISION_PROFILE", "11b")
    assert resolve_profile(None) == "11b"
    with pytest.raises(ValueError, match="profile must be one of"):
        resolve_profile("7b")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU rule")
def test_cpu_trains_in_fp32():
    assert mixed_precision() == "fp32" and compute_dtype() == torch.float32
    assert compute_dtype("bf16") == torch.bfloat16 and compute_dtype("fp16") == torch.float16


def test_quantization_configs():
    int8 = quantization_config("8bit")
    assert int8.load_in_8bit and "model.vision_model" in int8.llm_int8_skip_modules
    assert int8.llm_int8_threshold == 6.0 and quantization_config("8bit", threshold=0.0).llm_int8_threshold == 0.0
    nf4 = quantization_config("4bit")
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4"
    assert quantization_config("bf16") is None
    with pytest.raises(ValueError, match="precision must be one of"):
        quantization_config("int3")


def test_missing_token_gives_the_steps_without_network(monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert get_hf_token() is None
    with pytest.raises(HubAccessError, match="HF_TOKEN.*license"):
        load_model("11b", "8bit")


def test_gated_error_is_explained_and_never_shows_the_token(monkeypatch):
    secret = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", secret)
    assert get_hf_token() == secret
    err = _hub_errors("meta-llama/Llama-3.2-11B-Vision-Instruct", OSError("401 Client Error: gated repo"))
    assert isinstance(err, HubAccessError)
    assert "Accept the license" in str(err) and secret not in str(err)
    other = OSError("disk full")
    assert _hub_errors("x", other) is other
