"""Loading and checking the training data (notebook 01).

Two JSONL formats, one object per line:
- seed format: {"instruction": str, "input": str, "output": str, "image": "relative/path.png" (optional)}
- chat format: {"messages": [{"role": ..., "content": str | [{"type": "image"} | {"type": "text", "text": ...}]}],
                "images": ["relative/path.png", ...] (optional)}
Image paths are relative to the JSONL file. Every problem is reported at once with file, line,
field and reason; `python -m utils.data check PATH` does this from the shell.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

MAX_IMAGES_PER_ROW = 1  # Llama 3.2 Vision Instruct is trained with one image per conversation
ROLES = ("system", "user", "assistant")


@dataclass
class Problem:
    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        # A row of a saved or Hub dataset is named "name[split]:row N", a JSONL line "file:N".
        where = f"row {self.line}" if self.path.endswith("]") else str(self.line)
        return f"{self.path}:{where}: [{self.field}] {self.reason}"


@dataclass
class Example:
    """One conversation: the last message is the assistant answer that gets trained."""

    messages: list[dict]
    images: list[Path] = field(default_factory=list)
    source: str = ""  # "file:line"

    @property
    def answer(self) -> str:
        return message_text(self.messages[-1])

    @property
    def prompt_text(self) -> str:
        return "\n".join(message_text(m) for m in self.messages[:-1])


class DataError(ValueError):
    """Bad rows in a data file; `.problems` lists every one. `headline` (optional) comes first."""

    def __init__(self, problems: list[Problem], headline: str | None = None):
        self.problems = problems
        report = format_report(problems) if problems else ""
        super().__init__("\n".join(part for part in (headline, report) if part) or format_report(problems))


def format_report(problems: list[Problem]) -> str:
    if not problems:
        return "no problems found"
    lines = sorted({p.line for p in problems})
    head = f"{len(problems)} problem(s) on {len(lines)} line(s):"
    return "\n".join([head] + [f"  {p}" for p in problems])


def no_rows_message(path, problems: list[Problem]) -> str | None:
    """Why a file with no good rows cannot be used (None when it has some)."""
    bad = len({(p.path, p.line) for p in problems})
    if not bad:
        return f"{path}: no usable rows: the file is empty or has only blank lines"
    return f"{path}: no usable rows: " + ("the only row is bad" if bad == 1 else f"all {bad} rows are bad")


def message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(item.get("text", "") for item in content if isinstance(item, dict) and item.get("type") == "text")


def _type_name(value) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _check_image(path: str, base: Path, where, field_name: str, problems: list[Problem]) -> Path | None:
    if not isinstance(path, str) or not path:
        problems.append(Problem(*where, field_name, f"image path must be a non-empty string, got {_type_name(path)}"))
        return None
    full = (base / path).resolve()
    if not full.is_file():
        problems.append(Problem(*where, field_name, f"image not found: {path} (looked for {full})"))
        return None
    try:
        from PIL import Image

        with Image.open(full) as img:
            img.verify()
    except Exception as err:  # PIL raises many types for broken files
        problems.append(Problem(*where, field_name, f"image unreadable: {path} ({type(err).__name__}: {err})"))
        return None
    return full


def _parse_seed(obj: dict, base: Path, where, problems: list[Problem], max_images: int) -> Example | None:
    n = len(problems)
    for key in ("instruction", "output"):
        if key not in obj:
            problems.append(Problem(*where, key, "missing field"))
    for key in ("instruction", "input", "output"):
        if key in obj and not isinstance(obj[key], str):
            problems.append(Problem(*where, key, f"must be a string, got {_type_name(obj[key])}: {json.dumps(obj[key], ensure_ascii=False)[:40]}"))
    if isinstance(obj.get("output"), str) and not obj["output"].strip():
        problems.append(Problem(*where, "output", "empty answer"))
    images = []
    if "image" in obj:
        paths = obj["image"] if isinstance(obj["image"], list) else [obj["image"]]
        if len(paths) > max_images:
            problems.append(Problem(*where, "image", f"{len(paths)} images, the model takes at most {max_images} per row"))
        images = [_check_image(p, base, where, "image", problems) for p in paths]
    if len(problems) > n:
        return None
    prompt = obj["instruction"].strip()
    if obj.get("input", "").strip():
        prompt = f"{prompt}\n\n{obj['input'].strip()}" if prompt else obj["input"].strip()
    user = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": user},
                {"role": "assistant", "content": [{"type": "text", "text": obj["output"].strip()}]}]
    return Example(messages, images)


def _parse_chat(obj: dict, base: Path, where, problems: list[Problem], max_images: int) -> Example | None:
    n = len(problems)
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        problems.append(Problem(*where, "messages", "must be a non-empty list of {role, content}"))
        return None
    n_image_items = 0
    for i, m in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            problems.append(Problem(*where, name, f"needs a role in {ROLES}"))
            continue
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            problems.append(Problem(*where, f"{name}.content", f"must be a string or a list of typed items, got {_type_name(content)}"))
            continue
        for item in content:
            if not isinstance(item, dict) or item.get("type") not in ("image", "text"):
                problems.append(Problem(*where, f"{name}.content", 'items must be {"type": "image"} or {"type": "text", "text": str}'))
            elif item["type"] == "text" and not isinstance(item.get("text"), str):
                problems.append(Problem(*where, f"{name}.content", f"text must be a string, got {_type_name(item.get('text'))}"))
            elif item["type"] == "image":
                n_image_items += 1
    if len(problems) == n:
        last = messages[-1]
        if last["role"] != "assistant":
            problems.append(Problem(*where, "messages", "the last message must be the assistant's answer"))
        elif not message_text(last).strip():
            problems.append(Problem(*where, "messages[-1].content", "empty answer"))
    paths = obj.get("images", [])
    if not isinstance(paths, list):
        problems.append(Problem(*where, "images", f"must be a list of paths, got {_type_name(paths)}"))
        paths = []
    if len(paths) != n_image_items:
        problems.append(Problem(*where, "images", f"{len(paths)} image path(s) but {n_image_items} image item(s) in messages"))
    if n_image_items > max_images:
        problems.append(Problem(*where, "images", f"{n_image_items} images, the model takes at most {max_images} per row"))
    if n_image_items and any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
        problems.append(Problem(*where, "messages", "a system message cannot go with an image "
                                                    "(the Llama 3.2 Vision chat template refuses it)"))
    images = [_check_image(p, base, where, "images", problems) for p in paths]
    if len(problems) > n:
        return None
    # The released 11B template renders system content with `messages[0]['content'] | trim`: typed
    # parts would print as a Python list. A system turn is text only (checked above), so join it.
    messages = [{**m, "content": message_text(m)} if m["role"] == "system" else m for m in messages]
    return Example(messages, images)


def read_jsonl(path, max_images: int = MAX_IMAGES_PER_ROW) -> tuple[list[Example], list[Problem]]:
    """Parse every line; returns the good examples and every problem found."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return [], [Problem(str(path), 1, "-", "file is UTF-16; save it as UTF-8")]
    examples, problems = [], []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        where = (str(path), number)
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]  # UTF-8 byte order mark
        try:
            text = line.decode("utf-8").strip()  # strip() also drops the \r of Windows line ends
        except UnicodeDecodeError as err:
            problems.append(Problem(*where, "-", f"not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}); save the file as UTF-8"))
            continue
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            problems.append(Problem(*where, "-", f"invalid JSON: {err.msg} at column {err.colno}"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(*where, "-", f"each line must be a JSON object, got {_type_name(obj)}"))
            continue
        parse = _parse_chat if "messages" in obj else _parse_seed
        example = parse(obj, path.parent, where, problems, max_images)
        if example is not None:
            example.source = f"{path.name}:{number}"
            examples.append(example)
    return examples, problems


def _without_nulls(value):
    """A dataset row as the JSON it came from: Arrow gives every row every column, null where a row had none."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def check_rows(rows, name: str, base: Path, max_images: int = MAX_IMAGES_PER_ROW) -> tuple[list[Example], list[Problem]]:
    """The per-row checks of read_jsonl on rows of a saved or Hub dataset; problems read "name:row N"."""
    examples, problems = [], []
    for number, row in enumerate(rows, start=1):
        where = (name, number)
        obj = _without_nulls(dict(row)) if isinstance(row, dict) else row
        if not isinstance(obj, dict):
            problems.append(Problem(*where, "-", f"each row must be an object, got {_type_name(obj)}"))
            continue
        parse = _parse_chat if "messages" in obj else _parse_seed
        example = parse(obj, base, where, problems, max_images)
        if example is not None:
            example.source = f"{name}:row {number}"
            examples.append(example)
    return examples, problems


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_info.json", "state.json",
                                                                       "dataset_dict.json"))


def looks_like_hub_id(path: str) -> bool:
    parts = str(path).split("/")
    return len(parts) == 2 and all(parts) and not Path(path).exists() and not str(path).endswith(".jsonl")


def read_any(path, max_images: int = MAX_IMAGES_PER_ROW, split: str = "train") -> tuple[list[Example], list[Problem]]:
    """Good examples and every problem of: a JSONL file, a folder of JSONL files (in name order), a dataset
    saved with `save_to_disk` (a DatasetDict: `split`), another dataset folder or a Hub dataset id
    (`datasets.load_dataset(id, split=split)`). JSONL goes through the line-numbered checker (pyarrow's JSON
    errors have no line numbers); dataset rows get the same per-row checks, named "name[split]:row N".
    Image paths of dataset rows are relative to the dataset folder (the working directory for a Hub id)."""
    p = Path(path)
    if p.is_file():
        return read_jsonl(p, max_images)
    if p.is_dir() and not is_saved_dataset(p) and sorted(p.glob("*.jsonl")):
        examples, problems = [], []
        for file in sorted(p.glob("*.jsonl")):
            e, q = read_jsonl(file, max_images)
            examples += e
            problems += q
        return examples, problems
    if not p.is_dir() and not looks_like_hub_id(str(path)):
        raise FileNotFoundError(f"data not found: {path} (a JSONL file, a folder, a saved dataset or a Hub id user/name)")
    import datasets

    if is_saved_dataset(p):
        data = datasets.load_from_disk(str(p))
        if isinstance(data, datasets.DatasetDict):
            data = data[split]
        name, base = f"{p.name}[{split}]", p
    else:
        try:
            data = datasets.load_dataset(str(path), split=split)
        except (FileNotFoundError, ValueError, ConnectionError) as err:  # DatasetNotFoundError is a FileNotFoundError
            raise FileNotFoundError(f"dataset {path} (split {split!r}) could not be loaded: {type(err).__name__}: "
                                    f"{err}") from err
        name, base = f"{path}[{split}]", p if p.is_dir() else Path.cwd()
    return check_rows(data, name, base, max_images)


def check_file(path, max_images: int = MAX_IMAGES_PER_ROW) -> list[Problem]:
    return read_any(path, max_images)[1]


def load_examples(path, skip_bad: bool = False, max_images: int = MAX_IMAGES_PER_ROW,
                  split: str = "train") -> list[Example]:
    """All examples of a JSONL file, a folder of them, a saved dataset or a Hub dataset (read_any). Bad rows
    raise DataError, or with skip_bad=True are dropped and reported.

    A file without a usable row (empty, only blank lines, or every row bad) always raises DataError.
    """
    examples, problems = read_any(path, max_images, split)
    if problems and not skip_bad:
        raise DataError(problems)
    if problems:
        print(f"skip_bad=True: dropped {len({(p.path, p.line) for p in problems})} bad line(s) of {path}:\n{format_report(problems)}")
    if not examples:
        raise DataError(problems, no_rows_message(path, problems))
    return examples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.data", description="Check JSONL training data.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="report every bad line (exit 1 if any, or if no row is usable)")
    check.add_argument("paths", nargs="+", help="JSONL files, folders of them, saved datasets or Hub ids")
    check.add_argument("--max-images", type=int, default=MAX_IMAGES_PER_ROW)
    check.add_argument("--split", default="train", help="split of a saved or Hub dataset")
    args = parser.parse_args(argv)
    status = 0
    for path in args.paths:
        try:
            examples, problems = read_any(path, args.max_images, args.split)
        except FileNotFoundError as err:
            print(err, file=sys.stderr)
            status = 2
            continue
        n_img = sum(bool(e.images) for e in examples)
        if problems:
            print(format_report(problems))
            status = max(status, 1)
        print(f"{path}: {len(examples)} good rows ({n_img} with an image), {len({(p.path, p.line) for p in problems})} bad")
        if not examples:
            print(no_rows_message(path, problems))
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
