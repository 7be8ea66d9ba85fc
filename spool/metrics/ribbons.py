"""Segmentation ribbons: per video, the true segments above each model's predicted ones.

One colour per class (the same in every video, and in every figure with the same number of
classes), a legend with the class names, time in seconds (``fps`` given) or in frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from spool.metrics.segmentation import IGNORE_INDEX, _as_labels, video_scores

__all__ = ["class_colours", "plot_ribbons"]

_UNLABELLED = np.array([1.0, 1.0, 1.0, 1.0])  # white (no colour): frames without a label
_BACKGROUND = np.array([0.85, 0.85, 0.85, 1.0])  # light grey: classes that are no segments
COLUMNS = 1200  # frames drawn at most per ribbon: about the figure's width in pixels


def class_colours(num_classes: int) -> np.ndarray:
    """``[C, 4]`` RGBA per class: ``tab10``'s, then up to 20 classes their lighter pairs
    (classes 0-9 keep their colours, and neighbours differ), then ``turbo``."""
    import matplotlib

    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if num_classes <= 20:
        table = matplotlib.colormaps["tab20"].colors
        rgb = np.asarray(table[0::2] + table[1::2])[:num_classes]  # tab10, then the light ones
        return np.concatenate([rgb, np.ones((num_classes, 1))], axis=1)
    return matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, num_classes))


def _downsampled(labels: np.ndarray, columns: int, ignore_index: int) -> np.ndarray:
    """``[T]`` valid labels -> at most ``columns``: each the most frequent label of its run of
    frames. Drawn one pixel per frame ("nearest"), a long video showed every n-th frame: 400
    one-frame errors in 20,000 frames came out as 20 evenly spaced lines."""
    T = len(labels)
    if T <= columns:
        return labels
    unlabelled = int(labels.max(initial=0)) + 1  # a code of its own for ignore_index
    codes = np.where(labels == ignore_index, unlabelled, labels)
    counts = np.zeros((columns, unlabelled + 1), np.int64)
    np.add.at(counts, (np.arange(T) * columns // T, codes), 1)
    picked = counts.argmax(1)
    return np.where(picked == unlabelled, ignore_index, picked)


def _ribbon(labels: np.ndarray, colours: np.ndarray, ignore_index: int, what: str) -> np.ndarray:
    """``[T]`` labels -> ``[min(T, COLUMNS), 4]`` colours (unlabelled frames white)."""
    unlabelled = labels == ignore_index
    bad = ~unlabelled & ((labels < 0) | (labels >= len(colours)))
    if bad.any():
        raise ValueError(f"{what}: expected class indices in [0, {len(colours)}) or "
                         f"{ignore_index} (unlabelled), got {labels[bad][0]}")
    labels = _downsampled(labels, COLUMNS, ignore_index)
    unlabelled = labels == ignore_index
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
    segments; drawn light grey) to its label. Written atomically.
    """
    from matplotlib.patches import Patch

    from spool.metrics.figures import new_figure, save_png

    if not ground_truth:
        raise ValueError("ground_truth: expected at least one video, got none")
    colours = class_colours(len(class_names))
    background = list(background)
    colours[[b for b in background if 0 <= b < len(colours)]] = _BACKGROUND  # not segments
    panels, any_unlabelled, shown = [], False, set()
    for video, target in ground_truth.items():
        target = _as_labels(target, f"ground_truth[{video!r}]").astype(np.int64)
        rows, names = [_ribbon(target, colours, ignore_index, f"ground_truth[{video!r}]")], [
            "ground truth"]
        shown.update(np.unique(target[target != ignore_index]).tolist())
        any_unlabelled |= bool((target == ignore_index).any())
        for model, by_video in predictions.items():
            if video not in by_video:
                raise ValueError(f"predictions[{model!r}]: expected a prediction for every "
                                 f"video of ground_truth, {video!r} is missing")
            pred = _as_labels(by_video[video], f"predictions[{model!r}][{video!r}]")
            if pred.shape != target.shape:
                raise ValueError(f"predictions[{model!r}][{video!r}]: expected {len(target)} "
                                 f"frame labels (as the ground truth), got {len(pred)}")
            pred = pred.astype(np.int64)
            rows.append(_ribbon(pred, colours, ignore_index,
                                f"predictions[{model!r}][{video!r}]"))
            shown.update(np.unique(pred[pred != ignore_index]).tolist())
            if show_scores:
                s = video_scores(pred, target, background, ignore_index)
                model = f"{model}\nedit {s['edit']:.0f}, F1@50 {s['f1@50']:.0f}"
            names.append(model)
        panels.append((video, np.stack(rows), names))

    # Past 20 classes, the legend lists the classes shown (colours stay those of all).
    listed = range(len(class_names)) if len(class_names) <= 20 else sorted(shown)
    handles = [Patch(color=colours[i], label=class_names[i]) for i in listed]
    if any_unlabelled:
        handles.append(Patch(facecolor=_UNLABELLED, edgecolor="0.5", label="unlabelled"))
    longest = max((len(h.get_label()) for h in handles), default=1)
    columns = max(1, min(len(handles), 6, int(150 / max(longest, 10))))  # ~12 in of text
    legend = 0.2 * -(-len(handles) // columns) + 0.3  # inches, added below the panels
    heights = [0.42 * len(names) + 0.55 for _, _, names in panels]
    fig = new_figure(12, sum(heights) + 1.0 + legend)
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (video, image, names) in zip(axes[:, 0], panels, strict=True):
        T = len(ground_truth[video])
        end = T / fps if fps else T
        # One image per panel: a 10,000-frame ribbon is one draw call, not thousands of bars.
        ax.imshow(image, aspect="auto", interpolation="nearest", extent=(0, end, len(names), 0))
        for boundary in range(1, len(names)):
            ax.axhline(boundary, color="white", linewidth=2)
        ax.set_yticks(np.arange(len(names)) + 0.5, names, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(video, fontsize=8, loc="left")
    # Without fps the x axis counts the sampled frames (at 1 fps, 40 is 40 s, not frame 40).
    merged = ("; a longer video's columns each show its most frequent label"
              if max(map(len, ground_truth.values())) > COLUMNS else "")
    axes[-1, 0].set_xlabel(("time (s)" if fps else "sampled frame") + merged, fontsize=8)
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, legend / (sum(heights) + 1.0 + legend), 1, 1))
    save_png(fig, path, dpi=110)
