"""Whole files that look cut, read and passed by the truncation check of ``spool extract``
(``check_complete``): an MP4 trimmed by an edit list, a Matroska file whose timestamps start
late."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from spool.extract import _check_reader_complete
from spool.video import VideoDecodeError, VideoReader, read_video_frames, write_video


def _check(path: Path) -> None:
    with VideoReader(path) as reader:
        _check_reader_complete(path, reader, reader.info())


def _grey_ramp(n: int) -> np.ndarray:
    return np.broadcast_to((np.arange(n) * 4).astype(np.uint8)[:, None, None, None],
                           (n, 48, 64, 3)).copy()


def test_an_mp4_trimmed_by_an_edit_list_is_whole(tmp_path: Path) -> None:
    """``ffmpeg -ss 0.2 -i src.mp4 -c copy``: the edit list starts 5 frames in, and the header
    still counts those 5 packets, which the demuxer discards (they were called missing)."""
    src = write_video(tmp_path / "src.mp4", _grey_ramp(60), codec="libx264", fps=25,
                      gop_size=12, max_b_frames=2)
    data = bytearray(src.read_bytes())
    entry = data.find(b"elst") + 12  # version 0: segment duration, media time
    duration, media_time = struct.unpack(">Ii", data[entry:entry + 8])
    movie_scale = struct.unpack(">I", data[data.find(b"mvhd") + 16:][:4])[0]
    media_scale = struct.unpack(">I", data[data.find(b"mdhd") + 16:][:4])[0]
    data[entry:entry + 8] = struct.pack(">Ii", duration - 5 * movie_scale // 25,
                                        media_time + 5 * media_scale // 25)
    trimmed = tmp_path / "trimmed.mp4"
    trimmed.write_bytes(bytes(data))
    frames, _ = read_video_frames(trimmed)
    assert len(frames) == 55 and frames[0].mean() == pytest.approx(20, abs=2)  # frame 5 first
    with VideoReader(trimmed) as reader:
        assert reader.index.discarded == 5
    _check(trimmed)


@pytest.mark.parametrize("start", [0.0, 1.5, 2.0])
def test_a_matroska_file_starting_late_is_whole(tmp_path: Path, start: float) -> None:
    """FFmpeg gives a Matroska segment's end as its duration; adding the start time again
    declared 6 s for a file of frames from 2 to 4 s."""
    frames = np.random.default_rng(0).integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / "late.mkv", frames, codec="libx264", fps=10,
                       timestamps=[start + i / 10 for i in range(40)])
    _check(path)
    data = path.read_bytes()  # a file really cut short is still reported
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="truncated"):
        _check(tmp_path / "cut.mkv")

