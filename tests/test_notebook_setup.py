"""setup_notebook (the one setup call of every notebook) and run_config.resolve (what a notebook takes from where)."""

import json

from utils.notebook_setup import output_path, setup_notebook
from utils.run_config import lora_from_run_config, lora_to_run_config, resolve, update_run_config


def test_resolve_prefers_the_parameter_then_the_run_config_then_the_default(tmp_path, capsys):
    update_run_config(tmp_path, "01_data_inspection", data_path="mine.jsonl", max_seq_length=160)
    values, sources = resolve(tmp_path, {"data_path": None, "max_seq_length": 96, "lora_rank": None},
                              defaults={"lora_rank": 16, "data_path": "data/x.jsonl"})
    assert values == {"data_path": "mine.jsonl", "max_seq_length": 96, "lora_rank": 16}
    assert sources == {"data_path": "run config (set by 01_data_inspection)", "max_seq_length": "parameter",
                       "lora_rank": "default"}
    printed = capsys.readouterr().out
    assert "data_path" in printed and "<- run config (set by 01_data_inspection)" in printed


def test_lora_settings_round_trip_through_the_run_config_keys():
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"], "scope": "cross_attention"}
    keys = lora_to_run_config(lora)
    assert keys == {"lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
                    "lora_scope": "cross_attention"}
    assert lora_from_run_config(keys, {"r": 16, "bias": "none"}) == {**lora, "bias": "none"}
    assert lora_from_run_config({"target_modules": "q_proj, k_proj"}, {})["target_modules"] == ["q_proj", "k_proj"]


def test_setup_notebook_takes_the_precision_notebook_02_chose(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LLAMA_VISION_PRECISION", raising=False)
    cfg, out, fig, setup = setup_notebook("tiny", "auto", str(tmp_path), "03", versions=False)
    assert (setup.profile, setup.precision, out, fig.is_dir()) == ("tiny", "8bit", tmp_path, True)
    assert cfg["max_seq_length"] and cfg["lora"]["r"]
    update_run_config(tmp_path, "02_load_8bit_and_memory", model="tiny", precision="4bit")
    cfg, _, _, setup = setup_notebook("tiny", "auto", str(tmp_path), "03", versions=False)
    assert setup.precision == cfg["precision"] == "4bit"
    assert "precision 4bit <- run config (set by 02_load_8bit_and_memory)" in capsys.readouterr().out
    assert setup_notebook("tiny", "fp32", str(tmp_path), versions=False)[3].precision == "fp32"  # the parameter wins
    monkeypatch.setenv("LLAMA_VISION_PRECISION", "fp32")
    assert setup_notebook("tiny", "auto", str(tmp_path), versions=False)[3].precision == "fp32"  # so does the env var
    update_run_config(tmp_path, "02", model="11b")  # a run config of another profile is not taken
    monkeypatch.delenv("LLAMA_VISION_PRECISION")
    assert setup_notebook("tiny", "auto", str(tmp_path), versions=False)[3].precision == "8bit"
    assert json.loads((tmp_path / "run_config.json").read_text())["precision"] == "4bit"


def test_relative_output_dir_is_relative_to_the_notebooks_folder(tmp_path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "notebooks").mkdir()
    assert output_path("../outputs", tmp_path / "notebooks") == tmp_path / "outputs"
    assert output_path(str(tmp_path / "abs")) == tmp_path / "abs"


def test_reset_run_config_forgets_what_a_rehearsal_saved(tmp_path, monkeypatch, capsys):
    """Issue 14: a rehearsal's lora_rank=64 and 4-bit precision must not reach the next Run All."""
    monkeypatch.delenv("LLAMA_VISION_PRECISION", raising=False)
    update_run_config(tmp_path, "02_load_8bit_and_memory", model="tiny", precision="4bit")
    update_run_config(tmp_path, "03_lora_configuration", lora_rank=64)
    cfg, _, _, setup = setup_notebook("tiny", "auto", str(tmp_path), "03", versions=False)  # default: kept
    assert setup.precision == "4bit" and json.loads((tmp_path / "run_config.json").read_text())["lora_rank"] == 64
    cfg, _, _, setup = setup_notebook("tiny", "auto", str(tmp_path), "03", versions=False, reset_run_config=True)
    assert setup.precision == "8bit" and not (tmp_path / "run_config.json").exists()
    assert "reset_run_config=True: deleted" in capsys.readouterr().out
    values, sources = resolve(tmp_path, {"lora_rank": None}, defaults={"lora_rank": 16}, show=False)
    assert values == {"lora_rank": 16} and sources == {"lora_rank": "default"}
    setup_notebook("tiny", "auto", str(tmp_path), "03", versions=False, reset_run_config=True)  # nothing to delete
    assert "nothing to delete" in capsys.readouterr().out


def test_describe_prints_the_used_settings_with_their_meaning(capsys):
    from utils.config import profile_defaults
    from utils.modeling import QUANTIZATION_FIELDS, quantization_config
    from utils.notebook_setup import describe

    cfg = {"profile": "tiny", "precision": "8bit", "output_dir": "/x/outputs", **profile_defaults("tiny")}
    cfg["max_seq_length"] = 128
    describe(cfg, ["profile", "max_seq_length", "lora"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "this notebook uses:"
    assert "max_seq_length  128" in out and "longest row in tokens" in out
    assert "256" not in out and "learning_rate" not in out  # only the keys asked for
    assert "r=16, alpha=32 (scale 2)" in out and "{" not in out  # the LoRA dict on one line, no repr
    assert len(lines) <= 6
    describe(quantization_config("8bit"), QUANTIZATION_FIELDS["8bit"], title="BitsAndBytesConfig")
    out = capsys.readouterr().out
    assert "llm_int8_threshold" in out and "6.0" in out and "bnb_4bit" not in out and "_load_in_4bit" not in out
