"""Data from other tools: one test per format on small files written in each tool's published schema (the files
in data/examples/formats/ and the datasets built below; each names the public document it follows), then a
3-step CLI training per format on the tiny profile. Refusals: unknown formats, placeholders without an image,
image count mismatches, more than one image, URLs."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from utils.data import DataError, load_examples, main, open_image, read_any, store_image

from .conftest import REPO

FORMATS = REPO / "data" / "examples" / "formats"
IMAGES = REPO / "data" / "images"
IMAGE = {"type": "image"}


def text(t):
    return {"type": "text", "text": t}


def roles(example):
    return [m["role"] for m in example.messages]


def check_passes(path, capsys) -> str:
    assert main(["check", str(path)]) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------- each format
def test_llama_factory_alpaca_json_array(capsys):
    """data/examples/formats/alpaca.json follows LLaMA-Factory's data/README.md, "Alpaca Format" (instruction,
    input, output, system, history) and its "Multimodal Dataset" section (an `images` list, `<image>` in the text):
    a JSON array, as LLaMA-Factory's data/*.json files are."""
    path = FORMATS / "alpaca.json"
    assert "4 good rows (2 with an image, 1 with several answers), 0 bad" in check_passes(path, capsys)
    plain, history, sign, slab = load_examples(path)
    assert plain.messages == [{"role": "user", "content": [text("Translate this Korean construction term into "
                                                                  "English.\n\n거푸집")]},
                              {"role": "assistant", "content": [text("formwork")]}]
    assert [e.source for e in (plain, history, sign, slab)] == ["alpaca.json:2", "alpaca.json:7", "alpaca.json:16",
                                                               "alpaca.json:22"]  # the line each row starts on
    assert roles(history) == ["system", "user", "assistant", "user", "assistant"]
    assert history.messages[0]["content"] == "Answer in one sentence."  # a system turn is a string
    assert history.messages[2]["content"] == [text("철근")]  # the history's answer, trained too (encode)
    assert sign.messages[0]["content"] == [IMAGE, text("What does this safety sign require?")]  # <image> -> item
    assert sign.images == [(IMAGES / "train_sign_09.png").resolve()]


def test_sharegpt_conversations(capsys):
    """data/examples/formats/sharegpt.json follows LLaMA-Factory's data/README.md, "Sharegpt Format"
    (conversations of from/value with human/gpt, a `system` column or a leading system turn, `images`) and LLaVA's
    `<image>\\n` placeholder at the start of the first human turn."""
    path = FORMATS / "sharegpt.json"
    assert "4 good rows (2 with an image, 1 with several answers), 0 bad" in check_passes(path, capsys)
    hazard, _, glossary, korean = load_examples(path)
    assert roles(hazard) == ["user", "assistant", "user", "assistant"]
    assert hazard.messages[0]["content"] == [IMAGE, text("\nWhat hazard does this safety sign warn about?")]
    assert hazard.messages[3]["content"] == [text("A hard hat.")]
    assert glossary.messages[0] == {"role": "system", "content": "You are a construction glossary."}
    assert korean.messages[0] == {"role": "system", "content": "Answer in Korean."}
    assert not glossary.images and hazard.images == [(IMAGES / "train_sign_07.png").resolve()]


def test_llama_factory_openai_messages_with_placeholders(capsys):
    """data/examples/formats/openai_messages.json follows LLaMA-Factory's data/README.md, "OpenAI Format", and its
    data/mllm_demo.json (role/content messages with string content, `<image>` where the image goes, `images`)."""
    path = FORMATS / "openai_messages.json"
    assert "3 good rows (2 with an image, 1 with several answers), 0 bad" in check_passes(path, capsys)
    plan, sign, term = load_examples(path)
    assert plan.messages[0]["content"] == [IMAGE, text("What is the depth of the room (vertical dimension) in "
                                                       "millimetres?")]
    assert sign.messages[0]["content"] == [text("이 안전 표지는 무엇을 착용하라고 요구합니까?"), IMAGE]  # where it stood
    assert roles(term) == ["system", "user", "assistant"]


def test_trl_prompt_completion_standard_and_conversational(capsys):
    """data/examples/formats/trl_prompt_completion.jsonl follows TRL's "Dataset formats and types" guide:
    prompt-completion rows, standard (strings) and conversational (message lists), and its vision rows (an
    `images` column, {"type": "image"} in the prompt)."""
    path = FORMATS / "trl_prompt_completion.jsonl"
    assert "4 good rows (2 with an image, 0 with several answers), 0 bad" in check_passes(path, capsys)
    standard, conversational, cover, room = load_examples(path)
    assert standard.messages == [{"role": "user", "content": [text("Translate this Korean construction term into "
                                                                     "English.\n철근")]},
                                 {"role": "assistant", "content": [text("rebar")]}]
    assert conversational.answer.startswith("A temporary mould")
    assert cover.messages[0]["content"] == [IMAGE, text("What concrete cover is specified in this drawing?")]
    assert roles(room) == ["system", "user", "assistant"] and room.images == [(IMAGES / "train_plan_09.png").resolve()]


