"""Data checks: every kind of bad line is reported with file, line, field and reason."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from utils.data import DataError, check_file, load_examples, main, read_any, read_jsonl

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "data" / "images" / "train_sign_00.png"


def write_lines(tmp_path, lines, name="rows.jsonl", newline="\n", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(newline.join(lines).encode(encoding))
    return path


def good(**extra):
    return json.dumps({"instruction": "번역하세요.", "input": "거푸집", "output": "formwork", **extra}, ensure_ascii=False)


def by_line(problems):
    return {p.line: p for p in problems}


def test_broken_example_file_reports_each_line():
    problems = by_line(check_file(REPO / "data" / "examples" / "broken.jsonl"))
    assert set(problems) == {2, 3, 5, 6, 7, 8, 9}
    assert "invalid JSON" in problems[2].reason
    assert problems[3].field == "output" and "missing" in problems[3].reason
    assert "got number" in problems[5].reason
    assert "got null" in problems[6].reason
    assert "got list" in problems[7].reason
    assert problems[8].reason == "empty answer"
    assert problems[9].field == "image" and "not found" in problems[9].reason
    assert all(p.path.endswith("broken.jsonl") for p in problems.values())


def test_bom_and_windows_line_ends_are_fine(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (good() + "\r\n" + good() + "\r\n").encode())
    examples, problems = read_jsonl(path)
    assert problems == [] and len(examples) == 2
    assert examples[0].answer == "formwork"


def test_bad_encoding_and_utf16(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(good().encode() + b"\n" + '{"instruction": "caf\xe9", "output": "x"}'.encode("latin-1"))
    [problem] = check_file(path)
    assert problem.line == 2 and "UTF-8" in problem.reason
    utf16 = write_lines(tmp_path, [good()], "u16.jsonl", encoding="utf-16")
    assert "UTF-16" in check_file(utf16)[0].reason


def test_images_missing_unreadable_and_too_many(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "ok.png").write_bytes(IMAGE.read_bytes())
    path = write_lines(tmp_path, [good(image="ok.png"), good(image="nope.png"), good(image="broken.png"),
                                  good(image=["ok.png", "ok.png"])])
    problems = by_line(check_file(path))
    assert set(problems) == {2, 3, 4}
    assert "not found" in problems[2].reason
    assert "unreadable" in problems[3].reason
    assert "at most 1" in problems[4].reason


def test_chat_format_rows(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "무엇?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "안전모"}]}], "images": ["ok.png"]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "image"}]},
                      {"role": "assistant", "content": "x"}], "images": ["ok.png"]},
    ]
    (tmp_path / "ok.png").write_bytes(IMAGE.read_bytes())
    path = write_lines(tmp_path, [json.dumps(r, ensure_ascii=False) for r in rows])
    examples, problems = read_jsonl(path)
    assert [e.answer for e in examples] == ["안전모", "hello", "x"]  # a system message may go with an image
    assert examples[0].images == [(tmp_path / "ok.png").resolve()]
    assert examples[2].messages[0] == {"role": "system", "content": "be brief"} and examples[2].images
    problems = by_line(problems)
    assert set(problems) == {3, 4, 5}
    assert "last message" in problems[3].reason
    assert "0 image path(s) but 1 image item(s)" in problems[4].reason
    assert "role" in problems[5].reason


def test_load_examples_raises_or_skips_with_a_report(tmp_path, capsys):
    path = write_lines(tmp_path, [good(), '{"instruction": "x", "output": 3}', good()])
    with pytest.raises(DataError) as err:
        load_examples(path)
    assert f"{path}:2: [output]" in str(err.value)
    kept = load_examples(path, skip_bad=True)
    assert len(kept) == 2
    assert "dropped 1 bad line" in capsys.readouterr().out


def test_sample_data_is_clean_and_eval_is_held_out():
    train, problems = read_jsonl(REPO / "data" / "construction_train.jsonl")
    evaluation, eval_problems = read_jsonl(REPO / "data" / "construction_eval.jsonl")
    assert problems == [] and eval_problems == []
    assert len([e for e in train if not e.images]) >= 150 and len([e for e in train if e.images]) >= 30
    train_prompts = {e.prompt_text for e in train}
    assert not any(e.prompt_text in train_prompts and not e.images for e in evaluation)


def test_check_cli_exit_codes(tmp_path):
    clean = subprocess.run([sys.executable, "-m", "utils.data", "check", "data/construction_eval.jsonl"],
                           cwd=REPO, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    broken = subprocess.run([sys.executable, "-m", "utils.data", "check", "data/examples/broken.jsonl"],
                            cwd=REPO, capture_output=True, text=True)
    assert broken.returncode == 1
    assert "broken.jsonl:5: [output] must be a string, got number" in broken.stdout


def test_system_message_given_as_typed_parts_becomes_a_string(tmp_path):
    # The released 11B template does messages[0]['content']|trim: a list would render as its Python repr.
    row = {"messages": [{"role": "system", "content": [{"type": "text", "text": "Answer in English. "},
                                                       {"type": "text", "text": "Be brief."}]},
                        {"role": "user", "content": "거푸집?"},
                        {"role": "assistant", "content": [{"type": "text", "text": "formwork"}]}]}
    path = write_lines(tmp_path, [json.dumps(row, ensure_ascii=False)])
    [example] = load_examples(path)
    system = example.messages[0]
    assert system["role"] == "system"
    assert system["content"] == "Answer in English. Be brief."
    assert example.messages[2]["content"] == [{"type": "text", "text": "formwork"}]  # other roles untouched


@pytest.mark.parametrize("content", ["", "\n\n   \n", "\r\n"])
def test_check_cli_refuses_a_file_without_rows(tmp_path, capsys, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr()
    assert "no usable rows" in out.out + out.err and "empty" in out.out + out.err
    with pytest.raises(DataError, match="no usable rows.*empty"):
        load_examples(path)


def test_check_cli_refuses_a_file_whose_every_row_is_bad(tmp_path, capsys):
    path = write_lines(tmp_path, ['{"instruction": "x", "output": 3}', "not json"])
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "no usable rows" in out and "all 2 rows are bad" in out
    with pytest.raises(DataError, match="no usable rows") as err:
        load_examples(path, skip_bad=True)
    assert f"{path}:2: [-] invalid JSON" in str(err.value)  # the report is still there


def test_check_cli_good_file_still_passes(tmp_path, capsys):
    path = write_lines(tmp_path, [good(), "", good()])
    assert main(["check", str(path)]) == 0
    assert "2 good rows" in capsys.readouterr().out


def seed_rows(n=6):
    lines = (REPO / "data" / "construction_train.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if '"image"' not in line][:n]


def test_folder_of_jsonl_files_is_read_file_by_file(tmp_path):
    folder = tmp_path / "rows"
    folder.mkdir()
    write_lines(folder, [good(), good()], "a.jsonl")
    write_lines(folder, [good(), '{"instruction": "x", "output": 3}'], "b.jsonl")
    examples, problems = read_any(folder)
    assert [e.source for e in examples] == ["a.jsonl:1", "a.jsonl:2", "b.jsonl:1"]
    assert [str(p).split(": [")[0] for p in problems] == [f"{folder / 'b.jsonl'}:2"]
    assert main(["check", str(folder)]) == 1


def test_saved_dataset_rows_get_the_same_checks_named_by_row(tmp_path, capsys):
    import datasets

    rows = [{**r, "image": None} for r in seed_rows(3)]  # Arrow: a missing image is null in every other row
    rows[1]["output"] = "  "  # empty answer
    rows[2]["image"] = "missing.png"
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    examples, problems = read_any(tmp_path / "saved")
    assert [e.source for e in examples] == ["saved[train]:row 1"] and not examples[0].images
    assert [str(p).split(" [")[0] for p in problems] == ["saved[train]:row 2:", "saved[train]:row 3:"]
    assert "empty answer" in problems[0].reason and "not found" in problems[1].reason
    assert main(["check", str(tmp_path / "saved")]) == 1
    assert "saved[train]:row 3: [image] image not found" in capsys.readouterr().out


def test_hub_style_dataset_folder_goes_through_load_dataset_and_the_checks(tmp_path):
    """`datasets.load_dataset(id, split=...)` is the Hub path; a local folder in the Hub's layout exercises it."""
    import datasets

    hub = tmp_path / "user" / "terms"
    (hub / "data").mkdir(parents=True)
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "거푸집?"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "formwork"}]}]}
    datasets.Dataset.from_list([chat] * 3).to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    (hub / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                   "  - split: train\n    path: data/train-*\n---\n")
    examples = load_examples(hub, split="train")
    assert [e.answer for e in examples] == ["formwork"] * 3
    assert examples[0].source == f"{hub}[train]:row 1"
