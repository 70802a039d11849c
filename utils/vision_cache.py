"""Frozen vision features computed once per image (notebook 04, the CLI's --cache_vision_features).

With LoRA only in the language model (scope "language" or "cross_attention") the vision tower and
the projector never change, have no dropout and the image processor is deterministic, so
`multi_modal_projector(vision_model(pixel_values))` is the same tensor for an image in every epoch.
At the reference setup it is 18.6 + 0.4 of the 29.8 TFLOP forward per sample (benchmarks/README.md).
`VisionFeatureCache.build` runs the tower once per unique image (by content hash) and the collator
then passes `cross_attention_states` instead of `pixel_values`.

What Mllama (transformers 5.24, modeling_mllama.py) does on each path:
- `MllamaModel.forward` with `pixel_values`: `vision_model(...)` gives (batch, images, tiles,
  patches + 1, vision_output_dim), the projector maps the last dim to the text hidden size and
  the result is reshaped to (batch * images * tiles, patches + 1, hidden) = (B * 4, 1601, 4096);
- with `cross_attention_states` that tensor is used as is (the cross-attention k/v projections
  view it as (batch, -1, heads, head_dim)); `aspect_ratio_ids` / `aspect_ratio_mask` are only
  read by the vision tower, so they are not needed; `cross_attention_mask` is still needed and
  is built from the token ids and each image's tile count (kept next to its features).
The features of padded tiles (an image with fewer than 4 tiles) are cached too: they are what
the tower computes for them, and the cross-attention mask hides them, as without the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from utils.data import image_bytes, open_image
from utils.i18n import tr

MB = 1e6
RAM_SHARE = 0.25  # default in-memory budget: this share of the RAM available now, split over the processes


class CacheSpaceError(ValueError):
    """The on-disk cache would not fit the free space of its folder (checked before anything is written)."""


def default_memory_mb(processes: int = 1) -> float:
    """The in-memory budget when none is given: RAM_SHARE of the RAM available now (psutil), divided among the
    data-parallel processes of this machine (each keeps its own copy in memory). 52.5 MB per 11B image."""
    import psutil

    return RAM_SHARE * psutil.virtual_memory().available / MB / max(1, processes)


def image_hash(image) -> str:
    """sha1 of the image's encoded bytes (a file path, bytes, a {"bytes", "path"} dict or a PIL image:
    utils.data.image_bytes): the same picture under two names is computed once. Images stored inside a data set
    are already files named by this hash (utils.data.store_image)."""
    return hashlib.sha1(image_bytes(image)).hexdigest()


def feature_shape(model_config) -> tuple[int, int, int]:
    """(tiles, tokens per tile, hidden) of one image's projector output: max_num_tiles x
    ((image_size / patch_size)^2 + 1 class token) x text hidden_size; 4 x 1601 x 4096 for the 11B."""
    v, t = model_config.vision_config, model_config.text_config
    return v.max_num_tiles, (v.image_size // v.patch_size) ** 2 + 1, t.hidden_size


def estimate_bytes(model_config, n_images: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes the cache needs for `n_images` images (52.5 MB per image for the 11B in bf16)."""
    tiles, tokens, hidden = feature_shape(model_config)
    return n_images * tiles * tokens * hidden * torch.empty((), dtype=dtype).element_size()


def _base(model):
    """The MllamaModel inside a MllamaForConditionalGeneration, also inside a PeftModel."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def cache_is_exact(model, lora_scope: str | None = None) -> tuple[bool, str]:
    """(exact, reason): the cached features equal what every training step would compute only when
    no vision-tower or projector parameter trains (no LoRA there) and neither has active dropout."""
    if lora_scope is not None and "vision" in lora_scope:
        return False, (f"LoRA scope {lora_scope!r} trains adapters in the vision tower: its features change "
                       "every step, so they cannot be computed once")
    base = _base(model)
    for part in ("vision_model", "multi_modal_projector"):
        for name, p in getattr(base, part).named_parameters():
            if p.requires_grad or "lora_" in name:
                return False, f"{part}.{name} trains: the image features change every step"
        for name, m in getattr(base, part).named_modules():
            if isinstance(m, torch.nn.Dropout) and m.p > 0:
                return False, f"{part}.{name} has dropout p={m.p}: the features are random in training"
    scope = f"scope {lora_scope!r}: " if lora_scope else ""
    return True, (f"{scope}no vision-tower or projector parameter trains and neither has dropout: "
                  "the image features are the same in every epoch")


def projector_output(model, pixel_values, aspect_ratio_ids, aspect_ratio_mask) -> torch.Tensor:
    """`multi_modal_projector(vision_model(...))` as MllamaModel.forward computes it, without autograd:
    (batch, images, tiles, patches + 1, hidden). Reshape to (-1, patches + 1, hidden) for the forward's
    `cross_attention_states`. Inputs are moved to the model's device."""
    from utils.batching import model_device

    base, device = _base(model), model_device(model)
    with torch.no_grad():
        out = base.vision_model(pixel_values=pixel_values.to(device), aspect_ratio_ids=aspect_ratio_ids.to(device),
                                aspect_ratio_mask=aspect_ratio_mask.to(device))
        return base.multi_modal_projector(out[0])  # last_hidden_state (a tuple where the config says return_dict=False)


