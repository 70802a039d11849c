"""Loading and checking the training data (notebook 01).

Every source is mapped once, here, into one row form, `Example`: chat `messages` (user and assistant content a
list of typed items, {"type": "image"} where the image stands and {"type": "text", "text": ...}; a system
message's content a string), `images` (one file path per image item) and `source` ("file:line" or
"name[split]:row N"). Batching, training and export only ever see that form.

Row formats, one converter each (FORMATS; data/README.md has an example row of each):
- seed / Alpaca: {"instruction", "input", "output"} with optional "image" (a path, this project's seed format)
  or "images", "system" and "history" ([[question, answer], ...]; Alpaca releases, LLaMA-Factory's alpaca format)
- chat messages: {"messages": [{"role", "content": str | [typed items]}], "images": [...]} (TRL conversational,
  OpenAI, LLaMA-Factory's openai format, HuggingFaceH4/llava-instruct-mix-vsft, Unsloth, axolotl)
- ShareGPT: {"conversations": [{"from": "human" | "gpt" | "system", "value": str}], "system", "images"}
  (LLaVA, LLaMA-Factory's sharegpt format)
- TRL prompt/completion: {"prompt": str | messages, "completion": str | messages, "images": [...]}

In string content an `<image>` (or `<|image|>`) placeholder marks where an image goes (LLaMA-Factory, LLaVA);
typed content uses {"type": "image"}, with the image in the row's `images` list or in the item itself
("image": PIL image / path / bytes, "path", "url" for local paths, "base64"; Unsloth and axolotl).

Sources: JSONL (one row per line), JSON arrays (.json: LLaMA-Factory's data/*.json, Alpaca releases), folders
of them, datasets saved with `save_to_disk`, Hub dataset ids, in-memory `datasets.Dataset`s and lists of row
dicts. Image paths are relative to the file (the dataset folder; the working directory for a Hub id or rows in
memory). Images stored inside the data (bytes of an `Image` feature, PIL images, base64) are written once to
`.cache/images/<sha1 of the bytes>.<format>` and named by that path, so they stay out of memory until the
collator opens them and the vision-feature cache hashes them by content. Every problem is reported at once
with its source, field and fix; `python -m utils.data check PATH` does this from the shell.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from utils.i18n import tr

MAX_IMAGES_PER_ROW = 1  # Llama 3.2 Vision Instruct is trained with one image per conversation
ROLES = ("system", "user", "assistant")
PLACEHOLDER = re.compile(r"<image>|<\|image\|>")  # LLaMA-Factory / LLaVA placeholder, and the model's own token
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
IMAGE_KEYS = ("image", "path", "url", "base64")  # where an image item can carry its own image (Unsloth, axolotl)


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
    """One conversation: the last message is the assistant answer that gets trained (with every earlier
    assistant answer, unless training masks the history)."""

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


# ---------------------------------------------------------------------------------------------- images
def _is_pil(value) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "convert")


def image_bytes(image) -> bytes:
    """The encoded bytes of an image given as a path, bytes, a {"bytes", "path"} dict (a `datasets` Image
    feature with decode=False) or a PIL image (encoded as PNG: lossless, the same bytes for the same pixels)."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if _is_pil(image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    return Path(image).read_bytes()


def open_image(image):
    """An RGB PIL image (a copy: the file is closed again) from a path, bytes, a {"bytes", "path"} dict or a PIL
    image: the one place the collator, inference, the vision-feature cache and the notebooks open images."""
    from PIL import Image

    if _is_pil(image):
        return image.convert("RGB")
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    source = io.BytesIO(bytes(image)) if isinstance(image, (bytes, bytearray, memoryview)) else image
    with Image.open(source) as img:
        return img.convert("RGB")


def default_image_dir() -> Path:
    from utils.config import CACHE_DIR

    return CACHE_DIR / "images"


