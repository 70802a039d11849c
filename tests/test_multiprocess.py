"""Data-parallel LoRA on 2 CPU processes (gloo) with the tiny profile, and the shipped accelerate configs.

`accelerate launch --cpu` starts a single process (multi-CPU needs MPI), so the test launches with
`accelerate launch --multi_gpu --num_processes 2`, which runs torchrun; without CUDA the script asks for
gloo (utils.train.cli_training_defaults: use_cpu). The base is 8-bit, as on a GPU: bitsandbytes' CPU int8
path works under DDP/gloo here.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from unittest import mock

import pytest
import torch

from .conftest import REPO

# Text-only rows: every batch has the same modality, and the global batches are the same whatever the
# number of processes (utils.batching.shard_batches), so 2 x batch 2 must equal 1 x batch 4.
COMMON = ["--model", "tiny", "--precision", "8bit", "--gradient_accumulation_steps", "1", "--max_steps", "3",
          "--logging_steps", "1", "--eval_strategy", "no", "--lora_dropout", "0", "--save_steps", "2",
          "--max_seq_length", "128", "--warmup_steps", "0", "--learning_rate", "1e-3"]
LOSS_TOLERANCE = 1e-4  # relative; measured: 1e-7 (fp32 and 8-bit alike: only the reduction order differs)
WEIGHT_TOLERANCE = 1e-5  # absolute, on weights of ~0.09; measured: 2e-7


def text_rows(path, n=24, skip=0):
    lines = (REPO / "data" / "construction_train.jsonl").read_text(encoding="utf-8").splitlines()
    text = [line for line in lines if '"image"' not in line][skip:skip + n]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def run(cmd, out, timeout=400):
    """Run a CLI command under a timeout: a data-parallel hang fails the test instead of stopping the suite."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(cmd + ["--output_dir", str(out)], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"no exit within {timeout} s (processes waiting on each other?): "
                    f"{(err.stdout or b'')[-2000:]!r} {(err.stderr or b'')[-3000:]!r}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


LAUNCH_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def test_two_processes_match_one_process_with_twice_the_batch(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    data = text_rows(tmp_path / "text.jsonl")
    script = ["scripts/run_lora_finetune.py", "--data_path", str(data), *COMMON]
    one = run([sys.executable, *script, "--per_device_train_batch_size", "4"], tmp_path / "one")
    two = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *script,
               "--per_device_train_batch_size", "2"], tmp_path / "two")
    assert "data-parallel: 2 processes, per-device batch 2, global batch 4" in two.stdout
    assert "adapter weights identical on all 2 processes: True" in two.stdout
    assert two.stdout.count("done: 3 steps") == 1  # only the main process prints the summary

    losses = [json.loads((tmp_path / name / "loss_history.json").read_text())["train"] for name in ("one", "two")]
    assert [s for s, _ in losses[0]] == [s for s, _ in losses[1]] == [1, 2, 3]
    for (_, a), (_, b) in zip(*losses):
        assert abs(a - b) <= LOSS_TOLERANCE * abs(a), losses
    a, b = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_TOLERANCE
    assert any(v.abs().max() > 0 for k, v in b.items() if "lora_B" in k)  # it did train

    # Exactly one adapter written (by the main process), in output_dir; checkpoints beside it.
    out = tmp_path / "two"
    adapters = [p.parent for p in out.rglob("adapter_config.json") if not p.parent.name.startswith("checkpoint-")]
    assert adapters == [out]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]  # + the last step
    assert (out / "lora_adapter_state_dict.pt").is_file() and (out / "training_args.bin").is_file()

    # Resume from the same checkpoints on 2 processes: steps 3.. again from checkpoint-2, same adapter.
    (out / "adapter_model.safetensors").unlink()
    shutil.rmtree(out / "checkpoint-3")
    resumed = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *script,
                   "--per_device_train_batch_size", "2", "--resume"], out)
    assert "resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    c = load_file(out / "adapter_model.safetensors")
    assert max((b[k] - c[k]).abs().max().item() for k in b) < WEIGHT_TOLERANCE


