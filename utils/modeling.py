"""Loading the processor and the (quantized) model for either profile (notebook 02)."""

from __future__ import annotations

import os
import warnings

import torch
from transformers import AutoProcessor, BitsAndBytesConfig, MllamaForConditionalGeneration

from utils.config import DEFAULT_SKIP_MODULES, MODEL_ID_11B, PRECISIONS, compute_dtype, mixed_precision
from utils.i18n import tr
from utils.setup import resolve_precision, resolve_profile


class HubAccessError(RuntimeError):
    """The 11B model could not be fetched: missing token or license not accepted."""


def get_hf_token() -> str | None:
    """The Hugging Face token, never printed or stored: `huggingface_hub.get_token()`, which looks in
    HF_TOKEN (and HUGGING_FACE_HUB_TOKEN), the token file that `hf auth login` / `notebook_login()`
    write ($HF_HOME/token) and Colab Secrets (HF_TOKEN), in that order."""
    from huggingface_hub import get_token

    return get_token()


def model_source(profile: str | None = None, model_name_or_path: str | None = None) -> str:
    """Where `from_pretrained` reads from: a local folder / Hub id, the tiny cache, or the 11B id."""
    if model_name_or_path:
        return str(model_name_or_path)
    if resolve_profile(profile) == "tiny":
        from utils.tiny import tiny_model_dir

        return str(tiny_model_dir())
    return MODEL_ID_11B


def uses_fsdp() -> bool:
    """True inside `accelerate launch` with an FSDP config (accelerate sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").strip().lower() in ("1", "true", "yes")


def device_map():
    """Where from_pretrained puts the weights: None on CPU and under FSDP (FSDP shards the model itself);
    on CUDA the whole model on this process's GPU: `{"": local_process_index}` (cuda:0 in a single-process
    run; under `accelerate launch` / torchrun each data-parallel process loads its own copy on its own GPU)."""
    if not torch.cuda.is_available() or uses_fsdp():
        return None
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


# The BitsAndBytesConfig fields each mode reads (the config also carries every other mode's defaults):
# what notebook 02 shows instead of the whole repr.
QUANTIZATION_FIELDS = {
    "8bit": ("load_in_8bit", "llm_int8_threshold", "llm_int8_skip_modules"),
    "4bit": ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype",
             "llm_int8_skip_modules"),
}

INT8_THRESHOLD_ZERO_WARNING = (
    "llm_int8_threshold=0.0 puts every input column through int8: bitsandbytes casts the activations to fp16 to "
    "quantize them, so a bf16 activation above 65504 becomes inf and its whole row inf/NaN (with 6.0 such columns "
    "stay out of int8). Use 0.0 only to measure speed; train with the default 6.0.")


def quantization_config(precision: str, skip_modules=DEFAULT_SKIP_MODULES,
                        threshold: float = 6.0, fsdp: bool | None = None) -> BitsAndBytesConfig | None:
    """BitsAndBytesConfig for '8bit' (LLM.int8) or '4bit' (nf4); None for 16/32-bit precisions.

    'auto' is the precision `utils.setup.choose_setup` picks for this machine. With `fsdp` (default:
    inside an FSDP `accelerate launch`) 4-bit weights are stored in the compute dtype
    (`bnb_4bit_quant_storage`) so FSDP can shard them with the 16-bit parameters (QLoRA + FSDP); 8-bit
    weights cannot be sharded by FSDP at all (use DDP: configs/accelerate/).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    precision = resolve_precision(precision)
    # transformers 5 matches these from the start of the full module name ("model.vision_model...");
    # older versions match substrings. Listing both forms works with either.
    skip = [p for name in (skip_modules or []) for p in (name, f"model.{name}")]
    if precision == "8bit":
        if threshold <= 0.0:
            warnings.warn(INT8_THRESHOLD_ZERO_WARNING, UserWarning, stacklevel=2)
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip, llm_int8_threshold=threshold)
    if precision == "4bit":
        storage = {"bnb_4bit_quant_storage": compute_dtype()} if (uses_fsdp() if fsdp is None else fsdp) else {}
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype(), llm_int8_skip_modules=skip, **storage)
    return None