def store_image(image, folder=None) -> Path:
    """An image given as bytes or a PIL image, checked and written once to `folder` (default .cache/images/)
    as <sha1 of its bytes>.<format>; the path of that file. Raises what PIL raises for a broken image."""
    from PIL import Image

    data = image_bytes(image)
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
        ext = {"JPEG": "jpg"}.get(img.format, (img.format or "img").lower())
    folder = Path(folder) if folder is not None else default_image_dir()
    path = folder / f"{hashlib.sha1(data).hexdigest()}.{ext}"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes of one run may write it at once
        tmp.write_bytes(data)
        tmp.replace(path)  # never a half-written file under the real name
    return path


def image_file(image, base: Path, where, field_name: str, problems: list[Problem], image_dir=None) -> Path | None:
    """The file of one image of a row: a path (relative to `base`) that exists and opens, or stored image data
    (bytes, a PIL image, a {"bytes", "path"} dict, base64); None with a problem that says what to change."""
    if isinstance(image, dict):  # datasets' Image storage: bytes when embedded, else a path
        image = image.get("bytes") or image.get("path")
    if isinstance(image, str) and image.startswith("data:") and ";base64," in image:
        try:
            image = base64.b64decode(image.split(";base64,", 1)[1], validate=True)
        except (binascii.Error, ValueError) as err:
            problems.append(Problem(*where, field_name, f"invalid base64 image data ({err})"))
            return None
    if isinstance(image, (bytes, bytearray, memoryview)) or _is_pil(image):
        try:
            return store_image(image, image_dir)
        except Exception as err:  # PIL raises many types for broken data
            problems.append(Problem(*where, field_name, f"image unreadable ({type(err).__name__}: {err})"))
            return None
    if isinstance(image, Path):
        image = str(image)
    if not isinstance(image, str) or not image:
        problems.append(Problem(*where, field_name, "image must be a path, image bytes or a PIL image, got "
                                                    f"{_type_name(image)}"))
        return None
    if image.startswith(("http://", "https://")):
        problems.append(Problem(*where, field_name, f"image is a URL ({image[:80]}): download it first and give "
                                                    "its local path (training reads no network)"))
        return None
    path = image[len("file://"):] if image.startswith("file://") else image
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


# ------------------------------------------------------------------------------ converters, one per format
@dataclass
class Chat:
    """A row as chat messages, before the checks. `names[i]` is the source field of message i and `keys[i]` the
    key of its content (None: the field is the content), so every problem names the field the user wrote."""

    messages: list
    names: list[str]
    keys: list[str | None]
    images: object = None  # the row's image list (None: none given)
    images_field: str = "images"
    list_field: str = "messages"
    image_first: bool = False  # seed rows: an image without a placeholder goes before the prompt


def _from_seed(obj: dict, where, problems: list[Problem]) -> Chat | None:
    """This project's seed format, Alpaca releases and LLaMA-Factory's alpaca format: instruction (+ a blank
    line + input) -> the user turn, output -> the answer; system, history ([question, answer] pairs before it,
    answers trained too) and the image ("image": a path or a list; "images": a list) are optional."""
    n = len(problems)
    for key in ("instruction", "output"):
        if key not in obj:
            problems.append(Problem(*where, key, "missing field"))
    for key in ("instruction", "input", "output", "system"):
        if key in obj and not isinstance(obj[key], str):
            problems.append(Problem(*where, key, f"must be a string, got {_type_name(obj[key])}: {json.dumps(obj[key], ensure_ascii=False, default=str)[:40]}"))
    if isinstance(obj.get("output"), str) and not obj["output"].strip():
        problems.append(Problem(*where, "output", "empty answer"))
    history = obj.get("history") or []
    if not (isinstance(history, list) and all(isinstance(t, list) and len(t) == 2 and all(isinstance(s, str) for s in t)
                                              for t in history)):
        problems.append(Problem(*where, "history", "must be a list of [question, answer] string pairs"))
    if len(problems) > n:
        return None
    prompt = obj["instruction"].strip()
    if obj.get("input", "").strip():
        prompt = f"{prompt}\n\n{obj['input'].strip()}" if prompt else obj["input"].strip()
    messages, names = [], []
    if obj.get("system", "").strip():
        messages.append({"role": "system", "content": obj["system"]})
        names.append("system")
    for i, (question, answer) in enumerate(history):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        names += [f"history[{i}][0]", f"history[{i}][1]"]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"].strip()}]
    names += ["instruction", "output"]
    key = "image" if "image" in obj else "images"
    images = obj.get(key)
    if images is not None and not isinstance(images, list):
        images = [images]
    return Chat(messages, names, [None] * len(names), images, key, "output", image_first=True)