def test_axolotl_image_inside_the_content_item(capsys):
    """data/examples/formats/axolotl_messages.json follows axolotl's docs/multimodal.qmd, "Dataset Format": typed
    system content, the image in its item as "path" (or "url" for a local path), a JSON array."""
    path = FORMATS / "axolotl_messages.json"
    assert "3 good rows (2 with an image, 0 with several answers), 0 bad" in check_passes(path, capsys)
    slab, count, _ = load_examples(path)
    assert slab.messages[0] == {"role": "system", "content": "You read construction drawings."}
    assert slab.messages[1]["content"] == [IMAGE, text("What is the slab thickness shown, in millimetres?")]
    assert slab.images == [(IMAGES / "train_labelled_00.png").resolve()]
    assert count.images == [(IMAGES / "train_count_03.png").resolve()]


def test_multi_turn_example_file(capsys):
    """data/examples/multi_turn.jsonl: TRL's conversational format with several assistant turns."""
    path = REPO / "data" / "examples" / "multi_turn.jsonl"
    assert "3 good rows (2 with an image, 3 with several answers), 0 bad" in check_passes(path, capsys)
    examples = load_examples(path)
    assert [roles(e).count("assistant") for e in examples] == [2, 3, 2]
    assert examples[2].messages[0]["role"] == "system" and examples[2].images  # a system message with an image


def llava_mix_rows(n=4):
    """Rows in the schema of the Hub's HuggingFaceH4/llava-instruct-mix-vsft (its dataset card: `messages` with
    typed content whose items carry `index` and `text`, null where unused, and an `images` column of Image
    features), the data TRL's and axolotl's examples train this model on; pictures and text from this project."""
    rows = []
    for i, (name, question, answer) in enumerate([
            ("train_sign_09.png", "What does this safety sign require?", "Hearing protection."),
            ("train_plan_01.png", "What is the depth of the room (vertical dimension) in millimetres?", "5100 mm"),
            ("train_count_03.png", "How many rebars are in the bottom layer of this beam section?", "5"),
            ("train_sign_09.png", "Is this a warning sign?", "No, it is a mandatory sign.")][:n]):
        with Image.open(IMAGES / name) as img:
            picture = img.copy()  # a decoded PIL image, as load_dataset gives it
        rows.append({"messages": [
            {"role": "user", "content": [{"index": 0, "text": None, "type": "image"},
                                         {"index": None, "text": question, "type": "text"}]},
            {"role": "assistant", "content": [{"index": None, "text": answer, "type": "text"}]},
            {"role": "user", "content": [{"index": None, "text": "Answer again, in one word if you can.", "type": "text"}]},
            {"role": "assistant", "content": [{"index": None, "text": answer.split()[0], "type": "text"}]}],
            "images": [picture]})
    return rows


def test_decoded_image_dataset_saved_to_disk(tmp_path, capsys, monkeypatch):
    """A `datasets.Dataset` with an Image feature column (decoded PIL images), saved with save_to_disk: loaded
    without decoding a picture, each image stored once under its content hash, rows named name[split]:row N."""
    import datasets

    data = datasets.Dataset.from_list(llava_mix_rows())
    assert data.features["images"].feature == datasets.Image()  # decoded Image features, as on the Hub
    data.save_to_disk(str(tmp_path / "llava_mix"))
    monkeypatch.setattr(datasets.Image, "decode_example", lambda *a, **k: pytest.fail("a picture was decoded"))
    examples = load_examples(tmp_path / "llava_mix", image_dir=tmp_path / "images")
    assert [e.source for e in examples] == [f"llava_mix[train]:row {i}" for i in (1, 2, 3, 4)]
    assert examples[0].messages[0]["content"] == [IMAGE, text("What does this safety sign require?")]
    assert roles(examples[0]) == ["user", "assistant", "user", "assistant"]
    # PNG bytes as the Image feature stored them; the same picture twice is one file, named by its sha1.
    assert examples[0].images == examples[3].images and len(set(tmp_path.joinpath("images").iterdir())) == 3
    assert open_image(examples[0].images[0]).tobytes() == open_image(IMAGES / "train_sign_09.png").tobytes()
    monkeypatch.undo()
    assert "4 good rows (4 with an image, 4 with several answers), 0 bad" in check_passes(tmp_path / "llava_mix", capsys)


