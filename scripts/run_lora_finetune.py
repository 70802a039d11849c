#!/usr/bin/env python
"""Train a LoRA adapter on Llama 3.2 Vision from the shell (the seed's command line).

    python scripts/run_lora_finetune.py --data_path data/construction_train.jsonl --output_dir outputs/cli \
        --per_device_train_batch_size 2 --gradient_accumulation_steps 2 --max_seq_length 512 --num_train_epochs 3

`--model tiny` (offline, CPU) or `--model 11b` (GPU, Hugging Face token) run the same code.
Unset options take the profile's defaults (utils.config.PROFILE_DEFAULTS).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.config import DATA_DIR, PRECISIONS, PROFILES, LoraSettings, choose_setup, profile_defaults  # noqa: E402
from utils.lora import SCOPES  # noqa: E402

SAMPLE_TRAIN = DATA_DIR / "construction_train.jsonl"
SAMPLE_EVAL = DATA_DIR / "construction_eval.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", default=str(SAMPLE_TRAIN), help="JSONL, seed or chat format")
    p.add_argument("--eval_data_path", default=None,
                   help="held-out JSONL; default: the sample eval split for the sample data, else 5%% of data_path")
    p.add_argument("--output_dir", default="outputs/cli")
    p.add_argument("--model", default="auto", choices=PROFILES, help="tiny (offline CPU), 11b (Hub), auto")
    p.add_argument("--model_name_or_path", default=None, help="a local folder or Hub id instead of the profile's model")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="weights: 8bit (LLM.int8), 4bit (nf4), bf16, fp16, fp32; auto: 8bit where the memory plan fits "
                        "this GPU, else 4bit (env LLAMA_VISION_PRECISION)")
    p.add_argument("--per_device_train_batch_size", type=int)
    p.add_argument("--gradient_accumulation_steps", type=int)
    p.add_argument("--max_seq_length", type=int)
    p.add_argument("--num_train_epochs", type=float)
    p.add_argument("--max_steps", type=int, default=-1, help="overrides epochs when > 0")
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--lora_rank", type=int)
    p.add_argument("--lora_alpha", type=int)
    p.add_argument("--lora_dropout", type=float)
    p.add_argument("--target_modules", help="comma-separated, e.g. q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--lora_scope", choices=sorted(SCOPES))
    p.add_argument("--save_steps", type=int, default=50)
    p.add_argument("--eval_steps", type=int, default=50)
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--max_train_rows", type=int, help="use only the first N rows (after a seeded shuffle)")
    p.add_argument("--skip_bad_rows", action="store_true", help="drop bad lines (reported) instead of stopping")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cache_vision_features", default="auto", choices=("auto", "on", "off"),
                   help="compute the frozen vision features once per image (utils/vision_cache.py); auto: on when "
                        "exact (no LoRA in the vision tower)")
    p.add_argument("--vision_cache_mb", type=float, default=2048,
                   help="keep the cached features in memory up to this size, else on disk in output_dir")
    p.add_argument("--group_by_length", nargs="?", const=True, default=True, type=_bool,
                   help="batch rows of similar length (default on; --group_by_length false or --no-group_by_length)")
    p.add_argument("--no-group_by_length", dest="group_by_length", action="store_false")
    return p.parse_args(argv)


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def settings_from_args(args):
    """(TrainSettings, LoraSettings): CLI values where given, else the profile's defaults."""
    from utils.train import TrainSettings

    d = profile_defaults(args.model)
    pick = lambda value, key: d[key] if value is None else value  # noqa: E731
    train = TrainSettings(
        output_dir=args.output_dir,
        per_device_train_batch_size=pick(args.per_device_train_batch_size, "per_device_train_batch_size"),
        gradient_accumulation_steps=pick(args.gradient_accumulation_steps, "gradient_accumulation_steps"),
        num_train_epochs=pick(args.num_train_epochs, "num_train_epochs"),
        max_steps=args.max_steps, learning_rate=pick(args.learning_rate, "learning_rate"),
        max_seq_length=pick(args.max_seq_length, "max_seq_length"), logging_steps=args.logging_steps,
        eval_steps=args.eval_steps, save_steps=args.save_steps, seed=args.seed, group_by_length=args.group_by_length)
    lora = d["lora"]
    targets = args.target_modules.split(",") if args.target_modules else lora["target_modules"]
    lora_settings = LoraSettings(
        r=args.lora_rank or lora["r"], lora_alpha=args.lora_alpha or lora["lora_alpha"],
        lora_dropout=lora["lora_dropout"] if args.lora_dropout is None else args.lora_dropout,
        target_modules=[t.strip() for t in targets if t.strip()], scope=args.lora_scope or lora["scope"])
    return train, lora_settings