def _from_messages(obj: dict, where, problems: list[Problem]) -> Chat | None:
    """Chat messages: TRL's conversational format, OpenAI's, LLaMA-Factory's openai format, the Hub's
    HuggingFaceH4/llava-instruct-mix-vsft (typed items with `index`/`text` keys, nulls where unused), Unsloth's and
    axolotl's (the image inside its item): {"messages": [{"role", "content"}], "images": [...]}."""
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        problems.append(Problem(*where, "messages", "must be a non-empty list of {role, content}"))
        return None
    return Chat(messages, [f"messages[{i}]" for i in range(len(messages))], ["content"] * len(messages),
                obj.get("images"))


def _from_sharegpt(obj: dict, where, problems: list[Problem]) -> Chat | None:
    """ShareGPT (LLaVA's instruct data, LLaMA-Factory's sharegpt format): {"conversations": [{"from": "human" |
    "gpt" | "system", "value": str}], "system": str (optional), "images": [...]}; role/content turns work too."""
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        problems.append(Problem(*where, "conversations", 'must be a non-empty list of {"from", "value"}'))
        return None
    messages = [{"role": SHAREGPT_ROLES.get(t.get("from", t.get("role")), t.get("from", t.get("role"))),
                 "content": t.get("value", t.get("content"))} if isinstance(t, dict) else t for t in turns]
    names = [f"conversations[{i}]" for i in range(len(turns))]
    keys = ["content" if isinstance(t, dict) and "value" not in t and "content" in t else "value" for t in turns]
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        messages = [{"role": "system", "content": obj["system"]}] + messages
        names, keys = ["system"] + names, [None] + keys
    return Chat(messages, names, keys, obj.get("images"), list_field="conversations")


def _from_prompt_completion(obj: dict, where, problems: list[Problem]) -> Chat | None:
    """TRL's prompt-completion format, standard ({"prompt": str, "completion": str}) or conversational (lists of
    {role, content}), with "images" for vision rows: prompt -> the turns before the answer, completion -> the answer."""
    messages, names, keys, n = [], [], [], len(problems)
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = obj.get(key)
        if key not in obj:
            problems.append(Problem(*where, key, "missing field (a prompt/completion row needs both)"))
        elif isinstance(value, str):
            messages.append({"role": role, "content": value})
            names.append(key)
            keys.append(None)
        elif isinstance(value, list) and value:
            messages += value
            names += [f"{key}[{i}]" for i in range(len(value))]
            keys += ["content"] * len(value)
        else:
            problems.append(Problem(*where, key, f"must be a string or a non-empty list of {{role, content}}, got "
                                                 f"{_type_name(value)}"))
    if len(problems) > n:
        return None
    return Chat(messages, names, keys, obj.get("images"), list_field="completion")


# (name, keys that identify it, converter), tried in this order; the first format with one of its keys wins.
FORMATS = (
    ("chat messages (TRL conversational, OpenAI, LLaMA-Factory openai, llava-instruct-mix-vsft)", ("messages",),
     _from_messages),
    ("ShareGPT (LLaVA, LLaMA-Factory sharegpt)", ("conversations",), _from_sharegpt),
    ("TRL prompt/completion", ("prompt", "completion"), _from_prompt_completion),
    ("seed / Alpaca (LLaMA-Factory alpaca)", ("instruction", "input", "output"), _from_seed),
)
ACCEPTED = "; ".join(f"{name}: {' / '.join(keys)}" for name, keys, _ in FORMATS)


def row_format(obj: dict):
    """The converter for a row (None when no format matches its keys)."""
    return next((convert for _, keys, convert in FORMATS if any(k in obj for k in keys)), None)


