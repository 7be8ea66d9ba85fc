"""Temporal action segmentation metrics: frame accuracy, segmental edit score, F1@k.

The definitions are those of MS-TCN's ``eval.py`` (Farha & Gall, CVPR 2019), which the field
reports on Breakfast, 50Salads and GTEA:

- a *segment* is a maximal run of frames with the same label; background classes
  (``background``, MS-TCN's ``bg_class``) are not segments;
- frame accuracy is micro-averaged over every frame of every video (background included);
- the edit score is ``(1 - d / max(len(P), len(Y))) * 100`` with ``d`` the Levenshtein
  distance between the predicted and true segment label sequences, averaged over videos;
- F1@k matches segments greedily: each predicted segment takes the true segment of the same
  label with the highest IoU (the first one on ties); it is a true positive if that IoU is
  ``>= k`` and the true segment is not matched yet, a false positive otherwise; unmatched true
  segments are false negatives. TP/FP/FN are summed over videos before precision, recall and
  F1 (times 100) are computed.

No class is background unless named (``background``, ``spool eval --background``), where
MS-TCN's code always takes a class called ``background``: on data with one (GTEA), name it to
compare with published figures.

Additions where MS-TCN's code has no value, no-ops on data without them: frames whose true
label is ``ignore_index`` (unlabelled frames, padding) count for nothing: they are left out of
the accuracy and treated as background in *both* sequences for the segmental scores, so a
prediction there is neither rewarded nor penalised. Where no segment is in either sequence of
a video, the edit score is 100, the two empty sequences being identical (MS-TCN divides 0 by
0). Where only the prediction has segments, each is a false positive (MS-TCN's raises).

A segment that runs to the last frame ends at ``T``, as in MS-TCN's code since its commit
0e418c0 (its first version closed it at ``T - 1``). Agreement with ``eval.py`` as of commit
33ed91c is tested (``tests/test_segmentation_metrics_reference.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from spool.distributed import all_reduce_sum

__all__ = [
    "DEFAULT_OVERLAPS",
    "Segments",
    "SegmentationMetrics",
    "edit_score",
    "f1_counts",
    "f1_from_counts",
    "frame_accuracy",
    "levenshtein",
    "segmentation_scores",
    "video_scores",
    "to_segments",
]

DEFAULT_OVERLAPS = (0.1, 0.25, 0.5)
IGNORE_INDEX = -100


class Segments(NamedTuple):
    """Segments of one video: ``labels``, ``starts`` and ``ends`` (exclusive), each ``[N]``."""

    labels: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def _as_labels(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of frame labels [T], got shape "
                         f"{arr.shape}")
    return arr


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, target = _as_labels(pred, "pred"), _as_labels(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred: expected one label per ground-truth frame ({len(target)}), "
                         f"got {len(pred)}")
    return pred, target


def to_segments(labels: Any, background: Iterable[Any] = (),
                excluded: np.ndarray | None = None) -> Segments:
    """Frame labels ``[T]`` -> their :class:`Segments`, background runs left out.

    ``excluded: [T]`` (bool) marks more frames to treat as background (unlabelled frames).
    """
    labels = _as_labels(labels, "labels")
    skip = np.isin(labels, list(background))
    if excluded is not None:
        skip = skip | excluded
    if len(labels) == 0:
        empty = np.zeros(0, np.int64)
        return Segments(labels[:0], empty, empty)
    # A run starts where the label changes or a skipped stretch begins or ends.
    change = np.ones(len(labels), dtype=bool)
    change[1:] = (labels[1:] != labels[:-1]) | (skip[1:] != skip[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(labels))
    keep = ~skip[starts]
    return Segments(labels[starts][keep], starts[keep], ends[keep])


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insertions, deletions, substitutions; cost 1 each) between sequences."""
    a, b = np.asarray(list(a)), np.asarray(list(b))  # list(): a str is a sequence too
    cols = np.arange(len(b) + 1)
    row = cols.astype(np.int64)
    for i in range(1, len(a) + 1):  # one row of the table at a time, vectorised over b
        step = np.empty_like(row)
        step[0] = i
        step[1:] = np.minimum(row[1:] + 1, row[:-1] + (b != a[i - 1]))
        # Insertions chain along the row: row[j] = min over k <= j of step[k] + (j - k).
        row = np.minimum.accumulate(step - cols) + cols
    return int(row[-1])


