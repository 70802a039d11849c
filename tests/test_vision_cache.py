"""The frozen vision features computed once (utils/vision_cache.py): same losses with and without the
cache (fp32 and 8-bit, image and text batches), resume, refusal for LoRA in the vision tower, disk
fallback and reuse. The tiny model's cross-attention gates are opened (they start at zero, which would
make the image features invisible to the loss and every comparison here trivially equal)."""

import pytest
import torch

from utils.batching import Collator
from utils.config import LoraSettings
from utils.lora import add_lora
from utils.memory import config_11b
from utils.modeling import load_model
from utils.train import TrainSettings, build_trainer, train, vision_tower
from utils.vision_cache import (VisionFeatureCache, cache_is_exact, estimate_bytes, feature_shape,
                                image_hash)

from .conftest import sample_rows

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def rows(processor):
    return sample_rows(processor, 4, 8, 96)


def lora_model(tiny_dir, precision="fp32", scope="language"):
    model = load_model(model_name_or_path=tiny_dir, precision=precision)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                p.fill_(1.0)
    torch.manual_seed(0)  # LoRA's A matrices are drawn from the global RNG: the same start in every run
    return add_lora(model, LoraSettings(r=8, lora_dropout=0.0, target_modules=QKVO, scope=scope))


class StopAt:
    """A callback that interrupts training after `step` (the checkpoint of that step is saved)."""

    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def run(tiny_dir, processor, rows, out, precision="fp32", cache=False, resume=False, stop_at=None, **cache_kw):
    """10 steps of batch 4 over 4 image + 8 text rows (an image batch in every epoch); returns
    ({step: train loss}, {step: eval loss}, vision tower calls during training, the cache)."""
    model = lora_model(tiny_dir, precision)
    vision_cache = VisionFeatureCache.build(model, processor, rows, verbose=False, **cache_kw) if cache else None
    settings = TrainSettings(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                             max_steps=10, learning_rate=5e-3, logging_steps=1, eval_steps=5, save_steps=5,
                             warmup_ratio=0.0)
    trainer = build_trainer(model, processor, rows, rows[:4], settings, vision_cache=vision_cache,
                            callbacks=[StopAt(stop_at)] if stop_at else ())
    calls = []
    hook = vision_tower(model).register_forward_hook(lambda *a: calls.append(1))
    train(trainer, resume=resume)
    hook.remove()
    logs = trainer.state.log_history
    return ({h["step"]: h["loss"] for h in logs if "loss" in h}, {h["step"]: h["eval_loss"] for h in logs
            if "eval_loss" in h}, len(calls), vision_cache)


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-5), ("8bit", 1e-4)])
def test_same_losses_with_and_without_the_cache(tiny_dir, processor, rows, tmp_path, precision, tol):
    off, eval_off, calls_off, _ = run(tiny_dir, processor, rows, tmp_path / "off", precision)
    on, eval_on, calls_on, cache = run(tiny_dir, processor, rows, tmp_path / "on", precision, cache=True)
    paths = {r["image"] for r in rows if r["image"]}
    assert len(cache) == len({image_hash(p) for p in paths}) == 3 < len(paths) and cache.in_memory  # 2 files, 1 image
    assert calls_off > 0 and calls_on == 0  # the cached run never ran the vision tower while training
    assert sorted(on) == sorted(off) == list(range(1, 11))
    for step in off:
        assert on[step] == pytest.approx(off[step], rel=tol, abs=tol), (step, on, off)
    assert sorted(eval_on) == sorted(eval_off) == [0, 5, 10] and all(eval_on[s] == pytest.approx(eval_off[s], rel=tol) for s in eval_on)


def test_cached_batches_hold_the_features_that_change_the_loss(tiny_dir, processor, rows):
    """Image and text batches: an image batch carries cross_attention_states (no pixel values) that give the
    same loss as the pixels; wrong features (another row's image) change it, so the equality means something."""
    model = lora_model(tiny_dir).eval()
    cache = VisionFeatureCache.build(model, processor, rows, verbose=False)
    plain, cached = Collator(processor), Collator(processor, vision_cache=cache)
    image, text = rows[:4], rows[4:8]
    a, b = plain(image), cached(image)
    assert "pixel_values" in a and "cross_attention_states" not in a  # unchanged without a cache
    assert "pixel_values" not in b and "aspect_ratio_ids" not in b
    assert b["cross_attention_states"].shape == (4 * 4, *feature_shape(model.config)[1:])
    assert torch.equal(a["cross_attention_mask"], b["cross_attention_mask"])
    assert cached(text).keys() == plain(text).keys() == {"input_ids", "attention_mask", "labels"}
    with torch.no_grad():
        out_a, out_b = model(**a), model(**b)
        b["cross_attention_states"] = b["cross_attention_states"].roll(4, dims=0)  # each row gets another's image
        wrong = model(**b).logits
    assert out_b.loss.item() == pytest.approx(out_a.loss.item(), rel=1e-6)
    assert (out_b.logits - out_a.logits).abs().max() < 1e-5
    assert (wrong - out_a.logits).abs().max() > 1e-2


