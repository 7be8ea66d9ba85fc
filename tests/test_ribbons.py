"""Ribbon plots: a valid PNG for a few videos, one row per model; bad input named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spool.metrics.ribbons import class_colours, plot_ribbons

CLASSES = ["background", "left", "right", "grow"]


def _labels(rng: np.random.Generator, T: int) -> np.ndarray:
    return np.repeat(rng.integers(0, len(CLASSES), 8), -(-T // 8))[:T]


def test_writes_a_png_for_several_videos_and_models(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = {f"video_{i}": _labels(rng, T) for i, T in enumerate([300, 1000, 40])}
    truth["video_0"][:10] = -100  # unlabelled frames get their own legend entry
    preds = {model: {v: _labels(rng, len(t)) for v, t in truth.items()}
             for model in ("Spool", "MS-TCN")}
    out = tmp_path / "plots" / "ribbons.png"
    plot_ribbons(out, truth, preds, CLASSES, fps=15, background=[0], title="test split")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in out.parent.iterdir()] == ["ribbons.png"]  # no temporary left
    import matplotlib.image

    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > 1000 and height > 300
    plot_ribbons(tmp_path / "frames.png", truth, {}, CLASSES, show_scores=False)  # GT only
    plot_ribbons(tmp_path / "one.png", truth, {"Spool": preds["Spool"]}, CLASSES,
                 show_scores=False)
    heights = [matplotlib.image.imread(tmp_path / f"{n}.png").shape[0]
               for n in ("frames", "one")]
    assert heights[0] < heights[1] < height  # a row per model


def test_colours_are_fixed_per_class() -> None:
    np.testing.assert_allclose(class_colours(4)[0], [0x1F / 255, 0x77 / 255, 0xB4 / 255, 1])
    np.testing.assert_allclose(class_colours(4)[3], [0xD6 / 255, 0x27 / 255, 0x28 / 255, 1])
    assert class_colours(4).shape == (4, 4) and class_colours(48).shape == (48, 4)
    assert len({tuple(c) for c in class_colours(20)}) == 20


def test_errors_name_the_argument(tmp_path: Path) -> None:
    truth = {"a": np.zeros(10, int)}
    with pytest.raises(ValueError, match=r"predictions\['m'\]: expected a prediction"):
        plot_ribbons(tmp_path / "x.png", truth, {"m": {}}, CLASSES)
    with pytest.raises(ValueError, match=r"expected 10 frame labels"):
        plot_ribbons(tmp_path / "x.png", truth, {"m": {"a": np.zeros(9, int)}}, CLASSES)
    with pytest.raises(ValueError, match=r"ground_truth\['a'\]: expected class indices"):
        plot_ribbons(tmp_path / "x.png", {"a": np.full(10, 7)}, {}, CLASSES)
    assert not (tmp_path / "x.png").exists()


def test_a_long_ribbon_shows_each_columns_most_frequent_label() -> None:
    """Drawn a pixel per frame, 400 one-frame errors in 20,000 frames showed as 20 evenly
    spaced lines (every n-th frame). Each of at most COLUMNS columns now shows its run of
    frames' most frequent label, unlabelled frames included."""
    from spool.metrics.ribbons import COLUMNS, _downsampled

    labels = np.zeros(20_000, np.int64)
    labels[::50] = 1
    labels[10_000:12_000] = 2
    labels[15_000:] = -100
    got = _downsampled(labels, COLUMNS, -100)
    assert len(got) == COLUMNS and set(got.tolist()) == {0, 2, -100}
    assert (got[600:720] == 2).all() and (got[900:] == -100).all()
    short = np.array([0, 1, 1, -100])
    assert _downsampled(short, COLUMNS, -100) is short


