"""The Korean series (notebooks/ko/): made from the English notebooks and notebooks/ko/translations/ by
scripts/make_korean_notebooks.py. Static checks, the sync check failing when it should, and a run on the tiny
profile."""

import copy
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import make_korean_notebooks as mk  # noqa: E402

HANGUL = re.compile("[\uac00-\ud7a3]")
KO_NOTEBOOKS = [mk.KO_DIR / name for name in mk.SERIES]


def test_readmes_link_both_series():
    english = (REPO / "README.md").read_text(encoding="utf-8")
    korean = (REPO / "README.ko.md").read_text(encoding="utf-8")
    for name in mk.SERIES:
        assert f"(notebooks/{name})" in english and f"(notebooks/ko/{name})" in korean, name
    assert "README.ko.md" in english and "notebooks/ko/" in english


def test_korean_notebooks_are_what_the_generator_writes():
    assert mk.main(["--check"]) == 0


@pytest.mark.parametrize("name", mk.SERIES)
def test_korean_notebook_mirrors_the_english_one(name):
    en = nbformat.read(mk.EN_DIR / name, as_version=4)
    ko = nbformat.read(mk.KO_DIR / name, as_version=4)
    nbformat.validate(ko)
    assert [(c.id, c.cell_type) for c in ko.cells] == [(c.id, c.cell_type) for c in en.cells]
    for e, k in zip(en.cells, ko.cells):
        if e.cell_type == "code":
            assert k.outputs == [] and mk.code_shape(k.source) == mk.code_shape(e.source), k.id
    params = next(c for c in ko.cells if "parameters" in c.metadata.get("tags", []))
    assert re.search(r'^lang = "ko"', params.source, re.M) and 'output_dir = "../../outputs"' in params.source
    assert mk.BADGE + "ko/" + name in ko.cells[0].source
    markdown = [c.source for c in ko.cells if c.cell_type == "markdown"]
    assert all(HANGUL.search(text) for text in markdown), "a markdown cell without Korean"
    assert sum(len(HANGUL.findall(text)) for text in markdown) > 1000
    comments = [line for c in ko.cells if c.cell_type == "code" for line in c.source.splitlines()
                if line.lstrip().startswith("#") and not line.lstrip().startswith("#!")]
    assert sum(bool(HANGUL.search(line)) for line in comments) >= 0.8 * len(comments), name
    tail = "\n".join(c.source for c in ko.cells[-3:] if c.cell_type == "markdown")
    for heading in ("## 요약", "## 연습 문제", "## 다음"):
        assert heading in tail, (name, heading)


