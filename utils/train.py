"""Training with transformers' Trainer: LoRA over a frozen (8-bit) base (notebook 04)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, get_last_checkpoint

from utils.batching import Collator, ModalityBatchSampler
from utils.config import PROFILE_DEFAULTS, TRAIN_DEFAULTS, mixed_precision
from utils.i18n import tr


_D, _T = PROFILE_DEFAULTS["11b"], TRAIN_DEFAULTS


@dataclass
class TrainSettings:
    """The seed CLI's options (same names) plus checkpointing. Defaults: the 11b profile's values and
    utils.config.TRAIN_DEFAULTS (one source: the CLI fills unset flags from the same tables)."""

    output_dir: str = "outputs/run"
    per_device_train_batch_size: int = _D["per_device_train_batch_size"]
    gradient_accumulation_steps: int = _D["gradient_accumulation_steps"]
    num_train_epochs: float = _D["num_train_epochs"]
    max_steps: int = _T["max_steps"]
    learning_rate: float = _D["learning_rate"]
    max_seq_length: int = _D["max_seq_length"]
    warmup_ratio: float = _T["warmup_ratio"]
    logging_steps: int = _T["logging_steps"]
    eval_steps: int = _T["eval_steps"]
    save_steps: int = _T["save_steps"]
    save_total_limit: int = _T["save_total_limit"]
    eval_on_start: bool = _T["eval_on_start"]
    gradient_checkpointing: bool = _T["gradient_checkpointing"]
    group_by_length: bool = _T["group_by_length"]
    seed: int = _T["seed"]

    def to_dict(self) -> dict:
        return asdict(self)


def is_main_process() -> bool:
    """True in a single-process run and in the main process of `accelerate launch` / torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def fixed_training_arguments() -> dict:
    """TrainingArguments this project always uses, whatever the entry point (notebook 04, the CLI):
    mixed precision from the hardware, image paths kept for the collator, no worker processes."""
    precision = mixed_precision()
    return {"bf16": precision == "bf16", "fp16": precision == "fp16",
            "remove_unused_columns": False,  # our rows carry image paths the collator needs
            "dataloader_num_workers": 0, "dataloader_pin_memory": torch.cuda.is_available(), "report_to": "none"}


def cli_training_defaults() -> dict:
    """Defaults of the CLI's Trainer flags (unset flags; the profile's values come on top): the fixed
    arguments, TRAIN_DEFAULTS, the token count that gives tokens/s in the logs, and for DDP (only the LoRA
    parameters train, so only they are all-reduced) `ddp_find_unused_parameters=True`: a text-only batch
    skips Mllama's cross-attention layers, so their LoRA weights get no gradient in that step (DDP without
    it stops with "Expected to have finished reduction in the prior iteration")."""
    return {**fixed_training_arguments(),
            **{k: TRAIN_DEFAULTS[k] for k in ("lr_scheduler_type", "logging_steps", "eval_steps", "save_steps",
                                              "save_total_limit", "seed", "eval_on_start")},
            "eval_strategy": "steps", "save_strategy": "steps", "ddp_find_unused_parameters": True,
            "include_num_input_tokens_seen": "non_padding", "disable_tqdm": False,
            # Several processes without CUDA (torchrun / accelerate launch on a CPU machine, as in the tests):
            # accelerate sets up gloo data parallelism only when told the run is on CPU.
            "use_cpu": not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1}


def vision_tower(model):
    """The Mllama vision tower, also inside a PeftModel."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.vision_model


def freeze_vision_tower(model) -> bool:
    """Run the vision tower without autograd when none of its parameters train.

    With gradient checkpointing and input grads enabled the frozen tower's output otherwise
    requires grad, so the tower keeps every activation for a backward pass that changes nothing
    (see docs/facts.md). Returns True when the wrapper is installed, False when the tower trains (LoRA on it).
    """
    tower = vision_tower(model)
    if any(p.requires_grad for p in tower.parameters()):
        return False
    if getattr(tower, "_runs_without_grad", False):
        return True
    forward = tower.forward

    def forward_without_grad(*args, **kwargs):
        with torch.no_grad():
            return forward(*args, **kwargs)

    tower.forward = forward_without_grad
    tower._runs_without_grad = True
    return True


def prepare_for_training(model, gradient_checkpointing: bool = True):
    """Gradient checkpointing in its non-reentrant form (the reentrant one fails on Mllama), a grad-free
    vision tower and 8-bit base layers that keep no input for backward (utils.modeling.free_int8_inputs).
    Used instead of peft's prepare_model_for_kbit_training, which would upcast every 16-bit weight (the whole
    vision tower) to fp32."""
    if gradient_checkpointing:
        # transformers >= 5.2x renames it activation_checkpointing_enable; older 5.x has only the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    freeze_vision_tower(model)
    from utils.modeling import free_int8_inputs

    free_int8_inputs(model)  # 8-bit base layers keep no input for backward (see its docstring)
    model.config.use_cache = False
    return model


class LossHistoryCallback(TrainerCallback):
    """Writes every logged train/eval loss to `path` (JSON) as training goes (main process only)."""

    def __init__(self, path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(loss_history(state.log_history), indent=1))


class LogLastStep(TrainerCallback):
    """Log (and evaluate, when there is an eval set) at the last step too.

    Trainer logs every `logging_steps`; a run shorter than that (a 5-row file: 3 optimizer steps)
    would otherwise end with no train loss logged at all.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True
            if args.eval_strategy != IntervalStrategy.NO:
                control.should_evaluate = True
        return control