def test_figures_leave_the_users_backend_and_carry_no_version(tmp_path: Path) -> None:
    """matplotlib.use("Agg") inside the library switched a notebook's or a GUI's backend for
    good; the PNGs held "Software: Matplotlib version...", so bytes differed by version."""
    import matplotlib
    import torch
    from PIL import Image

    from spool.train.metrics import plot_confusion_matrix, plot_curves

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot_confusion_matrix(torch.tensor([[3, 1], [0, 2]]), ["a", "b"], tmp_path / "m.png")
        plot_curves({"run": [{"epoch": 1, "train_loss": 0.5, "train_top1": 0.5}]},
                    tmp_path / "c.png")
        plot_ribbons(tmp_path / "r.png", {"v": [0, 1, 1]}, {"m": {"v": [0, 0, 1]}},
                     ["a", "b"])
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    for name in ("m.png", "c.png", "r.png"):
        with Image.open(tmp_path / name) as image:
            assert "Software" not in image.info, name


def test_curves_leave_out_what_is_not_finite_and_mark_a_single_epoch(
        tmp_path: Path, drawn_figures: list) -> None:
    """A run's first epoch drew nothing for training (a dashed line of one point), and a NaN
    or inf loss was dropped without a word."""
    from spool.train.metrics import plot_curves

    rows = [{"epoch": 1, "train_loss": 0.8, "train_top1": 0.6},
            {"epoch": 2, "train_loss": float("nan"), "train_top1": 0.6, "val_loss": "inf",
             "val_top1": 0.5}]
    plot_curves({"a run": rows[:1]}, tmp_path / "one.png")
    loss = drawn_figures[0].axes[0]
    assert [line.get_marker() for line in loss.get_lines()] == ["o"]
    plot_curves({"a run": rows}, tmp_path / "two.png")
    loss = drawn_figures[1].axes[0]
    assert loss.get_title() == "Loss (2 values not finite, left out)"
    assert [list(line.get_xdata()) for line in loss.get_lines()] == [[1]]


def test_background_classes_are_drawn_grey(tmp_path: Path, drawn_figures: list) -> None:
    """A background class (no segment) had an ordinary colour, blue for class 0, as if it
    were an action."""

    plot_ribbons(tmp_path / "r.png", {"v": [0, 0, 1, 2]}, {"m": {"v": [0, 1, 1, 2]}},
                 ["bg", "pour", "stir"], background=[0])
    image = np.asarray(drawn_figures[0].axes[0].images[0].get_array())
    grey = np.array([0.85, 0.85, 0.85, 1.0])
    assert np.allclose(image[0, 0], grey) and np.allclose(image[1, 0], grey)
    assert np.allclose(image[0, 2], class_colours(3)[1])  # the actions keep their colours


def test_a_loss_spanning_decades_is_drawn_on_a_log_axis(tmp_path: Path,
                                                        drawn_figures: list) -> None:
    """A loss falling from 2.3 to 0.004 was a flat line at 0 from the third epoch on; a loss
    that stays within a small range keeps a linear axis."""
    from spool.train.metrics import plot_curves

    falling = [{"epoch": e, "train_loss": loss, "train_top1": 0.5}
               for e, loss in enumerate([2.3, 0.2, 0.02, 0.004], start=1)]
    plot_curves({"a run": falling}, tmp_path / "log.png")
    assert drawn_figures[0].axes[0].get_yscale() == "log"
    assert drawn_figures[0].axes[0].get_ylabel() == "loss (log scale)"
    flat = [{**r, "train_loss": loss}
            for r, loss in zip(falling, [0.9, 0.7, 0.6, 0.5], strict=True)]
    plot_curves({"a run": flat}, tmp_path / "linear.png")
    assert drawn_figures[1].axes[0].get_yscale() == "linear"
    # a loss of exactly 0 has no place on a log axis
    plot_curves({"a run": falling, "zero": [{"epoch": 1, "train_loss": 0.0}]},
                tmp_path / "zero.png")
    assert drawn_figures[2].axes[0].get_yscale() == "linear"
