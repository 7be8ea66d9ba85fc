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
