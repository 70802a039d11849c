"""Charts (utils.plots): the bars count the rows, the label mask marks exactly the answer tokens."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from utils.batching import IGNORE_INDEX, encode, token_lengths, truncated_share  # noqa: E402
from utils.config import DATA_DIR  # noqa: E402
from utils.data import load_examples  # noqa: E402
from utils.plots import (  # noqa: E402
    LiveLossPlot,
    moving_average,
    plot_lora_update,
    plot_losses,
    plot_token_lengths,
    plot_truncation,
    show_label_mask,
)


@pytest.fixture(scope="module")
def examples():
    rows = load_examples(DATA_DIR / "construction_train.jsonl")
    return [e for e in rows if e.images][:5] + [e for e in rows if not e.images][:25]


@pytest.fixture(scope="module")
def lengths(processor, examples):
    return token_lengths(processor, examples)


def test_token_length_histograms_count_every_row(lengths, tmp_path):
    fig = plot_token_lengths(lengths, max_seq_length=64, save_to=tmp_path / "tl.png")
    assert (tmp_path / "tl.png").stat().st_size > 0
    assert len(fig.axes) == 3
    for ax in fig.axes:
        # stacked bars: each bar's top edge is the running total, so sum the patch heights
        heights = sum(p.get_height() for p in ax.patches)
        assert heights == len(lengths)
    image_layer = [p for p in fig.axes[0].patches if p.get_hatch() == "//"]
    assert sum(p.get_height() for p in image_layer) == sum(r["has_image"] for r in lengths)


def test_truncation_marks_the_share(lengths):
    limit = sorted(r["total"] for r in lengths)[len(lengths) // 2]
    fig = plot_truncation(lengths, limit)
    ax = fig.axes[0]
    point = [line for line in ax.lines if line.get_marker() == "o"][0]
    assert point.get_ydata()[0] == pytest.approx(100 * truncated_share(lengths, limit))
    assert f"{sum(r['total'] > limit for r in lengths)} of {len(lengths)}" in ax.get_title()


def test_plot_losses_draws_train_and_eval(tmp_path):
    history = {"train": [[5, 3.0], [10, 2.0], [15, 1.5]], "eval": [[10, 2.4]]}
    fig = plot_losses(history, save_to=tmp_path / "loss.png")
    lines = fig.axes[0].lines
    assert [list(line.get_xdata()) for line in lines] == [[5, 10, 15], [10]]  # 3 points: no smoothing
    assert (tmp_path / "loss.png").exists()


def test_plot_losses_draws_the_moving_average_over_the_raw_points():
    train = [[s, 3.0 - 0.1 * s + (0.5 if s % 2 else -0.5)] for s in range(1, 31)]
    fig = plot_losses({"train": train, "eval": [[30, 1.0]]}, smooth=4)
    raw, smoothed, evals = fig.axes[0].lines
    assert list(raw.get_ydata()) == [p[1] for p in train]
    assert list(smoothed.get_ydata()) == pytest.approx(moving_average([p[1] for p in train], 4))
    assert smoothed.get_ydata()[-1] == pytest.approx(sum(p[1] for p in train[-4:]) / 4)
    assert list(evals.get_xdata()) == [30]
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def test_plot_lora_update_shows_w_plus_scaled_ba_on_one_colour_scale(tmp_path):
    import numpy as np
    import torch

    W, B, A = torch.randn(8, 6), torch.randn(8, 2), torch.randn(2, 6) * 0.1
    fig = plot_lora_update(A, B, scaling=2.0, W=W, save_to=tmp_path / "lora.png")
    panels = fig.lora_axes
    assert list(panels) == ["W", "B", "A", "W + ΔW", "ΔW"]  # left to right: W + (α/r)·B × A = W + ΔW, and ΔW
    shown = {name: np.asarray(ax.images[0].get_array()) for name, ax in panels.items()}
    np.testing.assert_allclose(shown["ΔW"], (2.0 * B @ A).numpy(), rtol=1e-6)
    np.testing.assert_allclose(shown["W + ΔW"], (W + 2.0 * B @ A).numpy(), rtol=1e-6)
    np.testing.assert_allclose(shown["A"], A.numpy())
    limits = {ax.images[0].get_clim() for ax in panels.values()}
    assert len(limits) == 1  # one colour scale: A (small values) is not stretched to its own range
    vmax = max(float(np.abs(m).max()) for m in shown.values())
    assert limits.pop() == pytest.approx((-vmax, vmax))
    assert fig.lora_colorbar.mappable.get_clim() == pytest.approx((-vmax, vmax))
    boxes = {name: ax.get_position() for name, ax in panels.items()}
    assert boxes["A"].height < boxes["W"].height / 2 and boxes["B"].width < boxes["W"].width / 2  # A short, B thin
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "+ (α/r) ·" in texts and "×" in texts and "=" in texts and "α/r = 2" in texts
    assert min(ax.title.get_fontsize() for ax in panels.values()) >= 9
    assert (tmp_path / "lora.png").stat().st_size > 1000


def test_plot_lora_update_takes_a_real_adapter_of_any_size():
    """Notebook 05 draws a trained adapter: 16-bit tensors, 4096-wide, no W (it is 8-bit)."""
    import numpy as np
    import torch

    A = torch.randn(8, 4096).to(torch.bfloat16)
    B = (torch.randn(4096, 8) * 0.01).to(torch.bfloat16)
    fig = plot_lora_update(A, B, scaling=4.0, max_size=32, title="trained q_proj")
    assert list(fig.lora_axes) == ["B", "A", "ΔW"]
    delta = np.asarray(fig.lora_axes["ΔW"].images[0].get_array())
    assert delta.shape == (32, 32)
    np.testing.assert_allclose(delta, (4.0 * B.float()[:32] @ A.float()[:, :32]).numpy(), rtol=1e-5)
    assert "first 32 rows × 32 columns of 4096 × 4096" in fig._suptitle.get_text()
    assert "4096 × 8" in fig.lora_axes["B"].get_title()
    with pytest.raises(ValueError, match="shapes"):
        plot_lora_update(A, B[:, :4], scaling=1.0)


def test_cjk_font_falls_back_with_a_note(capsys):
    from utils.plots import CJK_MISSING, cjk_font

    assert cjk_font(candidates=("No Such Font KR",)) is None
    assert CJK_MISSING in capsys.readouterr().out
    assert cjk_font(candidates=("No Such Font KR",), quiet=True) is None
    assert capsys.readouterr().out == ""


def test_a_cjk_font_is_found_where_setup_installed_one():
    """scripts/setup.sh and .ci/run install fonts-noto-cjk; without it Korean text leaves the figures."""
    import os

    from utils.plots import cjk_font

    name = cjk_font(quiet=True)
    if name is None:
        if os.environ.get("CI"):
            pytest.fail("no CJK font under CI: .ci/run installs fonts-noto-cjk")
        pytest.skip("no CJK font installed (apt-get install -y fonts-noto-cjk)")
    import matplotlib.pyplot as plt
    from matplotlib.font_manager import FontProperties, findfont

    assert name in plt.rcParams["font.family"]
    assert "CJK" in findfont(FontProperties(family=name)) or "Nanum" in name or "Gothic" in name


def test_plot_samples_shows_question_and_answer_under_each_picture(examples, tmp_path, capsys, monkeypatch):
    import utils.plots as plots

    rows = [e for e in examples if e.images][:3]
    monkeypatch.setattr(plots, "cjk_font", lambda: "Noto Sans CJK KR")  # as if a font were installed
    fig = plots.plot_samples(examples, n=3, save_to=tmp_path / "samples.png")
    assert len(fig.axes) == 3 and (tmp_path / "samples.png").stat().st_size > 1000
    for ax, ex in zip(fig.axes, rows):
        assert ax.get_title() == ex.source
        text = ax.texts[0].get_text()
        assert text.startswith("Q: ") and "\nA: " in text
        assert ex.answer.split()[0] in text and ex.prompt_text.split()[0] in text
    korean = [ex for ex in rows if plots.has_hangul(ex.prompt_text + ex.answer)]
    assert korean  # the sample data's first image rows ask in Korean
    monkeypatch.setattr(plots, "cjk_font", lambda: None)  # no font: Korean is printed, not drawn as boxes
    fig = plots.plot_samples(examples, n=3)
    drawn = " ".join(ax.texts[0].get_text() for ax in fig.axes)
    assert not plots.has_hangul(drawn) and "printed above" in drawn
    assert korean[0].answer in capsys.readouterr().out
    assert plots.plot_samples([e for e in examples if not e.images]) is None  # a text-only data set


def test_memory_plan_names_the_model_and_draws_the_fit_widget_cards(tmp_path):
    from utils.memory import memory_plan_rows
    from utils.plots import plot_memory_plan
    from utils.widgets import GPUS

    fig = plot_memory_plan(memory_plan_rows(), save_to=tmp_path / "mem.png")
    ax = fig.axes[0]
    assert "Llama 3.2 11B Vision" in ax.get_title()
    lines = sorted(line.get_xdata()[0] for line in ax.lines)
    assert lines == sorted(v for k, v in GPUS.items() if not k.startswith("H100"))  # 15, 22, 39.4, 79.2
    labels = [t.get_text() for t in ax.texts]
    assert any(t.startswith("T4 16 GB") for t in labels) and any(t.startswith("A100 80 GB") for t in labels)
    legend = fig.axes[0].get_legend()
    entries = [t.get_text() for t in legend.get_texts()]
    assert "vision tower" in entries and any("projector" in e and "under" in e for e in entries)
    renderer = fig.canvas.get_renderer()
    box, axes_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.x0 >= axes_box.x1 - 1  # beside the bars, covering none of them


def test_label_mask_marks_exactly_the_answer(processor, examples):
    row = encode(processor, examples[0], 256)  # an image row
    html = show_label_mask(processor, row)
    assert html.count('class="trained"') == sum(label != IGNORE_INDEX for label in row["labels"])
    assert html.count('class="masked"') == sum(label == IGNORE_INDEX for label in row["labels"])
    assert "&lt;|image|&gt;" in html
    # the trained spans are the answer followed by <|eot_id|>
    trained = [s for s in html.split("<span ") if s.startswith('class="trained"')]
    assert "&lt;|eot_id|&gt;" in trained[-1]
    assert "image" not in "".join(trained)


def test_live_loss_plot_headless(tmp_path):
    from types import SimpleNamespace

    cb = LiveLossPlot(save_to=tmp_path / "live.png")
    state = SimpleNamespace(log_history=[{"step": 5, "loss": 2.0}, {"step": 5, "eval_loss": 2.5}])
    cb.on_log(None, state, None, logs={})
    cb.on_train_end(None, state, None)
    assert cb.history == {"train": [[5, 2.0]], "eval": [[5, 2.5]]}
    assert (tmp_path / "live.png").exists()


def test_loss_chart_names_its_unit_and_shows_perplexity():
    import math

    from utils.plots import LOSS_LABEL

    fig = plot_losses({"train": [[5, 3.0], [10, 2.0]], "eval": [[0, 4.0], [10, 2.5]]})
    ax = fig.axes[0]
    assert ax.get_ylabel() == LOSS_LABEL and "nats" in LOSS_LABEL
    right = ax.child_axes
    assert len(right) == 1 and "e^loss" in right[0].get_ylabel()
    labels = {float(t): lab.get_text() for t, lab in zip(right[0].get_yticks(), right[0].get_yticklabels())}
    assert labels and all(lab.replace(",", "") == (f"{math.exp(t):.0f}" if t >= 2.5 else f"{math.exp(t):.1f}")
                          for t, lab in labels.items())
    assert "4.00 → 2.50" in " ".join(ax.get_legend_handles_labels()[1])  # eval from step 0 to the end
    # redrawing into the same axes (the live chart) keeps one perplexity axis, not one per redraw
    plot_losses({"train": [[5, 3.0]], "eval": [[0, 4.0]]}, ax=ax)
    assert len(ax.child_axes) == 1 and len(fig.axes) == 1


def test_plot_before_after_labels_each_bar_with_its_rows(tmp_path):
    from utils.plots import plot_before_after

    results = {"training rows": {"before": {"n": 4, "exact_match": 0.0, "form_rate": 0.25},
                                 "after": {"n": 4, "exact_match": 0.75, "form_rate": 1.0}},
               "held-out, new answer": {"before": {"n": 2, "exact_match": 0.0, "form_rate": 0.0},
                                        "after": {"n": 2, "exact_match": 0.0, "form_rate": 0.5}},
               "empty group": {"before": {"n": 0, "exact_match": 0, "form_rate": 0},
                               "after": {"n": 0, "exact_match": 0, "form_rate": 0}}}
    fig = plot_before_after(results, save_to=tmp_path / "ba.png")
    exact, form = fig.axes
    assert [t.get_text() for t in exact.get_xticklabels()] == ["training rows", "held-out,\nnew answer"]
    assert [round(p.get_height(), 2) for p in exact.patches] == [0.0, 0.0, 0.75, 0.0]
    assert sorted(t.get_text() for t in exact.texts) == ["0/2", "0/2", "0/4", "3/4"]
    assert [round(p.get_height(), 2) for p in form.patches] == [0.25, 0.0, 1.0, 0.5]
    assert (tmp_path / "ba.png").stat().st_size > 1000