def test_resume_with_the_cache_reproduces_the_uninterrupted_run(tiny_dir, processor, rows, tmp_path):
    kw = dict(cache=True, max_memory_mb=0)  # on disk, in the run folder
    full, _, _, _ = run(tiny_dir, processor, rows, tmp_path / "full", cache_dir=tmp_path / "full" / "vf", **kw)
    part, _, _, first = run(tiny_dir, processor, rows, tmp_path / "cut", stop_at=5, cache_dir=tmp_path / "cut" / "vf",
                            **kw)
    assert max(part) == 5 and (tmp_path / "cut" / "checkpoint-5").is_dir() and first.computed == 3
    rest, _, _, second = run(tiny_dir, processor, rows, tmp_path / "cut", resume=True,
                             cache_dir=tmp_path / "cut" / "vf", **kw)
    assert second.computed == 0 and second.reused == 3  # the resumed run read the features from disk
    assert sorted(rest) == list(range(1, 11))  # steps 1-5 come from checkpoint-5's trainer state
    for step in rest:
        assert rest[step] == pytest.approx(full[step], rel=1e-5), (step, rest, full)


def test_cache_refuses_lora_in_the_vision_tower(tiny_dir, processor, rows):
    language = lora_model(tiny_dir, "8bit", scope="language")
    exact, reason = cache_is_exact(language, "language")
    assert exact, reason
    model = lora_model(tiny_dir, "8bit", scope="language_vision")
    exact, reason = cache_is_exact(model, "language_vision")
    assert not exact and "vision" in reason
    assert not cache_is_exact(model)[0]  # found from the trainable parameters alone, without the scope
    with pytest.raises(ValueError, match="refused.*vision"):
        VisionFeatureCache.build(model, processor, rows, verbose=False)


def test_disk_fallback_and_reuse_without_recompute(tiny_dir, processor, rows, tmp_path, capsys):
    model = lora_model(tiny_dir).eval()
    calls = []
    hook = vision_tower(model).register_forward_hook(lambda *a: calls.append(1))
    memory = VisionFeatureCache.build(model, processor, rows, batch_size=4)
    assert memory.in_memory and calls == [1]
    with pytest.raises(ValueError, match="over max_memory_mb"):  # past the budget and nowhere to put it
        VisionFeatureCache.build(model, processor, rows, max_memory_mb=0.01, verbose=False)
    disk = VisionFeatureCache.build(model, processor, rows, max_memory_mb=0.01, cache_dir=tmp_path, batch_size=1)
    out = capsys.readouterr().out
    assert "on disk" in out and "3 images computed, 0 reused" in out
    files = sorted(disk.cache_dir.glob("*.safetensors"))
    assert not disk.in_memory and len(files) == 3 and len(calls) == 1 + 3
    again = VisionFeatureCache.build(model, processor, rows, max_memory_mb=0.01, cache_dir=tmp_path, verbose=False)
    assert len(calls) == 4 and (again.computed, again.reused) == (0, 3)  # no recompute
    assert sorted(again.cache_dir.glob("*.safetensors")) == files
    for r in rows[:4]:
        assert torch.equal(again.features(r["image"]), memory.features(r["image"]))
        assert again.num_tiles(r["image"]) == memory.num_tiles(r["image"])
    with torch.no_grad():  # other weights: another folder, recomputed
        model.get_base_model().model.multi_modal_projector.weight.mul_(2)
    other = VisionFeatureCache.build(model, processor, rows, max_memory_mb=0.01, cache_dir=tmp_path, verbose=False)
    hook.remove()
    assert other.cache_dir != disk.cache_dir and other.computed == 3


def test_size_estimate_matches_the_11b_config_and_the_real_tensors(tiny_dir, processor, rows):
    config = config_11b()
    assert feature_shape(config) == (4, 1601, 4096)  # 560 px / 14 = 40 x 40 patches + class token, text hidden
    assert estimate_bytes(config, 1, torch.bfloat16) == 4 * 1601 * 4096 * 2 == 52_461_568
    assert estimate_bytes(config, 10, torch.float32) == 20 * 52_461_568
    model = lora_model(tiny_dir).eval()
    cache = VisionFeatureCache.build(model, processor, rows, verbose=False)
    image = rows[0]["image"]
    assert tuple(cache.features(image).shape) == feature_shape(model.config)
    assert cache.nbytes == estimate_bytes(model.config, 3, torch.float32)
    # the same tensor the model computes from the pixels (MllamaModel.forward's reshape)
    batch = Collator(processor)(rows[:1])
    base = model.get_base_model().model
    with torch.no_grad():
        states = base.multi_modal_projector(base.vision_model(
            pixel_values=batch["pixel_values"], aspect_ratio_ids=batch["aspect_ratio_ids"],
            aspect_ratio_mask=batch["aspect_ratio_mask"]).last_hidden_state)
    assert torch.allclose(states.reshape(-1, *feature_shape(model.config)[1:]), cache.features(image), atol=1e-6)


def test_disk_cache_checks_free_space_first_and_budget_follows_ram(tiny_dir, processor, rows, tmp_path, monkeypatch):
    """1,000 11B images are 52 GB: the free space is checked before a file is written; the in-memory budget
    is a share of the available RAM, split over the processes, not a fixed 2,048 MB."""
    import shutil
    from types import SimpleNamespace

    import psutil

    import utils.vision_cache as vc

    model = lora_model(tiny_dir).eval()
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))  # 1 kB free
    with pytest.raises(vc.CacheSpaceError, match=r"need .* MB in .*, which has 0 MB free"):
        VisionFeatureCache.build(model, processor, rows, max_memory_mb=0.01, cache_dir=tmp_path, verbose=False)
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing written
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=12e9))
    assert vc.default_memory_mb() == pytest.approx(3000) and vc.default_memory_mb(4) == pytest.approx(750)
