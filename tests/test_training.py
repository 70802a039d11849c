"""8-bit tiny model, LoRA counts, the frozen vision tower, training, resume and export."""

import json
import subprocess
import sys

import pytest
import torch

from utils.batching import Collator
from utils.config import LoraSettings
from utils.data import load_examples
from utils.export import (SEED_STATE_DICT, export_adapter, load_adapter, max_logit_difference, merge_adapter,
                          reload_check)
from utils.lora import SCOPES, LoraTargetError, add_lora, count_parameters, expected_lora_parameters
from utils.modeling import load_model, quantized_layers
from utils.train import TrainSettings, build_trainer, freeze_vision_tower, train, vision_tower

from .conftest import REPO, sample_rows

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def rows(processor):
    return sample_rows(processor, 4, 12, 128)


def test_8bit_language_model_and_16bit_vision_tower(tiny_dir):
    layers = quantized_layers(load_model(model_name_or_path=tiny_dir, precision="8bit"))
    language = {k: v for k, v in layers.items() if "language_model" in k}
    vision = {k: v for k, v in layers.items() if "vision_model" in k}
    assert language and set(language.values()) == {"Linear8bitLt"}
    assert vision and set(vision.values()) == {"Linear"}
    assert layers["lm_head"] == "Linear" and layers["model.multi_modal_projector"] == "Linear"


@pytest.mark.parametrize("scope", sorted(SCOPES))
def test_trainable_parameters_equal_formula(tiny_dir, scope):
    model = load_model(model_name_or_path=tiny_dir, precision="8bit")
    settings = LoraSettings(r=8, target_modules=QKVO, scope=scope)
    peft_model = add_lora(model, settings)
    trainable, total = count_parameters(peft_model)
    assert trainable == expected_lora_parameters(model.config, settings) > 0
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in names)
    assert any("vision_model" in n for n in names) == (scope == "language_vision")
    if scope == "cross_attention":
        assert all("cross_attn" in n for n in names)


def test_unknown_targets_list_available_modules(tiny_dir):
    model = load_model(model_name_or_path=tiny_dir, precision="8bit")
    with pytest.raises(LoraTargetError, match="q_proj.*Scopes") as err:
        add_lora(model, LoraSettings(target_modules=["query_key_value"]))
    assert "gate_proj" in str(err.value)


