"""Memory planner for Mllama: exact weight bytes per precision, and a training-peak estimate (notebooks 02, 03).

The 11B architecture is built on the `meta` device (no download, no memory), so every count
below comes from the real module shapes rather than from a table.
"""

from __future__ import annotations

import math
import re

import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration

from utils.config import DEFAULT_SKIP_MODULES, LoraSettings
from utils.i18n import N_

GROUPS = ("vision_model", "multi_modal_projector", "language_linear", "embed_tokens", "language_other", "lm_head")
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes Params4bit blocksize; double-quant blocksize of the absmax


def config_11b() -> MllamaConfig:
    """`MllamaConfig()` is the 11B shape except the tile size: 560 in the released model (448 by default)."""
    config = MllamaConfig()
    config.vision_config.image_size = 560
    return config


def meta_model(config: MllamaConfig | None = None) -> MllamaForConditionalGeneration:
    """The model (11B shape by default) with all weights on the `meta` device: shapes only, built in ~0.1 s."""
    with torch.device("meta"):
        return MllamaForConditionalGeneration(config or config_11b())


def _as_model(config_or_model):
    if isinstance(config_or_model, MllamaConfig):
        return meta_model(config_or_model)
    return config_or_model


def group_of(name: str) -> str:
    """The planner group of a parameter / module name (works with or without a peft prefix)."""
    for group in ("vision_model", "multi_modal_projector", "embed_tokens", "lm_head"):
        if re.search(rf"(^|\.){group}(\.|$)", name):
            return group
    return "language_linear" if re.search(r"language_model\.layers\.\d+\..*_proj(\.|$)", name) else "language_other"


def parameter_groups(model) -> dict[str, int]:
    """Parameter counts per group (see GROUPS) and 'total'. Decoder Linear weights form 'language_linear'."""
    counts = dict.fromkeys(GROUPS, 0)
    for name, p in _as_model(model).named_parameters():
        counts[group_of(name)] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def _skipped(name: str, skip_modules) -> bool:
    # Same matching as utils.modeling.quantization_config: a whole dotted component ("vision_model").
    return any(re.search(rf"(^|\.){re.escape(s)}(\.|$)", name) for s in skip_modules or ())


def _quantized_linear_bytes(weight_shape, precision: str) -> tuple[int, int]:
    """(weight bytes, quantization-state bytes) of one bitsandbytes Linear, as bnb 0.50 stores them.

    8bit (Linear8bitLt): int8 weight (`CB` is the same storage) + fp32 `SCB`, one scale per output row.
    4bit (Linear4bit, nf4, double quant): packed uint8 (2 values/byte) + uint8 absmax per 64-block,
    re-quantized with fp32 absmax per 256 absmax values, fp32 offset, and the two code tables
    (16 + 256 fp32) that every layer keeps its own copy of.
    """
    out_features, n = weight_shape[0], math.prod(weight_shape)
    if precision == "8bit":
        return n, 4 * out_features
    blocks = math.ceil(n / NF4_BLOCK)
    return (n + 1) // 2, blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 4 + 4 * (16 + 256)