def _hub_errors(source: str, err: Exception) -> Exception:
    text = str(err)
    if "gated" in text.lower() or "401" in text or "403" in text or "restricted" in text.lower():
        return HubAccessError(
            f"Could not download {source}: it is a gated model. 1) Accept the license at "
            f"https://huggingface.co/{source} with your account; 2) create a read token at "
            "https://huggingface.co/settings/tokens; 3) put it in the HF_TOKEN environment variable "
            "or in Colab Secrets under the name HF_TOKEN (never in a notebook cell)."
        )
    return err


def load_processor(profile: str | None = None, model_name_or_path: str | None = None):
    source = model_source(profile, model_name_or_path)
    try:
        processor = AutoProcessor.from_pretrained(source, token=get_hf_token())
    except OSError as err:
        raise _hub_errors(source, err) from err
    processor.tokenizer.padding_side = "right"
    processor.tokenizer.clean_up_tokenization_spaces = False  # a WordPiece step that damages BPE text
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = "<|finetune_right_pad_id|>"
    return processor


def load_model(profile: str | None = None, precision: str = "8bit", model_name_or_path: str | None = None,
               skip_modules=DEFAULT_SKIP_MODULES, int8_threshold: float = 6.0,
               attn_implementation: str = "sdpa", device: str | None = None) -> MllamaForConditionalGeneration:
    """The Mllama model for a profile, quantized per `precision` ('8bit' default; 'auto': the
    precision `utils.setup.choose_setup` picks for this machine and profile).

    16-bit parts use bf16 (compute capability 8.0+) / fp16 on a GPU and fp32 on CPU; on GPU
    everything goes to this process's device (`device_map()`: device 0 in a single-process run).
    `device="cpu"` keeps a 16-bit model in RAM on a GPU machine (a merge that only fits there).
    """
    if device not in (None, "cuda", "cpu"):
        raise ValueError(f"device must be None, 'cuda' or 'cpu', got {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    precision = resolve_precision(precision, profile)
    if device == "cpu" and precision in ("8bit", "4bit") and torch.cuda.is_available():
        raise ValueError("on a GPU machine bitsandbytes' 8-bit and 4-bit layers load on the GPU; device='cpu' takes "
                         "bf16 or fp32")
    source = model_source(profile, model_name_or_path)
    if precision in ("bf16", "fp16", "fp32"):
        dtype = compute_dtype(precision)
    else:
        dtype = compute_dtype(mixed_precision())
    if source == MODEL_ID_11B and not get_hf_token():
        raise HubAccessError(
            f"{source} is gated: set HF_TOKEN (or Colab Secrets HF_TOKEN) after accepting the license "
            f"at https://huggingface.co/{source}. Or use profile='tiny' to run offline."
        )
    # fp16 (T4, V100): the vision tower and projector are read from the checkpoint straight into fp32
    # (transformers' _keep_in_fp32_modules, honoured only for an fp16 load) and run in fp32 (keep_vision_fp32).
    fp32_parts = list(FP32_VISION_MODULES) if dtype == torch.float16 else None
    try:
        with _keep_in_fp32(fp32_parts):
            model = MllamaForConditionalGeneration.from_pretrained(
                source, dtype=dtype, quantization_config=quantization_config(precision, skip_modules, int8_threshold),
                device_map=None if device == "cpu" else device_map(), attn_implementation=attn_implementation,
                token=get_hf_token(),
            )
    except OSError as err:
        raise _hub_errors(source, err) from err
    if fp32_parts:
        keep_vision_fp32(model, dtype)
    model.config.use_cache = False
    return model


# Kept in fp32 when the rest of the model is fp16: fp16's range (65504) is what another implementation of this
# model overflowed in the vision tower (NaNs); bf16 has fp32's range, so bf16 cards keep them bf16.
FP32_VISION_MODULES = ("vision_model", "multi_modal_projector")


class _keep_in_fp32:
    """Within the block, from_pretrained loads the named modules in fp32 when asked for fp16 (the class attribute
    `_keep_in_fp32_modules` that transformers reads at load time; restored afterwards)."""

    def __init__(self, modules):
        self.modules = modules

    def __enter__(self):
        self.saved = MllamaForConditionalGeneration.__dict__.get("_keep_in_fp32_modules", None)
        if self.modules:
            MllamaForConditionalGeneration._keep_in_fp32_modules = list(self.modules)

    def __exit__(self, *exc):
        if self.modules:
            MllamaForConditionalGeneration._keep_in_fp32_modules = self.saved


def keep_vision_fp32(model, language_dtype=torch.float16):
    """Run the vision tower and the projector in fp32 inside an fp16 model: their weights in fp32 (a no-op when
    load_model already read them so), their forward with autocast off (fp16 autocast would run their matmuls
    in fp16 whatever the weights), and the projector's output cast to `language_dtype` for the cross-attention
    layers. About 1.75 GB more than fp16 for the 11B (0.88 G parameters x 2 bytes). Returns the model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in FP32_VISION_MODULES:
        module = getattr(base.model, name)
        if getattr(module, "_runs_in_fp32", False):
            continue
        module.float()
        forward = module.forward
        device_type = next(module.parameters()).device.type

        def forward_fp32(*args, _forward=forward, _device=device_type, **kwargs):
            with torch.autocast(device_type=_device, enabled=False):
                return _forward(*args, **kwargs)

        module.forward = forward_fp32
        module._runs_in_fp32 = True
    base.model.multi_modal_projector.register_forward_hook(lambda m, args, out: out.to(language_dtype))
    # MllamaModel builds the cross-attention masks in `self.dtype`, its first parameter's dtype: now the vision
    # tower's fp32. Cast them (and cached features) to the language model's dtype, fp32's minimum clamped to
    # fp16's (a plain cast would make it -inf: NaN rows).
    low = torch.finfo(language_dtype).min

    def to_language_dtype(module, args, kwargs):
        for key in ("cross_attention_mask", "full_text_row_masked_out_mask", "cross_attention_states"):
            value = kwargs.get(key)
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != language_dtype:
                kwargs[key] = value.clamp(min=low).to(language_dtype)
        return args, kwargs

    base.model.language_model.register_forward_pre_hook(to_language_dtype, with_kwargs=True)
    return model


def quantized_layers(model) -> dict[str, str]:
    """{module name: class name} for every Linear-like layer: shows which became Linear8bitLt / Linear4bit."""
    return {name: type(m).__name__ for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) or type(m).__name__ in ("Linear8bitLt", "Linear4bit")}


def memory_readout(model=None) -> dict[str, float]:
    """What this process uses, in GiB: GPU allocated/peak/total on CUDA; model footprint and process RSS."""
    import psutil

    out = {"process_rss_gib": psutil.Process().memory_info().rss / 2**30}
    if model is not None:
        out["model_footprint_gib"] = model.get_memory_footprint() / 2**30
    if torch.cuda.is_available():
        out["gpu_allocated_gib"] = torch.cuda.memory_allocated() / 2**30
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu_total_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return out


def memory_line(model=None) -> str:
    """memory_readout() as one line a person reads (notebook 04): the model's own size, this process's RAM and,
    on CUDA, the GPU memory in use now and at its peak."""
    m = memory_readout(model)
    parts = []
    if "model_footprint_gib" in m:
        parts.append(tr("model {gib:.2f} GiB", gib=m["model_footprint_gib"]))
    parts.append(tr("process {gib:.2f} GiB of RAM", gib=m["process_rss_gib"]))
    if "gpu_total_gib" in m:
        parts.append(tr("GPU {used:.2f} GiB in use, peak {peak:.2f} of {total:.1f} GiB", used=m["gpu_allocated_gib"],
                        peak=m["gpu_peak_gib"], total=m["gpu_total_gib"]))
    return tr("memory: ") + " | ".join(parts)


class _FrozenInt8Matmul(torch.autograd.Function):
    """x @ W^T of a frozen bitsandbytes Linear8bitLt that keeps nothing of x for backward.

    bitsandbytes' MatMul8bitLt (GPU) keeps its input as a plain attribute (`ctx.tensors = (CAt, subA, A)`;
    MatMul8bitFp, its CPU training path, keeps `ctx.A`), not through save_for_backward, so non-reentrant
    checkpointing cannot free it, and with a frozen weight backward never reads it. The forward here is the
    layer's own (bitwise the stock output); backward is bitsandbytes' own grad_A line, grad_output @ the
    dequantized weight (CB * SCB / 127), which needs only the weight."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer, ctx.dtype, ctx.shape = layer, x.dtype, x.shape
        return layer._stock_forward(x)  # grad mode is off in here: bitsandbytes keeps no ctx

    @staticmethod
    def backward(ctx, grad_output):
        state = ctx.layer.state
        weight = state.CB.to(ctx.dtype, copy=True).mul_(state.SCB.unsqueeze(1).mul(1.0 / 127.0))
        if grad_output.dim() == 3:
            grad_output = grad_output.reshape(-1, grad_output.shape[-1]).contiguous()
        return torch.matmul(grad_output.to(ctx.dtype), weight).view(ctx.shape), None


