"""Make the Korean series (notebooks/ko/) from the English notebooks and one translation file.

    python scripts/make_korean_notebooks.py           # write notebooks/ko/*.ipynb
    python scripts/make_korean_notebooks.py --check   # exit 1 if a translation is missing or stale, or ko/ is old
    python scripts/make_korean_notebooks.py --todo    # the cells to (re)translate, with their English text

The English notebooks are the one source of the code. `notebooks/ko/translations/<notebook>.json` holds, per
cell id, the Korean text of every markdown cell and, for code cells, a list of [English, Korean] replacements
(comments, printed explanations, labels). Each entry records a hash of the English cell it translates, so a
change to an English cell makes its translation stale until someone updates it. Besides the entries, three rules
apply to every Korean notebook: the parameters cell says `lang = "ko"` (helpers in utils/ print and draw in
Korean), `output_dir` is one folder further up (the notebooks sit in notebooks/ko/), and the "Open in Colab"
badge points at notebooks/ko/.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EN_DIR = REPO_ROOT / "notebooks"
KO_DIR = EN_DIR / "ko"
TRANSLATIONS = KO_DIR / "translations"  # one <notebook name>.json per notebook: {cell id: entry}
SERIES = ("01_data_inspection.ipynb", "02_load_8bit_and_memory.ipynb", "03_lora_configuration.ipynb",
          "04_training.ipynb", "05_export_and_inference.ipynb")
BADGE = "/blob/main/notebooks/"
# Rules for every Korean notebook (applied after the cell's own replacements).
GLOBAL_RULES = ((r'^lang = "en"', 'lang = "ko"'),
                (r'^output_dir = "\.\./outputs"', 'output_dir = "../../outputs"'))


class TranslationError(ValueError):
    pass


def source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def lines(text: str) -> list[str]:
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def python_source(text: str) -> str:
    """IPython `!shell` / `%magic` lines as `pass`, so ast can read the cell."""
    return "\n".join(re.sub(r"^(\s*)[!%].*$", r"\1pass", line) for line in text.splitlines())


def has_comment(text: str) -> bool:
    import io
    import tokenize

    try:
        return any(t.type == tokenize.COMMENT for t in tokenize.generate_tokens(io.StringIO(python_source(text)).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "#" in text


def needs_translation(cell) -> bool:
    """Every markdown cell; a code cell when it has a comment (the comments that teach are translated)."""
    return cell["cell_type"] == "markdown" or has_comment(source(cell))


def code_shape(text: str) -> str:
    """The cell's code without comments and with every string constant blanked: two cells with the same shape
    differ at most in comments and strings (what a translation may change)."""
    tree = ast.parse(python_source(text))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return ast.dump(tree)


def translate_cell(cell: dict, entry: dict | None, where: str) -> dict:
    out = copy.deepcopy(cell)
    text = source(cell)
    if entry is not None:
        if cell["cell_type"] == "markdown":
            text = entry["ko"]
        else:
            for en, ko in entry.get("replace", []):
                if en not in text:
                    raise TranslationError(f"{where}: {en!r} is not in the English cell any more")
                text = text.replace(en, ko)
    if cell["cell_type"] == "code":
        for pattern, repl in GLOBAL_RULES:
            text = re.sub(pattern, repl, text, flags=re.M)
        if code_shape(text) != code_shape(source(cell)):
            raise TranslationError(f"{where}: the Korean cell differs from the English one in more than comments "
                                   "and strings")
    else:
        text = text.replace(BADGE, BADGE + "ko/")
    out["source"] = lines(text)
    return out


def problems(translations: dict, names=SERIES) -> list[str]:
    """Missing and stale translations, one line each (empty: the translation files are complete)."""
    found = []
    for name in names:
        nb = json.loads((EN_DIR / name).read_text(encoding="utf-8"))
        entries = translations.get(name, {})
        ids = {c["id"] for c in nb["cells"]}
        for cell in nb["cells"]:
            entry = entries.get(cell["id"])
            where = f"{name} {cell['id']} ({cell['cell_type']})"
            if entry is None:
                if needs_translation(cell):
                    found.append(f"{where}: no translation")
            elif entry.get("en_sha") != sha(source(cell)):
                found.append(f"{where}: stale (the English cell changed since it was translated)")
        found += [f"{name} {cid}: translation of a cell that no longer exists" for cid in sorted(set(entries) - ids)]
    return found


def build(translations: dict, names=SERIES) -> dict[str, dict]:
    """{file name: Korean notebook} for the series."""
    out = {}
    for name in names:
        nb = json.loads((EN_DIR / name).read_text(encoding="utf-8"))
        entries = translations.get(name, {})
        ko = copy.deepcopy(nb)
        ko["cells"] = [translate_cell(c, entries.get(c["id"]), f"{name} {c['id']}") for c in nb["cells"]]
        out[name] = ko
    return out


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def load_translations(folder: Path = TRANSLATIONS) -> dict:
    """{notebook file name: {cell id: entry}} from the translation folder."""
    return {name: json.loads((folder / (Path(name).stem + ".json")).read_text(encoding="utf-8"))
            for name in SERIES if (folder / (Path(name).stem + ".json")).exists()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a translation is missing or stale, or "
                                                             "notebooks/ko/ differs from what this script writes")
    parser.add_argument("--todo", action="store_true", help="print the cells to (re)translate with their English text")
    parser.add_argument("--only", metavar="NAME", help="one notebook (e.g. 01_data_inspection) instead of the series")
    args = parser.parse_args(argv)
    names = SERIES
    if args.only:
        names = tuple(n for n in SERIES if n.startswith(args.only))
        if len(names) != 1:
            parser.error(f"--only {args.only!r} names none or several of {', '.join(SERIES)}")
    translations = load_translations()
    todo = problems(translations, names)
    if args.todo:
        for line in todo:
            name, cid = line.split(" ")[:2]
            cell = next(c for c in json.loads((EN_DIR / name).read_text(encoding="utf-8"))["cells"] if c["id"] == cid)
            print(f"=== {line}\nen_sha: {sha(source(cell))}\n{source(cell)}\n")
        return 0
    if todo:
        print("notebooks/ko/translations/ is not complete:\n  " + "\n  ".join(todo)
              + "\nTranslate those cells (python scripts/make_korean_notebooks.py --todo shows them), then rerun.",
              file=sys.stderr)
        return 1
    try:
        built = build(translations, names)
    except TranslationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.check:
        old = [name for name, nb in built.items()
               if not (KO_DIR / name).exists() or (KO_DIR / name).read_text(encoding="utf-8") != dumps(nb)]
        if old:
            print("notebooks/ko/ is not what the English notebooks and the translation give: "
                  f"{', '.join(old)}. Run python scripts/make_korean_notebooks.py", file=sys.stderr)
            return 1
        print(f"notebooks/ko/: {len(built)} notebooks in step with the English ones")
        return 0
    KO_DIR.mkdir(exist_ok=True)
    for name, nb in built.items():
        (KO_DIR / name).write_text(dumps(nb), encoding="utf-8")
    print(f"wrote {len(built)} Korean notebooks to {KO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