def plan_load_memory(config_or_model, precision: str, skip_modules=DEFAULT_SKIP_MODULES,
                     compute_dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Bytes of the loaded weights per group, for 'fp32' | 'bf16' | 'fp16' | '8bit' | '4bit'.

    Quantized precisions replace every `nn.Linear` outside `skip_modules` (as transformers does);
    everything else (embeddings, norms, conv, skipped modules, biases) is stored in `compute_dtype`.
    Keys: the GROUPS, 'quant_state' (8-bit SCB / 4-bit absmax etc., which `get_memory_footprint`
    does not see because bnb keeps them as tensor attributes), 'buffers' (fp32 rotary tables),
    'footprint' (= what `model.get_memory_footprint()` reports) and 'total' (footprint + quant_state).
    """
    model = _as_model(config_or_model)
    if precision in BYTES:
        dense, quantized = BYTES[precision], False
    elif precision in ("8bit", "4bit"):
        dense, quantized = torch.empty(0, dtype=compute_dtype).element_size(), True
    else:
        raise ValueError(f"precision must be fp32, bf16, fp16, 8bit or 4bit; got {precision!r}")
    plan = dict.fromkeys(GROUPS + ("quant_state",), 0)
    linear_weights = set()
    if quantized:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not _skipped(name, skip_modules):
                weight, state = _quantized_linear_bytes(module.weight.shape, precision)
                plan[group_of(name)] += weight
                plan["quant_state"] += state
                linear_weights.add(f"{name}.weight")
    for name, p in model.named_parameters():
        if name not in linear_weights:
            plan[group_of(name)] += p.numel() * dense
    # Buffers (rotary inv_freq) stay fp32 whatever the load dtype.
    plan["buffers"] = sum(b.numel() * 4 for b in model.buffers())
    plan["footprint"] = sum(plan[g] for g in GROUPS) + plan["buffers"]
    plan["total"] = plan["footprint"] + plan["quant_state"]
    return plan


def measured_quant_state_bytes(model) -> int:
    """Bytes of the bitsandbytes quantization state actually held by a loaded model (to check the plan)."""
    total = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if type(module).__name__ == "Linear8bitLt" and getattr(w, "SCB", None) is not None:
            total += w.SCB.numel() * w.SCB.element_size()
        elif type(module).__name__ == "Linear4bit" and getattr(w, "quant_state", None) is not None:
            qs = w.quant_state
            tensors = [qs.absmax, qs.code] + ([qs.offset, qs.state2.absmax, qs.state2.code] if qs.nested else [])
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def int8_kept_input_bytes(config, tokens: int, image: bool = True, compute_dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes stock bitsandbytes keeps from forward to backward in 8-bit LoRA, gradient checkpointing or not:
    every Linear8bitLt whose input requires grad keeps that input as a plain attribute (MatMul8bitLt's
    ctx.tensors, MatMul8bitFp's ctx.A on CPU). Per decoder layer the distinct inputs are q/k/v's (one tensor),
    o_proj's, gate/up's (one) and down_proj's: 3 x hidden + intermediate values per token; a cross-attention
    layer's k/v read the image features, which need no grad, and text-only batches skip those layers.
    2.13 MB/token for the 11B in bf16. utils.modeling.free_int8_inputs (on in training) removes all of it."""
    t = config.text_config
    layers = t.num_hidden_layers - (0 if image else len(t.cross_attention_layers))
    act = torch.empty(0, dtype=compute_dtype).element_size()
    return layers * (3 * t.hidden_size + t.intermediate_size) * tokens * act


def planned_activation_bytes(config, lora_settings: LoraSettings | None = None, batch_size: int = 2,
                             seq_len: int = 512, image: bool = True, gradient_checkpointing: bool = True,
                             compute_dtype: torch.dtype = torch.bfloat16, tiles: int | None = None,
                             parts: bool = False, precision: str = "bf16"):
    """plan_training_memory's 'activations' (see its docstring); `parts`: {'kept', 'recompute'} instead."""
    settings = lora_settings or LoraSettings()
    t, v = config.text_config, config.vision_config
    act = torch.empty(0, dtype=compute_dtype).element_size()
    H, I, heads = t.hidden_size, t.intermediate_size, t.num_attention_heads
    head_dim = getattr(t, "head_dim", None) or H // heads
    kv = t.num_key_value_heads * head_dim
    tokens = batch_size * seq_len
    per_image = (tiles or v.max_num_tiles) * ((v.image_size // v.patch_size) ** 2 + 1)
    vision_tokens = batch_size * per_image if image else 0
    n_cross = len(t.cross_attention_layers)
    running = t.num_hidden_layers - (0 if image else n_cross)
    self_layer = tokens * ((6 * I + 5 * H + 2 * kv) * act + 8 * H * 4)
    lora_kv = len({"k_proj", "v_proj"} & set(settings.target_modules))
    cross_layer = vision_tokens * (4 * heads * head_dim * act + kv * 4 + lora_kv * H * 4) \
        + tokens * (5 * H * act + 8 * H * 4)  # its text side (the MLP's tensors are gone by then)
    if precision == "8bit":  # backward through an int8 Linear dequantizes its weight: I x H in the MLP, H x H in attention
        self_layer, cross_layer = self_layer + I * H * act, cross_layer + H * H * act
    kept = tokens * H * 4 + vision_tokens * H * act + tokens * per_image * act * bool(image)
    if gradient_checkpointing:
        kept += running * tokens * H * act
        recompute = max(self_layer, cross_layer if image else 0)
    else:  # every layer keeps what it would recompute
        kept += running * self_layer + (n_cross * cross_layer if image else 0)
        recompute = 0
    return {"kept": kept, "recompute": recompute} if parts else kept + recompute


def plan_training_memory(config, precision: str, lora_settings: LoraSettings | None = None, batch_size: int = 2,
                         seq_len: int = 512, image: bool = True, gradient_checkpointing: bool = True,
                         skip_modules=DEFAULT_SKIP_MODULES, compute_dtype: torch.dtype = torch.bfloat16,
                         tiles: int | None = None, int8_inputs_kept: bool = False) -> dict[str, int]:
    """Estimated peak bytes of one LoRA training step (an estimate; the weights part is exact).

    Assumptions (documented so the benchmark can check them):
    - weights: `plan_load_memory(...)['total']`; LoRA parameters, their gradients and AdamW's two
      moments are fp32 (peft keeps adapters in fp32): 4 + 4 + 8 bytes per LoRA parameter.
    - activations (checked on CPU against the bytes measured with utils.retention, on the tiny model and on an
      11B-width slice: benchmarks/activation_memory.py) are what forward keeps for backward plus the largest
      recompute of one checkpointed layer in backward. Kept: each decoder layer that runs saves its input
      (T*H, 16-bit; a text-only batch skips the cross-attention layers), the final norm its fp32 upcast
      (T*H*4), and with an image the projected vision features (Vt*H, Vt = B*tiles*(patches+1)) and the
      cross-attention mask (T*tiles*(patches+1), 16-bit). Recompute, the larger of
      a self-attention layer: T*((6I + 5H + 2KV)*2-byte + 8H*4) bytes (the four MLP tensors and two of their
      gradients, q/k/v/o and norms; the fp32 upcasts of the norms and of LoRA's inputs), and
      a cross-attention layer: Vt*((2*heads*head_dim)*2 (K, V repeated to every head) * 2 (+ their gradients)
      + KV*4 (k_norm's upcast) + 4H per LoRA-targeted k_proj/v_proj (peft's fp32 copy of its input))
      + T*(5H*2-byte + 8H*4) (its text side). 8-bit adds the weight its backward dequantizes (I*H, 16-bit; H*H in the cross layer).
      Without checkpointing every layer keeps its recompute (not measured).
    - logits: the 16-bit lm_head output, its fp32 copy for the loss and the fp32 softmax gradient:
      B*S*V*(2+4+4) bytes.
    - 8-bit: the frozen int8 matmuls keep no input (utils.modeling.free_int8_inputs, which training switches
      on). `int8_inputs_kept=True` plans stock bitsandbytes instead: + int8_kept_input_bytes (key
      'int8_kept_inputs'), 2.13 MB/token for the 11B in bf16, measured exactly on the tiny model
      (tests/test_int8_memory.py).
    - not included: CUDA context (~0.5 GiB, not in max_memory_allocated), allocator fragmentation,
      cuBLAS workspaces, the transient peak inside the no-grad vision tower.
    """
    settings = lora_settings or LoraSettings()
    from utils.lora import expected_lora_parameters

    t, v = config.text_config, config.vision_config
    n_lora = expected_lora_parameters(config, settings)
    weights = plan_load_memory(config, precision, skip_modules, compute_dtype)["total"]
    act = torch.empty(0, dtype=compute_dtype).element_size()
    activations = planned_activation_bytes(config, settings, batch_size, seq_len, image, gradient_checkpointing,
                                           compute_dtype, tiles, precision=precision)
    tokens = batch_size * seq_len
    plan = {
        "weights": weights,
        "lora_params": 4 * n_lora,
        "gradients": 4 * n_lora,
        "optimizer": 8 * n_lora,
        "activations": activations,
        "logits": tokens * t.vocab_size * (act + 4 + 4),
    }
    if precision == "8bit" and int8_inputs_kept:
        plan["int8_kept_inputs"] = int8_kept_input_bytes(config, tokens, image, compute_dtype)
    plan["total"] = sum(plan.values())
    return plan


def memory_plan_rows(config=None, compute_dtype: torch.dtype = torch.bfloat16) -> dict[str, dict[str, int]]:
    """The five load plans the memory chart compares: fp32, bf16, int8 (vision 16-bit), int8 all, nf4."""
    model = meta_model(config)
    return {  # the keys are the chart's bar names (N_: plot_memory_plan translates them)
        "fp32": plan_load_memory(model, "fp32"),
        "bf16": plan_load_memory(model, "bf16"),
        N_("int8 (vision 16-bit)"): plan_load_memory(model, "8bit", DEFAULT_SKIP_MODULES, compute_dtype),
        N_("int8 all"): plan_load_memory(model, "8bit", ("lm_head",), compute_dtype),
        "nf4": plan_load_memory(model, "4bit", DEFAULT_SKIP_MODULES, compute_dtype),
    }