def _autocast(device: torch.device, dtype: torch.dtype):
    """The autocast Trainer uses for mixed precision (bf16/fp16 on a GPU); none on the CPU (fp32)."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


class VisionFeatureCache:
    """Projector outputs (tiles, patches + 1, hidden) per image, keyed by the sha1 of the file's bytes,
    kept in memory (CPU) or as one safetensors file per image in `cache_dir`. Build with `build()`."""

    def __init__(self, dtype: torch.dtype, shape: tuple[int, int, int], cache_dir=None, in_memory: bool = True):
        self.dtype, self.shape = dtype, tuple(shape)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.in_memory = in_memory
        self._features: dict[str, torch.Tensor] = {}
        self._num_tiles: dict[str, int] = {}
        self._keys: dict[str, str] = {}  # image path -> hash
        self.computed = self.reused = 0
        self.build_s = 0.0

    # --- building -------------------------------------------------------------------------------
    @classmethod
    def build(cls, model, processor, rows, max_memory_mb: float | None = None, cache_dir=None,
              lora_scope: str | None = None, batch_size: int = 2, verbose: bool = True) -> "VisionFeatureCache":
        """One pass over the unique images of `rows` (train and eval rows together).

        In memory when the estimate fits `max_memory_mb` (default: default_memory_mb(), a share of the RAM
        available); else on disk in `cache_dir` (files already there for a hash are reused, not recomputed: a
        resumed run, or the other processes of a data-parallel run once the main one has built it); past the
        budget without a `cache_dir` it refuses. On disk, the free space is checked before anything is written
        (CacheSpaceError: 1,000 11B images are 52 GB). Refuses too when the features are not exact.
        """
        exact, reason = cache_is_exact(model, lora_scope)
        if not exact:
            raise ValueError(f"vision feature cache refused: {reason}")
        base = _base(model)
        dtype = base.multi_modal_projector.weight.dtype
        if getattr(base.multi_modal_projector, "_runs_in_fp32", False):  # fp16 card: features go in as fp16
            dtype = base.language_model.embed_tokens.weight.dtype
        max_memory_mb = default_memory_mb() if max_memory_mb is None else max_memory_mb
        paths = sorted({str(r["image"]) for r in rows if r.get("image")})
        keys = {p: image_hash(p) for p in paths}
        unique = sorted(set(keys.values()))
        need = estimate_bytes(model.config, len(unique), dtype)
        in_memory = need <= max_memory_mb * MB
        if not in_memory and cache_dir is None:
            raise ValueError(f"vision feature cache refused: {len(unique)} images need {need / MB:,.0f} MB in {dtype}, "
                             f"over max_memory_mb={max_memory_mb:,.0f}; give a cache_dir to keep them on disk")
        folder = None
        if not in_memory:
            import shutil

            folder = Path(cache_dir) / _fingerprint(model, processor, dtype)
            folder.mkdir(parents=True, exist_ok=True)
            done = sum(1 for k in unique if (folder / f"{k}.safetensors").exists())
            missing = need * (len(unique) - done) / max(len(unique), 1)
            free = shutil.disk_usage(folder).free
            if missing > free:
                raise CacheSpaceError(
                    f"vision feature cache refused: {len(unique) - done} images still to write need "
                    f"{missing / MB:,.0f} MB in {folder}, which has {free / MB:,.0f} MB free; free space there, "
                    f"give a cache_dir on a bigger disk, raise max_memory_mb if RAM allows, or train without the "
                    f"cache (--cache_vision_features off)")
        cache = cls(dtype, feature_shape(model.config), folder, in_memory)
        cache._keys = keys
        if verbose:
            where = (tr("in memory") if in_memory else
                     tr("on disk in {folder} (over max_memory_mb={max_mb:,.0f})", folder=folder, max_mb=max_memory_mb))
            print(tr("vision feature cache: {n} unique images of {n_paths} paths, {mb:,.3g} MB in {dtype} "
                     "({per_image:.3g} MB per image), {where}", n=len(unique), n_paths=len(paths), mb=need / MB,
                     dtype=str(dtype).replace("torch.", ""), per_image=need / max(len(unique), 1) / MB, where=where))
        cache._compute(model, processor, {k: p for p, k in keys.items()}, batch_size, verbose)
        if verbose:
            print(tr("vision feature cache: {computed} images computed, {reused} reused from disk, {seconds:.1f} s",
                     computed=cache.computed, reused=cache.reused, seconds=cache.build_s))
        return cache

    def _compute(self, model, processor, by_key: dict[str, str], batch_size: int, verbose: bool) -> None:
        from tqdm.auto import tqdm

        from utils.batching import model_device

        start = time.perf_counter()
        todo = []
        for key in sorted(by_key):
            if not self.in_memory and self._file(key).exists():
                self._num_tiles[key] = int(json.loads(_metadata(self._file(key))["num_tiles"]))
                self.reused += 1
            else:
                todo.append(key)
        base = _base(model)
        device = model_device(model)
        modes = [(m, m.training) for m in (base.vision_model, base.multi_modal_projector)]
        for m, _ in modes:
            m.eval()
        try:
            with torch.no_grad(), _autocast(device, self.dtype):
                for b in tqdm(range(0, len(todo), batch_size), desc="vision features", disable=not verbose or not todo,
                              unit="batch"):
                    keys = todo[b:b + batch_size]
                    images = [[open_image(by_key[key])] for key in keys]
                    pixels = processor.image_processor(images=images, return_tensors="pt")
                    num_tiles = pixels.pop("num_tiles")
                    states = projector_output(model, pixels["pixel_values"], pixels["aspect_ratio_ids"],
                                              pixels["aspect_ratio_mask"])  # (batch, 1 image, tiles, patches + 1, hidden)
                    for i, key in enumerate(keys):
                        self._store(key, states[i, 0].to("cpu", self.dtype).contiguous(), int(num_tiles[i][0]))
                        self.computed += 1
        finally:
            for m, mode in modes:
                m.train(mode)
        self.build_s = time.perf_counter() - start

    def _file(self, key: str) -> Path:
        return self.cache_dir / f"{key}.safetensors"

    def _store(self, key: str, features: torch.Tensor, num_tiles: int) -> None:
        if tuple(features.shape) != self.shape:
            raise ValueError(f"projector output {tuple(features.shape)} is not the expected {self.shape}")
        self._num_tiles[key] = num_tiles
        if self.in_memory:
            self._features[key] = features
            return
        from safetensors.torch import save_file

        tmp = self._file(key).with_suffix(".tmp")
        save_file({"features": features}, str(tmp), metadata={"num_tiles": str(num_tiles)})
        tmp.replace(self._file(key))  # a run killed mid-write leaves no half file under the real name

    # --- reading --------------------------------------------------------------------------------
    def key(self, path) -> str:
        path = str(path)
        if path not in self._keys:
            self._keys[path] = image_hash(path)
        return self._keys[path]

    def __len__(self) -> int:
        return len(self._num_tiles)

    def __contains__(self, path) -> bool:
        return self.key(path) in self._num_tiles

    def num_tiles(self, path) -> int:
        return self._num_tiles[self.key(path)]

    def features(self, path) -> torch.Tensor:
        """(tiles, patches + 1, hidden) on the CPU, in the projector's dtype."""
        key = self.key(path)
        if key not in self._num_tiles:
            raise KeyError(f"{path} is not in the vision feature cache (build it over the train and eval rows)")
        if self.in_memory:
            return self._features[key]
        from safetensors.torch import load_file

        return load_file(str(self._file(key)))["features"]

    def batch(self, paths) -> tuple[torch.Tensor, list[list[int]]]:
        """(cross_attention_states of shape (batch * tiles, patches + 1, hidden), num_tiles as the image
        processor gives it: one list per row), for rows with one image each."""
        states = torch.stack([self.features(p) for p in paths])  # (batch, tiles, patches + 1, hidden)
        return states.reshape(-1, *self.shape[1:]), [[self.num_tiles(p)] for p in paths]

    @property
    def nbytes(self) -> int:
        return len(self) * self.shape[0] * self.shape[1] * self.shape[2] * torch.empty((), dtype=self.dtype).element_size()

    def __repr__(self) -> str:
        where = "memory" if self.in_memory else str(self.cache_dir)
        return (f"VisionFeatureCache({len(self)} images, {self.nbytes / MB:,.1f} MB, {self.dtype}, in {where}; "
                f"{self.computed} computed, {self.reused} reused, {self.build_s:.1f} s)")


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {"num_tiles": meta.get("num_tiles", "1")}


def _fingerprint(model, processor, dtype) -> str:
    """A folder name that changes with the vision weights, config, dtype and image processor, so a disk
    cache is reused only by the same model (a resumed run), never by a different one."""
    base = _base(model)
    with torch.no_grad():
        sums = [float(p.detach().double().sum()) for p in (base.multi_modal_projector.weight,
                                                          base.vision_model.patch_embedding.weight)]
    ip = processor.image_processor
    ip_config = ip.to_dict() if hasattr(ip, "to_dict") else {}
    text = json.dumps({"vision": model.config.vision_config.to_dict(), "hidden": model.config.text_config.hidden_size,
                       "dtype": str(dtype), "sums": [f"{s:.6e}" for s in sums],
                       "image_processor": {k: str(v) for k, v in sorted(ip_config.items())}}, sort_keys=True)
    return "features-" + hashlib.sha1(text.encode()).hexdigest()[:16]
