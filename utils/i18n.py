"""The language of what utils/ prints and draws for learners: English (the default) or Korean (notebooks/ko/).

A notebook's parameters cell sets `lang`; `setup_notebook(..., lang=lang)` calls `set_language`, and every
helper that shows text to a learner (describe, charts, widget panels, result tables) passes its English text
through `tr`. Keys are the English texts themselves (format strings included), so a text without a Korean entry
shows in English rather than failing. The Korean texts are in utils/i18n_ko.py; tests/test_i18n.py checks that
every `tr("...")` / `N_("...")` literal in utils/ has one and that no entry is unused.
"""

from __future__ import annotations

from utils.i18n_ko import KO  # English text -> Korean text

LANGS = ("en", "ko")
_current = {"lang": "en"}


def set_language(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    _current["lang"] = lang
    return lang


def get_language() -> str:
    return _current["lang"]


def tr(text: str, lang: str | None = None, **values) -> str:
    """`text` in `lang` (default: the notebook's language), then `.format(**values)` when values are given."""
    out = KO.get(text, text) if (lang or _current["lang"]) == "ko" else text
    return out.format(**values) if values else out


def N_(text: str) -> str:
    """Marks a text that is stored now (a table of labels) and passed through `tr` when shown; returns it as is."""
    return text
