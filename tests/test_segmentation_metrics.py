"""Segmentation metrics against hand-computed examples (MS-TCN's definitions)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from spool.metrics.segmentation import (
    SegmentationMetrics,
    edit_score,
    f1_counts,
    f1_from_counts,
    frame_accuracy,
    levenshtein,
    segmentation_scores,
    to_segments,
    video_scores,
)


def test_segments_skip_background_and_ignored_frames() -> None:
    seg = to_segments([0, 0, 1, 1, 0, 2, 2, 2, 1], background=[0])
    assert seg.labels.tolist() == [1, 2, 1]
    assert seg.starts.tolist() == [2, 5, 8] and seg.ends.tolist() == [4, 8, 9]
    cut = to_segments([1, 1, 1, 1], excluded=np.array([False, True, False, False]))
    assert cut.labels.tolist() == [1, 1] and cut.starts.tolist() == [0, 2]
    assert len(to_segments([]).labels) == 0


def test_levenshtein_matches_the_textbook_table() -> None:
    def slow(a, b):  # the full dynamic-programming table
        d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
        for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
            substitute = d[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, substitute)
        return d[-1][-1]

    assert levenshtein("kitten", "sitting") == 3
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.integers(0, 3, rng.integers(0, 9)), rng.integers(0, 3, rng.integers(0, 9))
        assert levenshtein(a, b) == slow(list(a), list(b))


def test_empty_prediction_all_background() -> None:
    target = [0, 0, 1, 1, 1, 0, 2, 2]
    pred = [0] * 8
    assert edit_score(pred, target, background=[0]) == 0.0
    assert f1_counts(pred, target, 0.1, background=[0]) == (0, 0, 2)
    scores = video_scores(pred, target, background=[0])
    assert scores["accuracy"] == pytest.approx(37.5)
    assert scores["f1@10"] == scores["f1@50"] == 0.0


def test_one_long_segment() -> None:
    target, pred = [1] * 4 + [2] * 4, [1] * 8
    assert edit_score(pred, target) == 50.0  # P = [1], Y = [1, 2]: one insertion
    for k in (0.1, 0.25, 0.5):  # IoU with the first true segment is exactly 0.5
        assert f1_counts(pred, target, k) == (1, 0, 1)
    assert f1_counts(pred, target, 0.51) == (0, 1, 2)
    scores = video_scores(pred, target)
    assert scores["f1@50"] == pytest.approx(200 / 3) and scores["accuracy"] == 50.0


def test_over_segmentation() -> None:
    target, pred = [1] * 10, [1] * 4 + [2] * 2 + [1] * 4
    assert edit_score(pred, target) == pytest.approx(100 / 3)  # [1, 2, 1] vs [1]
    # The first piece matches (IoU 0.4); the second is the wrong class; the third's best
    # match is already taken.
    assert f1_counts(pred, target, 0.25) == (1, 2, 0)
    assert f1_counts(pred, target, 0.5) == (0, 3, 1)
    scores = video_scores(pred, target)
    assert (scores["f1@10"], scores["f1@25"], scores["f1@50"]) == (50.0, 50.0, 0.0)
    assert scores["accuracy"] == 80.0


def test_background_classes() -> None:
    target = [0, 0, 1, 1, 0, 1, 1, 0]
    pred = [0, 1, 1, 1, 1, 1, 1, 0]
    assert edit_score(pred, target, background=[0]) == 50.0  # [1] vs [1, 1]
    assert edit_score(pred, target) == 60.0  # [0, 1, 0] vs [0, 1, 0, 1, 0]
    # Both true segments overlap the predicted one with IoU 2/6: the first one is taken.
    assert f1_counts(pred, target, 0.25, background=[0]) == (1, 0, 1)
    assert f1_counts(pred, target, 0.5, background=[0]) == (0, 1, 2)
    assert frame_accuracy(pred, target) == 75.0  # background frames count for accuracy


def test_ignore_label() -> None:
    target = [1, 1, -100, -100, 2, 2]
    for pred in ([1, 1, 3, 3, 2, 2], [1, 1, 1, 1, 2, 2]):  # anything goes where unlabelled
        scores = video_scores(pred, target)
        assert scores == {"accuracy": 100.0, "edit": 100.0, "f1@10": 100.0, "f1@25": 100.0,
                          "f1@50": 100.0}
    metrics = SegmentationMetrics(ignore_index=-1)
    metrics.update([1, 2, 2], [1, -1, 2])
    assert metrics.compute()["frames"] == 2
    assert np.isnan(frame_accuracy([1], [-100]))


def test_identical_sequences() -> None:
    target = np.random.default_rng(1).integers(0, 4, 200)
    assert edit_score(target, target) == 100.0
    assert video_scores(target, target, background=[0])["f1@50"] == 100.0
    assert edit_score([0, 0], [0, 0], background=[0]) == 100.0  # no segment on either side
    assert edit_score(["a", "b"], ["a", "b"]) == 100.0  # any hashable labels


def test_f1_counts_are_summed_over_videos() -> None:
    videos = [
        ([1] * 10, [1] * 10),  # exact
        ([2] * 10, [1] * 5 + [2] * 5),  # covers the second true segment with IoU 0.5
        ([3] * 3 + [0] * 7, [3] * 10),  # IoU 0.3, plus a wrong segment
    ]
    scores = segmentation_scores([p for p, _ in videos], [t for _, t in videos])
    # k = 0.5: TP 1 + 1 + 0, FP 0 + 0 + 2, FN 0 + 1 + 1 -> F1 = 2 * 2 / (4 + 4) = 50
    assert scores["f1@50"] == pytest.approx(50.0)
    # k = 0.1: TP 3, FP 1, FN 1 -> 75 (the mean of per-video F1 would be 80.6)
    assert scores["f1@10"] == pytest.approx(75.0)
    assert scores["edit"] == pytest.approx(200 / 3)  # mean of 100, 50, 50
    assert scores["accuracy"] == pytest.approx(60.0)  # 18 of 30 frames, micro-averaged
    assert scores["videos"] == 3 and scores["frames"] == 30


def test_batches_state_and_errors() -> None:
    preds = torch.tensor([[1, 1, 2, 2, 5], [3, 3, 3, 4, 4]])
    targets = torch.tensor([[1, 1, 2, 2, -100], [3, 3, 3, 3, 3]])
    batched = SegmentationMetrics()
    batched.update_batch(preds, targets)
    one_by_one = segmentation_scores([[1, 1, 2, 2], [3, 3, 3, 4, 4]],
                                     [[1, 1, 2, 2], [3, 3, 3, 3, 3]])
    assert batched.compute() == one_by_one
    resumed = SegmentationMetrics()
    resumed.load_state_dict(batched.state_dict())
    assert resumed.compute() == one_by_one
    with pytest.raises(ValueError, match="pred: expected one label per"):
        edit_score([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="overlaps"):
        SegmentationMetrics(overlaps=(0.0,))
    with pytest.raises(ValueError, match="state"):
        SegmentationMetrics(overlaps=(0.5,)).load_state_dict(batched.state_dict())


def test_a_video_without_labelled_frames_is_not_scored() -> None:
    """It counted as a video with a perfect edit (both segment lists empty): beside a scored
    video with edit 33.3, the mean read 66.7."""
    metrics = SegmentationMetrics()
    scored = metrics.update([0, 1, 0, 1], [0, 0, 1, 1])  # 0101 vs 01: 2 edits of 4 segments
    unlabelled = metrics.update([1, 1, 0], [-100, -100, -100])
    assert all(np.isnan(v) for v in unlabelled.values())
    total = metrics.compute()
    assert total["videos"] == 1 and total["frames"] == 4
    assert total["edit"] == pytest.approx(scored["edit"]) == pytest.approx(50.0)
    assert total["accuracy"] == pytest.approx(50.0)


def test_a_video_with_no_segment_on_either_side_scores_edit_100_and_f1_0() -> None:
    """The accumulator's own edit (not edit_score's) for two empty segment lists: identical
    sequences, 100 (MS-TCN divides 0 by 0). F1 has no true positive there: 0, as for any
    video without one (MS-TCN's nan_to_num), not 100 for having no error either."""
    metrics = SegmentationMetrics(background=[0])
    scores = metrics.update([0, 0, 0], [0, 0, 0])
    assert scores["edit"] == 100.0 and scores["accuracy"] == 100.0
    assert scores["f1@10"] == scores["f1@50"] == 0.0
    total = metrics.compute()
    assert total["edit"] == 100.0 and total["f1@50"] == 0.0 and total["videos"] == 1
    assert f1_from_counts(0, 0, 0) == 0.0 and f1_from_counts(0, 2, 3) == 0.0
    assert f1_from_counts(1, 1, 0) == pytest.approx(200 / 3)
