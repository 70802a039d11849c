"""8-bit LoRA keeps no more activation memory than 16/32-bit LoRA (utils.modeling.free_int8_inputs).

Retention is measured with utils.retention.retained_bytes: the storages made during forward that are still
alive when the loss is there (bitsandbytes' `ctx.tensors` / `ctx.A` plain attributes included).
"""

import pytest
import torch

from utils.batching import Collator
from utils.config import LoraSettings
from utils.lora import add_lora
from utils.modeling import load_model
from utils.retention import retained_bytes
from utils.train import prepare_for_training

from .conftest import sample_rows

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


def lora_model(tiny_dir, precision, free=True):
    model = add_lora(load_model(model_name_or_path=tiny_dir, precision=precision),
                     LoraSettings(r=8, lora_dropout=0.0, target_modules=QKVO + ["gate_proj", "up_proj", "down_proj"]))
    if free:
        prepare_for_training(model, gradient_checkpointing=True)
    else:
        import utils.modeling as modeling

        original, modeling.free_int8_inputs = modeling.free_int8_inputs, lambda m: 0
        try:
            prepare_for_training(model, gradient_checkpointing=True)
        finally:
            modeling.free_int8_inputs = original
    return model.train()


@pytest.fixture(scope="module")
def text_batch(processor):
    rows = sample_rows(processor, 0, 2, 128)
    return next(Collator(processor).batches(rows, 2))


def test_8bit_lora_retains_no_more_than_fp32_lora(tiny_dir, text_batch):
    from utils.tiny import tiny_config

    tokens = text_batch["input_ids"].numel()
    t = tiny_config().text_config
    fp32 = retained_bytes(lora_model(tiny_dir, "fp32"), text_batch)
    stock = retained_bytes(lora_model(tiny_dir, "8bit", free=False), text_batch)
    freed = retained_bytes(lora_model(tiny_dir, "8bit"), text_batch)
    # stock bitsandbytes: every 8-bit linear of the 3 self-attention layers keeps its (fp32 here) input:
    # q/k/v share one, o_proj, gate/up share one, down_proj: (3 x hidden + intermediate) values per token
    kept = 3 * (3 * t.hidden_size + t.intermediate_size) * 4
    assert stock - fp32 == kept * tokens
    assert freed <= fp32, (freed, fp32, stock)


def test_8bit_lora_gradients_equal_the_stock_path(tiny_dir, processor):
    """Same forward (the layer's own) and bitsandbytes' own grad_A formula: the gradients are bitwise equal."""
    rows = sample_rows(processor, 2, 2, 128)
    grads = []
    for free in (False, True):
        torch.manual_seed(0)
        model = lora_model(tiny_dir, "8bit", free=free)
        for batch in Collator(processor).batches(rows, 2):  # an image batch and a text batch
            model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    stock, freed = grads
    assert stock.keys() == freed.keys() and len(stock) > 0
    assert all(torch.equal(stock[k], freed[k]) for k in stock), max((stock[k] - freed[k]).abs().max() for k in stock)


def test_planner_counts_what_stock_bitsandbytes_keeps(tiny_dir, processor):
    """On an image batch (every decoder layer runs, the cross-attention one too) the stock path keeps exactly
    what utils.memory.int8_kept_input_bytes plans; freed, 8-bit keeps no more than fp32."""
    from utils.memory import config_11b, int8_kept_input_bytes, plan_training_memory
    from utils.tiny import tiny_config

    batch = next(Collator(processor).batches(sample_rows(processor, 2, 0, 128), 2))
    tokens = batch["input_ids"].numel()
    fp32 = retained_bytes(lora_model(tiny_dir, "fp32"), batch)
    stock = retained_bytes(lora_model(tiny_dir, "8bit", free=False), batch)
    freed = retained_bytes(lora_model(tiny_dir, "8bit"), batch)
    assert stock - fp32 == int8_kept_input_bytes(tiny_config(), tokens, image=True, compute_dtype=torch.float32)
    assert freed <= fp32
    # the 11B in bf16: 40 layers x (3 x 4096 + 14336) x 2 bytes = 2.13 MB per token; +2.0 GiB at 2 x 512
    per_token = int8_kept_input_bytes(config_11b(), 1)
    assert per_token == 40 * (3 * 4096 + 14336) * 2 and round(per_token / 1e6, 2) == 2.13
    kept = plan_training_memory(config_11b(), "8bit", int8_inputs_kept=True)
    assert kept["total"] - plan_training_memory(config_11b(), "8bit")["total"] == kept["int8_kept_inputs"] == 1024 * per_token
