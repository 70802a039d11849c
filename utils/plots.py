"""Charts the notebooks and README_IMAGES/ show (one function per chart type)."""

from __future__ import annotations

import matplotlib.pyplot as plt

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
