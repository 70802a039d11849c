"""Charts the notebooks and README_IMAGES/ show (one function per chart type; each returns its Figure and
saves it with `save_to`). Figures with Korean text call `cjk_font()` first."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
from transformers import TrainerCallback

from utils.i18n import N_, get_language, tr
from utils.memory import GROUPS

# ---------------------------------------------------------------- Korean text in figures
# Fonts with Hangul, in order of preference: Debian's fonts-noto-cjk (scripts/setup.sh, .ci/run and the Colab
# cell install it; its .ttc files hold the KR face), then what Windows, macOS and other Linux systems ship.
CJK_FONTS = ("Noto Sans CJK KR", "Noto Sans KR", "Noto Sans CJK JP", "Noto Serif CJK KR", "NanumGothic",
             "Malgun Gothic", "Apple SD Gothic Neo", "AppleGothic", "Source Han Sans KR", "UnDotum")
_CJK_FILE_HINTS = ("cjk", "nanum", "malgun", "gothic", "notosanskr", "sourcehan", "undotum")
CJK_MISSING = N_("note: no font with Korean glyphs is installed for matplotlib, so figures leave the Korean text out "
               "(it is printed instead). Install one with `apt-get install -y fonts-noto-cjk` (scripts/setup.sh and "
               "the Colab cell do) and restart the kernel.")
_cjk_scanned = False


def cjk_font(candidates=CJK_FONTS, quiet: bool = False) -> str | None:
    """The first installed font of `candidates` that has Hangul, made matplotlib's fallback after DejaVu Sans
    (rcParams["font.family"]), so Korean text in any later figure renders; None when there is none, with a
    printed note (CJK_MISSING) unless `quiet`. Fonts installed after matplotlib cached its font list (by
    setup.sh or the Colab cell) are found by scanning the system font folders once. Notebook 01 calls it
    through plot_samples; call it before any figure with Korean text."""
    global _cjk_scanned
    from matplotlib import font_manager

    def first_installed():
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((name for name in candidates if name in names), None)

    found = first_installed()
    if found is None and not _cjk_scanned:
        _cjk_scanned = True
        for path in font_manager.findSystemFonts():
            if any(hint in Path(path).name.lower() for hint in _CJK_FILE_HINTS):
                with contextlib.suppress(Exception):  # a font file matplotlib cannot read: skip it
                    font_manager.fontManager.addfont(path)
        found = first_installed()
    if found is None:
        if not quiet:
            print(tr(CJK_MISSING))
        return None
    plt.rcParams["font.family"] = ["DejaVu Sans", found]  # Latin from DejaVu Sans, Hangul from `found`
    return found


_cjk_noted = False


def figure_lang() -> str:
    """The language of figure text: the notebook's (utils.i18n), except Korean without a CJK font, whose figures
    stay English (the note CJK_MISSING is printed once). Korean: makes the CJK font matplotlib's fallback."""
    global _cjk_noted
    if get_language() != "ko":
        return "en"
    if cjk_font(quiet=_cjk_noted) is None:
        _cjk_noted = True
        return "en"
    return "ko"


def has_hangul(text: str) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" or "\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f" for ch in text)