# ------------------------------------------------------------------------------------- the one row check
def _items(content, field_name: str, where, problems: list[Problem], has_images: bool) -> list[dict] | None:
    """Content as typed items. In a string each <image> / <|image|> placeholder becomes an image item where it
    stands; items are {"type": "text", "text"} or {"type": "image"} (with the image's own "_ref" if it carries one)."""
    if isinstance(content, str):
        if PLACEHOLDER.search(content) and not has_images:
            token = PLACEHOLDER.search(content).group()
            problems.append(Problem(*where, field_name, f"literal {token} in the text but the row has no image (it "
                                                        "would train as text): add the image to `images` or remove "
                                                        "the placeholder"))
            return None
        items = []
        for i, text in enumerate(PLACEHOLDER.split(content)):
            if i:
                items.append({"type": "image", "_placeholder": True})
            if text:
                items.append({"type": "text", "text": text})
        return items
    if not isinstance(content, list):
        problems.append(Problem(*where, field_name, "must be a string or a list of typed items, got "
                                                    f"{_type_name(content)}"))
        return None
    items, n = [], len(problems)
    for j, item in enumerate(content):
        if not isinstance(item, dict) or item.get("type") not in ("image", "text"):
            problems.append(Problem(*where, field_name, 'items must be {"type": "image"} or '
                                                        '{"type": "text", "text": str}'))
        elif item["type"] == "text" and not isinstance(item.get("text"), str):
            problems.append(Problem(*where, field_name, f"text must be a string, got {_type_name(item.get('text'))}"))
        elif item["type"] == "text" and PLACEHOLDER.search(item["text"]):
            token = PLACEHOLDER.search(item["text"]).group()
            problems.append(Problem(*where, f"{field_name}[{j}].text", f"literal {token} in a text item (it would "
                                    'train as text): put a {"type": "image"} item where the image goes and remove '
                                    "the placeholder"))
        elif item["type"] == "text":
            items.append({"type": "text", "text": item["text"]})
        else:
            key = next((k for k in IMAGE_KEYS if item.get(k) is not None), None)
            ref = item[key] if key else None
            if key == "base64" and isinstance(ref, str):
                ref = "data:image;base64," + ref
            items.append({"type": "image", "_ref": ref, "_field": f"{field_name}[{j}].{key}"} if key
                         else {"type": "image"})
    return items if len(problems) == n else None


def check_chat(chat: Chat, base: Path, where, problems: list[Problem], max_images: int = MAX_IMAGES_PER_ROW,
               image_dir=None) -> Example | None:
    """The checks every row gets, whatever its format; the Example, or None with the problems appended."""
    n = len(problems)
    images = chat.images if chat.images is not None else []
    if not isinstance(images, list):
        problems.append(Problem(*where, chat.images_field, f"must be a list of images (paths), got "
                                                           f"{_type_name(images)}"))
        images = []
    messages = []
    for i, m in enumerate(chat.messages):
        name, key = chat.names[i], chat.keys[i]
        content_field = f"{name}.{key}" if key else name
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            got = m.get("role") if isinstance(m, dict) else _type_name(m)
            problems.append(Problem(*where, name, f"needs a role in {ROLES} (ShareGPT: human, gpt, system), "
                                                  f"got {got!r}"))
            continue
        items = _items(m.get("content"), content_field, where, problems, bool(images))
        if items is None:
            continue
        if m["role"] != "user" and any(it["type"] == "image" for it in items):
            problems.append(Problem(*where, content_field, f"an image in the {m['role']} message: images go in a user "
                                                           "message (answers are text only)"))
        if m["role"] == "system" and i:
            problems.append(Problem(*where, name, "a system message can only come first"))
        if m["role"] == "assistant" and not "".join(it.get("text", "") for it in items).strip():
            problems.append(Problem(*where, content_field, "empty answer"))
        messages.append({"role": m["role"], "content": items, "_field": content_field})
    if len(problems) > n:
        return None
    roles = [m["role"] for m in messages]
    if roles[-1] != "assistant":
        problems.append(Problem(*where, chat.list_field, "the last message must be the assistant's answer"))
    elif any(r == "assistant" and (i == 0 or roles[i - 1] != "user") for i, r in enumerate(roles)):
        problems.append(Problem(*where, chat.list_field, "every assistant answer must follow a user message "
                                                          "(merge answers in a row, or put the question between)"))
    slots = [it for m in messages for it in m["content"] if it["type"] == "image" and "_ref" not in it]
    own = [it for m in messages for it in m["content"] if "_ref" in it]
    if chat.image_first and images and not slots and not own:  # seed rows: the image goes before the prompt
        first_user = next(m for m in messages if m["role"] == "user")
        first_user["content"] = [{"type": "image"} for _ in images] + first_user["content"]
        slots = first_user["content"][:len(images)]
    if len(images) != len(slots):
        placeholders = sum(1 for it in slots if it.get("_placeholder"))
        problems.append(Problem(*where, chat.images_field,
                                f"{len(images)} image path(s) but {len(slots) - placeholders} image item(s) and "
                                f"{placeholders} <image> placeholder(s) in the messages: give one entry in "
                                f"`{chat.images_field}` per image item or placeholder"))
    if len(slots) + len(own) > max_images:
        problems.append(Problem(*where, chat.images_field, f"{len(slots) + len(own)} images, the model takes at most "
                                                           f"{max_images} per row: keep one image, or split the row "
                                                           "into one conversation per image"))
    if len(problems) > n:
        return None
    for it, image in zip(slots, images):
        it["_file"] = image_file(image, base, where, chat.images_field, problems, image_dir)
    for it in own:
        it["_file"] = image_file(it["_ref"], base, where, it["_field"], problems, image_dir)
    if len(problems) > n:
        return None
    files, out = [], []
    for m in messages:
        content = []
        for it in m["content"]:
            if it["type"] == "image":
                files.append(it["_file"])
                content.append({"type": "image"})
            else:
                content.append(it)
        # The released 11B template renders system content with `messages[0]['content'] | trim`: typed parts
        # would print as a Python list, so a system turn is a string.
        if m["role"] == "system":
            content = message_text({"content": content})
        out.append({"role": m["role"], "content": content})
    return Example(out, files)


