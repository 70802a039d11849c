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
    before = box.table.value
    box.controls["r"].value = 4
    box.controls["gate_proj"].value = False
    box.controls["scope"].value = "cross_attention"
    assert cfg["lora"]["r"] == 4 and "gate_proj" not in cfg["lora"]["target_modules"]
    assert cfg["lora"]["scope"] == "cross_attention"
    assert box.table.value != before


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


def test_slider_readout_and_on_change():
    cfg, seen = {"max_seq_length": 64}, []
    box = max_seq_length_slider(cfg, LENGTHS, show=False, on_change=seen.append)
    label = box.controls["label"]
    assert "1 of 3 rows" in label.value  # 90 > 64
    box.controls["slider"].value = 32
    assert "2 of 3 rows" in label.value and seen == [32]


def test_lora_panel_on_change_gets_the_settings():
    cfg, seen = {"lora": profile_defaults("tiny")["lora"]}, []
    box = lora_panel(cfg, {"tiny": build_tiny_model()}, show=False, on_change=lambda lora: seen.append(dict(lora)))
    assert seen == []  # building the panel changes nothing
    box.controls["r"].value = 2
    assert seen[-1]["r"] == 2


def test_fit_widget_verdict_follows_the_gpu():
    from utils.widgets import GPUS, fit_check, fit_widget

    cfg = {"precision": "8bit", "per_device_train_batch_size": 2, "max_seq_length": 512, "lora": {"r": 8}}
    box = fit_widget(cfg, show=False)
    c = box.controls
    c["gpu"].value = "A100 80 GB"
    assert cfg["fit_check"]["fits"] and "A100 80 GB: fits" in box.result.value
    c["gpu"].value = "T4 16 GB"
    assert not cfg["fit_check"]["fits"] and "does not fit" in box.result.value
    c["precision"].value = "4bit"  # the rule choose_setup uses: a T4 gets 11B in 4-bit
    assert cfg["fit_check"]["fits"]
    before = cfg["fit_check"]["planned_gib"]
    c["batch_size"].value = 8
    assert cfg["fit_check"]["planned_gib"] > before and cfg["fit_check"]["batch_size"] == 8
    assert set(GPUS) == {"T4 16 GB", "L4 24 GB", "A100 40 GB", "A100 80 GB", "H100 80 GB"}
    from utils.config import REFERENCE_BATCH_SIZE, REFERENCE_SEQ_LEN, required_gib
    from utils.setup import planned_peak_gib

    reference = fit_check("L4 24 GB", "8bit", REFERENCE_BATCH_SIZE, REFERENCE_SEQ_LEN, 4, 8)
    assert reference["planned_gib"] == pytest.approx(planned_peak_gib("11b", "8bit"), abs=0.01)
    assert reference["required_gib"] == pytest.approx(required_gib(reference["planned_gib"]), abs=0.02)


def test_before_after_viewer_shows_the_chosen_row(tmp_path):
    from PIL import Image

    from utils.widgets import before_after_viewer

    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    before = [{"source": "e.jsonl:1", "prompt": "거푸집?", "image": None, "expected": "formwork", "answer": "mold",
               "stopped": True, "exact": False},
              {"source": "e.jsonl:2", "prompt": "What is this?", "image": str(tmp_path / "a.png"), "expected": "rebar",
               "answer": "steel", "stopped": False, "exact": False}]
    after = [{**before[0], "answer": "formwork", "exact": True}, {**before[1], "answer": "rebar", "exact": True}]
    cfg = {}
    box = before_after_viewer(before, after, cfg, show=False)
    answers, image = box.controls["answers"], box.controls["image"]
    assert "formwork" in answers.value and "mold" in answers.value and cfg["shown_row"] == 0
    assert image.layout.display == "none"
    box.controls["row"].value = 1
    assert "steel" in answers.value and "rebar" in answers.value and cfg["shown_row"] == 1
    assert image.layout.display is None and image.value[:4] == b"\x89PNG"


def test_training_panel_writes_cfg_and_calls_back_with_the_four_knobs():
    from utils.widgets import TRAINING_KNOBS, training_panel, training_text

    cfg = {"max_steps": 150, "learning_rate": 5e-3, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}
    seen = []
    box = training_panel(cfg, n_rows=44, show=False, on_change=seen.append)
    assert "150 optimizer steps x 4 rows per step" in box.controls["readout"].value
    assert "13.6 passes over the 44 training rows" in box.controls["readout"].value
    assert not seen  # building the panel writes nothing
    box.controls["max_steps"].value = 40
    box.controls["learning_rate"].value = 1e-3
    box.controls["gradient_accumulation_steps"].value = 2
    assert cfg == {"max_steps": 40, "learning_rate": 1e-3, "per_device_train_batch_size": 4,
                   "gradient_accumulation_steps": 2}
    assert seen[-1] == cfg and set(seen[-1]) == set(TRAINING_KNOBS)
    assert "40 optimizer steps x 8 rows per step" in training_text(cfg)


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny_model()