def loss_history(log_history: list[dict]) -> dict[str, list]:
    """{"train": [[step, loss], ...], "eval": [[step, eval_loss], ...]} from Trainer's log history."""
    return {"train": [[h["step"], h["loss"]] for h in log_history if "loss" in h],
            "eval": [[h["step"], h["eval_loss"]] for h in log_history if "eval_loss" in h]}


def training_arguments(settings: TrainSettings, has_eval: bool = True) -> TrainingArguments:
    """TrainingArguments from TrainSettings (notebook 04 writes the same call out and compares)."""
    fixed = fixed_training_arguments()
    return TrainingArguments(
        output_dir=settings.output_dir,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the steps
        lr_scheduler_type="linear",
        logging_steps=settings.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=settings.eval_steps,
        eval_on_start=settings.eval_on_start and has_eval,  # the eval loss before the first step: where it starts
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        seed=settings.seed,
        disable_tqdm=False,
        **fixed,
    )


def finish_training_arguments(args: TrainingArguments, has_eval: bool) -> TrainingArguments:
    """The fixed behaviours on TrainingArguments parsed from the command line: image columns kept, no
    eval without eval rows, and Trainer's own gradient checkpointing off (build_trainer switches on the
    non-reentrant form itself, prepare_for_training)."""
    args.remove_unused_columns = False
    if not has_eval:
        args.eval_strategy = IntervalStrategy.NO
        args.do_eval = False
        args.eval_on_start = False  # nothing to evaluate
    args.activation_checkpointing = args.gradient_checkpointing = False
    return args


def answer_positions_only(inputs: dict) -> dict:
    """The batch with `logits_to_keep` (the positions whose next token is an answer token in some row) and
    `shift_labels` (those next tokens): the model then runs `lm_head` and the loss only there.

    Why: only the answer and its <|eot_id|> carry labels (a fifth of the tokens or less here), yet the
    default forward computes logits for every position: (batch, seq, 128,256) floats, their log-softmax
    and its gradient. That is most of a tiny-profile step on a CPU and, on the 11B model, 0.5 GiB of fp32
    logits at batch 2 x 512. Both keyword arguments are transformers' own (`logits_to_keep` may be a
    tensor of positions; the causal-LM loss takes already shifted labels), so loss and gradients are those
    of the full logits. Inputs without labels are returned unchanged.
    """
    labels = inputs.get("labels")
    if labels is None:
        return inputs
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]  # position t predicts token t + 1
    keep = (shifted != -100).any(0).nonzero().squeeze(1)
    return {**inputs, "logits_to_keep": keep, "shift_labels": shifted[:, keep]}


