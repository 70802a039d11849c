"""Profiles, precision choices and the 11B access errors (no network needed)."""

import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from utils.config import compute_dtype, mixed_precision
from utils.modeling import HubAccessError, _hub_errors, get_hf_token, load_model, quantization_config
from utils.setup import resolve_profile


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
    assert int8.llm_int8_threshold == 6.0
    with pytest.warns(UserWarning, match="llm_int8_threshold=0.0"):
        assert quantization_config("8bit", threshold=0.0).llm_int8_threshold == 0.0
    nf4 = quantization_config("4bit")
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4"
    assert quantization_config("bf16") is None
    with pytest.raises(ValueError, match="precision must be one of"):
        quantization_config("int3")


REPO = Path(__file__).resolve().parent.parent


def no_token_anywhere(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads HF_HOME once at import: point its token file at an empty folder
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))


def test_missing_token_gives_the_steps_without_network(monkeypatch, tmp_path):
    no_token_anywhere(monkeypatch, tmp_path)
    assert get_hf_token() is None
    with pytest.raises(HubAccessError, match="HF_TOKEN.*license"):
        load_model("11b", "8bit")


def test_gated_error_is_explained_and_never_shows_the_token(monkeypatch):
    secret = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", secret)
    found = get_hf_token() == secret  # compared, never shown: a failing assert would print the value
    assert found, "get_hf_token() did not return HF_TOKEN"
    err = _hub_errors("meta-llama/Llama-3.2-11B-Vision-Instruct", OSError("401 Client Error: gated repo"))
    assert isinstance(err, HubAccessError)
    leaked = secret in str(err)
    assert "Accept the license" in str(err) and not leaked
    other = OSError("disk full")
    assert _hub_errors("x", other) is other


def test_token_saved_by_hf_auth_login_is_found(tmp_path):
    """`hf auth login` / notebook_login() write $HF_HOME/token; a hand-written env lookup missed it.

    Runs in a fresh interpreter because huggingface_hub reads HF_HOME at import. The token is a fake
    built at runtime, and the child only says whether it matched: it is never printed.
    """
    secret = "hf_" + "x" * 34
    (tmp_path / "token").write_text(secret)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE")}
    env["HF_HOME"] = str(tmp_path)
    check = ("from pathlib import Path; import sys; from utils.modeling import get_hf_token; "
             "sys.exit(0 if get_hf_token() == Path(sys.argv[1]).read_text() else 3)")
    child = subprocess.run([sys.executable, "-c", check, str(tmp_path / "token")], cwd=REPO, env=env,
                           capture_output=True, text=True)
    leaked = secret in child.stdout + child.stderr
    assert not leaked, "the token appeared in the output"
    assert child.returncode == 0, "get_hf_token() did not find $HF_HOME/token (exit %d)" % child.returncode


def test_auto_precision_is_accepted_where_precision_is(monkeypatch):
    import utils.config

    monkeypatch.delenv("LLAMA_VISION_PRECISION", raising=False)
    monkeypatch.setattr(utils.config, "gpu_memory_gib", lambda: 15.0)  # a T4: the plan picks nf4
    assert quantization_config("auto").load_in_4bit
    monkeypatch.setattr(utils.config, "gpu_memory_gib", lambda: 0.0)  # CPU: the tiny model in 8-bit
    assert quantization_config("auto").load_in_8bit


def test_load_model_auto_precision_on_cpu(monkeypatch, tiny_dir):
    import utils.config

    monkeypatch.delenv("LLAMA_VISION_PRECISION", raising=False)
    monkeypatch.setattr(utils.config, "gpu_memory_gib", lambda: 0.0)
    model = load_model(model_name_or_path=tiny_dir, precision="auto")
    assert any(type(m).__name__ == "Linear8bitLt" for m in model.modules())


def test_memory_line_is_one_readable_line(monkeypatch):
    import utils.modeling as modeling

    monkeypatch.setattr(modeling, "memory_readout", lambda model=None: {
        "process_rss_gib": 1.234, "model_footprint_gib": 0.1234, "gpu_allocated_gib": 12.0, "gpu_peak_gib": 15.8,
        "gpu_total_gib": 79.2})
    line = modeling.memory_line(object())
    assert line == ("memory: model 0.12 GiB | process 1.23 GiB of RAM | GPU 12.00 GiB in use, peak 15.80 of 79.2 GiB")
    monkeypatch.setattr(modeling, "memory_readout", lambda model=None: {"process_rss_gib": 2.0})
    assert modeling.memory_line() == "memory: process 2.00 GiB of RAM"