def _examples(items, base: Path, max_images: int, image_dir=None) -> tuple[list[Example], list[Problem]]:
    """Examples and problems of one source. `items` yields a Problem (a line that is not a row) or (where,
    source, row). When no row is in a known format the source gets one problem naming the keys seen."""
    examples, problems, unknown, keys_seen, known = [], [], [], {}, 0
    for item in items:
        if isinstance(item, Problem):
            problems.append(item)
            continue
        where, source, obj = item
        if not isinstance(obj, dict):
            problems.append(Problem(*where, "-", f"each row must be an object, got {_type_name(obj)}"))
            continue
        convert = row_format(obj)
        if convert is None:
            unknown.append(where)
            keys_seen.update(dict.fromkeys(obj))
            continue
        known += 1
        chat = convert(obj, where, problems)
        example = check_chat(chat, base, where, problems, max_images, image_dir) if chat is not None else None
        if example is not None:
            example.source = source
            examples.append(example)
    if unknown and not known:
        keys = ", ".join(list(keys_seen)[:12]) or "none"
        problems.append(Problem(*unknown[0], "-", f"unknown row format: no row has the keys of a format this loader "
                                                  f"takes (keys seen: {keys}). Formats: {ACCEPTED}"))
    elif unknown:
        problems += [Problem(*where, "-", f"unknown row format (keys: {', '.join(keys_seen)}); formats: {ACCEPTED}")
                     for where in unknown]
        problems.sort(key=lambda p: p.line)
    return examples, problems


# ------------------------------------------------------------------------------------------------ sources
def _json_lines(path: Path, raw: bytes):
    """JSONL: (where, source, row) per non-blank line, or a Problem for a line that is not one JSON object."""
    for number, line in enumerate(raw.split(b"\n"), start=1):
        where = (str(path), number)
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]  # UTF-8 byte order mark
        try:
            text = line.decode("utf-8").strip()  # strip() also drops the \r of Windows line ends
        except UnicodeDecodeError as err:
            yield Problem(*where, "-", f"not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}); save the file as UTF-8")
            continue
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            yield Problem(*where, "-", f"invalid JSON: {err.msg} at column {err.colno}")
            continue
        if not isinstance(obj, dict):
            yield Problem(*where, "-", f"each line must be a JSON object, got {_type_name(obj)}")
            continue
        yield where, f"{path.name}:{number}", obj


