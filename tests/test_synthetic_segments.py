"""Synthetic segmentation videos: labels match frames, order-only classes, a far cue, bytes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from spool.data.segmentation import read_mapping
from spool.data.synthetic_segments import (
    SEGMENT_CLASSES,
    make_segmentation_dataset,
    read_ground_truth,
    render_motion,
    render_segmentation_video,
)
from spool.video.io import probe_video, read_video_frames

SMALL = dict(frames=(560, 640), min_cue_distance=200, segment_frames=(40, 120))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_segmentation_dataset(tmp_path / "a", 2, 1, seed=5, **SMALL)
    b = make_segmentation_dataset(tmp_path / "b", 2, 1, seed=5, **SMALL)
    c = make_segmentation_dataset(tmp_path / "c", 2, 1, seed=6, **SMALL)
    assert _tree(a.root) == _tree(b.root)
    assert _tree(a.root).keys() == _tree(c.root).keys() and _tree(a.root) != _tree(c.root)
    assert a.train == ["train_0000", "train_0001"] and a.test == ["test_0000"]
    # Twins (the default): videos 0 and 1 differ in the cue and the delayed label only.
    (x, _), (y, _) = (read_video_frames(a.video_path(n)) for n in a.train)
    lx, ly = (a.labels(n) for n in a.train)
    cue = lx == SEGMENT_CLASSES.index("cue_a")
    assert cue.any() and (ly[cue] == SEGMENT_CLASSES.index("cue_b")).all()
    np.testing.assert_array_equal(x[~cue], y[~cue])
    after = lx == SEGMENT_CLASSES.index("after_a")
    assert (ly[after] == SEGMENT_CLASSES.index("after_b")).all()
    np.testing.assert_array_equal(lx[~cue & ~after], ly[~cue & ~after])


def test_labels_align_with_the_decoded_frames(tmp_path: Path) -> None:
    ds = make_segmentation_dataset(tmp_path, 2, 0, seed=0, twins=False, **SMALL)
    checked = set()
    assert read_mapping(tmp_path / "mapping.txt") == list(SEGMENT_CLASSES)
    assert (tmp_path / "splits" / "train.split1.bundle").read_text().split() == [
        "train_0000.txt", "train_0001.txt"]
    rows = list(csv.DictReader((tmp_path / "train.csv").open()))
    for i, name in enumerate(ds.train):
        frames, _ = read_video_frames(ds.video_path(name))
        labels = read_ground_truth(tmp_path / "groundTruth" / f"{name}.txt", SEGMENT_CLASSES)
        assert len(frames) == len(labels) == probe_video(ds.video_path(name)).num_frames
        assert probe_video(ds.video_path(name)).fps == pytest.approx(15.0, rel=1e-3)  # mkv: ms
        # The CSV's segments, at 15 fps, give back the per-frame labels.
        from_csv = np.full(len(labels), -1)
        for row in (r for r in rows if r["video"] == f"videos/{name}.mkv"):
            start, end = round(float(row["start_s"]) * 15), round(float(row["end_s"]) * 15)
            from_csv[start:end] = SEGMENT_CLASSES.index(row["label"])
        np.testing.assert_array_equal(from_csv, labels)

        f = frames.astype(np.float64)
        backdrop = f[labels == 0]
        assert (backdrop == backdrop[0]).all()  # empty scene: always the same picture
        cue = f[labels == SEGMENT_CLASSES.index(f"cue_{'ab'[i % 2]}")]
        assert len(cue) and (cue[..., 0 if i % 2 == 0 else 2].mean() > 150)  # red, blue
        after = f[labels == SEGMENT_CLASSES.index(f"after_{'ab'[i % 2]}")]
        assert (after == after[0]).all() and not (after[0] == backdrop[0]).all()
        # Motion: where the shape is (pixels off the backdrop) moves / swells as labelled.
        shape = np.abs(f - backdrop[0]).sum(-1) > 30
        area = shape.sum(axis=(1, 2))
        x = (shape * np.arange(shape.shape[2])).sum(axis=(1, 2)) / np.maximum(area, 1)
        # x moves every frame (median: wrap-arounds are rare jumps); the area grows in steps.
        for label, sign, signal, stat in (("left_to_right", 1, x, np.median),
                                          ("right_to_left", -1, x, np.median),
                                          ("grow", 1, area, np.mean),
                                          ("shrink", -1, area, np.mean)):
            at = np.flatnonzero(labels[1:] == SEGMENT_CLASSES.index(label))
            at = at[labels[at] == labels[at + 1]]  # steps inside the segment
            if len(at):
                assert sign * stat(np.diff(signal)[at]) > 0, label
                checked.add(label)
    assert len(checked) == 4  # seed 0 has every motion class


def test_one_frame_cannot_tell_the_twins_apart() -> None:
    backdrop = np.full((32, 32, 3), 100.0)
    for forward, backward in (("left_to_right", "right_to_left"), ("grow", "shrink")):
        a = render_motion(forward, 50, 32, np.random.default_rng(3), backdrop)
        b = render_motion(backward, 50, 32, np.random.default_rng(3), backdrop)
        np.testing.assert_array_equal(a, b[::-1])  # the same frames, in the opposite order
        assert not np.array_equal(a, b)
    # Swapping the cue changes the cue frames and two labels, nothing else.
    va = render_segmentation_video(np.random.default_rng(7), 2200, "a", size=16)
    vb = render_segmentation_video(np.random.default_rng(7), 2200, "b", size=16)
    cue = (va.labels == SEGMENT_CLASSES.index("cue_a"))
    np.testing.assert_array_equal(va.frames[~cue], vb.frames[~cue])
    swapped = {SEGMENT_CLASSES.index(f"{k}_a"): SEGMENT_CLASSES.index(f"{k}_b")
               for k in ("cue", "after")}
    np.testing.assert_array_equal(np.vectorize(lambda k: swapped.get(k, k))(va.labels),
                                  vb.labels)


@pytest.mark.parametrize("num_frames", [1875, 2600, 4000])
def test_the_cue_is_more_than_1500_frames_back(num_frames: int) -> None:
    for seed in range(3):
        video = render_segmentation_video(np.random.default_rng([seed, num_frames]),
                                          num_frames, "ab"[seed % 2], size=16)
        assert len(video.labels) == num_frames
        cue = np.flatnonzero(np.isin(video.labels, [SEGMENT_CLASSES.index("cue_a"),
                                                    SEGMENT_CLASSES.index("cue_b")]))
        after = np.flatnonzero(np.isin(video.labels, [SEGMENT_CLASSES.index("after_a"),
                                                      SEGMENT_CLASSES.index("after_b")]))
        assert len(cue) >= 80 and len(after) >= 60
        assert after.min() - cue.max() > 1500  # beyond one TCN stage's +-1023 frames
        starts = [s for _, s, _ in video.segments]
        assert starts == sorted(starts) and video.segments[-1][2] == num_frames
        # Neighbouring segments never share a label (they would be one segment).
        names = [label for label, _, _ in video.segments]
        assert all(x != y for x, y in zip(names, names[1:], strict=False))


def test_errors_name_the_argument(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cue"):
        render_segmentation_video(rng, 2000, "c")
    with pytest.raises(ValueError, match="num_frames: expected >= 1875"):
        render_segmentation_video(rng, 1000, "a")
    # Both conditions in one message named num_frames, which was long enough (385 >= 375).
    with pytest.raises(ValueError, match=r"min_cue_distance: expected at least "
                                         r"segment_frames\[0\] \(150\), got 100"):
        render_segmentation_video(rng, 385, "a", min_cue_distance=100)
    with pytest.raises(ValueError, match="kind"):
        render_motion("spin", 5, 32, rng, np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="codec"):
        make_segmentation_dataset(tmp_path, 1, 1, codec="gif")


def test_the_command_refuses_settings_before_writing(tmp_path: Path, capsys) -> None:
    """Too few frames for the cue distance: a traceback, and mapping.txt left behind."""
    from spool.data.synthetic_segments import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "d"), "--train", "2", "--test", "0", "--frames", "300", "400"])
    assert exit_.value.code == 2
    assert "error: num_frames: expected >= 1875" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