def _cells(text: str) -> int:
    """Display width: a Hangul (or other wide East Asian) character takes two cells, a Latin one one."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _lines(text: str, width: int, max_lines: int) -> str:
    """`text` wrapped at spaces to `width` cells (_cells), at most `max_lines` lines (the last ends in … when cut)."""
    lines, line = [], ""
    for word in text.split():
        while _cells(word) > width:  # a word longer than a line: split it
            cut = next(i for i in range(len(word), 0, -1) if _cells(word[:i]) <= width)
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        if line and _cells(line + " " + word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip() + " …"
    return "\n".join(lines)


# ---------------------------------------------------------------- notebook 01: samples
def plot_samples(examples, n: int = 4, save_to=None, width: int = 30):
    """Up to `n` rows with an image (utils.data.Example): each picture with its source line (file:line) and,
    under it, the question and the answer the model is trained on. Korean text needs a CJK font (`cjk_font`);
    without one a row's Korean question/answer is printed instead of drawn. Returns the Figure, or None when
    no row has an image (a text-only data set). Taught in notebook 01."""
    from PIL import Image

    rows = [e for e in examples if e.images][:n]
    if not rows:
        return None
    font = cjk_font()
    lang = get_language() if font else "en"
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 3.9), squeeze=False)
    for ax, ex in zip(axes[0], rows):
        with Image.open(ex.images[0]) as img:
            ax.imshow(img.convert("RGB"))
        ax.set_title(ex.source, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        text = f"Q: {_lines(ex.prompt_text, width, 3)}\nA: {_lines(ex.answer, width, 2)}"
        if font is None and has_hangul(text):
            print(f"{ex.source}: Q: {ex.prompt_text} -> A: {ex.answer}")
            text = "(Korean text: printed above)"  # English: without a CJK font no Hangul can be drawn
        ax.text(0.0, -0.04, text, transform=ax.transAxes, va="top", ha="left", fontsize=9, linespacing=1.3)
    fig.suptitle(tr("{n} training rows with an image: the question and the trained answer under each", lang,
                    n=len(rows)), fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.84, bottom=0.3, wspace=0.15)
    return _save(fig, save_to, tight=False)

GROUP_LABELS = {"vision_model": N_("vision tower"), "multi_modal_projector": N_("projector"),
                "language_linear": N_("text decoder Linear"), "embed_tokens": "embed_tokens",
                "language_other": N_("norms, gates"), "lm_head": "lm_head", "quant_state": N_("quant. scales")}

def plot_memory_plan(plan_rows: dict[str, dict[str, int]], ax=None, save_to=None,
                     model_name: str = "Llama 3.2 11B Vision-Instruct", gpus: dict[str, float] | None = None):
    """Horizontal stacked bars (GiB) of weight memory per group, one bar per precision, with a dashed
    vertical line per GPU (`gpus`: {name: GiB}, default utils.widgets.GPUS: the cards of notebook 02's fit
    widget). Weights only: training needs more (the fit widget plans that).

    `plan_rows`: {label: plan_load_memory(...)}, e.g. utils.memory.memory_plan_rows(). Returns the Figure.
    """
    if gpus is None:
        from utils.widgets import GPUS

        gpus = {name: gib for name, gib in GPUS.items() if not name.startswith("H100")}  # same memory as the A100 80 GB
    lang = figure_lang()
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4))
    else:
        fig = ax.figure
    keys = list(plan_rows)
    labels = [tr(k, lang) for k in keys]  # the bars' names as shown
    groups = [g for g in GROUPS + ("quant_state",) if any(plan_rows[k].get(g, 0) for k in keys)]
    largest = {g: max(plan_rows[k].get(g, 0) for k in keys) / 2**30 for g in groups}
    biggest_total = max(sum(plan_rows[k].get(g, 0) for g in groups) for k in keys) / 2**30
    thin = [g for g in groups if largest[g] < 0.01 * biggest_total]  # too thin to see as a colour
    left = [0.0] * len(labels)
    for group in groups:
        widths = [plan_rows[k].get(group, 0) / 2**30 for k in keys]
        if group in thin:
            ax.barh(labels, widths, left=left, color="0.5")
        else:
            ax.barh(labels, widths, left=left, label=tr(GROUP_LABELS[group], lang))
        left = [a + b for a, b in zip(left, widths)]
    if thin:  # one legend entry that says why they cannot be seen
        ax.barh([labels[0]], [0], color="0.5", label=tr("{parts}\n(each under {gib:.2f} GiB)", lang,
                                                        parts=", ".join(tr(GROUP_LABELS[g], lang) for g in thin),
                                                        gib=max(largest[g] for g in thin)))
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.1f}", va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.invert_yaxis()
    top = max(max(left), *gpus.values()) * 1.06
    for name, gib in gpus.items():  # the cards, labelled along their line so close ones do not collide
        ax.axvline(gib, color="0.35", ls="--", lw=0.9, zorder=0)
        ax.text(gib - top * 0.004, -0.6, f"{name}\n{gib:g} GiB", ha="right", va="bottom", rotation=90, fontsize=7,
                color="0.25", linespacing=1.1)
    ax.set_ylim(len(labels) - 0.5, -2.7)  # room above the bars for the GPU names
    ax.set_xlabel(tr("GiB of weights (dashed lines: GPU memory of the cards in the fit widget)", lang))
    ax.set_xlim(0, top)
    ax.set_title(tr("{model}: weight memory by precision", lang, model=model_name), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title=tr("part of the model", lang),
              title_fontsize=7)
    fig.tight_layout()
    return _save(fig, save_to)


# ---------------------------------------------------------------- notebook 01: token lengths
LANG_COLORS = {"ko": "tab:orange", "en": "tab:blue"}
LANG_NAMES = {"ko": N_("Korean"), "en": N_("English")}
PANEL_TITLES = {"prompt": N_("prompt tokens"), "answer": N_("answer tokens"), "total": N_("total tokens")}


def _save(fig, save_to, tight: bool = False):
    if save_to:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_to, dpi=120, **({"bbox_inches": "tight"} if tight else {}))
    return fig


def _bins(values, n=30):
    hi = max(values) if values else 1
    step = max(1, -(-hi // n))
    return list(range(0, hi + 2 * step, step))


def plot_token_lengths(lengths: list[dict], max_seq_length: int | None = None, save_to=None):
    """Histograms of prompt / answer / total tokens (rows of utils.batching.token_lengths), stacked by
    language (Korean vs English); rows with an image (counted with their <|image|> token) are a
    hatched third layer, so every row is counted exactly once per panel. Taught in notebook 01.

    Returns the Figure; each panel's bar heights sum to len(lengths).
    """
    lang = figure_lang()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    groups = [("en", False), ("ko", False), (None, True)]  # image rows form their own layer
    for ax, key in zip(axes, ("prompt", "answer", "total")):
        bins = _bins([r[key] for r in lengths])
        data, labels, colors, hatches = [], [], [], []
        for row_lang, image in groups:
            sel = [r[key] for r in lengths if r["has_image"] == image and (row_lang is None or r["lang"] == row_lang)]
            n = len(sel)
            data.append(sel)
            labels.append(tr("image rows ({n})", lang, n=n) if image else
                          tr("{language} text ({n})", lang, language=tr(LANG_NAMES[row_lang], lang), n=n))
            colors.append("tab:green" if image else LANG_COLORS[row_lang])
        _, _, patches = ax.hist(data, bins=bins, stacked=True, color=colors, label=labels)
        for bar in patches[-1]:
            bar.set_hatch("//")
        if max_seq_length and key == "total":
            ax.axvline(max_seq_length, color="red", ls="--", lw=1)
            ax.text(max_seq_length, ax.get_ylim()[1] * 0.9, f"max_seq_length={max_seq_length} ", color="red",
                    fontsize=7, ha="right")
        ax.set_title(tr(PANEL_TITLES[key], lang))
        ax.set_xlabel(tr("tokens", lang))
    axes[0].set_ylabel(tr("rows", lang))
    axes[0].legend(fontsize=7)
    fig.suptitle(tr("Token lengths of {n} rows (Llama 3.2 tokenizer)", lang, n=len(lengths)), fontsize=10)
    fig.tight_layout()
    return _save(fig, save_to)


def plot_truncation(lengths: list[dict], max_seq_length: int, ax=None, save_to=None):
    """Share of rows longer than each candidate max_seq_length (a curve), with the chosen value marked.

    The marked point is utils.batching.truncated_share(lengths, max_seq_length). Notebook 01's slider redraws it.
    """
    from utils.batching import truncated_share

    lang = figure_lang()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3))
    else:
        fig = ax.figure
        ax.clear()
    hi = max([r["total"] for r in lengths] + [max_seq_length]) + 16
    xs = list(range(16, hi + 1, 4))
    ax.plot(xs, [100 * truncated_share(lengths, x) for x in xs], color="tab:blue")
    share = truncated_share(lengths, max_seq_length)
    ax.axvline(max_seq_length, color="red", ls="--", lw=1)
    ax.plot([max_seq_length], [100 * share], "o", color="red")
    n = sum(r["total"] > max_seq_length for r in lengths)
    ax.set_title(tr("max_seq_length={max_seq_length}: {n} of {total} rows ({share:.1%}) truncated", lang,
                    max_seq_length=max_seq_length, n=n, total=len(lengths), share=share), fontsize=9)
    ax.set_xlabel(tr("max_seq_length (tokens)", lang))
    ax.set_ylabel(tr("% rows truncated", lang))
    ax.set_ylim(-2, 102)
    fig.tight_layout()
    return _save(fig, save_to)


# ---------------------------------------------------------------- notebook 04: losses and label mask
def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start), same length as `values`."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smoothing_window(n_points: int) -> int:
    """The moving-average window for n logged train losses: about a tenth of them, at least 3; 1 (none) below 4."""
    return 1 if n_points < 4 else max(3, n_points // 10)


LOSS_LABEL = N_("loss: cross-entropy per answer token (nats)")
LOSS_TITLE = N_("LoRA fine-tuning loss")


def plot_losses(history: dict, ax=None, save_to=None, title: str = LOSS_TITLE, smooth: int | None = None):
    """Train and eval loss vs optimizer step; `history` is utils.train.loss_history(...) /
    loss_history.json: {"train": [[step, loss], ...], "eval": [[step, loss], ...]}.

    The loss is the mean cross-entropy per answer token in nats (the prompt is masked with -100); the right
    axis shows the same as perplexity, e^loss: "as unsure as a pick among that many tokens". The logged train
    loss is noisy (the mean over the batches since the last log): the raw points are drawn faint and their
    moving average (`smooth` points; default `smoothing_window`) over them as the train line. The eval loss is
    measured on the held-out rows (from step 0 with `eval_on_start`)."""
    import math

    lang = figure_lang()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
    else:
        fig = ax.figure
        for child in list(ax.child_axes):  # the perplexity axis of the previous draw
            child.remove()
        ax.clear()
    train = history.get("train") or []
    if train:
        steps, losses = [p[0] for p in train], [p[1] for p in train]
        window = smoothing_window(len(train)) if smooth is None else max(1, smooth)
        if window > 1:
            ax.plot(steps, losses, color="tab:blue", marker=".", lw=0.8, alpha=0.3, label=tr("train (raw)", lang))
            ax.plot(steps, moving_average(losses, window), color="tab:blue", lw=2,
                    label=tr("train, mean of {window} (last {last:.2f})", lang, window=window,
                             last=moving_average(losses, window)[-1]))
        else:
            ax.plot(steps, losses, color="tab:blue", marker=".", label=tr("train (last {last:.2f})", lang, last=losses[-1]))
    points = history.get("eval") or []
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:orange", marker="o",
                label=tr("eval, held-out rows ({first:.2f} → {last:.2f})", lang, first=points[0][1], last=points[-1][1]))
    ax.set_xlabel(tr("optimizer step", lang))
    ax.set_ylabel(tr(LOSS_LABEL, lang), fontsize=8)
    ax.set_title(tr(title, lang), fontsize=10)
    values = [p[1] for p in train + points]
    if values:
        ax.set_ylim(0, max(values) * 1.08)
        right = ax.secondary_yaxis("right", functions=(lambda x: x, lambda x: x))  # same scale, perplexity labels
        ticks = [t for t in ax.get_yticks() if 0 <= t <= max(values) * 1.08]
        right.set_yticks(ticks)
        right.set_yticklabels([f"{math.exp(t):,.0f}" if t >= 2.5 else f"{math.exp(t):.1f}" for t in ticks], fontsize=7)
        right.set_ylabel(tr("perplexity = e^loss", lang), fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, save_to)


# ---------------------------------------------------------------- notebook 05: before and after
def plot_before_after(results: dict, save_to=None, title: str = N_("Before and after fine-tuning")):
    """Grouped bars: exact match and right form (utils.inference.right_form) per group of rows, base vs adapted.

    `results`: {group: {"before": evaluate_answers(...), "after": evaluate_answers(...)}} (notebook 05's
    `results["groups"]`). Each bar is labelled k/n rows. Returns the Figure."""
    groups = [g for g in results if results[g]["before"]["n"]]
    lang = figure_lang()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, metric, name in ((axes[0], "exact_match", tr("exact match (content)", lang)),
                             (axes[1], "form_rate", tr("right form (language, length, stops)", lang))):
        for j, (side, color) in enumerate((("before", "#bbbbbb"), ("after", "tab:green"))):
            xs = [i + (j - 0.5) * 0.38 for i in range(len(groups))]
            values = [results[g][side][metric] for g in groups]
            ax.bar(xs, values, width=0.36, color=color,
                   label=tr("base (adapter off)", lang) if side == "before" else tr("adapted", lang))
            for x, v, g in zip(xs, values, groups):
                n = results[g][side]["n"]
                ax.text(x, v + 0.02, f"{round(v * n)}/{n}", ha="center", fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([tr(g, lang).replace(", ", ",\n") for g in groups], fontsize=8)
        ax.set_ylim(0, 1.12)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(tr("share of rows", lang))
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(tr(title, lang), fontsize=10)
    fig.tight_layout()
    return _save(fig, save_to)


# ---------------------------------------------------------------- notebook 03: the LoRA update
def plot_lora_update(A, B, scaling: float, W=None, max_size: int = 32, title: str | None = None, save_to=None):
    """The LoRA update of one Linear layer as heatmaps on ONE colour scale (with a colorbar), written as the
    equation it is: W + (alpha/r) · B × A = W + ΔW, and ΔW = (alpha/r)·B·A alone (rank r). A (r x in) is drawn
    short and B (out x r) thin, at their true shapes.

    A, B: the adapter's matrices, torch tensors or arrays of any size, dtype and device (peft's
    `lora_A.default.weight` is r x in, `lora_B.default.weight` is out x r); W: the frozen weight (out x in), or
    None to draw only (alpha/r) · B × A = ΔW (e.g. a trained adapter over an 8-bit W). Matrices larger than
    `max_size` are shown by their first `max_size` rows/columns (ΔW's window is computed with the full rank).
    Taught in notebook 03 (a toy); notebook 05 draws a trained adapter with it. Returns the Figure; its
    `lora_axes` maps "W", "B", "A", "W + ΔW", "ΔW" to their axes, `lora_colorbar` is the one colour scale.
    """
    import numpy as np
    import torch
    from matplotlib.colors import Normalize

    def as_matrix(x):
        return torch.as_tensor(x).detach().to("cpu", torch.float32)

    A, B = as_matrix(A), as_matrix(B)
    r, n_in = A.shape
    n_out = B.shape[0]
    if B.shape[1] != r or (W is not None and tuple(W.shape) != (n_out, n_in)):
        raise ValueError(f"shapes do not fit W + B @ A: A {tuple(A.shape)}, B {tuple(B.shape)}"
                         + (f", W {tuple(W.shape)}" if W is not None else ""))
    k_out, k_in, k_r = min(n_out, max_size), min(n_in, max_size), min(r, max_size)
    delta = scaling * B[:k_out] @ A[:, :k_in]  # the shown window of the full-rank product
    panels = {"B": B[:k_out, :k_r], "A": A[:k_r, :k_in], "ΔW": delta}
    if W is not None:
        W = as_matrix(W)[:k_out, :k_in]
        panels = {"W": W, **panels, "W + ΔW": W + delta}
    vmax = max(float(m.abs().max()) for m in panels.values()) or 1.0
    norm = Normalize(-vmax, vmax)

    op = max(k_in, k_out) * 0.45  # width of an operator column, in matrix cells
    if W is not None:  # W + (α/r)·B × A = W + ΔW   ΔW
        layout = [("W", k_in), ("+ (α/r) ·", op), ("B", k_r), ("×", op * 0.5), ("A", k_in), ("=", op * 0.5),
                  ("W + ΔW", k_in), ("where", op * 0.6), ("ΔW", k_in)]
    else:  # (α/r) · B × A = ΔW
        layout = [("(α/r) ·", op), ("B", k_r), ("×", op * 0.5), ("A", k_in), ("=", op * 0.5), ("ΔW", k_in)]
    widths = [max(w, 0.6) for _, w in layout] + [max(k_in, k_out) * 0.08]
    lang = figure_lang()
    fig = plt.figure(figsize=(13 if W is not None else 9, 3.6))
    grid = fig.add_gridspec(1, len(widths), width_ratios=widths, wspace=0.08, left=0.01, right=0.93, top=0.74,
                            bottom=0.06)
    shapes = {"W": (n_out, n_in), "B": (n_out, r), "A": (r, n_in), "ΔW": (n_out, n_in), "W + ΔW": (n_out, n_in)}
    names = {"W": tr("W (frozen)", lang), "B": tr("B (trained)", lang), "A": tr("A (trained)", lang),
             "W + ΔW": tr("W + ΔW\n(what the layer uses)", lang), "ΔW": tr("ΔW = (α/r)·B·A\nrank {r}", lang, r=r)}
    fig.lora_axes = {}
    image = None
    for i, (name, _) in enumerate(layout):
        ax = fig.add_subplot(grid[0, i])
        ax.set_xticks([])
        ax.set_yticks([])
        if name not in panels:  # an operator between the panels
            ax.axis("off")
            ax.text(0.5, 0.5, tr("where", lang) if name == "where" else name, ha="center", va="center",
                    fontsize=11 if name == "where" else 16,
                    color="0.3" if name == "where" else "black")
            if name.startswith(("+", "(")):
                ax.text(0.5, 0.3, f"α/r = {scaling:g}", ha="center", va="center", fontsize=10, color="0.3")
            continue
        image = ax.imshow(np.asarray(panels[name]), cmap="RdBu_r", norm=norm, aspect="equal",
                          interpolation="nearest")
        rows, cols = shapes[name]
        ax.set_title(f"{names[name]}\n{rows} × {cols}", fontsize=10)
        fig.lora_axes[name] = ax
    cax = fig.add_subplot(grid[0, -1])
    fig.lora_colorbar = fig.colorbar(image, cax=cax)
    cax.tick_params(labelsize=8)
    cax.locator_params(nbins=5)
    cax.set_box_aspect(6)
    cropped = n_out > k_out or n_in > k_in or r > k_r
    crop = ("\n(" + tr("first {k_out} rows × {k_in} columns of {n_out} × {n_in}", lang, k_out=k_out, k_in=k_in,
                        n_out=n_out, n_in=n_in)
            + (tr(", first {k_r} of rank {r}", lang, k_r=k_r, r=r) if r > k_r else "") + ")" if cropped else "")
    fig.suptitle((tr(title, lang) if title else tr("LoRA: the frozen W plus a rank-r update; only A and B train", lang))
                 + crop + "\n" + tr("one colour scale for every panel", lang), fontsize=11)
    return _save(fig, save_to)


def label_mask_spans(processor, encoded_row: dict) -> list[tuple[str, bool]]:
    """[(token text, trained?)] for one encoded row (utils.batching.encode): trained = label != -100."""
    tok = processor.tokenizer
    return [(tok.convert_ids_to_tokens(int(i)), int(label) != -100)
            for i, label in zip(encoded_row["input_ids"], encoded_row["labels"])]


def show_label_mask(processor, encoded_row: dict) -> str:
    """HTML of one encoded row: trained tokens (label = token id) green, masked tokens (-100) grey,
    special tokens such as <|image|> shown in bold. Display it with IPython.display.HTML (notebook 04).
    Each token is one <span> with class "trained" or "masked"."""
    import html

    tok = processor.tokenizer
    spans = label_mask_spans(processor, encoded_row)
    special = set(tok.all_special_tokens) | {t for t, _ in spans if t.startswith("<|") and t.endswith("|>")}
    parts = []
    for i, (piece, trained) in enumerate(spans):
        text = piece if piece in special else tok.convert_tokens_to_string([piece])
        shown = html.escape(text).replace("\n", "↵<br>")
        style = ("background:#b7eb8f;" if trained else "background:#eeeeee;color:#777;") + \
                ("font-weight:bold;" if piece in special else "")
        parts.append(f'<span class="{"trained" if trained else "masked"}" title="{i}" '
                     f'style="{style}border-right:1px solid #fff;font-family:monospace">{shown}</span>')
    n_trained = sum(1 for _, t in spans if t)
    legend = (f'<div style="font-size:90%;margin-bottom:4px"><span style="background:#b7eb8f">{tr("trained")}</span> '
              f'{tr("{n} tokens", n=n_trained)} · <span style="background:#eeeeee;color:#777">{tr("masked (-100)")}</span> '
              f'{tr("{n} tokens", n=len(encoded_row["labels"]) - n_trained)}</div>')
    return legend + '<div style="line-height:1.9">' + "".join(parts) + "</div>"


class LiveLossPlot(TrainerCallback):
    """Redraws the loss chart in the notebook at every Trainer log (train and eval losses).

    Uses one IPython display handle, so the chart updates in place; headless (papermill, scripts)
    it only keeps the history and the last figure, and `save_to` gets the final chart at train end.
    """

    def __init__(self, save_to=None, title: str = LOSS_TITLE):
        self.save_to, self.title = save_to, title
        self.history = {"train": [], "eval": []}
        self.fig, self.ax = plt.subplots(figsize=(6.4, 3.4))
        plt.close(self.fig)  # we display it ourselves, not at the end of the cell
        self.handle = None

    def _redraw(self):
        plot_losses(self.history, ax=self.ax, title=self.title)
        try:
            from IPython import get_ipython
            from IPython.display import display

            if get_ipython() is None:
                return
            if self.handle is None:
                self.handle = display(self.fig, display_id=True)
            else:
                self.handle.update(self.fig)
        except ImportError:  # pragma: no cover
            pass

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed run starts from the checkpoint's history: draw it at once
        self.on_log(args, state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        from utils.train import loss_history

        self.history = loss_history(state.log_history)
        if self.history["train"] or self.history["eval"]:
            self._redraw()

    def on_train_end(self, args, state, control, **kwargs):
        if self.save_to:
            _save(self.fig, self.save_to)