def test_lora_panel_refuses_targets_that_match_no_layer(tiny_model):
    """Issue 14: fc1 (a vision-tower layer) with scope language matches nothing; notebook 04 would raise
    LoraTargetError. The panel says why and neither cfg nor the run config (on_change) gets the choice."""
    cfg, seen = {"lora": profile_defaults("tiny")["lora"]}, []
    box = lora_panel(cfg, {"tiny": tiny_model, "11B (meta)": meta_model()}, show=False,
                     on_change=lambda lora: seen.append(dict(lora)), rerun="3.3 and 3.4")
    c = box.controls
    c["fc1"].value = True  # q,k,v,o,gate,up,down + fc1: valid, fc1 ignored in this scope
    assert "fc1" in seen[-1]["target_modules"] and "fc1: no such layer" in box.status.value
    assert "rerun 3.3 and 3.4" in box.status.value
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"):
        c[name].value = False
    last_valid = dict(cfg["lora"], target_modules=list(cfg["lora"]["target_modules"]))
    assert last_valid["target_modules"] == ["down_proj", "fc1"]
    n_saved = len(seen)
    c["down_proj"].value = False  # fc1 alone, scope language: nothing to adapt
    assert "lora-refusal" in box.status.value and "match no layer" in box.status.value
    assert "fc1" in box.status.value and "language" in box.status.value
    assert cfg["lora"] == last_valid and len(seen) == n_saved  # nothing written
    c["r"].value = 2  # still refused: the choice as a whole cannot train
    assert cfg["lora"]["r"] == last_valid["r"] and len(seen) == n_saved
    c["scope"].value = "language_vision"  # now fc1 exists: accepted, written
    assert seen[-1]["target_modules"] == ["fc1"] and seen[-1]["scope"] == "language_vision" and seen[-1]["r"] == 2
    assert "lora-refusal" not in box.status.value


def test_lora_panel_refuses_unchecking_every_target(tiny_model):
    cfg, seen = {"lora": dict(profile_defaults("tiny")["lora"], target_modules=["q_proj", "v_proj"])}, []
    box = lora_panel(cfg, {"tiny": tiny_model}, show=False, on_change=lambda lora: seen.append(dict(lora)))
    box.controls["q_proj"].value = False
    assert seen[-1]["target_modules"] == ["v_proj"]
    table = box.table.value
    box.controls["v_proj"].value = False
    assert "no target module is checked" in box.status.value and "lora-refusal" in box.status.value
    assert cfg["lora"]["target_modules"] == ["v_proj"] and len(seen) == 1  # the last valid list, said so
    assert "target_modules=v_proj" in box.status.value
    assert box.table.value == table  # the numbers of what is kept


def test_fit_widget_starts_at_the_11b_reference_plan_not_the_tiny_settings():
    from utils.config import REFERENCE_BATCH_SIZE, REFERENCE_SEQ_LEN
    from utils.setup import planned_peak_gib
    from utils.widgets import fit_widget

    cfg = {"precision": "8bit", **profile_defaults("tiny")}  # batch 4, 256 tokens, r=16 on the tiny profile
    box = fit_widget(cfg, show=False)
    start = cfg["fit_check"]
    assert (start["batch_size"], start["max_seq_length"], start["r"], start["tiles"]) == (
        REFERENCE_BATCH_SIZE, REFERENCE_SEQ_LEN, 8, 4)
    assert start["planned_gib"] == pytest.approx(planned_peak_gib("11b", "8bit"), abs=0.01)  # notebook 02's 2.3
    assert box.controls["batch_size"].value == REFERENCE_BATCH_SIZE and box.controls["r"].value == 8


def test_slider_saves_its_chart_and_names_the_cells_to_rerun(tmp_path):
    cfg = {"max_seq_length": 64}
    box = max_seq_length_slider(cfg, LENGTHS, show=False, save_to=tmp_path / "truncation.png", rerun="1.6 and 1.8")
    assert (tmp_path / "truncation.png").stat().st_size > 1000
    assert "rerun" not in box.controls["label"].value  # nothing changed yet
    before = (tmp_path / "truncation.png").read_bytes()
    box.controls["slider"].value = 32
    assert "rerun 1.6 and 1.8" in box.controls["label"].value and "was 64" in box.controls["label"].value
    assert (tmp_path / "truncation.png").read_bytes() != before  # redrawn at 32
