"""``write_video`` output is a pure function of its input: the same bytes in every run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spool.data.synthetic import _EXT, make_synthetic_dataset, render_synthetic_clip
from spool.video import read_video_frames, write_video

# Writes a few clips with every codec and prints one digest per codec.
_WRITE_ALL = """
import hashlib, json, sys
import numpy as np
from spool.data.synthetic import _EXT, render_synthetic_clip
from spool.video import write_video
out = {}
for codec, ext in _EXT.items():
    h = hashlib.sha256()
    for k in range(4):
        clip = render_synthetic_clip(("left_to_right", "grow")[k % 2],
                                     np.random.default_rng([0, k]), 8, 64)
        for frames in (clip, clip[::-1]):
            h.update(write_video(sys.argv[1] + ext, frames, fps=8, codec=codec).read_bytes())
    out[codec] = h.hexdigest()
print(json.dumps(out))
"""


def _digests_in_subprocess(tmp_path: Path, perturb: int) -> dict[str, str]:
    # MALLOC_PERTURB_ fills freed heap memory with a byte: an encoder that reads memory it
    # never wrote (x264's macroblock tree did) then gives other bytes in every process.
    env = dict(os.environ, MALLOC_PERTURB_=str(perturb), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _WRITE_ALL, str(tmp_path / f"p{perturb}")],
                          capture_output=True, text=True, env=env, timeout=120, check=True)
    return json.loads(proc.stdout)


def test_same_clip_same_bytes_in_one_process(tmp_path: Path) -> None:
    clip = render_synthetic_clip("grow", np.random.default_rng(1), 16, 64)
    for codec, ext in _EXT.items():
        digests = {hashlib.sha256(write_video(tmp_path / f"v{i}{ext}", clip, fps=8,
                                              codec=codec).read_bytes()).hexdigest()
                   for i in range(6)}
        assert len(digests) == 1, codec


def test_same_clips_same_bytes_in_other_processes(tmp_path: Path) -> None:
    first = _digests_in_subprocess(tmp_path, 1)
    second = _digests_in_subprocess(tmp_path, 170)
    assert first.keys() == set(_EXT)
    assert first == second


def test_non_deterministic_mode_still_writes_readable_files(tmp_path: Path) -> None:
    clip = render_synthetic_clip("grow", np.random.default_rng(1), 8, 64)
    path = write_video(tmp_path / "fast.mp4", clip, fps=8, deterministic=False,
                       options={"x264-params": "mbtree=1"})
    got, _ = read_video_frames(path)
    assert got.shape == clip.shape
    assert np.abs(got.astype(np.int16) - clip).mean() < 12  # lossy, but the same pictures


@pytest.mark.parametrize("codec", ["libx264", "ffv1"])
def test_synthetic_dataset_same_bytes_twice(tmp_path: Path, codec: str) -> None:
    a = make_synthetic_dataset(tmp_path / "a", 3, num_frames=8, size=64, codec=codec, seed=5)
    b = make_synthetic_dataset(tmp_path / "b", 3, num_frames=8, size=64, codec=codec, seed=5)
    # And once more in another process, with other garbage in its heap.
    env = dict(os.environ, MALLOC_PERTURB_="85", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "spool.data.synthetic", str(tmp_path / "c"),
                    "--per-class", "3", "--num-frames", "8", "--size", "64", "--codec", codec,
                    "--seed", "5"], env=env, check=True, capture_output=True, timeout=120)
    for (pa, _), (pb, _) in zip(a.train + a.val, b.train + b.val, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
        pc = tmp_path / "c" / pa.relative_to(tmp_path / "a")
        assert pa.read_bytes() == pc.read_bytes(), pa.name
    for name in ("train.txt", "val.txt", "classes.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_a_time_base_without_timestamps_keeps_the_frame_rate(tmp_path: Path, ext: str) -> None:
    """Frame i was written at pts i in the time base asked for: 1 ms apart at 1/1000."""
    from fractions import Fraction

    from spool.video import VideoReader

    clip = render_synthetic_clip("grow", np.random.default_rng(1), 6, 32)
    path = write_video(tmp_path / f"v.{ext}", clip, fps=30, time_base=Fraction(1, 1000))
    with VideoReader(path) as reader:
        assert reader.info().fps == pytest.approx(30, rel=0.02)
        np.testing.assert_allclose(reader.frame_times() - reader.frame_times()[0],
                                   np.arange(6) / 30, atol=1e-3)
