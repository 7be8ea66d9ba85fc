"""The pixel budget: forged huge headers are refused before decoding; scaling while decoding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_backbone, tiny_model_args

from spool.video import VideoDecodeError, VideoReader, probe_video, read_video_frames
from spool.video.limits import parse_max_pixels, pixel_budget
from spool.video.writer import write_video

EXTRA_ARGS = ["--no-progress"]


def _gradient(t: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    frame = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), xx * 0 + 128], -1)
    return np.repeat(frame[None].astype(np.uint8), t, axis=0)


def test_budget_refuses_large_frames_from_the_header(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", _gradient(3, 48, 64), fps=10)
    for read in (lambda: read_video_frames(path, max_pixels=48 * 64 - 1),
                 lambda: probe_video(path, exact=False, max_pixels=100),
                 lambda: VideoReader(path, max_pixels=100)):
        with pytest.raises(VideoDecodeError, match=r"64x48 .*--max-pixels 64x48"):
            read()
    with pixel_budget(1000), pytest.raises(VideoDecodeError, match="pixel budget of 1,000 pixels;"):
        read_video_frames(path)
    assert read_video_frames(path, max_pixels=48 * 64)[0].shape == (3, 48, 64, 3)
    with pixel_budget(0):  # no limit
        assert read_video_frames(path)[0].shape == (3, 48, 64, 3)


def test_size_change_mid_stream(tmp_path: Path) -> None:
    # Two MPEG-TS streams back to back: the header announces the first size only.
    small = write_video(tmp_path / "a.ts", _gradient(4, 32, 32), fps=10)
    large = write_video(tmp_path / "b.ts", _gradient(4, 128, 96), fps=10)
    both = tmp_path / "both.ts"
    both.write_bytes(small.read_bytes() + large.read_bytes())
    with pytest.raises(VideoDecodeError, match="96x128"):  # checked on every decoded frame
        read_video_frames(both, max_pixels=40 * 40)
    with pytest.raises(VideoDecodeError, match=r"frame size changes.*Spool's commands read one "
                                               r"size per video; in Python, .*get\(size="):
        read_video_frames(both, max_pixels=0)
    frames, _ = read_video_frames(both, size=(16, 24), max_pixels=0)
    assert frames.shape == (8, 16, 24, 3)


@pytest.mark.parametrize("rotation", [0, 90])
def test_scaling_while_decoding_matches_scaling_after(tmp_path: Path, rotation: int) -> None:
    path = write_video(tmp_path / "v.mkv", _gradient(2, 64, 96), fps=10, codec="ffv1",
                       rotation=rotation)
    full, _ = read_video_frames(path)
    small, _ = read_video_frames(path, size=(16, 24) if rotation == 0 else (24, 16))
    h, w = full.shape[1:3]
    assert small.shape == (2, h // 4, w // 4, 3)
    pooled = full.reshape(2, h // 4, 4, w // 4, 4, 3).mean((2, 4))  # area averaging
    assert np.abs(small - pooled).max() <= 2


@pytest.mark.parametrize(("text", "value"), [("3840x2160", 3840 * 2160), ("1000", 1000),
                                             ("0", 0), ("64 X 48", 3072)])
def test_parse_max_pixels(text: str, value: int) -> None:
    assert parse_max_pixels(text) == value


@pytest.mark.parametrize("text", ["4k", "-5", "0x100", "", "64x"])
def test_parse_max_pixels_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_max_pixels(text)


_WRITE_BOMB = """
import sys
import numpy as np
from spool.video import write_video
frame = np.full((8192, 8192), 90, np.uint8)  # solid grey: a few KB of H.264
write_video(sys.argv[1], (frame for _ in range(2)), fps=25, options={"crf": "51"})
"""

_MEASURE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(proc.stdout + proc.stderr)
"""


def test_extract_refuses_a_decompression_bomb_in_little_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.mp4"
    # Written in a child process: encoding 8192x8192 takes over a GB, not this test's business.
    subprocess.run([sys.executable, "-c", _WRITE_BOMB, str(bomb)], check=True, timeout=300)
    assert bomb.stat().st_size < 32_000
    config = tmp_path / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))
    cmd = [sys.executable, "-m", "spool.cli", "extract", str(bomb), "--out", str(tmp_path / "o"),
           *tiny_model_args(config), *EXTRA_ARGS, "--device", "cpu"]
    # A fresh process measures the peak RSS of its one child, `spool extract`, in KiB. On the
    # CPU: on a GPU machine `--device auto` would add CUDA's own host memory to it.
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True,
                          text=True, timeout=300, check=True)
    first, output = proc.stdout.split("\n", 1)
    code, peak_kib = map(int, first.split())
    assert code == 1, output
    assert "8192x8192" in output and "--max-pixels" in output
    assert "0 extracted, 0 already done, 1 failed of 1 videos" in output
    assert peak_kib < 1024**2, f"peak RSS {peak_kib / 1024:.0f} MiB"  # was > 4 GiB (killed)


@pytest.mark.parametrize("size, message", [
    (10, r"size: expected \(height, width\) in whole pixels, got 10"),
    ("ab", r"size: expected \(height, width\) in whole pixels, got 'ab'"),
    ((16.5, 24), r"got \(16.5, 24\)"),
    ((16, 24, 3), r"got \(16, 24, 3\)"),
    ((0, 24), r"size: expected \(height, width\) >= 1, got \(0, 24\)"),
    ((100_000, 100_000),
     r"size: \(height, width\) = \(100000, 100000\) is over the pixel budget of 8.8 MP"),
])
def test_bad_sizes_are_named(tmp_path: Path, size, message) -> None:
    """size=10 or "ab" was a bare TypeError, (100000, 100000) PyAV's 'Invalid argument'."""
    path = write_video(tmp_path / "v.mp4", _gradient(3, 48, 64), fps=10)
    with pytest.raises(ValueError, match=message):
        read_video_frames(path, [0], size=size)
    assert read_video_frames(path, [0], size=(16, 24))[0].shape == (1, 16, 24, 3)


def test_frame_numbers_are_whole_numbers(tmp_path: Path) -> None:
    """A float index was truncated ([1.7] read frame 1) and a string parsed (["1"])."""
    import torch

    path = write_video(tmp_path / "v.mp4", _gradient(3, 48, 64), fps=10)
    for bad in ([1.7], ["1"], [np.float32(1)]):
        with pytest.raises(ValueError, match=r"indices: expected whole frame numbers, got "):
            read_video_frames(path, bad)
    frames, _ = read_video_frames(path, [1])
    for good in (np.array([1]), [np.int64(1)], torch.tensor([1]), range(1, 2)):
        assert np.array_equal(read_video_frames(path, good)[0], frames)


def test_an_empty_file_is_said_to_be_empty(tmp_path: Path) -> None:
    """FFmpeg's "Invalid data found when processing input" for a 0-byte file."""
    path = tmp_path / "v.mp4"
    path.write_bytes(b"")
    for read in (lambda: read_video_frames(path), lambda: probe_video(path, exact=False)):
        with pytest.raises(VideoDecodeError, match=r"v.mp4: the file is empty \(0 bytes\)$"):
            read()