def test_glossary_and_one_colab_cell():
    first = nbformat.read(KO_NOTEBOOKS[0], as_version=4).cells
    intro = "\n".join(c.source for c in first[:3] if c.cell_type == "markdown")
    for term in ("LoRA", "양자화", "어댑터", "그래디언트 체크포인팅"):
        assert term in intro, term
    colab = {next(c.source for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code") for p in KO_NOTEBOOKS}
    assert len(colab) == 1, "the Korean Colab cell differs between notebooks"


@pytest.fixture
def english_copy(tmp_path, monkeypatch):
    """The English notebooks copied to tmp_path/notebooks and the generator pointed at them (and at a
    notebooks/ko there holding today's Korean notebooks)."""
    en, ko = tmp_path / "notebooks", tmp_path / "notebooks" / "ko"
    ko.mkdir(parents=True)
    for name in mk.SERIES:
        (en / name).write_bytes((mk.EN_DIR / name).read_bytes())
        (ko / name).write_bytes((mk.KO_DIR / name).read_bytes())
    monkeypatch.setattr(mk, "EN_DIR", en)
    monkeypatch.setattr(mk, "KO_DIR", ko)
    return en


def _edit(path: Path, index: int, change) -> dict:
    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = [c for c in nb["cells"] if change[0] == c["cell_type"]][index]
    cell["source"] = mk.lines(change[1](mk.source(cell)))
    path.write_text(mk.dumps(nb), encoding="utf-8")
    return cell


def test_sync_check_fails_when_an_english_cell_changes(english_copy, capsys):
    name = mk.SERIES[3]
    cell = _edit(english_copy / name, 2, ("markdown", lambda s: s + "\nOne more sentence."))
    assert mk.main(["--check"]) == 1
    assert f"{name} {cell['id']} (markdown): stale" in capsys.readouterr().err
    # a new code cell with a comment needs a translation; one without (pure code) does not
    nb = json.loads((english_copy / name).read_text(encoding="utf-8"))
    nb["cells"] = [c for c in nb["cells"] if c["id"] != cell["id"]] + [
        {"cell_type": "code", "id": "new-1", "metadata": {}, "outputs": [], "execution_count": None,
         "source": ["x = 1  # a comment that teaches\n"]},
        {"cell_type": "code", "id": "new-2", "metadata": {}, "outputs": [], "execution_count": None, "source": ["y = 2\n"]}]
    (english_copy / name).write_text(mk.dumps(nb), encoding="utf-8")
    found = mk.problems(mk.load_translations())
    assert f"{name} new-1 (code): no translation" in found and not any("new-2" in f for f in found)
    assert any(f"{name} {cell['id']}: translation of a cell that no longer exists" == f for f in found)


def test_sync_check_fails_when_the_korean_notebook_is_old_or_edited(english_copy, capsys):
    assert mk.main(["--check"]) == 0
    ko = mk.KO_DIR / mk.SERIES[0]
    ko.write_text(ko.read_text(encoding="utf-8").replace("LoRA", "LORA", 1), encoding="utf-8")
    assert mk.main(["--check"]) == 1
    assert "notebooks/ko/ is not what" in capsys.readouterr().err
    assert mk.main([]) == 0 and mk.main(["--check"]) == 0  # regenerating repairs it


def test_a_translation_may_change_comments_and_strings_only():
    name = mk.SERIES[0]
    nb = json.loads((mk.EN_DIR / name).read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    ok = mk.translate_cell(cell, {"replace": [["# auto, tiny or 11b", "# auto, tiny 또는 11b"]]}, "test")
    assert "tiny 또는 11b" in mk.source(ok) and 'lang = "ko"' in mk.source(ok)
    with pytest.raises(mk.TranslationError, match="more than comments"):
        mk.translate_cell(cell, {"replace": [['profile = "auto"', 'profile_ko = "auto"']]}, "test")
    with pytest.raises(mk.TranslationError, match="not in the English cell"):
        mk.translate_cell(cell, {"replace": [["no such text", "없음"]]}, "test")
    markdown = copy.deepcopy(next(c for c in nb["cells"] if c["cell_type"] == "markdown"))
    assert mk.source(mk.translate_cell(markdown, {"ko": "한국어 " + mk.BADGE + name}, "test")) == \
        "한국어 " + mk.BADGE + "ko/" + name


def test_korean_series_runs_on_tiny_profile(tmp_path):
    """The Korean series top to bottom on the tiny profile (the English one runs in test_notebooks.py): the
    helpers print in Korean (lang = "ko") and the result is the same kind of win."""
    from .test_notebooks import run_notebooks_cli

    times = run_notebooks_cli(tmp_path, lang="ko")
    assert len(times) == 5, times
    for name in mk.SERIES:
        nb = nbformat.read(tmp_path / "executed" / name, as_version=4)
        shown = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                        + str(o.get("data", {}).get("text/html", ""))
                        for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert len(HANGUL.findall(shown)) > 20, name  # printed explanations and helper output in Korean
    results = json.loads((tmp_path / "before_after.json").read_text())
    groups = results["groups"]
    assert groups["training rows"]["after"]["exact_match"] >= 0.75 >= 0.1 >= groups["training rows"]["before"]["exact_match"]
    assert results["max_logit_difference"] < 1e-3
    for fig in ("token_lengths", "loss", "before_after"):
        assert (tmp_path / "figures" / f"{fig}.png").stat().st_size > 1000, fig