def free_int8_inputs(model) -> int:
    """Make every frozen 8-bit Linear (LoRA's base layers included) keep no input for backward
    (_FrozenInt8Matmul): 8-bit LoRA with gradient checkpointing then retains what 16-bit LoRA retains, instead
    of (3 x hidden + intermediate) values per token per decoder layer more (2.13 MB/token for the 11B in bf16).
    Gradients are those of the stock path. Returns how many layers were switched (0 for a 16-bit or 4-bit model;
    4-bit keeps only its weight already)."""
    count = 0
    for module in model.modules():
        kind = type(module)  # bitsandbytes' layer, not peft's LoRA wrapper of the same name
        if kind.__name__ != "Linear8bitLt" or not kind.__module__.startswith("bitsandbytes") \
                or getattr(module, "_stock_forward", None) is not None:
            continue
        if module.weight.requires_grad or (module.bias is not None and module.bias.requires_grad):
            continue
        module._stock_forward = module.forward

        def forward(x, _layer=module):
            if not torch.is_grad_enabled() or not x.requires_grad:
                return _layer._stock_forward(x)
            return _FrozenInt8Matmul.apply(x, _layer)

        module.forward = forward
        count += 1
    return count


@torch.no_grad()
def dequantized_weight(linear) -> torch.Tensor:
    """The weight a Linear computes with, as fp32 (out x in): an 8-bit `Linear8bitLt` stores int8 values and one
    scale per output row (W = CB * SCB / 127), a 4-bit `Linear4bit` packed nf4 values (bitsandbytes unpacks
    them), a plain Linear its weight. Notebook 05 draws a trained LoRA update next to it."""
    weight = linear.weight
    if weight.dtype == torch.int8:
        # bitsandbytes moves the row scales from the weight to the layer's state at the first forward
        scb = getattr(weight, "SCB", None)
        if scb is None:
            scb = getattr(getattr(linear, "state", None), "SCB", None)
        if scb is None:
            raise ValueError("an int8 weight without its row scales (SCB): cannot dequantize it")
        return weight.float() * scb.float().unsqueeze(1) / 127.0
    if getattr(weight, "quant_state", None) is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
    return weight.detach().float()