def test_hub_layout_image_dataset_goes_through_load_dataset(tmp_path):
    """`datasets.load_dataset(id)` is the Hub path; a local folder in the Hub's layout (parquet with the Image
    feature in its schema, as the Hub stores llava-instruct-mix-vsft) exercises it without a download."""
    import datasets

    hub = tmp_path / "user" / "llava_mix"
    (hub / "data").mkdir(parents=True)
    datasets.Dataset.from_list(llava_mix_rows(3)).to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    assert datasets.load_dataset(str(hub), split="train").features["images"].feature == datasets.Image()
    examples = load_examples(hub, split="train", image_dir=tmp_path / "images")
    assert [e.answer for e in examples] == ["Hearing", "5100", "5"]
    assert all(e.images[0].parent == tmp_path / "images" for e in examples)
    assert examples[0].source == f"{hub}[train]:row 1"


def test_image_features_left_undecoded_and_in_memory_datasets(tmp_path):
    """decode=False Image columns ({"bytes", "path"}) and in-memory Datasets / DatasetDicts load the same way."""
    import datasets

    data = datasets.Dataset.from_list(llava_mix_rows(2))
    undecoded = data.cast_column("images", datasets.List(datasets.Image(decode=False)))
    assert isinstance(undecoded[0]["images"][0], dict)
    as_dict = datasets.DatasetDict({"train": undecoded, "test": data})
    for source, split in ((undecoded, "train"), (as_dict, "test"), (as_dict, "train")):
        examples = load_examples(source, split=split, image_dir=tmp_path)
        assert [e.answer for e in examples] == ["Hearing", "5100"]
        assert all(e.images[0].parent == tmp_path for e in examples)
    assert examples[0].source == "dataset[train]:row 1"
    # A path in the {"bytes": None, "path"} storage (an imagefolder dataset) is used where it lies.
    by_path = datasets.Dataset.from_list([{**llava_mix_rows(1)[0], "images": [{"bytes": None,
                                                                                "path": str(IMAGES / "train_plan_01.png")}]}])
    [example] = load_examples(by_path.cast_column("images", datasets.List(datasets.Image(decode=False))))
    assert example.images == [IMAGES / "train_plan_01.png"]


def unsloth_rows():
    """Rows as Unsloth's Llama 3.2 (11B) Vision notebook builds them (`convert_to_conversation`): a user turn with
    the instruction text then {"type": "image", "image": <PIL image>}, and the caption as the answer."""
    rows = []
    for name, caption in (("train_labelled_00.png", "A slab section: T=200, D13@200, cover 40."),
                          ("train_count_03.png", "A beam section with five bottom bars.")):
        with Image.open(IMAGES / name) as img:
            picture = img.copy()
        rows.append({"messages": [{"role": "user", "content": [text("Describe this construction drawing."),
                                                               {"type": "image", "image": picture}]},
                                  {"role": "assistant", "content": [text(caption)]}]})
    return rows


def test_unsloth_rows_with_the_image_in_the_item(tmp_path):
    """A Python list of rows (what Unsloth passes to its trainer) and the same rows as a saved Dataset."""
    import datasets

    examples = load_examples(unsloth_rows(), image_dir=tmp_path / "images")
    assert examples[0].messages[0]["content"] == [text("Describe this construction drawing."), IMAGE]
    assert examples[0].source == "rows[in memory]:row 1"
    assert open_image(examples[0].images[0]).size == (224, 224)
    datasets.Dataset.from_list(unsloth_rows()).save_to_disk(str(tmp_path / "unsloth"))
    saved = load_examples(tmp_path / "unsloth", image_dir=tmp_path / "images")
    assert [e.messages for e in saved] == [e.messages for e in examples]
    assert [e.images[0].suffix for e in saved] == [".png", ".png"]


# ------------------------------------------------------------------------------------------ refusals
def by_line(problems):
    """line -> the problem, or for a line with several: one Problem whose field and reason join theirs."""
    from utils.data import Problem

    lines = {}
    for p in problems:
        q = lines.get(p.line)
        lines[p.line] = p if q is None else Problem(p.path, p.line, f"{q.field} | {p.field}", f"{q.reason} | {p.reason}")
    return lines