@pytest.mark.parametrize("precision", ["fp16", "8bit"])
def test_fp16_training_keeps_the_vision_tower_and_projector_in_fp32(monkeypatch, tiny_dir, processor, precision):
    """Stand-in for an fp16 card (T4, V100): mixed_precision() says fp16. The vision tower and projector load and
    run in fp32 (also under fp16 autocast, which would otherwise run their matmuls in fp16); the language model
    is fp16 and gets the projector output in fp16."""
    import utils.modeling as modeling
    from transformers import MllamaForConditionalGeneration

    from utils.batching import Collator
    from .conftest import sample_rows

    monkeypatch.setattr(modeling, "mixed_precision", lambda: "fp16")
    model = load_model(model_name_or_path=tiny_dir, precision=precision)
    assert MllamaForConditionalGeneration._keep_in_fp32_modules is None  # the load-time switch is restored
    dtypes = {part: {p.dtype for n, p in model.named_parameters() if f".{part}." in n}
              for part in ("vision_model", "multi_modal_projector", "language_model")}
    assert dtypes["vision_model"] == dtypes["multi_modal_projector"] == {torch.float32}
    assert torch.float16 in dtypes["language_model"] and torch.float32 not in dtypes["language_model"]
    seen = {}
    vision_linear = next(m for n, m in model.model.vision_model.named_modules() if isinstance(m, torch.nn.Linear))

    def record(key, value):
        seen.setdefault(key, value)  # returns None below: a hook that returns a value replaces the output

    vision_linear.register_forward_hook(lambda m, a, out: record("vision", out.dtype))
    model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: record("states", kw["cross_attention_states"].dtype), with_kwargs=True)
    batch = next(Collator(processor).batches(sample_rows(processor, 2, 0, 128), 2))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):  # as Trainer(fp16=True) runs it
        model(**inputs)
    assert seen == {"vision": torch.float32, "states": torch.float16}
    # (bitsandbytes' CPU int8 path gives NaN under CPU fp16 autocast with or without this: checked without it)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == torch.float16 and torch.isfinite(logits.float()).all()


def test_int8_threshold_zero_warns_and_why():
    """bitsandbytes casts the input to fp16 before quantizing it: with threshold 0.0 a bf16 value above fp16's
    65504 makes its row inf/NaN; with 6.0 that column is an outlier kept out of int8 and the row stays finite."""
    import bitsandbytes as bnb

    with pytest.warns(UserWarning, match="65504"):
        assert quantization_config("8bit", threshold=0.0).llm_int8_threshold == 0.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        quantization_config("8bit", threshold=6.0)
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 32)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    x[1, 3] = 70000.0  # representable in bf16, not in fp16
    finite = {}
    for threshold in (0.0, 6.0):
        layer = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False, threshold=threshold)
        layer.load_state_dict(dense.state_dict())
        with torch.no_grad():
            finite[threshold] = torch.isfinite(layer.to(torch.bfloat16).eval()(x).float()).all(dim=1).tolist()
    assert finite == {0.0: [True, False, True, True], 6.0: [True, True, True, True]}


def test_dequantized_weight_is_the_8bit_weight_within_its_rounding(tiny_dir):
    from utils.modeling import dequantized_weight

    fp32 = load_model(model_name_or_path=tiny_dir, precision="fp32")
    int8 = load_model(model_name_or_path=tiny_dir, precision="8bit")
    exact = fp32.model.language_model.layers[0].self_attn.q_proj.weight.detach()
    layer = int8.model.language_model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear8bitLt"
    approx = dequantized_weight(layer)
    step = exact.abs().amax(dim=1, keepdim=True) / 127  # one int8 step per row
    # half a step of rounding, plus the fp16 cast bitsandbytes quantizes from (2**-11 of each value)
    assert approx.shape == exact.shape and ((approx - exact).abs() <= step / 2 + exact.abs() * 2**-10 + 1e-6).all()
    assert not ((approx - exact).abs() <= step / 50).all()  # it is the rounded weight, not the fp32 one
    assert torch.equal(dequantized_weight(fp32.lm_head), fp32.lm_head.weight.float())
    # after a forward pass bitsandbytes keeps the row scales in the layer's state, not on the weight
    with torch.no_grad():
        int8(input_ids=torch.tensor([[1, 2, 3, 4]]))
    assert layer.weight.SCB is None and torch.equal(dequantized_weight(layer), approx)