def test_frozen_vision_tower_gets_no_grad_and_keeps_no_activations(tiny_dir, processor, rows):
    model = add_lora(load_model(model_name_or_path=tiny_dir, precision="8bit"), LoraSettings(scope="language"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    tower = vision_tower(model)
    seen = []
    hook = tower.register_forward_hook(lambda m, i, o: seen.append(o.last_hidden_state))
    batch = Collator(processor)(rows[:2])
    model.train()
    model(**batch).loss.backward()
    assert seen[-1].requires_grad  # the trap: without the wrapper the frozen tower would keep its activations
    assert freeze_vision_tower(model) is True
    model.zero_grad()
    model(**batch).loss.backward()
    hook.remove()
    assert not seen[-1].requires_grad
    assert all(p.grad is None for p in tower.parameters())
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_vision_tower_stays_trainable_when_lora_targets_it(tiny_dir):
    model = add_lora(load_model(model_name_or_path=tiny_dir, precision="8bit"), LoraSettings(scope="language_vision"))
    assert freeze_vision_tower(model) is False


def small_run(tiny_dir, processor, rows, out, max_steps, lr=5e-3):
    model = add_lora(load_model(model_name_or_path=tiny_dir, precision="8bit"),
                     LoraSettings(r=16, lora_dropout=0.0, target_modules=QKVO + ["gate_proj", "up_proj", "down_proj"]))
    settings = TrainSettings(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                             max_steps=max_steps, learning_rate=lr, logging_steps=2, eval_steps=4, save_steps=4,
                             warmup_ratio=0.0)
    trainer = build_trainer(model, processor, rows, rows[:4], settings)
    return model, trainer


def test_training_lowers_loss_resumes_and_exports(tiny_dir, processor, rows, tmp_path):
    out = tmp_path / "run"
    model, trainer = small_run(tiny_dir, processor, rows, out, max_steps=8)
    batch = Collator(processor)(rows[:4])
    before = model(**batch).loss.item()
    train(trainer, resume=False)
    after = model(**batch).loss.item()
    assert after < before - 0.5, (before, after)
    history = json.loads((out / "loss_history.json").read_text())
    # eval_on_start (TRAIN_DEFAULTS): the eval loss at step 0, then every eval_steps
    assert [s for s, _ in history["train"]] == [2, 4, 6, 8] and [s for s, _ in history["eval"]] == [0, 4, 8]
    assert (out / "checkpoint-8").is_dir()

    # Resume: a new trainer with more steps starts from step 8, not 0.
    _, trainer2 = small_run(tiny_dir, processor, rows, out, max_steps=10)
    train(trainer2, resume=True)
    assert trainer2.state.global_step == 10
    resumed = json.loads((out / "loss_history.json").read_text())["train"]
    assert [s for s, _ in resumed] == [2, 4, 6, 8, 10]

    # Export, then reload on a fresh base: same logits.
    files = export_adapter(model, processor, tmp_path / "adapter", {"max_steps": 8}, {"r": 16})
    for name in ("adapter_config.json", "adapter_model.safetensors", SEED_STATE_DICT, "training_args.json",
                 "tokenizer.json", "processor_config.json"):
        assert name in files, files
    state = torch.load(tmp_path / "adapter" / SEED_STATE_DICT)
    assert state and all("lora_" in k for k in state)
    reloaded = load_adapter(load_model(model_name_or_path=tiny_dir, precision="8bit"), tmp_path / "adapter")
    assert max_logit_difference(model, reloaded, batch) < 1e-3
    fresh = load_model(model_name_or_path=tiny_dir, precision="8bit")
    assert max_logit_difference(model, fresh, batch) > 1e-2  # the adapter does change the model

    assert reload_check(model, tmp_path / "adapter", batch) < 1e-3  # same base, adapter loaded under a 2nd name
    assert list(model.peft_config) == ["default"]  # the reloaded copy is gone again

    # Merge: compare with the same fp32 base carrying the unmerged adapter (an 8-bit model would differ by
    # its quantization error, which is what made the old comparison flaky).
    merged = merge_adapter(load_model(model_name_or_path=tiny_dir, precision="fp32"), tmp_path / "adapter",
                           tmp_path / "merged", max_shard_size="40MB")  # the tiny model is ~130 MB in fp32
    shards = sorted(p.name for p in (tmp_path / "merged").glob("model-*.safetensors"))
    assert len(shards) >= 3 and (tmp_path / "merged" / "model.safetensors.index.json").is_file(), shards
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    unmerged = load_adapter(load_model(model_name_or_path=tiny_dir, precision="fp32"), tmp_path / "adapter")
    assert max_logit_difference(unmerged, merged, batch) < 1e-3
    from transformers import AutoProcessor, MllamaForConditionalGeneration

    AutoProcessor.from_pretrained(tmp_path / "merged")  # the merged folder loads on its own
    assert MllamaForConditionalGeneration.from_pretrained(tmp_path / "merged").config.text_config.hidden_size == 128
    with pytest.raises(ValueError, match="16-bit base"):
        merge_adapter(load_model(model_name_or_path=tiny_dir, precision="8bit"), tmp_path / "adapter")


def test_training_batches_are_modality_pure_and_short_runs_log_their_loss(tiny_dir, processor, rows, tmp_path):
    model, trainer = small_run(tiny_dir, processor, rows, tmp_path / "run", max_steps=3)
    trainer.args.logging_steps = 5  # longer than the run: the last step must still be logged
    loader = trainer.get_train_dataloader()
    kinds = ["pixel_values" in b for b in loader]  # Collator raises on a mixed batch
    assert kinds.count(True) == 1 and kinds.count(False) == 3  # 4 image rows, 12 text rows, batch 4
    train(trainer, resume=False)
    history = json.loads((tmp_path / "run" / "loss_history.json").read_text())
    assert [s for s, _ in history["train"]] == [3] and [s for s, _ in history["eval"]] == [0, 3]


@pytest.fixture(scope="module")
def gated_fp32(tiny_dir):
    """The tiny model in fp32 with its cross-attention gates opened (the 11B's trained gates are non-zero;
    the tiny model's start at zero, which would hide any leak through cross-attention)."""
    model = load_model(model_name_or_path=tiny_dir, precision="fp32").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                p.fill_(1.0)
    return model


@torch.no_grad()
def test_text_row_logits_equal_alone_and_in_its_training_batch(gated_fp32, processor, rows, tmp_path):
    collate = Collator(processor)
    text = [i for i, r in enumerate(rows) if not r["image"]]
    _, trainer = small_run(gated_fp32.config._name_or_path, processor, rows, tmp_path, max_steps=1)
    seen = 0
    for idx in trainer.get_train_dataloader().batch_sampler:
        if rows[idx[0]]["image"]:
            continue
        batch = collate([rows[i] for i in idx])
        logits = gated_fp32(**batch).logits
        for j, i in enumerate(idx):
            n = len(rows[i]["input_ids"])
            alone = gated_fp32(**collate([rows[i]])).logits[0]
            assert torch.allclose(logits[j, :n], alone[:n], atol=1e-4)
            seen += 1
    assert seen == len(text)

    # Why batches are modality-pure: the same text row next to an image row (the old mixed batch) attends
    # to the blank padded image (transformers issue 39379) and its logits change.
    image_row, text_row = rows[0], rows[text[0]]
    mixed = collate([image_row, {**text_row, "image": image_row["image"]}])  # no <|image|> token: all-zero mask
    assert mixed["cross_attention_mask"][1].sum() == 0
    n = len(text_row["input_ids"])
    alone = gated_fp32(**collate([text_row])).logits[0, :n]
    assert (gated_fp32(**mixed).logits[1, :n] - alone).abs().max() > 1e-2


class DeviceStandIn(torch.nn.Module):
    """Stands in for a model on cuda:0 (this machine has no GPU): its parameters live on `meta` and
    forward() fails, as a real GPU model does, when an input is on another device."""

    def __init__(self, device="meta"):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device=device))
        self.seen = []

    @property
    def device(self):
        return self.weight.device

    def forward(self, **inputs):
        self.seen += [v.device for v in inputs.values()]
        if any(v.device != self.device for v in inputs.values()):
            raise RuntimeError("Expected all tensors to be on the same device")
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.zeros(1, 2))  # a CPU tensor, like .logits after .cpu()


