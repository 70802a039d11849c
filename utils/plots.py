"""Charts the notebooks and README_IMAGES/ show (one function per chart type)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from transformers import TrainerCallback

from utils.memory import GROUPS

GROUP_LABELS = {"vision_model": "vision tower", "multi_modal_projector": "projector",
                "language_linear": "text decoder Linear", "embed_tokens": "embed_tokens",
                "language_other": "norms, gates", "lm_head": "lm_head", "quant_state": "quant. scales"}

def plot_memory_plan(plan_rows: dict[str, dict[str, int]], ax=None, save_to=None):
    """Horizontal stacked bars (GiB) of weight memory per group, one bar per precision.

    `plan_rows`: {label: plan_load_memory(...)}, e.g. utils.memory.memory_plan_rows(). Returns the Figure.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
    labels = list(plan_rows)
    left = [0.0] * len(labels)
    for group in GROUPS + ("quant_state",):
        widths = [plan_rows[k].get(group, 0) / 2**30 for k in labels]
        if any(widths):
            ax.barh(labels, widths, left=left, label=GROUP_LABELS[group])
            left = [a + b for a, b in zip(left, widths)]
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.1f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GiB")
    ax.set_xlim(0, max(left) * 1.15)
    ax.set_title("Weight memory by precision")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    if save_to:
        fig.savefig(save_to, dpi=120)
    return fig


# ---------------------------------------------------------------- notebook 01: token lengths
LANG_COLORS = {"ko": "tab:orange", "en": "tab:blue"}
LANG_NAMES = {"ko": "Korean", "en": "English"}


def _save(fig, save_to):
    if save_to:
        from pathlib import Path

        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_to, dpi=120)
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
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    groups = [("en", False), ("ko", False), (None, True)]  # image rows form their own layer
    for ax, key in zip(axes, ("prompt", "answer", "total")):
        bins = _bins([r[key] for r in lengths])
        data, labels, colors, hatches = [], [], [], []
        for lang, image in groups:
            sel = [r[key] for r in lengths if r["has_image"] == image and (lang is None or r["lang"] == lang)]
            n = len(sel)
            data.append(sel)
            labels.append(f"image rows ({n})" if image else f"{LANG_NAMES[lang]} text ({n})")
            colors.append("tab:green" if image else LANG_COLORS[lang])
        _, _, patches = ax.hist(data, bins=bins, stacked=True, color=colors, label=labels)
        for bar in patches[-1]:
            bar.set_hatch("//")
        if max_seq_length and key == "total":
            ax.axvline(max_seq_length, color="red", ls="--", lw=1)
            ax.text(max_seq_length, ax.get_ylim()[1] * 0.9, f"max_seq_length={max_seq_length} ", color="red",
                    fontsize=7, ha="right")
        ax.set_title(f"{key} tokens")
        ax.set_xlabel("tokens")
    axes[0].set_ylabel("rows")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Token lengths of {len(lengths)} rows (Llama 3.2 tokenizer)", fontsize=10)
    fig.tight_layout()
    return _save(fig, save_to)


def plot_truncation(lengths: list[dict], max_seq_length: int, ax=None, save_to=None):
    """Share of rows longer than each candidate max_seq_length (a curve), with the chosen value marked.

    The marked point is utils.batching.truncated_share(lengths, max_seq_length). Notebook 01's slider redraws it.
    """
    from utils.batching import truncated_share

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
    ax.set_title(f"max_seq_length={max_seq_length}: {n} of {len(lengths)} rows ({share:.1%}) truncated", fontsize=9)
    ax.set_xlabel("max_seq_length (tokens)")
    ax.set_ylabel("% rows truncated")
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


LOSS_LABEL = "loss: cross-entropy per answer token (nats)"