def split_data(args):
    from utils.data import load_examples

    train = load_examples(args.data_path, skip_bad=args.skip_bad_rows)
    random.Random(args.seed).shuffle(train)
    if args.eval_data_path:
        evaluation = load_examples(args.eval_data_path, skip_bad=args.skip_bad_rows)
    elif Path(args.data_path).resolve() == SAMPLE_TRAIN.resolve():
        evaluation = load_examples(SAMPLE_EVAL)
    else:
        n = max(1, len(train) // 20) if len(train) > 1 else 0
        evaluation, train = train[:n], train[n:]
        print(f"held out {n} of {n + len(train)} rows for eval loss (pass --eval_data_path to choose)")
    if args.max_train_rows:
        train = train[: args.max_train_rows]
    return train, evaluation


def summary_line(steps: int, seconds: float, history: dict) -> str:
    """One line for the end of a run; works with an empty history (nothing logged)."""
    train_losses = [loss for _, loss in history.get("train", [])]
    eval_losses = [loss for _, loss in history.get("eval", [])]
    text = f"done: {steps} steps in {seconds:.0f} s"
    if train_losses:
        text += f", train loss {train_losses[0]:.3f} -> {train_losses[-1]:.3f}"
    else:
        text += ", no train loss logged"
    if eval_losses:
        text += f", eval loss {eval_losses[-1]:.3f}"
    return text


def padding_report(train_rows, batch_size: int, seed: int, group_by_length: bool) -> str:
    """Padding share of the first epoch's training batches without and with length grouping."""
    from utils.batching import modality_batches, padding_fraction

    plain, grouped = (padding_fraction(train_rows, modality_batches(train_rows, batch_size, True, seed, g))
                      for g in (False, True))
    return (f"padding in training batches (epoch 1 order, batch {batch_size}): {100 * plain:.1f}% without length "
            f"grouping, {100 * grouped:.1f}% with; group_by_length={'on' if group_by_length else 'off'}")


def vision_cache_decision(mode: str, model, scope: str, rows) -> tuple[bool, str]:
    """(use the cache, why) for --cache_vision_features auto|on|off."""
    from utils.vision_cache import cache_is_exact

    if mode == "off":
        return False, "off (--cache_vision_features off)"
    if not any(r.get("image") for r in rows):
        return False, "off (no row has an image)"
    exact, reason = cache_is_exact(model, scope)
    if exact:
        return True, f"on ({mode}): {reason}"
    if mode == "on":
        raise ValueError(f"--cache_vision_features on, but the cache would not be exact: {reason}")
    return False, f"off (auto): {reason}"


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    # bitsandbytes logs "MatMul8bitLt: inputs will be cast ..." at every int8 matmul on CPU (a log record, not a warning).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    args = parse_args(argv)
    setup = choose_setup(args.model, args.precision)
    print(setup)  # the decision and the planned training peak next to this GPU's memory
    args.model, args.precision = setup.profile, setup.precision
    from utils.batching import encode_all
    from utils.data import DataError
    from utils.export import export_adapter
    from utils.lora import LoraTargetError, add_lora, count_parameters
    from utils.modeling import HubAccessError, load_model, load_processor
    from utils.train import build_trainer, train

    train_settings, lora_settings = settings_from_args(args)
    try:
        train_examples, eval_examples = split_data(args)
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"profile={args.model} precision={args.precision} train rows={len(train_examples)} "
          f"eval rows={len(eval_examples)}")
    try:
        processor = load_processor(args.model, args.model_name_or_path)
        model = load_model(args.model, args.precision, args.model_name_or_path)
    except HubAccessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    try:
        train_rows = encode_all(processor, train_examples, train_settings.max_seq_length)
    except ValueError as err:
        print(f"error: {err}: raise --max_seq_length or shorten the answers", file=sys.stderr)
        return 2
    eval_rows = None
    if eval_examples:
        try:
            eval_rows = encode_all(processor, eval_examples, train_settings.max_seq_length)
        except ValueError as err:
            print(f"warning: eval split: {err}; training without eval loss")
    try:
        model = add_lora(model, lora_settings)
    except LoraTargetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    trainable, total = count_parameters(model)
    print(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")
    print(padding_report(train_rows, train_settings.per_device_train_batch_size, train_settings.seed,
                         train_settings.group_by_length))
    all_rows = train_rows + (eval_rows or [])
    try:
        use_cache, why = vision_cache_decision(args.cache_vision_features, model, lora_settings.scope, all_rows)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"vision feature cache: {why}")
    vision_cache = None
    if use_cache:
        from utils.vision_cache import VisionFeatureCache

        vision_cache = VisionFeatureCache.build(model, processor, all_rows, max_memory_mb=args.vision_cache_mb,
                                                cache_dir=Path(args.output_dir) / "vision_features",
                                                lora_scope=lora_settings.scope)
    trainer = build_trainer(model, processor, train_rows, eval_rows, train_settings, vision_cache=vision_cache)
    start = time.time()
    train(trainer, resume=args.resume)
    files = export_adapter(model, processor, Path(args.output_dir) / "adapter", train_settings.to_dict(),
                           lora_settings.to_dict())
    print(summary_line(trainer.state.global_step, time.time() - start,
                       json.loads((Path(args.output_dir) / "loss_history.json").read_text())))
    print(f"adapter in {Path(args.output_dir) / 'adapter'}: " + ", ".join(f"{k} ({v / 1e6:.2f} MB)" for k, v in files.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
