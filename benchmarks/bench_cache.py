"""CPU benchmark on the tiny profile: epoch time with and without the vision feature cache and with and
without length grouping, in one run (not a test).

    python -m benchmarks.bench_cache            # writes benchmarks/results/cache_cpu.json and .md

The training is the CLI's (utils.train.build_trainer, 8-bit tiny model, the tiny profile's LoRA and batch),
over the tiny profile's 160 rows of data/construction_train.jsonl after the CLI's seeded shuffle, for 5
epochs; epochs 2 and later are timed (epoch 1 includes warm-up) and the ratios use the fastest of them. A second
set times the image rows alone (all image rows of the file), where the cache matters most. The tiny vision
tower is small (2+1 layers of width 32 on 56 px tiles), so the CPU ratio says little about the 11B on a
GPU, where the frozen tower and projector are 19.0 of the 29.8 TFLOP forward per sample (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from utils.batching import encode_all, modality_batches, padding_fraction  # noqa: E402
from utils.config import DATA_DIR, LoraSettings, profile_defaults  # noqa: E402
from utils.data import load_examples  # noqa: E402
from utils.lora import add_lora  # noqa: E402
from utils.modeling import load_model, load_processor  # noqa: E402
from utils.train import TrainSettings, build_trainer, train  # noqa: E402
from utils.vision_cache import VisionFeatureCache  # noqa: E402


NOTE = (
    "Ratios below 1 mean faster (fastest epoch after the first). The tiny vision tower is small (2+1 "
    "layers of width 32 on 56 px tiles, vs 32+8 layers of width 1280 on 560 px tiles in the 11B), so the CPU ratio for the cache says "
    "little about the 11B on a GPU, where the frozen tower and projector are 19.0 of the 29.8 TFLOP "
    "forward per sample (benchmarks/README.md) but only for image rows; on CPU, image decoding and "
    "resizing in the collator is part of what the cache saves. This machine's 2 cores were shared "
    "with another job: identical epochs varied by up to 70%, so ratios within about 10% of 1 are noise. "
    "GPU numbers: not measured.")


class EpochTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t0 = [], None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t0)


def machine() -> dict:
    import peft
    import transformers

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.is_available()}


def run(processor, rows, eval_rows, cache: bool, group: bool, out: Path, epochs: int, defaults: dict) -> dict:
    lora = defaults["lora"]
    model = load_model("tiny", "8bit")
    torch.manual_seed(0)
    model = add_lora(model, LoraSettings(**lora))
    build_s = None
    vision_cache = None
    if cache:
        vision_cache = VisionFeatureCache.build(model, processor, rows + eval_rows, lora_scope=lora["scope"],
                                                verbose=False)
        build_s = vision_cache.build_s
    settings = TrainSettings(output_dir=str(out), per_device_train_batch_size=defaults["per_device_train_batch_size"],
                             gradient_accumulation_steps=defaults["gradient_accumulation_steps"],
                             num_train_epochs=epochs, max_steps=-1, learning_rate=defaults["learning_rate"],
                             logging_steps=10**6, eval_steps=10**6, save_steps=10**6, group_by_length=group)
    timer = EpochTimer()
    trainer = build_trainer(model, processor, rows, None, settings, callbacks=[timer], vision_cache=vision_cache)
    from transformers.trainer_callback import ProgressCallback

    trainer.remove_callback(ProgressCallback)
    train(trainer, resume=False)
    return {"cache": cache, "group_by_length": group, "epoch_s": timer.times,
            "epoch_2_3_mean_s": statistics.mean(timer.times[1:3]), "epoch_2_on_median_s": statistics.median(timer.times[1:]),
            "cache_build_s": build_s, "steps": trainer.state.global_step}


def ratio_table(results: list[dict]) -> dict:
    """Ratios of the fastest epoch after the first (contention on shared cores only adds time, so the
    minimum is the least disturbed measure; the medians are in the table)."""
    t = {(r["cache"], r["group_by_length"]): min(r["epoch_s"][1:]) for r in results}
    get = lambda c, g: t.get((c, g))  # noqa: E731
    out = {}
    if get(True, True) and get(False, True):
        out["cache_on_over_off (grouped)"] = get(True, True) / get(False, True)
    if get(True, False) and get(False, False):
        out["cache_on_over_off (not grouped)"] = get(True, False) / get(False, False)
    if get(False, True) and get(False, False):
        out["grouped_over_not_grouped (no cache)"] = get(False, True) / get(False, False)
    if get(True, True) and get(False, False):
        out["both_over_neither"] = get(True, True) / get(False, False)
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Vision feature cache and length grouping: tiny profile on CPU", "",
             f"Machine: {m['platform']}, {m['processor']}, os.cpu_count() = {m['cpu_count']} (shared with another "
             f"job: load average {res['loadavg_start'][0]:.1f} at the start, {res['loadavg_end'][0]:.1f} at the end), "
             f"torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}, peft {m['peft']}, "
             "no GPU.", "",
             f"Tiny model in 8-bit, LoRA {res['lora']}, batch {res['batch_size']}, {res['epochs']} epochs per "
             "configuration (a fresh model and Trainer each); epoch 1 (warm-up) is not counted. The ratios use the "
             "fastest of epochs 2 and later: the other job on the shared cores only adds time, in bursts (identical "
             "epochs vary by up to 70%), so the minimum is the least disturbed figure; mean of epochs 2-3 and "
             "median are listed too.", ""]
    for name, part in res["sets"].items():
        lines += [f"## {name}: {part['rows']} rows ({part['image_rows']} with an image, {part['unique_images']} "
                  f"unique images), max_seq_length {res['max_seq_length']}", "",
                  f"Padding fraction of the training batches (epoch 1 order): {100 * part['padding_not_grouped']:.1f}% "
                  f"without length grouping, {100 * part['padding_grouped']:.1f}% with.", "",
                  "| cache | group_by_length | epochs s | mean 2-3 s | median 2+ s | min 2+ s | cache build s |",
                  "|---|---|---|---|---|---|---|"]
        for r in part["runs"]:
            lines.append(f"| {'on' if r['cache'] else 'off'} | {'on' if r['group_by_length'] else 'off'} | "
                         + ", ".join(f"{x:.2f}" for x in r["epoch_s"])
                         + f" | {r['epoch_2_3_mean_s']:.2f} | {r['epoch_2_on_median_s']:.2f} | {min(r['epoch_s'][1:]):.2f} | "
                         + ("-" if r["cache_build_s"] is None else f"{r['cache_build_s']:.2f}") + " |")
        lines += [""] + [f"- {k}: **{v:.2f}**" for k, v in part["ratios"].items()] + [""]
    lines += ["## What this says", "", res["note"], ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rows", type=int, default=None, help="train rows (default: the tiny profile's 160)")
    p.add_argument("--work", default="/tmp/bench_cache")
    p.add_argument("--from-json", help="rewrite the ratios and the .md from a saved cache_cpu.json, without running")
    args = p.parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        for part in res["sets"].values():
            part["ratios"] = ratio_table(part["runs"])
        res["note"] = NOTE
        write(Path(args.out), res)
        return res
    defaults = profile_defaults("tiny")
    processor = load_processor("tiny")
    examples = load_examples(DATA_DIR / "construction_train.jsonl")
    random.Random(42).shuffle(examples)  # the CLI's seeded shuffle
    eval_examples = load_examples(DATA_DIR / "construction_eval.jsonl")[: defaults["max_eval_rows"]]
    seq, bs = defaults["max_seq_length"], defaults["per_device_train_batch_size"]
    sample = encode_all(processor, examples[: args.rows or defaults["max_train_rows"]], seq, verbose=False)
    images = encode_all(processor, [e for e in examples if e.images], seq, verbose=False)
    eval_rows = encode_all(processor, eval_examples, seq, verbose=False)
    res = {"machine": machine(), "loadavg_start": os.getloadavg(), "epochs": args.epochs, "batch_size": bs,
           "max_seq_length": seq, "lora": defaults["lora"], "sets": {}}
    from utils.vision_cache import image_hash

    plan = {"sample (tiny profile rows)": (sample, [(False, True), (True, True), (False, False), (True, False)]),
            "image rows only": (images, [(False, True), (True, True)])}
    for name, (rows, configs) in plan.items():
        part = {"rows": len(rows), "image_rows": sum(bool(r["image"]) for r in rows),
                "unique_images": len({image_hash(r["image"]) for r in rows if r["image"]}),
                "padding_not_grouped": padding_fraction(rows, modality_batches(rows, bs, True, 42, False)),
                "padding_grouped": padding_fraction(rows, modality_batches(rows, bs, True, 42, True)), "runs": []}
        for cache, group in configs:
            print(f"[{name}] cache={'on' if cache else 'off'} group_by_length={'on' if group else 'off'} ...",
                  flush=True)
            r = run(processor, rows, eval_rows, cache, group, Path(args.work) / "run", args.epochs, defaults)
            print(f"  epochs {', '.join(f'{t:.2f}' for t in r['epoch_s'])} s (load average {os.getloadavg()[0]:.1f})",
                  flush=True)
            part["runs"].append(r)
        part["ratios"] = ratio_table(part["runs"])
        res["sets"][name] = part
    res["loadavg_end"] = os.getloadavg()
    res["note"] = NOTE
    write(Path(args.out), res)
    return res


def write(out: Path, res: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache_cpu.json").write_text(json.dumps(res, indent=1))
    (out / "cache_cpu.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
