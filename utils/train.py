"""Training with transformers' Trainer: LoRA over a frozen (8-bit) base (notebook 04)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, get_last_checkpoint

from utils.batching import Collator, ModalityBatchSampler
from utils.config import mixed_precision


@dataclass
class TrainSettings:
    """The seed CLI's options (same names) plus checkpointing; defaults follow the seed."""

    output_dir: str = "outputs/run"
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 2
    num_train_epochs: float = 3
    max_steps: int = -1
    learning_rate: float = 2e-4
    max_seq_length: int = 512
    warmup_ratio: float = 0.03
    logging_steps: int = 5
    eval_steps: int = 25
    save_steps: int = 25
    save_total_limit: int = 2
    gradient_checkpointing: bool = True
    group_by_length: bool = True
    seed: int = 42

    def to_dict(self) -> dict:
        return asdict(self)


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
    """Gradient checkpointing in its non-reentrant form (the reentrant one fails on Mllama) and
    a grad-free vision tower. Used instead of peft's prepare_model_for_kbit_training, which would
    upcast every 16-bit weight (the whole vision tower) to fp32."""
    if gradient_checkpointing:
        # transformers >= 5.2x renames it activation_checkpointing_enable; older 5.x has only the old name.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    freeze_vision_tower(model)
    model.config.use_cache = False
    return model


class LossHistoryCallback(TrainerCallback):
    """Writes every logged train/eval loss to `path` (JSON) as training goes."""

    def __init__(self, path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
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
    precision = mixed_precision()
    return TrainingArguments(
        output_dir=settings.output_dir,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,
        lr_scheduler_type="linear",
        logging_steps=settings.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=settings.eval_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        remove_unused_columns=False,  # our rows carry image paths the collator needs
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
        seed=settings.seed,
        disable_tqdm=False,
    )


class ModalityTrainer(Trainer):
    """Trainer whose train and eval batches are all-image or all-text (utils.batching.modality_batches),
    grouped by length within a modality for training."""

    group_by_length: bool = True

    def _modality_loader(self, rows, batch_size: int, shuffle: bool) -> DataLoader:
        sampler = ModalityBatchSampler(rows, batch_size, shuffle=shuffle, seed=self.args.seed,
                                       group_by_length=self.group_by_length)
        loader = DataLoader(rows, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self) -> DataLoader:
        return self._modality_loader(self.train_dataset, self._train_batch_size, shuffle=True)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        rows = self.eval_dataset if eval_dataset is None or isinstance(eval_dataset, str) else eval_dataset
        return self._modality_loader(rows, self.args.eval_batch_size, shuffle=False)


def build_trainer(model, processor, train_rows: list[dict], eval_rows: list[dict] | None,
                  settings: TrainSettings, callbacks=(), vision_cache=None) -> Trainer:
    """A Trainer over encoded rows (utils.batching.encode_all); writes loss_history.json in output_dir.

    `vision_cache` (utils.vision_cache.VisionFeatureCache, built over the train and eval rows): image
    batches carry the cached projector outputs instead of pixel values (the frozen tower is not run).
    Gradient checkpointing is switched on here (prepare_for_training), not through TrainingArguments,
    so it is always the non-reentrant variant."""
    prepare_for_training(model, settings.gradient_checkpointing)
    history = LossHistoryCallback(Path(settings.output_dir) / "loss_history.json")
    trainer = ModalityTrainer(model=model, args=training_arguments(settings, bool(eval_rows)), train_dataset=train_rows,
                              eval_dataset=eval_rows or None,
                              data_collator=Collator(processor, vision_cache=vision_cache),
                              callbacks=[history, LogLastStep(), *callbacks])
    trainer.group_by_length = settings.group_by_length
    return trainer


def last_checkpoint(output_dir) -> str | None:
    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def train(trainer: Trainer, resume: bool = True):
    """Train, resuming from the newest checkpoint in output_dir when there is one and `resume`."""
    checkpoint = last_checkpoint(trainer.args.output_dir) if resume else None
    if checkpoint:
        print(f"resuming from {checkpoint}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    (Path(trainer.args.output_dir) / "loss_history.json").write_text(
        json.dumps(loss_history(trainer.state.log_history), indent=1))
    return result
