"""The language of what utils/ prints and draws (utils.i18n): every text has its Korean, the helpers switch with
set_language, and English stays the default."""

import ast
import re
import string
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from utils.i18n import KO, N_, get_language, set_language, tr  # noqa: E402

UTILS = Path(__file__).resolve().parent.parent / "utils"
HANGUL = re.compile("[\uac00-\ud7a3]")


@pytest.fixture(autouse=True)
def english_again():
    """Each test starts in English and leaves English behind, whatever it set (other tests read English)."""
    set_language("en")
    yield
    set_language("en")


def marked_texts() -> dict[str, list[tuple[str, int, ast.Call]]]:
    """{literal: [(file, line, call)]} of every tr("...") and N_("...") call in utils/*.py."""
    found = {}
    for path in sorted(UTILS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("tr", "N_")
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                found.setdefault(node.args[0].value, []).append((path.name, node.lineno, node))
    return found


def placeholders(text: str) -> set[tuple]:
    return {(name, conversion, spec) for _, name, spec, conversion in string.Formatter().parse(text) if name is not None}


# ---------------------------------------------------------------- (a) every marked text has its Korean, no dead keys
def test_every_marked_text_has_a_korean_entry():
    found = marked_texts()
    assert len(found) > 100  # the scan sees the helpers (a broken scan would find nothing and pass below)
    missing = [f"{calls[0][0]}:{calls[0][1]}: {text!r}" for text, calls in found.items() if text not in KO]
    assert not missing, "texts without a Korean entry in utils/i18n_ko.py:\n" + "\n".join(missing)


def test_every_korean_entry_is_used_in_utils():
    found = marked_texts()
    dead = [key for key in KO if key not in found]
    assert not dead, f"KO entries no tr()/N_() call in utils/ uses (remove them or fix the key): {dead}"


def test_every_korean_entry_is_korean():
    assert [key for key, value in KO.items() if not HANGUL.search(value)] == []


# ---------------------------------------------------------------- (c) same placeholders in English and Korean
def test_korean_texts_have_the_placeholders_of_their_key():
    differ = {key: (sorted(placeholders(key)), sorted(placeholders(value)))
              for key, value in KO.items() if placeholders(key) != placeholders(value)}
    assert not differ, differ


def test_tr_calls_pass_exactly_the_placeholders_of_their_text():
    """tr("{n} rows", n=n): a missing value raises at runtime; an extra one is a typo."""
    wrong = []
    for text, calls in marked_texts().items():
        names = {name for name, _, _ in placeholders(text)}
        for file, line, call in calls:
            if call.func.id != "tr" or not (names or call.keywords):
                continue
            given = {k.arg for k in call.keywords if k.arg != "lang"}
            if given != names:
                wrong.append(f"{file}:{line}: {text!r} gets {sorted(given)}, needs {sorted(names)}")
    assert not wrong, "\n".join(wrong)


def test_placeholder_check_catches_a_difference():
    assert placeholders("{n} of {total} rows ({share:.1%})") != placeholders("{total}개 중 {n}개 ({share})")
    assert placeholders("{scope!r}") != placeholders("{scope}")


# ---------------------------------------------------------------- tr and set_language
def test_tr_translates_formats_and_falls_back_to_english():
    key = "trainable parameters: {trainable:,} of {total:,} ({share:.2%})"
    assert tr(key, trainable=1000, total=4000, share=0.25) == "trainable parameters: 1,000 of 4,000 (25.00%)"
    set_language("ko")
    assert get_language() == "ko"
    assert tr(key, trainable=1000, total=4000, share=0.25) == "학습 파라미터: 전체 4,000개 중 1,000개 (25.00%)"
    assert tr(key, "en", trainable=1, total=2, share=0.5).startswith("trainable parameters")  # an explicit lang wins
    assert tr("a text without an entry") == "a text without an entry"
    assert N_("anything") == "anything"
    with pytest.raises(ValueError, match="lang"):
        set_language("fr")
    assert get_language() == "ko"


# ---------------------------------------------------------------- (b) helpers in Korean and in English
@pytest.mark.filterwarnings("ignore:Glyph")  # the stand-in font name: matplotlib measures Hangul with DejaVu Sans
def test_plot_title_follows_the_language(monkeypatch):
    import utils.plots as plots

    lengths = [{"prompt": 5, "answer": 3, "total": t, "lang": "ko", "has_image": False} for t in (20, 50, 90)]
    fig = plots.plot_truncation(lengths, 64)
    assert fig.axes[0].get_title() == "max_seq_length=64: 1 of 3 rows (33.3%) truncated"
    assert fig.axes[0].get_ylabel() == "% rows truncated"
    monkeypatch.setattr(plots, "cjk_font", lambda *a, **k: "Noto Sans CJK KR")  # as if the font were installed
    set_language("ko")
    fig = plots.plot_truncation(lengths, 64, ax=fig.axes[0])
    assert fig.axes[0].get_title() == "max_seq_length=64: 행 3개 중 1개(33.3%)가 잘립니다"
    assert fig.axes[0].get_ylabel() == "잘리는 행 (%)"
    fig = plots.plot_losses({"train": [[1, 2.0], [2, 1.5]], "eval": [[0, 3.0]]})
    assert fig.axes[0].get_title() == "LoRA 파인튜닝 손실" and fig.axes[0].get_xlabel() == "옵티마이저 스텝"
    set_language("en")
    fig = plots.plot_losses({"train": [[1, 2.0], [2, 1.5]], "eval": [[0, 3.0]]})
    assert fig.axes[0].get_title() == "LoRA fine-tuning loss" and fig.axes[0].get_xlabel() == "optimizer step"
    matplotlib.pyplot.close("all")


def test_korean_figures_stay_english_without_a_cjk_font(monkeypatch, capsys):
    import utils.plots as plots

    monkeypatch.setattr(plots, "cjk_font", lambda candidates=plots.CJK_FONTS, quiet=False:
                        None if quiet else print(tr(plots.CJK_MISSING)))
    monkeypatch.setattr(plots, "_cjk_noted", False)
    set_language("ko")
    lengths = [{"prompt": 5, "answer": 3, "total": 20, "lang": "ko", "has_image": False}]
    assert plots.plot_truncation(lengths, 64).axes[0].get_title() == "max_seq_length=64: 0 of 1 rows (0.0%) truncated"
    assert plots.plot_truncation(lengths, 64).axes[0].get_xlabel() == "max_seq_length (tokens)"
    assert capsys.readouterr().out.count("한글 글꼴") == 1  # the note once, in Korean
    matplotlib.pyplot.close("all")


def test_widget_panel_labels_follow_the_language():
    pytest.importorskip("ipywidgets")
    from utils.widgets import fit_widget

    box = fit_widget({}, show=False, start={"gpu": "A100 80 GB"})
    assert box.controls["batch_size"].description == "batch size"
    assert "A100 80 GB: fits (" in box.result.value and "Parts (GiB): weights" in box.result.value
    set_language("ko")
    box = fit_widget({}, show=False, start={"gpu": "A100 80 GB"})
    assert box.controls["batch_size"].description == "배치 크기"
    assert box.controls["max_seq_length"].description == "max_seq_length"  # technical names stay
    assert "A100 80 GB: 들어갑니다 (" in box.result.value and "항목별 (GiB): 가중치" in box.result.value


def test_results_table_follows_the_language():
    from utils.inference import results_table_html

    side = {"n": 4, "exact_match": 0.5, "form_rate": 1.0, "eval_loss": 1.25}
    groups = {"training rows": {"before": side, "after": side}}
    english = results_table_html(groups)
    assert "<th>metric</th>" in english and "<td>training rows (4)</td><td>exact match</td>" in english
    set_language("ko")
    korean = results_table_html(groups)
    assert "<th>지표</th>" in korean and "<td>학습 행 (4)</td><td>정확 일치</td>" in korean
    assert "50% (2/4)" in korean and "1.25" in korean  # the numbers are the same


def test_describe_and_the_setup_line_follow_the_notebooks_language(tmp_path, monkeypatch, capsys):
    from utils.notebook_setup import describe, setup_notebook

    monkeypatch.delenv("LLAMA_VISION_PRECISION", raising=False)
    cfg, *_ = setup_notebook("tiny", "auto", str(tmp_path), "01", versions=False, lang="ko")
    assert get_language() == "ko" and cfg["lang"] == "ko"
    describe(cfg, ["max_seq_length"])
    out = capsys.readouterr().out
    assert "설정: tiny, 8bit | 계획된 학습 최대 메모리" in out
    assert "이 노트북이 쓰는 설정:" in out and "한 행의 최대 토큰 수" in out and "longest row" not in out
    setup_notebook("tiny", "auto", str(tmp_path), "01", versions=False)  # default lang: back to English
    describe(cfg, ["max_seq_length"])
    out = capsys.readouterr().out
    assert get_language() == "en" and "setup: tiny in 8bit | planned training peak" in out
    assert "this notebook uses:" in out and "longest row in tokens" in out and not HANGUL.search(out)
