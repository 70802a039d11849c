"""Chat template, label masks, truncation and mixed batches on the real Llama 3.2 tokenizer."""

import pytest

from utils.batching import IGNORE_INDEX, Collator, encode, encode_all, recommend_max_seq_length, token_lengths
from utils.data import Example, load_examples

from .conftest import REPO

EOT = "<|eot_id|>"


@pytest.fixture(scope="module")
def examples():
    rows = load_examples(REPO / "data" / "construction_train.jsonl")
    return [r for r in rows if r.images][:3] + [r for r in rows if not r.images][:5]


def trained_text(processor, labels):
    return processor.tokenizer.decode([t for t in labels if t != IGNORE_INDEX])


def test_template_matches_released_format(processor):
    text_only = [{"role": "user", "content": "hi"}]
    rendered = processor.apply_chat_template(text_only, add_generation_prompt=True, tokenize=False,
                                             date_string="26 Jul 2024")
    assert rendered == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                        "December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user"
                        "<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    rendered = processor.apply_chat_template(with_image, tokenize=False)
    assert rendered == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>hi<|eot_id|>"
    with pytest.raises(Exception, match="incompatible with system"):
        processor.apply_chat_template([{"role": "system", "content": "be brief"}] + with_image, tokenize=False)


def test_labels_are_exactly_the_answer_and_eot(processor, examples):
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image|>")
    for ex in examples:
        row = encode(processor, ex, 512)
        assert trained_text(processor, row["labels"]) == ex.answer + EOT
        assert image_id not in [t for t in row["labels"] if t != IGNORE_INDEX]
        assert (image_id in row["input_ids"]) == bool(ex.images)
        first = next(i for i, t in enumerate(row["labels"]) if t != IGNORE_INDEX)
        assert all(t == IGNORE_INDEX for t in row["labels"][:first])


def test_ids_equal_tokenizing_the_whole_conversation(processor, examples):
    for ex in examples:
        full = processor.apply_chat_template(ex.messages, tokenize=False, date_string="26 Jul 2024")
        assert processor.tokenizer(full, add_special_tokens=False).input_ids == encode(processor, ex, 512)["input_ids"]


def test_mixed_batch_pads_and_masks(processor, examples):
    rows = encode_all(processor, [examples[0], examples[4]], 512, verbose=False)
    batch = Collator(processor)(rows)
    assert batch["pixel_values"].shape[0] == 2
    cross = batch["cross_attention_mask"]
    assert cross[0].sum() > 0 and cross[1].sum() == 0  # the text-only row attends to no image
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["attention_mask"][i].sum() == n
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert trained_text(processor, batch["labels"][i].tolist()) == [examples[0], examples[4]][i].answer + EOT
    assert "pixel_values" not in Collator(processor)(rows[1:])


def test_truncation_keeps_answer_and_image(processor, examples):
    long_text = Example([{"role": "user", "content": [{"type": "text", "text": "설명 " * 300}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "formwork"}]}], source="x:1")
    image_row = examples[0]
    long_image = Example([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "why " * 300}]},
                          image_row.messages[1]], image_row.images, source="x:2")
    for ex in (long_text, long_image):
        row = encode(processor, ex, 64)
        assert row["truncated"] and len(row["input_ids"]) == 64
        assert trained_text(processor, row["labels"]) == ex.answer + EOT
        tail = processor.tokenizer.decode(row["input_ids"][: -len(processor.tokenizer(ex.answer + EOT,
                                                                                      add_special_tokens=False).input_ids)])
        assert tail.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<|image|>" in processor.tokenizer.decode(encode(processor, long_image, 64)["input_ids"])


def test_rows_that_cannot_fit_are_skipped_and_reported(processor, capsys):
    long_answer = Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "답 " * 100}], source="f:7")
    short = Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], source="f:8")
    rows = encode_all(processor, [long_answer, short], 48)
    assert [r["source"] for r in rows] == ["f:8"]
    assert "skipped f:7" in capsys.readouterr().out


def test_token_lengths_and_recommendation(processor, examples):
    lengths = token_lengths(processor, examples)
    assert all(r["total"] == r["prompt"] + r["answer"] for r in lengths)
    assert {r["lang"] for r in lengths} == {"ko", "en"}
    rec = recommend_max_seq_length(lengths)
    assert rec % 64 == 0 and rec >= max(r["total"] for r in lengths)
