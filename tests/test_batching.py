"""Chat template, label masks, truncation and mixed batches on the real Llama 3.2 tokenizer."""

import pytest

from utils.batching import (IGNORE_INDEX, Collator, MixedBatchError, ModalityBatchSampler, encode, encode_all,
                            modality_batches, recommend_max_seq_length, token_lengths)
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
    # Since December 2024 the released template takes a system message with an image: the system turn with the
    # two date lines, then the system text (docs/facts.md).
    rendered = processor.apply_chat_template([{"role": "system", "content": " be brief "}] + with_image,
                                             tokenize=False, date_string="26 Jul 2024")
    assert rendered == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                        "December 2023\nToday Date: 26 Jul 2024\n\nbe brief<|eot_id|><|start_header_id|>user"
                        "<|end_header_id|>\n\n<|image|>hi<|eot_id|>")


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


@pytest.mark.image_processing
def test_image_batch_and_text_batch_pad_and_mask(processor, examples):
    rows = encode_all(processor, [examples[0], examples[1], examples[4], examples[5]], 512, verbose=False)
    image_batch = Collator(processor)(rows[:2])
    assert image_batch["pixel_values"].shape[0] == 2
    assert image_batch["aspect_ratio_ids"].shape[0] == 2
    assert (image_batch["cross_attention_mask"].flatten(1).sum(1) > 0).all()  # both rows see their image
    text_batch = Collator(processor)(rows[2:])
    assert not {"pixel_values", "cross_attention_mask", "aspect_ratio_ids"} & set(text_batch)
    for batch, pair in ((image_batch, rows[:2]), (text_batch, rows[2:])):
        for i, row in enumerate(pair):
            n = len(row["input_ids"])
            assert batch["attention_mask"][i].sum() == n
            assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
            assert batch["labels"][i, :n].tolist() == row["labels"]


def test_collator_refuses_mixed_batches(processor, examples):
    rows = encode_all(processor, [examples[0], examples[4]], 512, verbose=False)
    with pytest.raises(MixedBatchError, match="1 image row.*1 text-only row.*modality_batches"):
        Collator(processor)(rows)