def _json_array(path: Path, text: str):
    """A JSON array of rows (LLaMA-Factory's data/*.json, Alpaca releases): (where, source, row) per element,
    named by the line it starts on. A syntax error is one problem and no row (nothing half-loaded)."""
    decoder = json.JSONDecoder()
    rows, pos, line, last = [], text.index("[") + 1, 1, 0
    try:
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                raise json.JSONDecodeError("the array is not closed with ]", text, pos)
            if text[pos] == "]":
                break
            line += text.count("\n", last, pos)
            last = pos
            obj, pos = decoder.raw_decode(text, pos)
            rows.append(((str(path), line), f"{path.name}:{line}", obj))
        if text[pos + 1:].strip():
            raise json.JSONDecodeError("extra data after the array", text, pos + 1)
    except json.JSONDecodeError as err:
        yield Problem(str(path), err.lineno, "-", f"invalid JSON array: {err.msg} at line {err.lineno} column "
                                                  f"{err.colno}; no row of the file is used")
        return
    yield from rows


def read_jsonl(path, max_images: int = MAX_IMAGES_PER_ROW, image_dir=None) -> tuple[list[Example], list[Problem]]:
    """Parse a JSONL file (one row per line) or a JSON array of rows (detected by its first character, `[`,
    whatever the suffix); returns the good examples and every problem found."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return [], [Problem(str(path), 1, "-", "file is UTF-16; save it as UTF-8")]
    body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    if body.lstrip()[:1] == b"[":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            line = body[:err.start].count(b"\n") + 1
            return [], [Problem(str(path), line, "-", "not valid UTF-8; save the file as UTF-8")]
        return _examples(_json_array(path, text), path.parent, max_images, image_dir)
    items = list(_json_lines(path, raw))
    whole = _single_json_object(raw, items)
    if whole is not None:
        return [], [whole]
    return _examples(items, path.parent, max_images, image_dir)


def _single_json_object(raw: bytes, items: list) -> Problem | None:
    """A pretty-printed JSON object (not one row per line) would give an "invalid JSON" problem per line: one
    problem instead, naming its keys."""
    if not items or not all(isinstance(i, Problem) for i in items):
        return None
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    return Problem(items[0].path, 1, "-", f"the file is one JSON object over several lines (keys: "
                                          f"{', '.join(list(obj)[:12])}), not one row per line: write one row per line "
                                          "(JSONL) or a JSON array of rows")


def _without_nulls(value):
    """A dataset row as the JSON it came from: Arrow gives every row every column, null where a row had none."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def check_rows(rows, name: str, base: Path, max_images: int = MAX_IMAGES_PER_ROW,
               image_dir=None) -> tuple[list[Example], list[Problem]]:
    """The per-row checks on rows of a dataset or a list of row dicts; problems read "name:row N"."""
    items = (((name, number), f"{name}:row {number}", _without_nulls(dict(row)) if isinstance(row, dict) else row)
             for number, row in enumerate(rows, start=1))
    return _examples(items, base, max_images, image_dir)


def dataset_rows(data):
    """Rows of a `datasets.Dataset` as plain dicts, with every `Image` feature left undecoded ({"bytes", "path"}):
    no picture is decoded or kept in memory here, whether the column is decoded or decode=False."""
    for batch in data.with_format("arrow").iter(batch_size=256):
        yield from batch.to_pylist()


def _dataset_examples(data, name: str, base: Path, max_images: int, image_dir=None):
    columns = list(data.column_names)
    if len(data) and not row_format(dict.fromkeys(columns)):  # one message, before reading any row
        return [], [Problem(name, 1, "-", f"unknown row format: the dataset's columns are {', '.join(columns[:12])}. "
                                          f"Formats: {ACCEPTED}")]
    return check_rows(dataset_rows(data), name, base, max_images, image_dir)


