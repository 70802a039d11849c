"""The memory planner: exact parameter counts of the 11B shape (meta device) and exact load plans."""

import math

import pytest
import torch

from utils.config import DEFAULT_SKIP_MODULES, LoraSettings
from utils.lora import add_lora, count_parameters, expected_lora_parameters
from utils.memory import (config_11b, measured_quant_state_bytes, memory_plan_rows, meta_model, parameter_groups,
                          plan_load_memory, plan_training_memory)
from utils.modeling import load_model
from utils.tiny import build_tiny_model, tiny_config
from transformers import MllamaConfig

GIB = 2**30


@pytest.fixture(scope="module")
def model_11b():
    return meta_model()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_model().save_pretrained(path)
    return path


def test_meta_model_11b_counts(model_11b):
    groups = parameter_groups(model_11b)
    assert groups["total"] == 10_670_220_835
    assert groups["total"] == sum(p.numel() for p in model_11b.parameters())
    assert groups["embed_tokens"] == 128_264 * 4096 and groups["lm_head"] == 128_256 * 4096
    assert next(model_11b.parameters()).device.type == "meta"
    assert parameter_groups(meta_model(MllamaConfig()))["total"] == 10_642_941_475  # default image_size 448


@pytest.mark.parametrize("scope, expected", [("language", 8_519_680), ("cross_attention", 1_703_936),
                                             ("language_vision", 11_796_480)])
def test_lora_counts_on_meta_11b(scope, expected):
    settings = LoraSettings(scope=scope)
    assert expected_lora_parameters(config_11b(), settings) == expected
    peft_model = add_lora(meta_model(), settings)  # peft works on the meta device
    assert count_parameters(peft_model)[0] == expected


@pytest.mark.parametrize("precision, skip", [("8bit", DEFAULT_SKIP_MODULES), ("4bit", DEFAULT_SKIP_MODULES),
                                             ("fp32", DEFAULT_SKIP_MODULES), ("8bit", ("lm_head",)),
                                             ("4bit", ())])
def test_plan_matches_tiny_model(tiny_dir, precision, skip):
    model = load_model(model_name_or_path=tiny_dir, precision=precision, skip_modules=skip)  # fp32 16-bit parts on CPU
    plan = plan_load_memory(tiny_config(), precision, skip, compute_dtype=torch.float32)
    assert plan["footprint"] == model.get_memory_footprint()
    assert plan["quant_state"] == measured_quant_state_bytes(model)
    assert (plan["quant_state"] > 0) == (precision != "fp32")


def test_plan_11b_ranges(model_11b):
    int8 = plan_load_memory(model_11b, "8bit")["total"] / GIB
    bf16 = plan_load_memory(model_11b, "bf16")["total"] / GIB
    nf4 = plan_load_memory(model_11b, "4bit")["total"] / GIB
    assert 10 <= int8 <= 12 and 19 <= bf16 <= 21 and 7 <= nf4 < int8
    assert math.isclose(bf16, 10_670_220_835 * 2 / GIB, rel_tol=1e-6)
    rows = memory_plan_rows()
    # quantizing the vision tower and projector too saves about 0.8 GiB (docs/facts.md, 8-bit skip modules)
    saved = (rows["int8 (vision 16-bit)"]["total"] - rows["int8 all"]["total"]) / GIB
    assert 0.7 < saved < 0.85


def test_training_plan_11b():
    with_gc = plan_training_memory(config_11b(), "8bit", LoraSettings())
    without = plan_training_memory(config_11b(), "8bit", LoraSettings(), gradient_checkpointing=False)
    assert with_gc["total"] == sum(v for k, v in with_gc.items() if k != "total")
    assert with_gc["optimizer"] == 8 * 8_519_680
    assert with_gc["activations"] < without["activations"]
    assert with_gc["total"] / GIB <= 18  # the 8-bit goal, as planned


def test_plot_memory_plan(tmp_path):
    from utils.plots import plot_memory_plan

    rows = memory_plan_rows()
    fig = plot_memory_plan(rows, save_to=tmp_path / "mem.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(rows)
    assert (tmp_path / "mem.png").stat().st_size > 1000


def test_count_parameters_of_a_4bit_model_counts_the_packed_values():
    # bitsandbytes Params4bit stores two 4-bit values per uint8 byte: numel() is half the weight count
    from utils.tiny import tiny_model_dir

    path = tiny_model_dir()
    fp32 = load_model(model_name_or_path=path, precision="fp32")
    nf4 = load_model(model_name_or_path=path, precision="4bit")
    assert any(type(p).__name__ == "Params4bit" for p in nf4.parameters())
    assert sum(p.numel() for p in nf4.parameters()) < sum(p.numel() for p in fp32.parameters())  # the trap
    base_total = sum(p.numel() for p in fp32.parameters())
    assert count_parameters(nf4)[1] == count_parameters(fp32)[1] == base_total
    settings = LoraSettings()
    trainable, total = count_parameters(add_lora(nf4, settings))
    assert (trainable, total) == count_parameters(add_lora(fp32, settings))
    assert trainable == expected_lora_parameters(tiny_config(), settings) and total == base_total + trainable
