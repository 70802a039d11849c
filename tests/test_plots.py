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


def test_plot_lora_update_shows_w_plus_scaled_ba(tmp_path):
    import torch

    W, B, A = torch.randn(8, 6), torch.randn(8, 2), torch.randn(2, 6)
    fig = plot_lora_update(W, A, B, scaling=2.0, save_to=tmp_path / "lora.png")
    import numpy as np

    images = [np.asarray(ax.images[0].get_array()) for ax in fig.axes]
    np.testing.assert_allclose(images[3], (2.0 * B @ A).numpy(), rtol=1e-6)
    np.testing.assert_allclose(images[4], (W + 2.0 * B @ A).numpy(), rtol=1e-6)
    assert (tmp_path / "lora.png").stat().st_size > 1000


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
