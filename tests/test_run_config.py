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


def _cli():
    import sys

    from .conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import run_lora_finetune

    return run_lora_finetune


def test_a_notebook_run_config_is_accepted_as_config_and_flags_win(tmp_path):
    cli = _cli()
    update_run_config(tmp_path, "01_data_inspection", data_path="d.jsonl", max_seq_length=192, model="tiny")
    update_run_config(tmp_path, "02_load_8bit_and_memory", precision="8bit")
    update_run_config(tmp_path, "03_lora_configuration", lora_rank=4, target_modules=["q_proj", "v_proj"],
                      lora_scope="cross_attention", lora_dropout=0.1)
    path = str(tmp_path / "run_config.json")  # has "_set_by": ignored
    args = cli.parse_args(["--config", path, "--lora_rank", "2", "--learning_rate", "1e-3"])
    assert (args.data_path, args.max_seq_length, args.model, args.precision) == ("d.jsonl", 192, "tiny", "8bit")
    assert (args.lora_rank, args.target_modules, args.lora_scope, args.lora_dropout) == (2, "q_proj,v_proj",
                                                                                         "cross_attention", 0.1)
    assert args.learning_rate == 1e-3
    # Unset flags: the config's profile (tiny) decides the defaults, not 11b.
    from utils.config import PROFILE_DEFAULTS

    assert args.per_device_train_batch_size == PROFILE_DEFAULTS["tiny"]["per_device_train_batch_size"]
    assert args.per_device_eval_batch_size == args.per_device_train_batch_size
    *_, training = cli.split_arguments(args)
    assert training.learning_rate == 1e-3 and training.remove_unused_columns is False


def test_profile_defaults_fill_unset_flags_and_trainer_flags_work():
    cli = _cli()
    from utils.config import PROFILE_DEFAULTS, TRAIN_DEFAULTS

    for profile in ("tiny", "11b"):
        d = PROFILE_DEFAULTS[profile]
        args = cli.parse_args(["--model", profile])
        assert (args.per_device_train_batch_size, args.max_seq_length, args.learning_rate, args.lora_rank) == (
            d["per_device_train_batch_size"], d["max_seq_length"], d["learning_rate"], d["lora"]["r"])
        assert args.target_modules == ",".join(d["lora"]["target_modules"])
        assert args.warmup_steps == TRAIN_DEFAULTS["warmup_ratio"] and args.max_steps == -1
    args = cli.parse_args(["--model", "tiny", "--per_device_train_batch_size", "3", "--warmup_steps", "7",
                           "--lr_scheduler_type", "cosine", "--report_to", "tensorboard", "--seed", "3",
                           "--save_total_limit", "5", "--no-group_by_length", "--resume"])
    *_, run, training = cli.split_arguments(args)
    assert training.per_device_train_batch_size == 3 and training.warmup_steps == 7
    assert training.lr_scheduler_type == "cosine" and training.report_to == ["tensorboard"]
    assert (training.seed, training.save_total_limit) == (3, 5)
    assert run.group_by_length is False and run.resume is True


def test_config_yaml_and_unknown_keys(tmp_path):
    cli = _cli()
    (tmp_path / "run.yaml").write_text("model: tiny\nlora_alpha: 8\nnum_train_epochs: 1\n")
    args = cli.parse_args(["--config", str(tmp_path / "run.yaml")])
    assert (args.lora_alpha, args.num_train_epochs) == (8, 1)
    (tmp_path / "bad.json").write_text('{"max_seq_len": 3}')
    with pytest.raises(SystemExit, match="unknown key.*max_seq_len"):
        cli.parse_args(["--config", str(tmp_path / "bad.json")])


def test_clear_run_config_forgets_a_rehearsal(tmp_path):
    from utils.run_config import clear_run_config

    assert clear_run_config(tmp_path) is False  # nothing there yet
    update_run_config(tmp_path, "03_lora_configuration", lora_rank=64)
    assert clear_run_config(tmp_path) is True
    assert read_run_config(tmp_path) == {}
    assert not (tmp_path / "run_config.json").exists()
