"""Activation bytes of one LoRA training step, measured on CPU, against utils.memory's plan (not a test).

    python -m benchmarks.activation_memory      # writes benchmarks/results/activation_memory.{json,md}
    python -m benchmarks.activation_memory --replan   # planned columns only, from the saved measurement

An 11B-width slice (utils.retention.slice_11b_config: 3 text layers, layer 1 cross-attention, a 1+1-layer vision
tower, real hidden / intermediate / head / vocabulary sizes, one 560 px 4-tile image), random bf16 weights, the
series' LoRA (LoraSettings()) and notebook 04's preparation (utils.train.prepare_for_training: non-reentrant
checkpointing, input grads, the vision tower under no_grad, free_int8_inputs). Measured with
utils.retention.retained_bytes: bytes kept from forward to backward and the peak during backward, logits apart
(tensors whose last dimension is the vocabulary). 8-bit: the same weights saved and loaded with
bitsandbytes' LLM.int8 (its CPU path), bf16 compute.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from utils.config import LoraSettings  # noqa: E402
from utils.lora import add_lora  # noqa: E402
from utils.memory import planned_activation_bytes  # noqa: E402
from utils.retention import random_model, retained_bytes, slice_11b_config  # noqa: E402
from utils.train import prepare_for_training  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def slice_batch(config, seq_len: int, image: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128000, (1, seq_len), generator=g)
    labels = ids.clone()
    labels[0, : seq_len // 2] = -100
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    if image:
        ids[0, 1] = config.image_token_index
        batch.update(pixel_values=torch.randn(1, 1, 4, 3, 560, 560, generator=g).to(torch.bfloat16),
                     aspect_ratio_ids=torch.tensor([[6]]),  # 2 x 2 tiles
                     aspect_ratio_mask=torch.ones(1, 1, 4, dtype=torch.long),
                     cross_attention_mask=torch.ones(1, seq_len, 1, 4, dtype=torch.long))
    return batch


def measure(model, config, precision, cases):
    vocab = config.text_config.vocab_size
    kind = lambda t: "logits" if t.shape[-1:] == (vocab,) else "activations"  # noqa: E731
    rows = []
    for seq_len, image in cases:
        t0 = time.perf_counter()
        kept, peak = retained_bytes(model, slice_batch(config, seq_len, image), classify=kind, backward_peak=True)
        rows.append({"precision": precision, "seq_len": seq_len, "image": image, "step_s": time.perf_counter() - t0,
                     "measured_kept": kept["activations"], "measured_peak": peak["activations"],
                     "measured_logits_kept": kept["logits"]})
        print(rows[-1], flush=True)
    return rows


def add_plan(rows, config):
    """The planner's numbers next to the measured ones (rerun with --replan after a formula change)."""
    for r in rows:
        plan = planned_activation_bytes(config, LoraSettings(), 1, r["seq_len"], r["image"], tiles=4, parts=True,
                                        precision=r["precision"])
        r.update(planned_kept=plan["kept"], planned=plan["kept"] + plan["recompute"])
        r["planned_over_measured"] = r["planned"] / r["measured_peak"]
    return rows


def main():
    warnings.filterwarnings("ignore")
    config = slice_11b_config()
    if "--replan" in sys.argv:
        out = json.loads((RESULTS / "activation_memory.json").read_text())
        return write(out, add_plan(out["rows"], config))
    cases = [(64, True), (128, False)]
    t0 = time.perf_counter()
    model = random_model(config)
    build_s = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        peft = prepare_for_training(add_lora(model, LoraSettings()), gradient_checkpointing=True).train()
        rows += measure(peft, config, "bf16", cases)
        del model, peft
        from transformers import MllamaForConditionalGeneration

        from utils.modeling import quantization_config

        int8 = MllamaForConditionalGeneration.from_pretrained(tmp, dtype=torch.bfloat16,
                                                              quantization_config=quantization_config("8bit"))
        peft = prepare_for_training(add_lora(int8, LoraSettings()), gradient_checkpointing=True).train()
        rows += measure(peft, config, "8bit", cases)
    machine = (f"{platform.platform()}, {platform.machine()}, os.cpu_count() = {__import__('os').cpu_count()}, "
               f"torch {torch.__version__} ({torch.get_num_threads()} threads), no GPU")
    write({"machine": machine, "build_s": build_s, "lora": LoraSettings().to_dict()}, add_plan(rows, config))


def write(out, rows):
    out["rows"], machine = rows, out["machine"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "activation_memory.json").write_text(json.dumps(out, indent=1))
    lines = ["# Activation memory of a LoRA step: 11B-width slice on CPU, measured vs planned", "",
             f"Machine: {machine}. Slice: 3 text layers (layer 1 cross-attention), 1+1 vision layers, full widths, "
             "batch 1, one 560 px 4-tile image (6,404 vision tokens) or text only; LoRA r=8 on q,k,v,o "
             "(dropout 0.05), non-reentrant checkpointing. Bytes exclude weights and logits "
             "(utils.retention.retained_bytes).", "",
             "| precision | tokens | image | kept measured | kept planned | peak measured | planned | planned/measured |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['seq_len']} | {'yes' if r['image'] else 'no'} | {r['measured_kept']:,} | "
                     f"{r['planned_kept']:,} | {r['measured_peak']:,} | {r['planned']:,} | "
                     f"{r['planned_over_measured']:.3f} |")
    (RESULTS / "activation_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
