#!/usr/bin/env python
"""Train a LoRA adapter on Llama 3.2 Vision from the shell (the seed's command line), with every Trainer flag.

    python scripts/run_lora_finetune.py --data_path data/construction_train.jsonl --output_dir outputs/cli \
        --per_device_train_batch_size 2 --gradient_accumulation_steps 2 --max_seq_length 512 --num_train_epochs 3

The flags are transformers.TrainingArguments (--learning_rate --lr_scheduler_type --warmup_steps --save_total_limit
--seed --report_to tensorboard --logging_steps ...) plus this project's data, model and LoRA options (the
dataclasses below). Where a value comes from, strongest first: a flag on the command line, `--config run.json`
(JSON or YAML, keys = the flags; notebooks write OUTPUT_DIR/run_config.json in this form), the profile's
defaults (`--model tiny|11b|auto`: utils.config.PROFILE_DEFAULTS), utils.config.TRAIN_DEFAULTS and
utils.train.cli_training_defaults().

More than one GPU: `accelerate launch --config_file configs/accelerate/ddp_8bit.yaml scripts/run_lora_finetune.py ...`
(data-parallel LoRA; see README "Training from the shell"). The final adapter lands in --output_dir
(Trainer.save_model: adapter_config.json, adapter_model.safetensors, processor files, training_args.bin) with
the seed's lora_adapter_state_dict.pt; checkpoints in --output_dir/checkpoint-N.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import HfArgumentParser, TrainingArguments  # noqa: E402

from utils.config import DATA_DIR, PRECISIONS, PROFILES, TRAIN_DEFAULTS, LoraSettings, profile_defaults  # noqa: E402
from utils.setup import choose_setup, resolve_profile  # noqa: E402
from utils.lora import SCOPES  # noqa: E402

SAMPLE_TRAIN = DATA_DIR / "construction_train.jsonl"
SAMPLE_EVAL = DATA_DIR / "construction_eval.jsonl"
# The sample sets and their held-out files (the whole set for the 11b profile, the workshop set for tiny).
SAMPLE_PAIRS = {SAMPLE_TRAIN: SAMPLE_EVAL,
                DATA_DIR / "construction_tiny_train.jsonl": DATA_DIR / "construction_tiny_eval.jsonl"}
SEED_STATE_DICT = "lora_adapter_state_dict.pt"


@dataclass
class DataArguments:
    data_path: str = field(default=str(SAMPLE_TRAIN), metadata={
        "help": "training data: a JSONL or JSON file (seed/Alpaca, chat messages, ShareGPT or TRL prompt/completion "
                "rows; data/README.md), a folder of them, a dataset saved with save_to_disk, or a Hub dataset id "
                "(user/name, with --dataset_split); default: the profile's sample set (tiny: "
                "data/construction_tiny_train.jsonl)"})
    eval_data_path: str | None = field(default=None, metadata={
        "help": "held-out data (same forms); default: the sample eval split for the sample data, else a seeded "
                "5%% of data_path"})
    dataset_split: str = field(default="train", metadata={"help": "split of a Hub or saved dataset"})
    eval_dataset_split: str | None = field(default=None, metadata={
        "help": "split of a Hub or saved eval dataset (default: --dataset_split)"})
    max_seq_length: int | None = field(default=None, metadata={
        "help": "longest row in tokens; longer prompts lose the middle of the user text (profile default)"})
    max_train_rows: int | None = field(default=None, metadata={"help": "use only N rows (after a seeded shuffle)"})
    skip_bad_rows: bool = field(default=False, metadata={"help": "drop bad rows (reported) instead of stopping"})
    mask_history: bool = field(default=False, metadata={
        "help": "train only the last assistant answer of each conversation (LLaMA-Factory's mask_history); by "
                "default every assistant answer and its <|eot_id|> carry labels (TRL's assistant_only_loss, "
                "LLaMA-Factory's default)"})
    num_proc: int | None = field(default=None, metadata={"help": "processes for tokenization (default min(4, cores))"})


@dataclass
class ModelArguments:
    model: str = field(default="auto", metadata={"choices": list(PROFILES),
                                                 "help": "tiny (offline CPU), 11b (Hub), auto"})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "a local folder or Hub id instead of the profile's model"})
    precision: str = field(default="auto", metadata={
        "choices": list(PRECISIONS), "help": "weights: 8bit (LLM.int8), 4bit (nf4), bf16, fp16, fp32; auto: 8bit "
                                             "where the memory plan fits this GPU, else 4bit (env LLAMA_VISION_PRECISION)"})
    cache_vision_features: str = field(default="auto", metadata={
        "choices": ["auto", "on", "off"], "help": "compute the frozen vision features once per image "
                                                  "(utils/vision_cache.py); auto: on when exact (no LoRA in the vision tower)"})
    vision_cache_mb: float | None = field(default=None, metadata={
        "help": "keep the cached features in memory up to this size (default: a quarter of the available RAM, "
                "split over this machine's processes), else on disk in output_dir (free space checked first)"})


@dataclass
class LoraArguments:
    lora_rank: int | None = field(default=None, metadata={"help": "LoRA r (profile default)"})
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (profile default)"})
    lora_dropout: float | None = field(default=None, metadata={"help": "LoRA dropout (profile default)"})
    target_modules: str | None = field(default=None, metadata={"help": "comma-separated, e.g. q_proj,k_proj,v_proj,o_proj"})
    lora_scope: str | None = field(default=None, metadata={"choices": sorted(SCOPES),
                                                           "help": "language, cross_attention or language_vision"})


@dataclass
class RunArguments:
    config: str | None = field(default=None, metadata={
        "help": "JSON (or YAML) file whose keys are these flags, e.g. a notebook's OUTPUT_DIR/run_config.json; "
                "flags on the command line override it"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    warmup_ratio: float = field(default=TRAIN_DEFAULTS["warmup_ratio"], metadata={
        "help": "share of the steps for LR warmup (used as --warmup_steps unless that is given)"})
    group_by_length: bool = field(default=TRAIN_DEFAULTS["group_by_length"], metadata={
        "help": "batch rows of similar length (within a modality); --no_group_by_length or --group_by_length false"})


DATACLASSES = (DataArguments, ModelArguments, LoraArguments, RunArguments, TrainingArguments)
# Flag -> key of PROFILE_DEFAULTS[profile] (the lora ones inside its "lora" dict).
PROFILE_FLAGS = {"data_path": "data_path", "per_device_train_batch_size": "per_device_train_batch_size",
                 "gradient_accumulation_steps": "gradient_accumulation_steps", "max_seq_length": "max_seq_length",
                 "num_train_epochs": "num_train_epochs", "learning_rate": "learning_rate"}
# Defaults argparse would misread as a string default (the flag's type is bool): set after parsing.
AFTER_PARSE = ("include_num_input_tokens_seen",)
PROFILE_LORA_FLAGS = {"lora_rank": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                      "target_modules": "target_modules", "lora_scope": "scope"}


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(DATACLASSES, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> dict:
    """The flags written on the command line (and their parsed values), defaults left out."""
    saved = [(action, action.default) for action in parser._actions]
    for action, _ in saved:
        action.default = argparse.SUPPRESS
    try:
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return vars(namespace)


def read_config(path, known: set[str]) -> dict:
    """A run config file (JSON; YAML by suffix): flag -> value. Keys starting with "_" (a notebook's "_set_by")
    and null values are ignored, lists become comma-separated (target_modules); unknown keys are an error."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise SystemExit(f"error: {path}: a run config is an object of flag: value")
    values = {k: v for k, v in values.items() if not k.startswith("_") and v is not None}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"error: {path}: unknown key(s) {unknown}: keys are the command-line flags "
                         "(python scripts/run_lora_finetune.py --help)")
    return {k: ",".join(map(str, v)) if k == "target_modules" and isinstance(v, list) else v
            for k, v in values.items()}