def is_saved_dataset(path: Path) -> bool:
    # save_to_disk writes state.json (a Dataset) or dataset_dict.json (a DatasetDict); a dataset_info.json alone
    # may be LLaMA-Factory's registry of JSON files.
    return path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json"))


def looks_like_hub_id(path: str) -> bool:
    parts = str(path).split("/")
    return len(parts) == 2 and all(parts) and not Path(path).exists() and not str(path).endswith((".jsonl", ".json"))


def read_any(path, max_images: int = MAX_IMAGES_PER_ROW, split: str = "train",
             image_dir=None) -> tuple[list[Example], list[Problem]]:
    """Good examples and every problem of: a JSONL or JSON file, a folder of them (in name order), a dataset saved
    with `save_to_disk` (a DatasetDict: `split`), another dataset folder or a Hub dataset id
    (`datasets.load_dataset(id, split=split)`), an in-memory `datasets.Dataset` / `DatasetDict`, or a list of row
    dicts. Files go through a line-numbered reader (pyarrow's JSON errors have no line numbers); dataset rows get
    the same per-row checks, named "name[split]:row N". Image paths of dataset rows are relative to the dataset
    folder (the working directory for a Hub id or rows in memory)."""
    if isinstance(path, list):
        return check_rows(path, "rows[in memory]", Path.cwd(), max_images, image_dir)
    if type(path).__module__.startswith("datasets"):  # a Dataset or DatasetDict in memory
        import datasets

        data = path[split] if isinstance(path, datasets.DatasetDict) else path
        name = f"{getattr(data.info, 'dataset_name', None) or 'dataset'}[{data.split or split}]"
        return _dataset_examples(data, name, Path.cwd(), max_images, image_dir)
    p = Path(path)
    if p.is_file():
        return read_jsonl(p, max_images, image_dir)
    files = sorted(p.glob("*.jsonl")) + sorted(p.glob("*.json")) if p.is_dir() and not is_saved_dataset(p) else []
    if files:
        examples, problems = [], []
        for file in sorted(files):
            e, q = read_jsonl(file, max_images, image_dir)
            examples += e
            problems += q
        return examples, problems
    if not p.is_dir() and not looks_like_hub_id(str(path)):
        raise FileNotFoundError(f"data not found: {path} (a JSONL or JSON file, a folder, a saved dataset or a Hub id "
                                "user/name)")
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
    return _dataset_examples(data, name, base, max_images, image_dir)


def check_file(path, max_images: int = MAX_IMAGES_PER_ROW) -> list[Problem]:
    return read_any(path, max_images)[1]


def load_examples(path, skip_bad: bool = False, max_images: int = MAX_IMAGES_PER_ROW,
                  split: str = "train", image_dir=None) -> list[Example]:
    """All examples of a file, a folder of them, a saved or Hub dataset, a `datasets.Dataset` or a list of row
    dicts (read_any). Bad rows raise DataError, or with skip_bad=True are dropped and reported. Images stored
    inside the data go to `image_dir` (default .cache/images/).

    A source without a usable row (empty, only blank lines, or every row bad) always raises DataError.
    """
    examples, problems = read_any(path, max_images, split, image_dir)
    name = path if isinstance(path, (str, Path)) else "the rows"
    if problems and not skip_bad:
        raise DataError(problems)
    if problems:
        print(tr("skip_bad=True: dropped {n} bad line(s) of {name}:\n{report}", n=len({(p.path, p.line) for p in problems}),
                 name=name, report=format_report(problems)))  # the report itself stays English (error messages)
    if not examples:
        raise DataError(problems, no_rows_message(name, problems))
    return examples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.data", description="Check training data.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="report every bad line (exit 1 if any, or if no row is usable)")
    check.add_argument("paths", nargs="+", help="JSONL or JSON files, folders of them, saved datasets or Hub ids")
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
        n_multi = sum(sum(m["role"] == "assistant" for m in e.messages) > 1 for e in examples)
        if problems:
            print(format_report(problems))
            status = max(status, 1)
        print(f"{path}: {len(examples)} good rows ({n_img} with an image, {n_multi} with several answers), "
              f"{len({(p.path, p.line) for p in problems})} bad")
        if not examples:
            print(no_rows_message(path, problems))
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