def _segment_pair(pred: Any, target: Any, background: Iterable[Any],
                  ignore_index: Any) -> tuple[Segments, Segments]:
    pred, target = _pair(pred, target)
    background = list(background)
    unlabelled = target == ignore_index
    return (to_segments(pred, background, unlabelled),
            to_segments(target, background, unlabelled))


def edit_score(pred: Any, target: Any, background: Iterable[Any] = (),
               ignore_index: Any = IGNORE_INDEX) -> float:
    """Segmental edit score of one video, ``[T]`` labels each, in [0, 100]."""
    p, y = _segment_pair(pred, target, background, ignore_index)
    longest = max(len(p.labels), len(y.labels))
    if longest == 0:
        return 100.0
    return (1.0 - levenshtein(p.labels, y.labels) / longest) * 100.0


def _f1_counts(p: Segments, y: Segments, overlap: float) -> tuple[int, int, int]:
    tp = fp = 0
    hit = np.zeros(len(y.labels), dtype=bool)
    for label, start, end in zip(p.labels, p.starts, p.ends, strict=True):
        if len(y.labels) == 0:
            fp += 1
            continue
        inter = np.minimum(end, y.ends) - np.maximum(start, y.starts)
        union = np.maximum(end, y.ends) - np.minimum(start, y.starts)
        iou = inter / union * (y.labels == label)
        best = int(np.argmax(iou))  # first maximum, as in MS-TCN
        if iou[best] >= overlap and not hit[best]:
            tp += 1
            hit[best] = True
        else:
            fp += 1
    return tp, fp, int((~hit).sum())