def profile_flag_defaults(profile: str) -> dict:
    """Unset flags -> the profile's values (utils.config.PROFILE_DEFAULTS) and TRAIN_DEFAULTS."""
    from utils.train import cli_training_defaults

    d = profile_defaults(profile)
    values = {flag: d[key] for flag, key in PROFILE_FLAGS.items()}
    values["data_path"] = str(DATA_DIR.parent / values["data_path"])  # the profile's sample set, repo-relative
    values.update({flag: d["lora"][key] for flag, key in PROFILE_LORA_FLAGS.items()})
    values["target_modules"] = ",".join(values["target_modules"])
    values.update({k: v for k, v in cli_training_defaults().items() if k not in AFTER_PARSE})
    # Non-reentrant checkpointing is switched on by utils.train.prepare_for_training, not by Trainer.
    values.update(output_dir="outputs/cli", activation_checkpointing=TRAIN_DEFAULTS["gradient_checkpointing"])
    return values


def parse_args(argv=None) -> argparse.Namespace:
    """Every flag resolved (command line > --config > profile defaults > project defaults), as one namespace."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # HfArgumentParser spells negations --no_X; the earlier CLI took --no-X (e.g. --no-group_by_length).
    argv = ["--no_" + a[5:] if a.startswith("--no-") else a for a in argv]
    parser = build_parser()
    given = given_flags(parser, argv)
    known = {action.dest for action in parser._actions} - {"help"}
    config = read_config(given["config"], known) if given.get("config") else {}
    profile = resolve_profile(given.get("model") or config.get("model") or "auto")
    parser.set_defaults(**{**profile_flag_defaults(profile), **config})
    args = parser.parse_args(argv)
    chosen = {**config, **given}
    if "per_device_eval_batch_size" not in chosen:
        args.per_device_eval_batch_size = args.per_device_train_batch_size
    from utils.train import cli_training_defaults

    for key, value in cli_training_defaults().items():
        if key in AFTER_PARSE and key not in chosen:
            setattr(args, key, value)
    if "warmup_steps" not in chosen:
        args.warmup_steps = args.warmup_ratio  # a float below 1 is a share of the steps
    return args


def split_arguments(args: argparse.Namespace):
    """(DataArguments, ModelArguments, LoraArguments, RunArguments, TrainingArguments) from parse_args()."""
    values = vars(args)
    return tuple(cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})
                 for cls in DATACLASSES)


def lora_settings(lora: LoraArguments) -> LoraSettings:
    targets = lora.target_modules.split(",") if isinstance(lora.target_modules, str) else lora.target_modules
    return LoraSettings(r=lora.lora_rank, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                        target_modules=[t.strip() for t in targets if t.strip()], scope=lora.lora_scope)


def split_data(data: DataArguments, seed: int, say=print):
    """(train examples, eval examples) through datasets: every source checked row by row (utils.data.read_any),
    a seeded `.shuffle`, the eval data (or the sample eval split, or a seeded `.train_test_split` of 5%),
    `.select` for --max_train_rows."""
    from utils.batching import example_from_row, examples_dataset
    from utils.data import load_examples

    train = examples_dataset(load_examples(data.data_path, skip_bad=data.skip_bad_rows, split=data.dataset_split))
    train = train.shuffle(seed=seed)
    if data.eval_data_path:
        evaluation = examples_dataset(load_examples(data.eval_data_path, skip_bad=data.skip_bad_rows,
                                                    split=data.eval_dataset_split or data.dataset_split))
    elif Path(data.data_path).resolve() in SAMPLE_PAIRS:
        evaluation = examples_dataset(load_examples(SAMPLE_PAIRS[Path(data.data_path).resolve()]))
    elif len(train) > 1:
        n = max(1, len(train) // 20)
        parts = train.train_test_split(test_size=n, seed=seed)
        train, evaluation = parts["train"], parts["test"]
        say(f"held out {n} of {n + len(train)} rows for eval loss (pass --eval_data_path to choose)")
    else:
        evaluation = train.select([])
    if data.max_train_rows:
        train = train.select(range(min(data.max_train_rows, len(train))))
    return [example_from_row(r) for r in train], [example_from_row(r) for r in evaluation]


def summary_line(steps: int, seconds: float, history: dict, adapter_dir=None) -> str:
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
    if adapter_dir is not None:
        text += f"; adapter in {adapter_dir}"
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


def save_final_adapter(trainer, out_dir) -> dict[str, int]:
    """The seed's layout in out_dir: Trainer.save_model (adapter, processor files, training_args.bin; only the
    main process writes, FSDP gathers first) and lora_adapter_state_dict.pt (the same tensors). {file: bytes}."""
    import torch
    from safetensors.torch import load_file

    out = Path(out_dir)
    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return {}
    torch.save(load_file(out / "adapter_model.safetensors"), out / SEED_STATE_DICT)
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}


def adapter_identical_across_processes(model) -> bool:
    """Data-parallel check at the end of a run: every process holds bit-identical LoRA weights (DDP all-reduces
    the adapter's gradients, so the copies never drift). A collective call: every process must make it."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().numpy().tobytes())
    digests = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    # bitsandbytes logs "MatMul8bitLt: inputs will be cast ..." at every int8 matmul on CPU (a log record, not a warning).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    args = parse_args(argv)
    setup = choose_setup(args.model, args.precision)
    args.model, args.precision = setup.profile, setup.precision
    data_args, model_args, lora_args, run_args, training_args = split_arguments(args)
    main_process = training_args.process_index == 0
    say = print if main_process else (lambda *a, **k: None)
    say(setup)  # the decision and the planned training peak next to this GPU's memory
    if training_args.world_size > 1:
        say(f"data-parallel: {training_args.world_size} processes, per-device batch "
            f"{training_args.per_device_train_batch_size}, global batch "
            f"{training_args.per_device_train_batch_size * training_args.world_size * training_args.gradient_accumulation_steps}")
    from utils.modeling import uses_fsdp

    if uses_fsdp() and args.precision == "8bit":
        print("error: FSDP cannot shard 8-bit (LLM.int8) weights: use configs/accelerate/ddp_8bit.yaml (one 8-bit "
              "copy per GPU) or --precision 4bit with configs/accelerate/fsdp_qlora_4bit.yaml", file=sys.stderr)
        return 2
    from utils.batching import encode_all
    from utils.data import DataError
    from utils.lora import LoraTargetError, add_lora, count_parameters
    from utils.modeling import HubAccessError, load_model, load_processor
    from utils.train import build_trainer, train

    settings = lora_settings(lora_args)

    def fail(message: str, code: int) -> int:
        if main_process:
            print(f"error: {message}", file=sys.stderr)
        return code

    try:
        train_examples, eval_examples = split_data(data_args, training_args.seed, say)
    except (DataError, FileNotFoundError) as err:
        return fail(str(err), 2)
    say(f"profile={args.model} precision={args.precision} train rows={len(train_examples)} "
        f"eval rows={len(eval_examples)}")
    try:
        processor = load_processor(args.model, model_args.model_name_or_path)
        model = load_model(args.model, args.precision, model_args.model_name_or_path)
    except HubAccessError as err:
        return fail(str(err), 3)
    try:
        with training_args.main_process_first(desc="tokenizing"):  # the others read its cache (.cache/encoded/)
            train_rows = encode_all(processor, train_examples, data_args.max_seq_length, verbose=main_process,
                                    num_proc=data_args.num_proc, mask_history=data_args.mask_history)
    except ValueError as err:
        return fail(f"{err}: raise --max_seq_length or shorten the answers", 2)
    eval_rows = None
    if eval_examples:
        try:
            with training_args.main_process_first(desc="tokenizing"):
                eval_rows = encode_all(processor, eval_examples, data_args.max_seq_length, verbose=main_process,
                                       num_proc=data_args.num_proc, mask_history=data_args.mask_history)
        except ValueError as err:
            say(f"warning: eval split: {err}; training without eval loss")
    try:
        model = add_lora(model, settings, seed=training_args.seed)  # seeded A init: same --seed, same adapter
    except LoraTargetError as err:
        return fail(str(err), 2)
    trainable, total = count_parameters(model)
    say(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")
    say(padding_report(train_rows, training_args.per_device_train_batch_size * training_args.world_size,
                       training_args.seed, run_args.group_by_length))
    all_rows = list(train_rows) + list(eval_rows or [])
    try:
        use_cache, why = vision_cache_decision(model_args.cache_vision_features, model, settings.scope, all_rows)
    except ValueError as err:
        return fail(str(err), 2)
    say(f"vision feature cache: {why}")
    vision_cache = None
    if use_cache:
        from utils.vision_cache import CacheSpaceError, VisionFeatureCache, default_memory_mb

        budget = model_args.vision_cache_mb
        budget = default_memory_mb(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if budget is None else budget
        try:
            # One cache for all processes: the main one computes it (on disk when over the budget), the others
            # then find every file there and only read it (or, in memory, compute their own small copy).
            with training_args.main_process_first(desc="vision feature cache"):
                vision_cache = VisionFeatureCache.build(
                    model, processor, all_rows, max_memory_mb=budget,
                    cache_dir=Path(training_args.output_dir) / "vision_features", lora_scope=settings.scope,
                    verbose=main_process)
        except CacheSpaceError as err:
            say(f"warning: {err}; training without the vision feature cache")
            vision_cache = None
    gradient_checkpointing = bool(training_args.activation_checkpointing)
    trainer = build_trainer(model, processor, train_rows, eval_rows, training_args, vision_cache=vision_cache,
                            gradient_checkpointing=gradient_checkpointing, group_by_length=run_args.group_by_length)
    start = time.time()
    train(trainer, resume=run_args.resume)
    out = Path(training_args.output_dir)
    same = adapter_identical_across_processes(model) if training_args.world_size > 1 else None
    files = save_final_adapter(trainer, out)
    if main_process:
        history = json.loads((out / "loss_history.json").read_text())
        print(summary_line(trainer.state.global_step, time.time() - start, history, out))
        if same is not None:
            print(f"adapter weights identical on all {training_args.world_size} processes: {same}")
        print("adapter files: " + ", ".join(f"{k} ({v / 1e6:.2f} MB)" for k, v in files.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