def fake_rows(n_image, n_text, seed=0):
    import random

    rng = random.Random(seed)
    rows = [{"input_ids": [0] * rng.randint(5, 90), "image": "x.png" if i < n_image else None, "source": f"f:{i}"}
            for i in range(n_image + n_text)]
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize("shuffle", [False, True])
def test_modality_batches_are_pure_and_cover_every_row_once(shuffle):
    rows = fake_rows(13, 50)
    batches = modality_batches(rows, 4, shuffle=shuffle, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    assert all(len({bool(rows[i]["image"]) for i in b}) == 1 for b in batches)
    assert all(1 <= len(b) <= 4 for b in batches)
    assert len(batches) == len(ModalityBatchSampler(rows, 4)) == 4 + 13  # ceil(13/4) + ceil(50/4)


def test_modality_batches_group_by_length_cuts_padding_and_shuffles_by_seed():
    rows = fake_rows(0, 400)

    def padding(batches):
        return sum(max(len(rows[i]["input_ids"]) for i in b) * len(b) - sum(len(rows[i]["input_ids"]) for i in b)
                   for b in batches)

    grouped = modality_batches(rows, 8, shuffle=True, seed=1)
    plain = modality_batches(rows, 8, shuffle=True, seed=1, group_by_length=False)
    assert padding(grouped) < padding(plain) / 4
    assert grouped == modality_batches(rows, 8, shuffle=True, seed=1)  # same seed, same order
    sampler = ModalityBatchSampler(rows, 8, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new order each epoch
    sampler.set_epoch(0)
    assert list(sampler) == first  # and the same again for a resumed epoch


def test_padding_fraction_counts_pad_positions():
    from utils.batching import padding_fraction

    rows = [{"input_ids": [0] * n} for n in (10, 6, 8, 8)]
    assert padding_fraction(rows, [[0, 1], [2, 3]]) == pytest.approx(4 / 36)  # (10 + 10) + (8 + 8) slots, 4 pad
    assert padding_fraction(rows, [[0, 2], [1, 3]]) == pytest.approx((2 + 2) / 36)
    assert padding_fraction(rows, [[2, 3]]) == 0.0 and padding_fraction(rows, []) == 0.0
    many = fake_rows(0, 400)
    grouped, plain = (padding_fraction(many, modality_batches(many, 8, True, 1, g)) for g in (True, False))
    assert grouped < plain / 4


class NoEmptyImageLists:
    """Stands in for the torchvision MllamaImageProcessor, which breaks on a batch where a row has no image."""

    def __init__(self, real):
        self.real, self.max_image_tiles, self.calls = real, real.max_image_tiles, 0

    def __call__(self, images, **kwargs):
        if any(len(row) == 0 for row in images):
            raise IndexError("a row without an image reached the image processor")
        self.calls += 1
        return self.real(images=images, **kwargs)


@pytest.mark.image_processing
def test_collator_never_hands_the_image_processor_an_empty_row(processor, examples):
    import copy

    rows = encode_all(processor, examples, 512, verbose=False)  # 3 image rows, 5 text rows
    fake = copy.copy(processor)
    fake.image_processor = NoEmptyImageLists(processor.image_processor)
    batches = list(Collator(fake).batches(rows, 2))
    assert fake.image_processor.calls == 2  # two image batches (2 + 1 rows), the text batches need none
    assert sum(b["input_ids"].shape[0] for b in batches) == len(rows)


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


def test_truncation_keeps_the_question_at_the_end_of_the_user_text(processor):
    # A seed row: a long instruction, then the term being asked about in `input`.
    long_seed = Example([{"role": "user", "content": [{"type": "text", "text": "다음 건설 용어를 설명하세요. " * 80
                                                                         + "\n\n거푸집"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "formwork"}]}], source="x:3")
    row = encode(processor, long_seed, 96)
    assert row["truncated"] and len(row["input_ids"]) == 96
    text = processor.tokenizer.decode(row["input_ids"])
    assert text.endswith("거푸집<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nformwork<|eot_id|>")
    assert "<|start_header_id|>user<|end_header_id|>\n\n다음 건설" in text  # the start of the user text stays too
    assert trained_text(processor, row["labels"]) == "formwork" + EOT


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


def test_encode_all_goes_through_a_cached_dataset_and_num_proc_2_gives_the_same_ids(processor, tmp_path,
                                                                                    monkeypatch):
    import utils.batching as batching

    examples = load_examples(REPO / "data" / "construction_train.jsonl")[:24] + load_examples(
        REPO / "data" / "examples" / "chat_format.jsonl")
    expected = [r for r in (encode(processor, e, 128) for e in examples) if "skip" not in r]
    one = encode_all(processor, examples, 128, verbose=False, num_proc=1, cache_dir=tmp_path / "one")
    two = encode_all(processor, examples, 128, verbose=False, num_proc=2, cache_dir=tmp_path / "two")
    assert one == two == expected
    assert isinstance(one[:2], list) and one[0].keys() == {"input_ids", "labels", "image", "source", "truncated"}
    # A rerun reads the cache (.cache/encoded/ by default) instead of tokenizing again.
    assert list((tmp_path / "one").glob("*.arrow"))
    monkeypatch.setattr(batching, "encode", lambda *a, **k: pytest.fail("tokenized again"))
    assert encode_all(processor, examples, 128, verbose=False, num_proc=1, cache_dir=tmp_path / "one") == expected
    # Another max_seq_length is another cache entry.
    monkeypatch.undo()
    assert encode_all(processor, examples, 48, verbose=False, num_proc=1, cache_dir=tmp_path / "one") != expected


def released_format(messages, date_string="26 Jul 2024", add_generation_prompt=False):
    """The Llama 3.2 Vision Instruct format as the template on the Hub renders it since December 2024, written out
    in Python from its rules (docs/facts.md): an independent statement of what the tiny template must produce."""
    out, system, supplied = "<|begin_of_text|>", "", False
    if messages[0]["role"] == "system":
        system, supplied, messages = messages[0]["content"].strip(), True, messages[1:]
    has_images = any(isinstance(m["content"], list) and any(c["type"] == "image" for c in m["content"]) for m in messages)
    if supplied or not has_images:
        out += (f"<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                f"Today Date: {date_string}\n\n{system}<|eot_id|>")
    for m in messages:
        body = m["content"] if isinstance(m["content"], str) else "".join(
            "<|image|>" if c["type"] == "image" else c["text"] for c in m["content"])
        out += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{body}<|eot_id|>"
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


IMG, HI = {"type": "image"}, {"type": "text", "text": "hi "}
CONVERSATIONS = {
    "text": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "text + system": [{"role": "system", "content": "Be brief.\n"}, {"role": "user", "content": [HI]}],
    "image": [{"role": "user", "content": [IMG, HI]}, {"role": "assistant", "content": [HI]}],
    "image + system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [HI, IMG]}],
    "image + empty system": [{"role": "system", "content": ""}, {"role": "user", "content": [IMG, HI]}],
    "image in a later turn": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"},
                              {"role": "user", "content": [IMG, HI]}, {"role": "assistant", "content": "a sign"}],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_tiny_template_renders_the_released_format_byte_for_byte(processor, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                             date_string="26 Jul 2024")
    assert rendered == released_format(messages, add_generation_prompt=add_generation_prompt)


def multi_turn():
    return load_examples(REPO / "data" / "examples" / "multi_turn.jsonl")


def test_every_answer_is_trained_by_default_and_mask_history_trains_the_last(processor):
    image_chat, three_answers, system_and_image = multi_turn()
    assert trained_text(processor, encode(processor, three_answers, 512)["labels"]) == (
        "formwork" + EOT + "A temporary mould that holds fresh concrete in shape until it hardens." + EOT
        + three_answers.answer + EOT)
    last_only = encode(processor, three_answers, 512, mask_history=True)
    assert trained_text(processor, last_only["labels"]) == three_answers.answer + EOT
    for ex in (image_chat, three_answers, system_and_image):
        row = encode(processor, ex, 512)
        full = processor.apply_chat_template(ex.messages, tokenize=False, date_string="26 Jul 2024")
        assert processor.tokenizer(full, add_special_tokens=False).input_ids == row["input_ids"]
        assert row["input_ids"] == encode(processor, ex, 512, mask_history=True)["input_ids"]
        image_id = processor.tokenizer.convert_tokens_to_ids("<|image|>")
        assert image_id not in row["labels"] and (image_id in row["input_ids"]) == bool(ex.images)
    assert "Cutting Knowledge Date" in processor.tokenizer.decode(encode(processor, system_and_image, 512)["input_ids"])


def test_an_image_in_a_later_turn_keeps_the_labels_exact(processor):
    """Whether the system turn with the dates is rendered depends on an image anywhere in the chat: the answers
    before the image's turn are found in the whole rendering, not in a prefix rendered without the image."""
    image_chat = multi_turn()[0]
    later = Example([{"role": "user", "content": [{"type": "text", "text": "Ready?"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}] + image_chat.messages,
                    image_chat.images, source="x:9")
    row = encode(processor, later, 512)
    assert trained_text(processor, row["labels"]) == "Yes." + EOT + "Falling objects." + EOT + "A hard hat." + EOT
    assert "Cutting Knowledge" not in processor.tokenizer.decode(row["input_ids"])  # image, no system message


def test_truncation_with_several_answers_keeps_every_answer(processor):
    image_chat = multi_turn()[0]
    long_last = Example(image_chat.messages[:2] + [{"role": "user", "content": [{"type": "text", "text": "왜 " * 300}]},
                                                   image_chat.messages[3]], image_chat.images, source="x:10")
    row = encode(processor, long_last, 80)
    assert row["truncated"] and len(row["input_ids"]) == 80
    assert trained_text(processor, row["labels"]) == "Falling objects." + EOT + "A hard hat." + EOT
    assert "<|image|>" in processor.tokenizer.decode(row["input_ids"])
    assert "skip" in encode(processor, long_last, 30)  # the earlier turns alone do not fit: skipped, with the reason


def test_encode_all_caches_each_label_choice_apart(processor, tmp_path):
    rows = {flag: encode_all(processor, multi_turn(), 256, verbose=False, num_proc=1, cache_dir=tmp_path,
                             mask_history=flag) for flag in (False, True)}
    assert [len(list(tmp_path.glob("*-fits.arrow")))] == [2]
    for r_all, r_last in zip(rows[False], rows[True]):
        assert r_all["input_ids"] == r_last["input_ids"]
        assert sum(t != IGNORE_INDEX for t in r_all["labels"]) > sum(t != IGNORE_INDEX for t in r_last["labels"])
