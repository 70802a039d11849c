"""LoRA initialisation (utils.lora.add_lora)."""

import torch

from utils.config import LoraSettings
from utils.lora import add_lora
from utils.modeling import load_model


def test_lora_init_is_seeded_and_leaves_the_global_rng_alone(tiny_dir):
    """Trainer seeds only after the model exists: without a seeded init two runs start from different A matrices."""
    def a_matrices(seed):
        model = add_lora(load_model(model_name_or_path=tiny_dir, precision="fp32"), LoraSettings(), seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, again, other = a_matrices(0), a_matrices(0), a_matrices(1)
    assert torch.rand(1) == expected_next  # add_lora did not move the global generator
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)
