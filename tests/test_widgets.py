"""Widget panels write into the plain cfg dict; their numbers match a real peft model."""

import pytest

pytest.importorskip("ipywidgets")

from utils.config import LoraSettings, profile_defaults  # noqa: E402
from utils.lora import add_lora, count_parameters  # noqa: E402
from utils.memory import meta_model  # noqa: E402
from utils.tiny import build_tiny_model  # noqa: E402
from utils.widgets import lora_numbers, lora_panel, max_seq_length_slider  # noqa: E402

LENGTHS = [{"prompt": 10, "answer": 5, "total": t, "lang": "en", "has_image": False} for t in (15, 40, 90)]


def test_slider_writes_cfg():
    cfg = {"max_seq_length": 64}
    box = max_seq_length_slider(cfg, LENGTHS, show=False)
    slider = box.children[0]
    assert slider.value == 64  # defaults come from cfg
    slider.value = 32
    assert cfg["max_seq_length"] == 32


def test_lora_panel_writes_cfg_and_updates_numbers():
    cfg = {"lora": profile_defaults("tiny")["lora"]}
    model = build_tiny_model()
    box = lora_panel(cfg, {"tiny": model}, show=False)
    before = box.children[-1].value
    box.controls["r"].value = 4
    box.controls["gate_proj"].value = False
    box.controls["scope"].value = "cross_attention"
    assert cfg["lora"]["r"] == 4 and "gate_proj" not in cfg["lora"]["target_modules"]
    assert cfg["lora"]["scope"] == "cross_attention"
    assert box.children[-1].value != before


def test_lora_numbers_match_peft():
    settings = LoraSettings(r=4, target_modules=["q_proj", "v_proj", "gate_proj"], scope="language")
    model = build_tiny_model()
    predicted = lora_numbers(model, settings)
    trainable, _ = count_parameters(add_lora(model, settings))
    assert predicted["trainable"] == trainable


def test_lora_numbers_11b_meta():
    # r=8 on q,k,v,o of the language model trains 8,519,680 parameters (docs/facts.md)
    numbers = lora_numbers(meta_model(), LoraSettings(r=8, scope="language"))
    assert 8.0e6 < numbers["trainable"] < 9.0e6
