"""Bytes a training step keeps from forward to backward, measured on any device (checks utils.memory's plan).

Every tensor created during the forward pass is recorded (a TorchDispatchMode); once the loss is there and
before backward, the distinct storages still alive are what the autograd graph (and anything else) holds for
backward. Plain attributes such as bitsandbytes' `ctx.tensors` / `ctx.A` count too, which saved-tensor hooks
would not see. The backward pass is recorded the same way: its peak of live step-made storages adds the one
recomputed (checkpointed) layer and the gradients in flight.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class RecordOutputs(TorchDispatchMode):
    """Weak references to every tensor an op returns. Storages in `exclude` (data_ptrs: the weights, whose views
    ops also return) are not counted. With `track_peak`, `peak` holds the most live bytes seen per kind."""

    def __init__(self, exclude=(), classify=None):
        super().__init__()
        self.refs, self.exclude, self.classify = [], set(exclude), classify
        self.track_peak, self.peak = False, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.refs.append(weakref.ref(t))
        if self.track_peak:
            for kind, n in self.live_bytes().items():
                self.peak[kind] = max(self.peak.get(kind, 0), n)
        return out

    def live_storages(self) -> dict:
        """{storage data_ptr: (bytes, kind)} of the recorded tensors still alive (dead refs are dropped)."""
        seen, alive = {}, []
        for ref in self.refs:
            t = ref()
            if t is None or t.device.type == "meta":
                continue
            alive.append(ref)
            storage = t.untyped_storage()
            if storage.data_ptr() not in self.exclude:
                seen[storage.data_ptr()] = (storage.nbytes(), self.classify(t) if self.classify else None)
        self.refs = alive
        return seen

    def live_bytes(self) -> dict:
        total = {}
        for n, kind in self.live_storages().values():
            total[kind] = total.get(kind, 0) + n
        return total


def weight_storages(model) -> set:
    """data_ptrs of the model's parameter and buffer storages (8-bit scales included)."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t.SCB for t in model.parameters() if getattr(t, "SCB", None) is not None]
    return {t.untyped_storage().data_ptr() for t in tensors}


def retained_bytes(model, batch, classify=None, backward_peak: bool = False):
    """Bytes of the storages made during forward that are still alive when the loss is there (before backward),
    the weights' own storages left out.

    With `classify` (tensor -> key): a dict of bytes per key. With `backward_peak`: (retained, peak), where
    peak is, per key, the most step-made bytes alive at once during backward (what forward kept included)."""
    recorder = RecordOutputs(weight_storages(model), classify)
    with recorder:
        loss = model(**batch).loss
    live = recorder.live_bytes()
    kept = live if classify else sum(live.values())
    if not backward_peak:
        loss.backward()  # and the graph goes
        return kept
    recorder.track_peak, recorder.peak = True, dict(live)
    with recorder:
        loss.backward()
    del loss
    return kept, recorder.peak if classify else max(recorder.peak.values())


def slice_11b_config(text_layers: int = 3, cross_attention_layers=(1,), vision_layers: int = 1,
                     global_layers: int = 1):
    """The 11B at full width (hidden, intermediate, heads, vocabulary, 560 px tiles) with few layers: one
    cross-attention layer among `text_layers`; the vision tower keeps its 5 intermediate outputs (all read
    from its `vision_layers` layers), so the projector keeps its 7680 -> 4096 shape."""
    from utils.memory import config_11b

    config = config_11b()
    config.text_config.num_hidden_layers = text_layers
    config.text_config.cross_attention_layers = list(cross_attention_layers)
    v = config.vision_config
    v.num_hidden_layers, v.num_global_layers = vision_layers, global_layers
    v.intermediate_layers_indices = [min(i, vision_layers - 1) for i in (0, 1, 1, 1, 1)]
    return config


@torch.no_grad()
def random_model(config, dtype=torch.bfloat16, seed: int = 0):
    """MllamaForConditionalGeneration(config) in `dtype` with cheap random weights: a 1M-value N(0, 0.02) block
    tiled over every matrix (drawing 1.9B normals in bf16 takes ~25 s on 2 cores, this ~8 s); norms and
    cross-attention gates 1 (open, as in the tiny model), other vectors 0. For memory measurements only."""
    from transformers import MllamaForConditionalGeneration
    from transformers.initialization import no_init_weights

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            model = MllamaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    base = (torch.randn(1 << 20, generator=torch.Generator().manual_seed(seed)) * 0.02).to(dtype)
    for name, p in model.named_parameters():
        flat = p.view(-1)
        if p.ndim < 2:
            flat.fill_(1.0 if "norm" in name or name.endswith("gate") else 0.0)
            continue
        for start in range(0, flat.numel(), base.numel() - 7):  # shifted by 7 so rows differ
            end = min(start + base.numel(), flat.numel())
            flat[start:end].copy_(base[: end - start])
    return model.eval()