def f1_counts(pred: Any, target: Any, overlap: float, background: Iterable[Any] = (),
              ignore_index: Any = IGNORE_INDEX) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` segments of one video at IoU threshold ``overlap`` (e.g. 0.5)."""
    return _f1_counts(*_segment_pair(pred, target, background, ignore_index), overlap)


def f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """F1 times 100 from summed counts; 0 when there is no true positive (as MS-TCN)."""
    return 200.0 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


def frame_accuracy(pred: Any, target: Any, ignore_index: Any = IGNORE_INDEX) -> float:
    """Percentage of labelled frames predicted right in one video (NaN if none is labelled)."""
    pred, target = _pair(pred, target)
    labelled = target != ignore_index
    n = int(labelled.sum())
    return 100.0 * int((pred[labelled] == target[labelled]).sum()) / n if n else math.nan


def _key(overlap: float) -> str:
    return f"f1@{round(overlap * 100):d}"


class SegmentationMetrics:
    """Accumulates accuracy, edit and F1@k over videos, one :meth:`update` per video.

    ``compute()`` returns ``accuracy``, ``edit``, ``f1@10``, ``f1@25``, ``f1@50`` (percentages)
    and the ``videos`` and ``frames`` counted. The state is a flat vector of sums, so
    :meth:`all_reduce` combines ranks and :meth:`state_dict` resumes exactly.
    """

    def __init__(self, overlaps: Sequence[float] = DEFAULT_OVERLAPS,
                 background: Iterable[Any] = (), ignore_index: Any = IGNORE_INDEX) -> None:
        overlaps = tuple(float(k) for k in overlaps)
        if not all(0.0 < k <= 1.0 for k in overlaps):
            raise ValueError(f"overlaps: expected IoU thresholds in (0, 1], got {overlaps}")
        self.overlaps = overlaps
        self.background = list(background)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        # correct frames, labelled frames, sum of edit scores, videos, then TP, FP, FN per k
        self.totals = torch.zeros(4 + 3 * len(self.overlaps), dtype=torch.float64)

    def update(self, pred: Any, target: Any) -> dict[str, float]:
        """Add one video (``pred``, ``target``: ``[T]`` labels); returns its own scores. A
        video without a labelled frame has none to score: it is not added (its scores are
        NaN), where it would have counted as a perfect edit in the mean."""
        pred, target = _pair(pred, target)
        labelled = target != self.ignore_index
        if not labelled.any():
            return {"accuracy": math.nan, "edit": math.nan,
                    **{_key(k): math.nan for k in self.overlaps}}
        p, y = _segment_pair(pred, target, self.background, self.ignore_index)
        correct, frames = int((pred[labelled] == target[labelled]).sum()), int(labelled.sum())
        longest = max(len(p.labels), len(y.labels))
        edit = (1.0 - levenshtein(p.labels, y.labels) / longest) * 100.0 if longest else 100.0
        counts = [_f1_counts(p, y, k) for k in self.overlaps]
        self.totals += torch.tensor([correct, frames, edit, 1.0]
                                    + [c for triple in counts for c in triple],
                                    dtype=torch.float64)
        scores = {"accuracy": 100.0 * correct / frames if frames else math.nan, "edit": edit}
        scores.update({_key(k): f1_from_counts(*c) for k, c in zip(self.overlaps, counts,
                                                                    strict=True)})
        return scores

    def update_batch(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Padded batches ``[B, T]``: one video per row, padding marked by ``ignore_index``
        in ``targets`` (it is dropped before scoring)."""
        if preds.shape != targets.shape or preds.ndim != 2:
            raise ValueError(f"preds/targets: expected two [B, T] tensors of the same shape, "
                             f"got {tuple(preds.shape)} and {tuple(targets.shape)}")
        preds, targets = preds.detach().cpu().numpy(), targets.detach().cpu().numpy()
        for pred, target in zip(preds, targets, strict=True):
            labelled = np.flatnonzero(target != self.ignore_index)
            end = labelled[-1] + 1 if len(labelled) else 0  # trailing padding off
            self.update(pred[:end], target[:end])

    def compute(self) -> dict[str, float]:
        correct, frames, edit, videos = self.totals[:4].tolist()
        out = {"accuracy": 100.0 * correct / frames if frames else math.nan,
               "edit": edit / videos if videos else math.nan}
        counts = self.totals[4:].view(-1, 3).tolist()
        for k, (tp, fp, fn) in zip(self.overlaps, counts, strict=True):
            out[_key(k)] = f1_from_counts(tp, fp, fn) if videos else math.nan
        out.update(videos=int(videos), frames=int(frames))
        return out

    def all_reduce(self) -> None:
        """Sum the state over ranks (a no-op without torch.distributed)."""
        self.totals = all_reduce_sum(self.totals)

    def state_dict(self) -> dict[str, list[float]]:
        return {"totals": self.totals.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        totals = torch.tensor(state["totals"], dtype=torch.float64)
        if totals.shape != self.totals.shape:
            raise ValueError(f"state: expected {self.totals.numel()} totals for overlaps "
                             f"{self.overlaps}, got {totals.numel()}")
        self.totals = totals


def video_scores(pred: Any, target: Any, background: Iterable[Any] = (),
                 ignore_index: Any = IGNORE_INDEX,
                 overlaps: Sequence[float] = DEFAULT_OVERLAPS) -> dict[str, float]:
    """Accuracy, edit and F1@k of a single video (``[T]`` labels each)."""
    return SegmentationMetrics(overlaps, background, ignore_index).update(pred, target)


def segmentation_scores(preds: Iterable[Any], targets: Iterable[Any],
                        background: Iterable[Any] = (), ignore_index: Any = IGNORE_INDEX,
                        overlaps: Sequence[float] = DEFAULT_OVERLAPS) -> dict[str, float]:
    """The dataset scores of paired per-video label sequences (see the module docstring)."""
    metrics = SegmentationMetrics(overlaps, background, ignore_index)
    for pred, target in zip(preds, targets, strict=True):
        metrics.update(pred, target)
    return metrics.compute()