class ModalityTrainer(Trainer):
    """Trainer whose train and eval batches are all-image or all-text (utils.batching.modality_batches),
    grouped by length within a modality for training. On N processes (accelerate launch) each global
    batch of N x per-device rows is cut into per-process slices (utils.batching.shard_batches), so the
    run sees the batches a 1-process run with N times the batch sees. Logs carry tokens/s."""

    group_by_length: bool = True

    def _modality_loader(self, rows, batch_size: int, shuffle: bool) -> DataLoader:
        sampler = ModalityBatchSampler(rows, batch_size, shuffle=shuffle, seed=self.args.seed,
                                       group_by_length=self.group_by_length,
                                       num_replicas=self.accelerator.num_processes)
        # The rows with the sampler's padding duplicates marked (no labels): see ModalityBatchSampler.
        loader = DataLoader(sampler.dataset(), batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        prepared = self.accelerator.prepare(loader)
        prepared.modality_sampler = sampler
        return prepared

    def get_train_dataloader(self) -> DataLoader:
        return self._modality_loader(self.train_dataset, self._train_batch_size, shuffle=True)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        rows = self.eval_dataset if eval_dataset is None or isinstance(eval_dataset, str) else eval_dataset
        return self._modality_loader(rows, self.args.eval_batch_size, shuffle=False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stock loss, with logits computed only where an answer token is predicted (answer_positions_only)."""
        return super().compute_loss(model, answer_positions_only(inputs), return_outputs, num_items_in_batch)


    def get_test_dataloader(self, test_dataset) -> DataLoader:
        """Modality-pure batches for predict() too (Trainer's own loader would mix image and text rows)."""
        loader = self._modality_loader(test_dataset, self.args.eval_batch_size, shuffle=False)
        self._test_order = [i for b in loader.modality_sampler for i in b]  # what predict() gathers, in order
        return loader

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """Trainer.predict with predictions (the logits) and label_ids in the rows' order, without the padding
        duplicates: the loader yields rows by modality and length, and every global batch slice by slice."""
        from transformers.trainer_utils import PredictionOutput

        # Image batches also return the vision tower's outputs, text batches do not: keep the logits only.
        ignore_keys = ["cache", "past_key_values", "image_outputs"] if ignore_keys is None else ignore_keys
        out = super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        where = {row: pos for pos, row in enumerate(self._test_order) if row < len(test_dataset)}
        order = [where[row] for row in range(len(test_dataset))]

        def restore(values):
            return values[order] if hasattr(values, "shape") and len(values) == len(self._test_order) else values

        return PredictionOutput(predictions=restore(out.predictions), label_ids=restore(out.label_ids),
                                metrics=out.metrics)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer.save_model, also under FSDP with a SHARDED (or LOCAL) state dict: there Trainer writes nothing
        (only FULL_STATE_DICT saves), so neither the final adapter nor a checkpoint's (Trainer saves each
        checkpoint's model through this method) would exist in PEFT format. Here every process takes part in
        gathering the full state dict (accelerate: FULL_STATE_DICT, rank 0 only, offloaded to CPU) and the main
        process writes adapter_model.safetensors + adapter_config.json (peft keeps only the adapter's tensors),
        the processor files and training_args.bin. The sharded checkpoint for resuming is saved as before."""
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if self.is_fsdp_enabled and plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            state_dict = self.accelerator.get_state_dict(self.model)  # collective: every process calls save_model
            self._save(output_dir or self.args.output_dir, state_dict=state_dict)
            return
        super().save_model(output_dir, _internal_call=_internal_call)

    def log(self, logs: dict, start_time: float | None = None) -> None:
        seen = self.state.num_input_tokens_seen - getattr(self, "_initial_num_input_tokens_seen", 0)
        if "loss" in logs and seen and start_time is not None:
            logs["tokens_per_second"] = round(seen / max(time.time() - start_time, 1e-9), 1)
        super().log(logs, start_time)


def build_trainer(model, processor, train_rows, eval_rows, settings: TrainSettings | TrainingArguments,
                  callbacks=(), vision_cache=None, gradient_checkpointing: bool | None = None,
                  group_by_length: bool | None = None) -> Trainer:
    """A Trainer over encoded rows (utils.batching.encode_all); writes loss_history.json in output_dir.

    `settings`: TrainSettings (notebooks, tests) or TrainingArguments parsed by the CLI (then
    `gradient_checkpointing` and `group_by_length` come as arguments; default on).
    `vision_cache` (utils.vision_cache.VisionFeatureCache, built over the train and eval rows): image
    batches carry the cached projector outputs instead of pixel values (the frozen tower is not run).
    Gradient checkpointing is switched on here (prepare_for_training), not through TrainingArguments,
    so it is always the non-reentrant variant."""
    has_eval = eval_rows is not None and len(eval_rows) > 0
    if isinstance(settings, TrainingArguments):
        args = finish_training_arguments(settings, has_eval)
        gc = True if gradient_checkpointing is None else gradient_checkpointing
        grouped = True if group_by_length is None else group_by_length
    else:
        args = training_arguments(settings, has_eval)
        gc = settings.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
        grouped = settings.group_by_length if group_by_length is None else group_by_length
    prepare_for_training(model, gc)
    history = LossHistoryCallback(Path(args.output_dir) / "loss_history.json")
    trainer = ModalityTrainer(model=model, args=args, train_dataset=train_rows,
                              eval_dataset=eval_rows if has_eval else None,
                              data_collator=Collator(processor, vision_cache=vision_cache), processing_class=processor,
                              callbacks=[history, LogLastStep(), *callbacks])
    trainer.group_by_length = grouped
    return trainer


def last_checkpoint(output_dir) -> str | None:
    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def train(trainer: Trainer, resume: bool = True):
    """Train, resuming from the newest checkpoint in output_dir when there is one and `resume`.
    Only the main process writes loss_history.json (and prints)."""
    checkpoint = last_checkpoint(trainer.args.output_dir) if resume else None
    main = trainer.is_world_process_zero()
    if checkpoint and main:
        print(tr("resuming from {checkpoint}", checkpoint=checkpoint))
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if main:
        (Path(trainer.args.output_dir) / "loss_history.json").write_text(
            json.dumps(loss_history(trainer.state.log_history), indent=1))
    return result
