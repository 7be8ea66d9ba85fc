"""Segmentation ribbons: per video, the true segments above each model's predicted ones.

One colour per class (the same in every video, and in every figure with the same number of
classes), a legend with the class names, time in seconds (``fps`` given) or in frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from spool.io_utils import atomic_path
from spool.metrics.segmentation import IGNORE_INDEX, _as_labels, video_scores

__all__ = ["class_colours", "plot_ribbons"]

_UNLABELLED = np.array([1.0, 1.0, 1.0, 1.0])  # white (no colour): frames without a label


def class_colours(num_classes: int) -> np.ndarray:
    """``[C, 4]`` RGBA per class: ``tab10`` / ``tab20`` up to 20 classes, then ``turbo``."""
    import matplotlib

    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if num_classes <= 20:
        table = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"].colors
        rgb = np.asarray(table)[:num_classes]
        return np.concatenate([rgb, np.ones((num_classes, 1))], axis=1)
    return matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, num_classes))


def _ribbon(labels: np.ndarray, colours: np.ndarray, ignore_index: int, what: str) -> np.ndarray:
    """``[T]`` labels -> ``[T, 4]`` colours (unlabelled frames white)."""
    unlabelled = labels == ignore_index
    bad = ~unlabelled & ((labels < 0) | (labels >= len(colours)))
    if bad.any():
        raise ValueError(f"{what}: expected class indices in [0, {len(colours)}) or "
                         f"{ignore_index} (unlabelled), got {labels[bad][0]}")
    return np.where(unlabelled[:, None], _UNLABELLED, colours[np.where(unlabelled, 0, labels)])


def plot_ribbons(path: str | os.PathLike, ground_truth: Mapping[str, Any],
                 predictions: Mapping[str, Mapping[str, Any]], class_names: Sequence[str], *,
                 fps: float | None = None, background: Iterable[int] = (),
                 ignore_index: int = IGNORE_INDEX, show_scores: bool = True,
                 title: str | None = None) -> None:
    """Write a PNG with one panel per video: the true ribbon, then one row per model.

    ``ground_truth``: ``{video: [T] class indices}`` (``ignore_index`` = unlabelled);
    ``predictions``: ``{model: {video: [T] class indices}}``, every model covering every
    video. ``show_scores`` adds each row's edit and F1@50 (``background`` classes are not
    segments) to its label. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not ground_truth:
        raise ValueError("ground_truth: expected at least one video, got none")
    colours = class_colours(len(class_names))
    background = list(background)
    panels, any_unlabelled = [], False
    for video, target in ground_truth.items():
        target = _as_labels(target, f"ground_truth[{video!r}]").astype(np.int64)
        rows, names = [_ribbon(target, colours, ignore_index, f"ground_truth[{video!r}]")], [
            "ground truth"]
        any_unlabelled |= bool((target == ignore_index).any())
        for model, by_video in predictions.items():
            if video not in by_video:
                raise ValueError(f"predictions[{model!r}]: expected a prediction for every "
                                 f"video of ground_truth, {video!r} is missing")
            pred = _as_labels(by_video[video], f"predictions[{model!r}][{video!r}]")
            if pred.shape != target.shape:
                raise ValueError(f"predictions[{model!r}][{video!r}]: expected {len(target)} "
                                 f"frame labels (as the ground truth), got {len(pred)}")
            rows.append(_ribbon(pred.astype(np.int64), colours, ignore_index,
                                f"predictions[{model!r}][{video!r}]"))
            if show_scores:
                s = video_scores(pred, target, background, ignore_index)
                model = f"{model}\nedit {s['edit']:.0f}, F1@50 {s['f1@50']:.0f}"
            names.append(model)
        panels.append((video, np.stack(rows), names))

    heights = [0.42 * len(names) + 0.55 for _, _, names in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, sum(heights) + 1.0), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (video, image, names) in zip(axes[:, 0], panels, strict=True):
        T = image.shape[1]
        end = T / fps if fps else T
        # One image per panel: a 10,000-frame ribbon is one draw call, not thousands of bars.
        ax.imshow(image, aspect="auto", interpolation="nearest", extent=(0, end, len(names), 0))
        for boundary in range(1, len(names)):
            ax.axhline(boundary, color="white", linewidth=2)
        ax.set_yticks(np.arange(len(names)) + 0.5, names, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(video, fontsize=8, loc="left")
    # Without fps the x axis counts the sampled frames (at 1 fps, 40 is 40 s, not frame 40).
    axes[-1, 0].set_xlabel("time (s)" if fps else "sampled frame", fontsize=8)
    handles = [Patch(color=colours[i], label=name) for i, name in enumerate(class_names)]
    if any_unlabelled:
        handles.append(Patch(facecolor=_UNLABELLED, edgecolor="0.5", label="unlabelled"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    legend_rows = -(-len(handles) // 6)
    fig.tight_layout(rect=(0, min(0.4, (0.22 * legend_rows + 0.1) / (sum(heights) + 1.0)), 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