def plot_losses(history: dict, ax=None, save_to=None, title: str = "LoRA fine-tuning loss", smooth: int | None = None):
    """Train and eval loss vs optimizer step; `history` is utils.train.loss_history(...) /
    loss_history.json: {"train": [[step, loss], ...], "eval": [[step, loss], ...]}.

    The loss is the mean cross-entropy per answer token in nats (the prompt is masked with -100); the right
    axis shows the same as perplexity, e^loss: "as unsure as a pick among that many tokens". The logged train
    loss is noisy (the mean over the batches since the last log): the raw points are drawn faint and their
    moving average (`smooth` points; default `smoothing_window`) over them as the train line. The eval loss is
    measured on the held-out rows (from step 0 with `eval_on_start`)."""
    import math

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
            ax.plot(steps, losses, color="tab:blue", marker=".", lw=0.8, alpha=0.3, label="train (raw)")
            ax.plot(steps, moving_average(losses, window), color="tab:blue", lw=2,
                    label=f"train, mean of {window} (last {moving_average(losses, window)[-1]:.2f})")
        else:
            ax.plot(steps, losses, color="tab:blue", marker=".", label=f"train (last {losses[-1]:.2f})")
    points = history.get("eval") or []
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:orange", marker="o",
                label=f"eval, held-out rows ({points[0][1]:.2f} → {points[-1][1]:.2f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(LOSS_LABEL, fontsize=8)
    ax.set_title(title, fontsize=10)
    values = [p[1] for p in train + points]
    if values:
        ax.set_ylim(0, max(values) * 1.08)
        right = ax.secondary_yaxis("right", functions=(lambda x: x, lambda x: x))  # same scale, perplexity labels
        ticks = [t for t in ax.get_yticks() if 0 <= t <= max(values) * 1.08]
        right.set_yticks(ticks)
        right.set_yticklabels([f"{math.exp(t):,.0f}" if t >= 2.5 else f"{math.exp(t):.1f}" for t in ticks], fontsize=7)
        right.set_ylabel("perplexity = e^loss", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, save_to)


# ---------------------------------------------------------------- notebook 05: before and after
def plot_before_after(results: dict, save_to=None, title: str = "Before and after fine-tuning"):
    """Grouped bars: exact match and right form (utils.inference.right_form) per group of rows, base vs adapted.

    `results`: {group: {"before": evaluate_answers(...), "after": evaluate_answers(...)}} (notebook 05's
    `results["groups"]`). Each bar is labelled k/n rows. Returns the Figure."""
    groups = [g for g in results if results[g]["before"]["n"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, metric, name in ((axes[0], "exact_match", "exact match (content)"),
                             (axes[1], "form_rate", "right form (language, length, stops)")):
        for j, (side, color) in enumerate((("before", "#bbbbbb"), ("after", "tab:green"))):
            xs = [i + (j - 0.5) * 0.38 for i in range(len(groups))]
            values = [results[g][side][metric] for g in groups]
            ax.bar(xs, values, width=0.36, color=color, label="base (adapter off)" if side == "before" else "adapted")
            for x, v, g in zip(xs, values, groups):
                n = results[g][side]["n"]
                ax.text(x, v + 0.02, f"{round(v * n)}/{n}", ha="center", fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g.replace(", ", ",\n") for g in groups], fontsize=8)
        ax.set_ylim(0, 1.12)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("share of rows")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, save_to)


# ---------------------------------------------------------------- notebook 03: the LoRA update
def plot_lora_update(W, A, B, scaling: float, save_to=None):
    """Heatmaps of the LoRA update of one Linear: W (out x in, frozen), B (out x r), A (r x in),
    delta = scaling * B @ A (rank r) and W + delta (what the layer computes with). Returns the Figure."""
    import torch

    W, A, B = (torch.as_tensor(x, dtype=torch.float32) for x in (W, A, B))
    delta = scaling * B @ A
    panels = [("W (frozen)", W), ("B", B), ("A", A), (f"(α/r = {scaling:g})·B·A, rank {A.shape[0]}", delta),
              ("W + (α/r)·B·A", W + delta)]
    widths = [W.shape[1], B.shape[1] * 2, W.shape[1], W.shape[1], W.shape[1]]
    fig, axes = plt.subplots(1, 5, figsize=(12, 2.8), gridspec_kw={"width_ratios": widths})
    vmax = max(float(W.abs().max()), float((W + delta).abs().max()))
    for ax, (name, mat) in zip(axes, panels):
        lim = vmax if mat is not A and mat is not B else float(mat.abs().max()) or 1.0
        ax.imshow(mat.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_title(f"{name}\n{tuple(mat.shape)}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("LoRA: the frozen W plus a rank-r update; only A and B train", fontsize=10)
    fig.tight_layout()
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
    legend = (f'<div style="font-size:90%;margin-bottom:4px"><span style="background:#b7eb8f">trained</span> '
              f'{n_trained} tokens · <span style="background:#eeeeee;color:#777">masked (-100)</span> '
              f'{len(encoded_row["labels"]) - n_trained} tokens</div>')
    return legend + '<div style="line-height:1.9">' + "".join(parts) + "</div>"


class LiveLossPlot(TrainerCallback):
    """Redraws the loss chart in the notebook at every Trainer log (train and eval losses).

    Uses one IPython display handle, so the chart updates in place; headless (papermill, scripts)
    it only keeps the history and the last figure, and `save_to` gets the final chart at train end.
    """

    def __init__(self, save_to=None, title: str = "LoRA fine-tuning loss"):
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
