"""The language of what utils/ prints and draws for learners: English (the default) or Korean (notebooks/ko/).

A notebook's parameters cell sets `lang`; `setup_notebook(..., lang=lang)` calls `set_language`, and every
helper that shows text to a learner (describe, charts, widget panels, result tables) passes its English text
through `tr`. Keys are the English texts themselves (format strings included), so a text without a Korean entry
shows in English rather than failing.
"""

from __future__ import annotations

LANGS = ("en", "ko")
_current = {"lang": "en"}

KO: dict[str, str] = {}  # English text -> Korean text


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