def write(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_a_file_in_an_unknown_format_gets_one_message(tmp_path, capsys):
    path = write(tmp_path, [{"question": f"q{i}", "answer": "a", "img": "x.png"} for i in range(6)], "qa.json")
    examples, problems = read_any(path)
    assert examples == [] and len(problems) == 1  # not one "missing field" per row
    [problem] = problems
    assert "unknown row format" in problem.reason and "question, answer, img" in problem.reason
    for name in ("instruction", "messages", "conversations", "prompt"):
        assert name in problem.reason  # the formats it takes
    assert main(["check", str(path)]) == 1 and "unknown row format" in capsys.readouterr().out
    import datasets

    datasets.Dataset.from_list([{"question": "q", "answer": "a"}] * 50).save_to_disk(str(tmp_path / "qa"))
    [problem] = read_any(tmp_path / "qa")[1]
    assert str(problem).startswith("qa[train]:row 1: [-] unknown row format: the dataset's columns are question, answer")


def test_json_array_errors_name_the_line(tmp_path):
    good = {"instruction": "Translate.", "input": "거푸집", "output": "formwork"}
    path = write(tmp_path, [good, {"instruction": "x", "output": 3}, good], "rows.json")
    examples, problems = read_any(path)
    assert len(examples) == 2 and [(p.line, p.field) for p in problems] == [(7, "output")]
    assert [e.source for e in examples] == ["rows.json:2", "rows.json:11"]
    assert len(load_examples(path, skip_bad=True)) == 2  # --skip_bad_rows keeps working
    broken = tmp_path / "broken.json"
    broken.write_text(path.read_text().replace('"output": 3', '"output": 3,,'), encoding="utf-8")
    examples, problems = read_any(broken)
    assert examples == [] and len(problems) == 1  # one syntax error, nothing half-loaded
    assert problems[0].line == 9 and "no row of the file is used" in problems[0].reason
    with pytest.raises(DataError, match="broken.json:9"):
        load_examples(broken, skip_bad=True)


def test_a_pretty_printed_object_is_one_problem(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"data": [{"instruction": "x", "output": "y"}]}, indent=2))
    [problem] = read_any(path)[1]
    assert "one JSON object over several lines (keys: data)" in problem.reason


def test_placeholders_without_an_image_and_count_mismatches_are_refused(tmp_path):
    sign = str(IMAGES / "train_sign_09.png")
    rows = [
        {"instruction": "<image>What does this sign require?", "output": "Hearing protection."},  # no image
        {"messages": [{"role": "user", "content": "<|image|>What?"}, {"role": "assistant", "content": "x"}]},
        {"conversations": [{"from": "human", "value": "<image><image>What?"}, {"from": "gpt", "value": "x"}],
         "images": [sign]},  # 2 placeholders, 1 image
        {"messages": [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "x"}],
         "images": [sign]},  # an image and no place for it
        {"messages": [{"role": "user", "content": [IMAGE, text("<image> What?")]},
                      {"role": "assistant", "content": [text("x")]}], "images": [sign]},  # literal in a text item
        {"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "x"}],
         "images": [sign, sign]},  # 2 images
        {"instruction": "What?", "output": "x", "images": [sign, sign]},
    ]
    problems = by_line(read_any(write(tmp_path, rows))[1])
    assert sorted(problems) == [1, 2, 3, 4, 5, 6, 7]
    assert problems[1].field == "instruction" and "literal <image>" in problems[1].reason and "no image" in problems[1].reason
    assert problems[2].field == "messages[0].content" and "literal <|image|>" in problems[2].reason
    assert problems[3].field.startswith("images") and "1 image path(s) but 0 image item(s) and 2 <image> placeholder(s)" in problems[3].reason
    assert "1 image path(s) but 0 image item(s) and 0 <image> placeholder(s)" in problems[4].reason
    assert problems[5].field == "messages[0].content[1].text" and "image" in problems[5].reason
    assert "2 image path(s) but 0 image item(s) and 1 <image> placeholder(s)" in problems[6].reason
    assert problems[7].field == "images" and "at most 1 per row" in problems[7].reason and "split the row" in problems[7].reason


def test_urls_images_in_answers_and_tool_turns_are_refused(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "image", "url": "https://example.com/bee.jpg"},
                                                   text("What?")]}, {"role": "assistant", "content": [text("A bee.")]}]},
        {"messages": [{"role": "user", "content": "Draw it."}, {"role": "assistant", "content": [IMAGE]}],
         "images": [str(IMAGES / "train_sign_09.png")]},
        {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"},
                           {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "assistant", "content": "c"}]},
    ]
    problems = by_line(read_any(write(tmp_path, rows))[1])
    assert problems[1].field == "messages[0].content[0].url" and "download it first" in problems[1].reason
    assert problems[2].field.startswith("messages[1].content") and "images go in a user message" in problems[2].reason
    assert problems[3].field.startswith("conversations[1]") and "'function_call'" in problems[3].reason
    assert "must follow a user message" in problems[4].reason


