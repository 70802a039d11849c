"""The run config that carries settings from notebook to notebook and to the CLI."""

import pytest

from utils.run_config import KEYS, cli_arguments, read_run_config, update_run_config


def test_notebooks_add_keys_and_record_who_set_them(tmp_path):
    assert read_run_config(tmp_path) == {}
    update_run_config(tmp_path, "01_data_inspection", data_path="my.jsonl", max_seq_length=192)
    update_run_config(tmp_path, "02_load_8bit_and_memory", precision="4bit")
    config = update_run_config(tmp_path, "03_lora_configuration", lora_rank=4, max_seq_length=256)
    assert read_run_config(tmp_path) == config
    assert config["data_path"] == "my.jsonl" and config["precision"] == "4bit" and config["max_seq_length"] == 256
    assert config["_set_by"] == {"data_path": "01_data_inspection", "max_seq_length": "03_lora_configuration",
                                 "precision": "02_load_8bit_and_memory", "lora_rank": "03_lora_configuration"}


def test_unknown_keys_are_refused(tmp_path):
    with pytest.raises(KeyError, match="max_seq_len.*known: data_path"):
        update_run_config(tmp_path, "01", max_seq_len=128)
    assert read_run_config(tmp_path) == {}


def test_keys_are_the_cli_flags(tmp_path):
    import sys

    from .conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    from run_lora_finetune import parse_args

    config = update_run_config(tmp_path, "03", data_path="d.jsonl", target_modules=["q_proj", "v_proj"], lora_rank=4,
                               max_seq_length=128, precision="8bit", model="tiny")
    args = parse_args(cli_arguments(config))
    assert (args.data_path, args.target_modules, args.lora_rank, args.max_seq_length) == ("d.jsonl", "q_proj,v_proj", 4, 128)
    flags = set(vars(parse_args([])))
    assert set(KEYS) <= flags, sorted(set(KEYS) - flags)
