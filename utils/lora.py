"""Where LoRA adapters attach in Mllama, and how many parameters they train (notebook 03)."""

from __future__ import annotations

import math
import re

import torch
from peft import LoraConfig, get_peft_model

from utils.config import LoraSettings
from utils.i18n import tr

# Scope -> regex over full module names (peft accepts a regex string as target_modules).
SCOPES = {
    "language": r".*language_model\.layers\.\d+\.(?:self_attn|cross_attn|mlp)\.({names})",
    "cross_attention": r".*language_model\.layers\.\d+\.cross_attn\.({names})",
    "language_vision": r".*(?:language_model|vision_model)\..*\.({names})",
}


class LoraTargetError(ValueError):
    """The target modules match nothing in this model."""


def target_regex(target_modules, scope: str = "language") -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {sorted(SCOPES)}, got {scope!r}")
    names = "|".join(re.escape(n) for n in target_modules)
    return SCOPES[scope].format(names=names)


def linear_module_names(model) -> list[str]:
    """Short names of Linear-like leaf modules (q_proj, fc1, ...): what target_modules can name."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) or type(m).__name__ in ("Linear8bitLt", "Linear4bit")})


def matching_modules(model, settings: LoraSettings) -> list[str]:
    """Full names of the modules that would receive adapters."""
    pattern = re.compile(target_regex(settings.target_modules, settings.scope))
    linear = set(linear_module_names(model))
    return [name for name, _ in model.named_modules()
            if pattern.fullmatch(name) and name.rsplit(".", 1)[-1] in linear]


def lora_config(model, settings: LoraSettings) -> LoraConfig:
    """A peft LoraConfig for `settings`; a clear error listing module names when nothing matches."""
    if not matching_modules(model, settings):
        raise LoraTargetError(
            f"target_modules={list(settings.target_modules)} with scope={settings.scope!r} match no module. "
            f"Linear modules in this model: {', '.join(linear_module_names(model))}. "
            f"Scopes: {', '.join(SCOPES)}."
        )
    return LoraConfig(r=settings.r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      bias=settings.bias, target_modules=target_regex(settings.target_modules, settings.scope),
                      task_type="CAUSAL_LM")


def add_lora(model, settings: LoraSettings, seed: int | None = 0):
    """Freeze the base and wrap it with LoRA adapters (PeftModel).

    LoRA's A matrices start random (B starts at zero): they are drawn from a generator seeded with
    `seed`, so the same settings give the same adapter in every process (the run is reproducible;
    Trainer seeds only after the model exists). The global RNG is left as it was. `seed=None`: unseeded.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if seed is None:
        return get_peft_model(model, lora_config(model, settings))
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return get_peft_model(model, lora_config(model, settings))


def without_lora(model):
    """`model` with every LoRA layer taken out again (nothing merged) and peft's marker removed, so that
    get_peft_model can run on it a second time (rerunning notebook 03's cell) without stacking a second
    PEFT wrapper over the first. Takes a PeftModel (returns its base model) or a base model that a
    get_peft_model call already changed in place; a plain model comes back unchanged. Base weights stay
    frozen (get_peft_model freezes them again anyway)."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(model, PeftModel):
        return model.unload()
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def trainable_summary(model) -> str:
    """One line: trainable parameters of `model` (count_parameters), of how many, and the percentage."""
    trainable, total = count_parameters(model)
    return tr("trainable parameters: {trainable:,} of {total:,} ({share:.2%})", trainable=trainable, total=total,
              share=trainable / total)


def _n_values(p) -> int:
    """Weights a parameter holds. bitsandbytes Params4bit packs two 4-bit values per byte of its
    storage (uint8 by default), so its numel() is half the real count; its quant_state keeps the
    original shape. 8-bit weights (Int8Params) hold one value per element."""
    if type(p).__name__ == "Params4bit":
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        if shape is not None:
            return math.prod(shape)
        return p.numel() * 2 * p.element_size()  # not quantized yet: same correction as peft's
    return p.numel()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; quantized weights count once per value (8-bit and 4-bit)."""
    trainable = total = 0
    for p in model.parameters():
        n = _n_values(p)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def expected_lora_parameters(config, settings: LoraSettings) -> int:
    """LoRA parameters predicted from the MllamaConfig alone: r * (in + out) for each adapted Linear.

    Covers the attention projections q,k,v,o (the seed's targets) in the text and vision towers.
    """
    t, v, r = config.text_config, config.vision_config, settings.r
    head_dim = t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    shapes = {"q_proj": (t.hidden_size, t.num_attention_heads * head_dim), "k_proj": (t.hidden_size, kv),
              "v_proj": (t.hidden_size, kv), "o_proj": (t.num_attention_heads * head_dim, t.hidden_size)}
    unknown = set(settings.target_modules) - set(shapes)
    if unknown:
        raise ValueError(f"the formula covers q_proj, k_proj, v_proj, o_proj; not {sorted(unknown)}")
    per_layer = sum(r * sum(shapes[n]) for n in settings.target_modules)
    n_cross = len(t.cross_attention_layers)
    layers = {"language": t.num_hidden_layers, "cross_attention": n_cross,
              "language_vision": t.num_hidden_layers}[settings.scope]
    total = layers * per_layer
    if settings.scope == "language_vision":
        vision_layers = v.num_hidden_layers + v.num_global_layers
        total += vision_layers * len(settings.target_modules) * r * 2 * v.hidden_size
    return total


def adapter_megabytes(n_params: int, bytes_per_param: int = 4) -> float:
    """Size of the adapter file (fp32 by default) in MB."""
    return n_params * bytes_per_param / 1e6


def optimizer_state_megabytes(n_params: int) -> float:
    """AdamW keeps two fp32 moments per trainable parameter, plus the fp32 gradient."""
    return n_params * 4 * 3 / 1e6