def test_open_image_and_store_image_take_every_kind_of_image(tmp_path):
    from utils.vision_cache import image_hash

    path = IMAGES / "train_sign_09.png"
    data = path.read_bytes()
    with Image.open(path) as img:
        picture = img.copy()
    for ref in (path, str(path), data, {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}, picture):
        opened = open_image(ref)
        assert opened.mode == "RGB" and opened.size == (224, 224)
    assert image_hash(path) == image_hash(data) == image_hash({"bytes": data}) == store_image(data, tmp_path).stem
    assert store_image(picture, tmp_path).suffix == ".png"
    with pytest.raises(Exception):
        store_image(b"not an image", tmp_path)


@pytest.mark.image_processing
def test_the_collator_batches_images_from_every_kind_of_source(processor, tmp_path):
    """Stored images (decoded Image features, PIL images in items) and files reach the image processor through
    one open_image; run again with torchvision by tests/test_torchvision_backend.py."""
    import datasets

    from utils.batching import Collator, encode_all

    examples = (load_examples(datasets.Dataset.from_list(llava_mix_rows(2)), image_dir=tmp_path)
                + load_examples(unsloth_rows(), image_dir=tmp_path) + load_examples(FORMATS / "axolotl_messages.json"))
    rows = [r for r in encode_all(processor, examples, 256, verbose=False, cache_dir=tmp_path / "enc") if r["image"]]
    assert len(rows) == 6
    batch = Collator(processor)(rows)
    assert batch["pixel_values"].shape[:2] == (6, 1) and batch["cross_attention_mask"].shape[0] == 6
    assert (batch["cross_attention_mask"].flatten(1).sum(1) > 0).all()  # every row sees its image


# ----------------------------------------------------------------------------- 3-step CLI trainings
def run_cli(data, tmp_path, *extra):
    cmd = [sys.executable, "scripts/run_lora_finetune.py", "--data_path", str(data), "--eval_data_path", str(data),
           "--model", "tiny", "--output_dir", str(tmp_path / "out"), "--max_steps", "3", "--logging_steps", "1",
           "--eval_strategy", "no", "--save_strategy", "no", "--num_proc", "1", "--max_seq_length", "256", *extra]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "done: 3 steps" in done.stdout and (tmp_path / "out" / "adapter_model.safetensors").is_file()
    return done.stdout


def test_cli_trains_3_steps_on_a_file_of_each_format(tiny_dir, tmp_path):
    """One folder holding one file per file format (and the multi-turn example): 21 rows, and a batch of 16 makes
    the 3 steps cover every row (all-image and all-text batches)."""
    folder = tmp_path / "formats"
    folder.mkdir()
    for path in sorted(FORMATS.iterdir()) + [REPO / "data" / "examples" / "multi_turn.jsonl"]:
        text_ = path.read_text(encoding="utf-8").replace("../../images/", "../images/")
        (folder / path.name).write_text(text_.replace("../images/", f"{IMAGES}/"), encoding="utf-8")
    out = run_cli(folder, tmp_path, "--per_device_train_batch_size", "16")
    assert "train rows=21 eval rows=21" in out
    assert "encoded 21 rows (max_seq_length=256): 0 with a shortened prompt, 0 skipped; labels on every assistant answer" in out


@pytest.mark.parametrize("kind", ["llava_mix", "unsloth"])
def test_cli_trains_3_steps_on_a_saved_dataset_with_decoded_images(tiny_dir, tmp_path, kind):
    import datasets

    rows = llava_mix_rows() if kind == "llava_mix" else unsloth_rows()
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / kind))
    flags = ["--mask_history"] if kind == "llava_mix" else []  # its rows have two answers each
    out = run_cli(tmp_path / kind, tmp_path, "--per_device_train_batch_size", "2", *flags)
    assert f"train rows={len(rows)}" in out and "vision feature cache: on" in out
    assert ("labels on the last answer only (mask_history)" if flags else "labels on every assistant answer") in out


def test_cli_names_an_unknown_format_once_and_exits_2(tmp_path):
    path = write(tmp_path, [{"question": f"q{i}", "answer": "a"} for i in range(20)], "qa.jsonl")
    done = subprocess.run([sys.executable, "scripts/run_lora_finetune.py", "--data_path", str(path), "--model", "tiny",
                           "--output_dir", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("unknown row format") == 1 and "keys seen: question, answer" in done.stderr
