"""Synthetic dataset: time-reversed twins hold the same frames in opposite order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spool.data.synthetic import (
    DEFAULT_CLASSES,
    TIME_REVERSED,
    make_synthetic_dataset,
    render_synthetic_clip,
)
from spool.video.io import probe_video, read_video_frames


@pytest.mark.parametrize("forward", ["left_to_right", "top_to_bottom", "grow", "appear"])
def test_render_clip_changes_over_time(forward: str) -> None:
    clip = render_synthetic_clip(forward, np.random.default_rng(0), num_frames=8, size=32)
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
    assert not np.array_equal(clip[0], clip[-1])  # the order carries information
    again = render_synthetic_clip(forward, np.random.default_rng(0), num_frames=8, size=32)
    np.testing.assert_array_equal(clip, again)


def test_lossless_dataset_twins_are_time_reverses(tmp_path: Path) -> None:
    ds = make_synthetic_dataset(tmp_path, num_videos_per_class=4, num_frames=8, size=32,
                                codec="ffv1", val_fraction=0.5, seed=3)
    assert ds.classes == list(DEFAULT_CLASSES)
    items = ds.train + ds.val
    assert len(items) == 16 and len(ds.val) == 8
    by_name = {p.name: (p, label) for p, label in items}
    for path, label in items:
        twin_label = TIME_REVERSED[label]
        twin = by_name[path.name.replace(label, twin_label)][0]
        a, _ = read_video_frames(path)
        b, _ = read_video_frames(twin)
        np.testing.assert_array_equal(a, b[::-1])  # bit for bit, via ffv1
        # Order-invariant pooling (here: the sorted set of frames) cannot tell them apart.
        key = sorted(f.tobytes() for f in a)
        assert key == sorted(f.tobytes() for f in b)
        assert not np.array_equal(a, b)
        # Twins share a split.
        assert ((path, label) in ds.val) == ((twin, twin_label) in ds.val)


def test_annotation_files(tmp_path: Path) -> None:
    ds = make_synthetic_dataset(tmp_path, num_videos_per_class=3, num_frames=4, size=16,
                                classes=["grow", "shrink"], val_fraction=0.34)
    assert (tmp_path / "classes.txt").read_text().split() == ["grow", "shrink"]
    for split, items in (("train", ds.train), ("val", ds.val)):
        lines = (tmp_path / f"{split}.txt").read_text().splitlines()
        assert len(lines) == len(items)
        for line, (path, label) in zip(lines, items, strict=True):
            rel, name = line.split(" ")
            assert tmp_path / rel == path and name == label
            assert path.parent.name == label and path.suffix == ".mp4"
    assert len(ds.val) == 2 and len(ds.train) == 4
    info = probe_video(ds.train[0][0])
    assert (info.num_frames, info.width, info.height) == (4, 16, 16)


def test_same_seed_same_videos(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", 2, num_frames=4, size=16, codec="ffv1", seed=7)
    b = make_synthetic_dataset(tmp_path / "b", 2, num_frames=4, size=16, codec="ffv1", seed=7)
    for (pa, la), (pb, lb) in zip(a.train + a.val, b.train + b.val, strict=True):
        assert la == lb
        np.testing.assert_array_equal(read_video_frames(pa)[0], read_video_frames(pb)[0])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"classes": ["grow"]}, "twin"),
    ({"classes": ["jump", "fall"]}, "unknown class"),
    ({"classes": ["grow", "shrink", "grow"]}, "duplicates"),
    ({"codec": "h265"}, "codec"),
    ({"num_videos_per_class": 0}, "num_videos_per_class"),
    ({"val_fraction": 1.0}, "val_fraction"),
])
def test_invalid_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"num_videos_per_class": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(tmp_path, **args)


def test_generation_is_fast(tmp_path: Path) -> None:
    import time

    start = time.perf_counter()
    ds = make_synthetic_dataset(tmp_path, num_videos_per_class=25)
    assert len(ds.train) + len(ds.val) == 100
    assert time.perf_counter() - start < 20  # about 1.5 s on 2 cores


def test_a_rerun_keeps_the_videos_and_their_times(tmp_path: Path) -> None:
    """Every run rewrote every video with new modification times, so a token cache of them
    (keyed on each file's size and time) re-encoded them all: `spool demo` run twice."""
    from spool.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path, 2, num_frames=4, size=32)
    files = sorted((tmp_path / "videos").rglob("*.*"))
    stamps = [p.stat().st_mtime_ns for p in files]
    make_synthetic_dataset(tmp_path, 2, num_frames=4, size=32)
    assert sorted((tmp_path / "videos").rglob("*.*")) == files  # no temporaries left
    assert [p.stat().st_mtime_ns for p in files] == stamps
    make_synthetic_dataset(tmp_path, 2, num_frames=4, size=32, seed=1)  # other bytes: written
    assert all(p.stat().st_mtime_ns != t for p, t in zip(files, stamps, strict=True))


def test_an_interrupted_write_leaves_no_hidden_video(tmp_path: Path, monkeypatch) -> None:
    """The new bytes go to a hidden .NAME.new.EXT first; a write stopped half-way left it,
    and folder scans (spool extract videos/, class folders) took it for a video."""
    from spool.data import synthetic

    real = synthetic.write_video

    def interrupted(path, *args, **kwargs):
        real(path, *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(synthetic, "write_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.make_synthetic_dataset(tmp_path, 2, num_frames=4, size=32)
    assert [p for p in tmp_path.rglob(".*") if p.is_file()] == []