def test_batches_move_to_the_models_device(processor, rows):
    from utils.batching import to_device

    batch = Collator(processor)(rows[:2])
    assert {v.device.type for v in to_device(batch, DeviceStandIn()).values()} == {"meta"}
    on_meta, on_cpu = DeviceStandIn(), DeviceStandIn("cpu")
    assert max_logit_difference(on_meta, on_cpu, batch) == 0.0
    assert {d.type for d in on_meta.seen} == {"meta"} and {d.type for d in on_cpu.seen} == {"cpu"}


def test_seed_cli_trains_and_exports(tiny_dir, tmp_path):
    """The seed's flags plus Trainer flags; the seed's layout: adapter in output_dir, checkpoint-N beside it."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "scripts/run_lora_finetune.py", "--data_path", "data/construction_train.jsonl",
           "--output_dir", str(out), "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
           "--max_seq_length", "512", "--num_train_epochs", "3", "--max_steps", "6", "--max_train_rows", "24",
           "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0.05", "--target_modules",
           "q_proj,k_proj,v_proj,o_proj", "--model", "tiny", "--precision", "8bit", "--save_steps", "3",
           "--logging_steps", "2", "--learning_rate", "5e-3", "--lr_scheduler_type", "constant",
           "--save_total_limit", "1", "--eval_data_path", "data/construction_eval.jsonl", "--eval_steps", "100"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for name in ("adapter_config.json", "adapter_model.safetensors", SEED_STATE_DICT, "training_args.bin",
                 "tokenizer.json", "processor_config.json", "loss_history.json"):
        assert (out / name).is_file(), (name, sorted(p.name for p in out.iterdir()))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]  # --save_total_limit 1
    # benchmarks/gpu_run.sh checks its CUDA smoke's output for these files: they must be what the CLI writes
    import re

    script = (REPO / "benchmarks" / "gpu_run.sh").read_text()
    checked = re.search(r"for f in ([^;]+); do", script).group(1).replace("\\\n", " ").split()
    assert "adapter_model.safetensors" in checked and all((out / f).is_file() for f in checked), checked
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 32
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.lr_scheduler_type == "constant" and args.remove_unused_columns is False
    history = json.loads((out / "loss_history.json").read_text())
    # Logged losses come from batches of different rows (image or text, short or long): too noisy to compare
    # over 6 steps; test_training_lowers_loss_resumes_and_exports checks learning on one fixed batch.
    assert [s for s, _ in history["train"]] == [2, 4, 6] and [s for s, _ in history["eval"]] == [0, 6]
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())  # lora_B starts at zero
    state = torch.load(out / SEED_STATE_DICT)
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in state)
    assert "MatMul8bitLt" not in done.stdout + done.stderr  # bitsandbytes' per-matmul log line is silenced
    assert "tokens_per_second" in done.stdout + done.stderr and "it/s" in done.stderr + done.stdout  # logs, progress bar
    assert f"done: 6 steps" in done.stdout and f"adapter in {out}" in done.stdout


def test_seed_command_on_a_five_row_file_logs_and_exits_0(tiny_dir, tmp_path):
    """The seed's exact flags on 5 rows: 3 optimizer steps, fewer than logging_steps."""
    lines = (REPO / "data" / "construction_train.jsonl").read_text(encoding="utf-8").splitlines()
    text_rows = [line for line in lines if '"image"' not in line][:5]
    (tmp_path / "five.jsonl").write_text("\n".join(text_rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "scripts/run_lora_finetune.py", "--data_path", str(tmp_path / "five.jsonl"),
                           "--output_dir", str(out), "--per_device_train_batch_size", "2",
                           "--gradient_accumulation_steps", "2", "--max_seq_length", "512", "--num_train_epochs", "3",
                           "--model", "tiny"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    history = json.loads((out / "loss_history.json").read_text())
    assert history["train"] and history["train"][-1][0] == 3
    assert "done: 3 steps" in done.stdout
    assert "setup: tiny in 8bit" in done.stdout  # --precision auto: the choice is printed with its memory plan


def test_summary_line_survives_an_empty_history():
    sys.path.insert(0, str(REPO / "scripts"))
    from run_lora_finetune import summary_line

    assert summary_line(0, 1.0, {"train": [], "eval": []}) == "done: 0 steps in 1 s, no train loss logged"
    assert summary_line(3, 2.0, {"train": [[1, 2.0], [3, 1.5]], "eval": [[3, 1.7]]}).endswith(
        "train loss 2.000 -> 1.500, eval loss 1.700")


def test_seed_cli_rejects_broken_data(tmp_path):
    done = subprocess.run([sys.executable, "scripts/run_lora_finetune.py", "--data_path",
                           "data/examples/broken.jsonl", "--model", "tiny", "--output_dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "broken.jsonl:5: [output] must be a string, got number" in done.stderr


def test_answer_helper_and_eval_loss(tiny_dir, processor, rows):
    from utils.inference import eval_loss, evaluate_answers, normalize

    assert normalize("  Formwork. ") == normalize("formwork")
    model = load_model(model_name_or_path=tiny_dir, precision="8bit")
    examples = [e for e in load_examples(REPO / "data" / "construction_eval.jsonl") if not e.images][:2]
    result = evaluate_answers(model, processor, examples, max_new_tokens=4)
    assert len(result["rows"]) == 2 and 0.0 <= result["exact_match"] <= 1.0
    assert [r["expected"] for r in result["rows"]] == [e.answer for e in examples]
    # stop_rate: the share of rows that ended their turn with <|eot_id|>. Greedy answers are prefixes of longer
    # ones: a row that stopped within 4 new tokens gives the same answer within 48, one that did not is cut short.
    assert result["stop_rate"] == sum(r["stopped"] for r in result["rows"]) / 2
    longer = evaluate_answers(model, processor, examples, max_new_tokens=48)["rows"]
    for short, long in zip(result["rows"], longer):
        if short["stopped"]:
            assert long["stopped"] and long["answer"] == short["answer"]
        else:
            cut = short["answer"].rstrip("\ufffd")  # the 4th token may end inside a multi-byte (Hangul) character
            assert long["answer"].startswith(cut) and len(long["answer"]) > len(cut)
    batch_loss = model(**Collator(processor)(rows[:4])).loss.item()
    assert abs(eval_loss(model, processor, rows[:4], batch_size=4) - batch_loss) < 1e-4


def test_cli_trains_on_chat_format_with_bom_crlf_and_long_rows(tiny_dir, tmp_path):
    image = REPO / "data" / "images" / "train_plan_00.png"
    (tmp_path / "plan.png").write_bytes(image.read_bytes())
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "방의 폭은?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "3600 mm"}]}], "images": ["plan.png"]},
        {"messages": [{"role": "system", "content": "짧게 답하세요."}, {"role": "user", "content": "거푸집을 영어로?"},
                      {"role": "assistant", "content": "formwork"}]},
        {"instruction": "설명하세요. " * 400, "input": "", "output": "짧은 답."},
        {"instruction": "Long answer", "input": "", "output": "word " * 600},
        {"instruction": "What is shown?", "input": "", "output": "A floor plan.", "image": "plan.png"},
    ] * 3
    data = tmp_path / "odd.jsonl"
    data.write_bytes(("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n").encode("utf-8-sig"))
    done = subprocess.run([sys.executable, "scripts/run_lora_finetune.py", "--data_path", str(data), "--model", "tiny",
                           "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--logging_steps", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "with a shortened prompt" in done.stdout and "answer is 601 tokens" in done.stdout
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_cli_trains_on_a_hub_style_dataset_folder(tiny_dir, tmp_path):
    """--data_path takes a Hub dataset id (datasets.load_dataset(id, split=...)); a local folder in the Hub's
    layout goes through the same code. Its rows get the same checks and the cached, filtered encoding."""
    import datasets

    lines = (REPO / "data" / "construction_train.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if '"image"' not in line][:12]
    hub = tmp_path / "user" / "terms"
    (hub / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    done = subprocess.run([sys.executable, "scripts/run_lora_finetune.py", "--data_path", str(hub), "--dataset_split",
                           "train", "--model", "tiny", "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
                           "--logging_steps", "1", "--num_proc", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "train rows=11 eval rows=1" in done.stdout  # a seeded train_test_split held one row out
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_answer_positions_loss_and_grads_equal_the_full_logits(tiny_dir, processor, rows):
    """lm_head only at the positions that predict an answer token: same loss and LoRA gradients as the
    full (batch, seq, 128k) logits, with a fraction of the rows."""
    from utils.train import answer_positions_only

    model = add_lora(load_model(model_name_or_path=tiny_dir, precision="fp32"),
                     LoraSettings(r=4, lora_dropout=0.0, target_modules=QKVO))  # dropout would change B's gradient
    model.train()
    for picked in (rows[4:8], rows[:2]):  # a text batch and an image batch
        batch = Collator(processor)(picked)
        grads = []
        for inputs in (batch, answer_positions_only(batch)):
            model.zero_grad()
            out = model(**inputs)
            out.loss.backward()
            grads.append([None if p.grad is None else p.grad.clone() for p in model.parameters() if p.requires_grad])
            if inputs is batch:
                full_loss, full_positions = out.loss.item(), out.logits.shape[1]
            else:
                kept_loss, kept_positions = out.loss.item(), out.logits.shape[1]
        assert kept_loss == pytest.approx(full_loss, rel=1e-5)
        assert any(g is not None for g in grads[0])
        assert all((a is None and b is None) or torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(*grads))
        answer_tokens = int((batch["labels"] != -100).any(0).sum())
        assert kept_positions == answer_tokens < full_positions


def test_answer_positions_keep_the_inputs_without_labels(processor, rows):
    from utils.train import answer_positions_only

    batch = Collator(processor)(rows[4:6])
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    assert answer_positions_only(no_labels) is no_labels
    kept = answer_positions_only(batch)
    # position t predicts token t + 1: the kept labels are the answer tokens, in order, none of them -100 in every row
    assert kept["shift_labels"].shape == (2, len(kept["logits_to_keep"]))
    assert (kept["shift_labels"] != -100).any(0).all()
    assert sorted((batch["labels"][batch["labels"] != -100]).tolist()) == \
        sorted(kept["shift_labels"][kept["shift_labels"] != -100].tolist())


@torch.no_grad()
def test_the_image_reaches_the_tiny_models_logits(tiny_dir, processor, rows):
    """The tiny model's cross-attention gates are open (Mllama starts them at 0, which would make every image
    invisible): the same text with another picture gives other logits."""
    model = load_model(model_name_or_path=tiny_dir, precision="fp32").eval()
    gates = [p.item() for n, p in model.named_parameters() if n.endswith("cross_attn_attn_gate")]
    assert gates and all(g != 0 for g in gates)
    image_rows = [r for r in rows if r["image"]]
    other = dict(image_rows[0], image=next(r["image"] for r in image_rows if r["image"] != image_rows[0]["image"]))
    logits = model(**Collator(processor)([image_rows[0], other])).logits
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_predict_takes_mixed_rows_and_returns_them_in_order(tiny_dir, processor, rows, tmp_path):
    """Trainer.predict used Trainer's own loader, which mixes image and text rows (MixedBatchError)."""
    import numpy as np

    _, trainer = small_run(tiny_dir, processor, rows, tmp_path / "run", max_steps=1)
    mixed = [rows[0], rows[5], rows[1], rows[6], rows[7]]  # image, text, image, text, text
    out = trainer.predict(mixed)
    assert out.predictions.shape[0] == out.label_ids.shape[0] == len(mixed)
    for i, r in enumerate(mixed):  # label_ids come back in the rows' order
        assert np.array_equal(out.label_ids[i, :len(r["labels"])], np.array(r["labels"]))
    assert np.isfinite(out.metrics["test_loss"])


def test_fsdp_sharded_state_dict_still_writes_peft_adapters(tiny_dir, processor, rows, tmp_path, monkeypatch):
    """Stand-in for FSDP with SHARDED_STATE_DICT (configs/accelerate/fsdp_qlora_4bit.yaml): Trainer.save_model
    writes nothing there. The final adapter and every checkpoint's adapter must be PEFT files that
    PeftModel.from_pretrained loads. (The real gather across GPUs, accelerator.get_state_dict under FSDP, needs
    GPUs; here it is the single-process state dict.)"""
    from types import SimpleNamespace

    import transformers.trainer as hf_trainer
    from peft import PeftModel
    from safetensors.torch import load_file
    from torch.distributed.fsdp import StateDictType

    model, trainer = small_run(tiny_dir, processor, rows, tmp_path / "run", max_steps=1)
    trainer.args.save_strategy = "no"
    train(trainer, resume=False)
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin",
                        SimpleNamespace(state_dict_type=StateDictType.SHARDED_STATE_DICT), raising=False)
    sharded = []  # the FSDP checkpoint shards Trainer writes for resuming (stand-ins: nothing to shard on CPU)
    monkeypatch.setattr(hf_trainer, "save_fsdp_model", lambda *a, **k: sharded.append("model"))
    monkeypatch.setattr(hf_trainer, "save_fsdp_optimizer", lambda *a, **k: sharded.append("optimizer"))

    final = tmp_path / "final"
    trainer.save_model(str(final))
    trainer._save_checkpoint(trainer.model, trial=None)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert sharded == ["model", "optimizer"]
    trained = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    for folder in (final, checkpoint):
        assert {"adapter_model.safetensors", "adapter_config.json", "training_args.bin"} <= {p.name for p in folder.iterdir()}
        saved = load_file(folder / "adapter_model.safetensors")
        assert saved and all("lora_" in k for k in saved)
        base = load_model(model_name_or_path=tiny_dir, precision="8bit")
        reloaded = PeftModel.from_pretrained(base, str(folder))
        for name, value in reloaded.state_dict().items():
            if "lora_" in name:
                assert torch.equal(value, trained[name.replace(".default", ".default")]), name


def test_merge_goes_where_the_16_bit_copy_fits():
    """Issue 15 item 7: the GPU when its free memory holds the copy (plus headroom), else the RAM, else no merge
    with a message saying what is needed. Free memory is passed in: a T4-sized and a Colab-sized stand-in."""
    from utils.export import MERGE_HEADROOM, merge_device

    gib = 2**30
    need = 20 * gib  # the 11B in bf16
    assert merge_device(need, gpu_free=80 * gib, host_free=12 * gib)[0] == "cuda"
    where, why = merge_device(need, gpu_free=15 * gib, host_free=50 * gib)  # T4 after freeing the 4-bit model
    assert where == "cpu" and "on the CPU" in why
    where, why = merge_device(need, gpu_free=15 * gib, host_free=12 * gib)  # Colab's T4 runtime
    assert where is None and f"{need * MERGE_HEADROOM / gib:.1f} GiB" in why and "12.0 GiB of RAM" in why
    assert merge_device(need, gpu_free=None, host_free=need)[0] is None  # no headroom left
    assert merge_device(gib, gpu_free=None, host_free=2 * gib)[0] == "cpu"  # no GPU (this machine)


def test_load_model_on_cpu_on_a_gpu_machine(monkeypatch, tiny_dir):
    """device="cpu" keeps the weights in RAM where a GPU exists (a stand-in: CUDA reported, from_pretrained
    recorded); without it they go to this process's GPU."""
    import utils.modeling as modeling

    seen = []

    def fake_from_pretrained(source, **kwargs):
        seen.append(kwargs["device_map"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(modeling.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(modeling, "device_map", lambda: {"": 0})
    monkeypatch.setattr(modeling.MllamaForConditionalGeneration, "from_pretrained", fake_from_pretrained)
    for device in ("cpu", None):
        with pytest.raises(RuntimeError, match="stop here"):
            load_model(model_name_or_path=tiny_dir, precision="bf16", device=device)
    assert seen == [None, {"": 0}]
    with pytest.raises(ValueError, match="device='cpu' takes"):
        load_model(model_name_or_path=tiny_dir, precision="8bit", device="cpu")