def test_uneven_sizes_do_not_hang_and_two_processes_match_one(tiny_dir, tmp_path):
    """6 eval rows at batch 2 on 2 processes hung before (accelerate gave one process an eval batch fewer, and
    Trainer gathers on every eval batch). 18 train rows at global batch 4: the last step has 2 rows, so process 1
    gets only duplicates (no labels). Losses, eval loss and adapter equal the 1-process run with batch 4."""
    from safetensors.torch import load_file

    train = text_rows(tmp_path / "train.jsonl", 18)
    evaluation = text_rows(tmp_path / "eval.jsonl", 6, skip=18)
    script = ["scripts/run_lora_finetune.py", "--data_path", str(train), "--eval_data_path", str(evaluation), *COMMON,
              "--max_steps", "5", "--eval_strategy", "steps", "--eval_steps", "5", "--save_steps", "100"]
    run([sys.executable, *script, "--per_device_train_batch_size", "4"], tmp_path / "one")
    two = run([*LAUNCH_2, *script, "--per_device_train_batch_size", "2"], tmp_path / "two", timeout=300)
    assert "adapter weights identical on all 2 processes: True" in two.stdout
    hist = [json.loads((tmp_path / name / "loss_history.json").read_text()) for name in ("one", "two")]
    assert [s for s, _ in hist[0]["train"]] == [s for s, _ in hist[1]["train"]] == [1, 2, 3, 4, 5]  # one epoch
    for (_, a), (_, b) in zip(hist[0]["train"], hist[1]["train"]):
        assert math.isfinite(b) and abs(a - b) <= LOSS_TOLERANCE * abs(a), hist
    # eval_on_start (the CLI's default) and the last step: both points agree
    assert [s for s, _ in hist[0]["eval"]] == [s for s, _ in hist[1]["eval"]] == [0, 5]
    for (_, eval_one), (_, eval_two) in zip(hist[0]["eval"], hist[1]["eval"]):
        assert math.isfinite(eval_two) and abs(eval_one - eval_two) <= LOSS_TOLERANCE * eval_one, hist
    a, b = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two"))
    # After 5 Adam steps a weight whose gradient is near zero turns reduction-order noise into an update
    # difference (Adam divides by sqrt(v)); measured on this 2-core CPU: 2 of ~90k values above 1e-5, max 3.4e-5.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 0.1 * 1e-3  # a tenth of one step at lr 1e-3
    assert sum((a[k] - b[k]).abs().gt(WEIGHT_TOLERANCE).sum().item() for k in a) <= 10


def launch_env(config: str) -> dict:
    """The environment `accelerate launch --config_file CONFIG` gives the script (validated as launch does)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(REPO / config), "scripts/run_lora_finetune.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", ["ddp_8bit", "ddp_4bit", "fsdp_qlora_4bit"])
def test_accelerate_configs_parse_and_validate(name):
    """FSDP cannot run on CPU (accelerate's FSDP plugin requires a GPU), so the configs are checked as far as
    launch goes without one: parsed, validated, turned into the launch environment."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    env = launch_env(f"configs/accelerate/{name}.yaml")
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # the script picks bf16/fp16 (utils.config.mixed_precision)
    if name.startswith("ddp"):
        assert str(config.distributed_type) == "DistributedType.MULTI_GPU" and "ACCELERATE_USE_FSDP" not in env
        return
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    import transformers.models.mllama.modeling_mllama as mllama

    for cls in env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(","):
        assert hasattr(mllama, cls), cls
    from utils.config import compute_dtype
    from utils.modeling import device_map, quantization_config, uses_fsdp

    with mock.patch.dict(os.environ, env):
        assert uses_fsdp() and device_map() is None  # FSDP places the shards itself
        assert quantization_config("4bit").bnb_4bit_quant_storage == compute_dtype()
    assert quantization_config("4bit", fsdp=False).bnb_4bit_quant_storage == torch.uint8  # the default


def test_fsdp_refuses_8bit(tmp_path):
    env = {**os.environ, **launch_env("configs/accelerate/fsdp_qlora_4bit.yaml")}
    done = subprocess.run([sys.executable, "scripts/run_lora_finetune.py", "--model", "tiny", "--precision", "8bit",
                           "--output_dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")})
    assert done.returncode == 2 and "FSDP cannot shard 8-bit" in done.stderr
