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


def test_rerunning_get_peft_model_after_without_lora_does_not_stack_a_second_wrapper(tiny_dir):
    """Notebook 03 reruns `model = without_lora(model); peft_model = get_peft_model(model, config)`: the second run
    must give the same adapter layers (no LoRA inside LoRA) and no "modify a model with PEFT for a second time"."""
    import warnings

    from peft import get_peft_model

    from utils.lora import count_parameters, lora_config, trainable_summary, without_lora

    model = load_model(model_name_or_path=tiny_dir, precision="8bit")
    settings = LoraSettings(r=4, target_modules=["q_proj", "v_proj"])
    assert without_lora(model) is model  # a plain model: unchanged
    config = lora_config(model, settings)
    first = get_peft_model(model, config)
    counts = count_parameters(first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = without_lora(model)  # the base model that get_peft_model changed in place
        assert not hasattr(model, "peft_config")
        again = get_peft_model(model, lora_config(model, settings))
    assert not [w for w in caught if "second time" in str(w.message)], [str(w.message) for w in caught]
    assert count_parameters(again) == counts
    names = [n for n, _ in again.named_modules()]
    assert not any("base_layer.base_layer" in n or n.count("lora_A") > 1 for n in names)
    assert sum(n.endswith("lora_A.default") for n in names) == 8  # q and v of 4 layers, once each
    line = trainable_summary(again)
    assert line.startswith(f"trainable parameters: {counts[0]:,} of {counts[1]:,} (") and line.endswith("%)")
    base = without_lora(again)  # a PeftModel: its base, adapters out
    assert type(base).__name__ == "MllamaForConditionalGeneration"
    assert not any("lora_" in n for n, _ in base.named_modules())


def test_without_lora_does_not_warn_when_get_peft_model_runs_twice_without_it(tiny_dir):
    """The check of the test above can fail: without without_lora, peft warns (and wraps twice)."""
    import warnings

    from peft import get_peft_model

    from utils.lora import lora_config

    model = load_model(model_name_or_path=tiny_dir, precision="8bit")
    settings = LoraSettings(r=2, target_modules=["q_proj"])
    get_peft_model(model, lora_config(model, settings))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(model, lora_config(model, settings))
    assert any("second time" in str(w.message) for w in caught)
