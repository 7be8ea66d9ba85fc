"""Whole files that look cut, read and passed by the truncation check of ``spool extract``
(``check_complete``): an MP4 trimmed by an edit list, a Matroska file whose timestamps start
late."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
import pytest

from spool.video import VideoDecodeError, VideoReader, read_video_frames, write_video
from spool.video.completeness import check_reader_complete


def _check(path: Path) -> None:
    with VideoReader(path) as reader:
        check_reader_complete(path, reader, reader.info())


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



def _cut_before(src: Path, out: Path, skip: int) -> Path:
    """``ffmpeg -ss X -c copy`` from a non-keyframe: the file's first ``skip`` packets (in
    file order) are left out, and the timestamps shifted to start near 0."""
    with av.open(str(src)) as inp, av.open(str(out), "w") as dst:
        stream = inp.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        packets = [p for p in inp.demux(stream) if p.size][skip:]
        shift = min(p.dts for p in packets)
        for packet in packets:
            if packet.pts is not None:
                packet.pts -= shift
            packet.dts -= shift
            packet.stream = copy
            dst.mux(packet)
    return out


def _decoded(path: Path) -> np.ndarray:
    """Every frame the decoder outputs, in order (no index, no seeking)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize(("codec", "b_frames", "suffix"), [
    ("libx264", 0, "mp4"), ("libx264", 2, "mp4"), ("mpeg4", 0, "mp4"), ("mpeg4", 2, "avi"),
    ("libx264", 2, "avi"),  # pts are decode times: frames are counted as the decoder shows them
])
def test_a_file_cut_mid_gop_reads_what_its_decoder_shows(tmp_path: Path, codec: str,
                                                         b_frames: int, suffix: str) -> None:
    """A file cut mid-GOP starts with packets that need frames it lacks. H.264 decoders show
    nothing before the first keyframe; MPEG-4 Part 2 decoders show those frames anyway. Frame
    k is the k-th frame the decoder shows, read whole or by seeking, and the truncation check
    passes the file (its header counts the packets that show nothing)."""
    src = write_video(tmp_path / f"src_{codec}.{suffix}", _grey_ramp(60), codec=codec, fps=25,
                      gop_size=20, max_b_frames=b_frames)
    cut = _cut_before(src, tmp_path / f"cut_{codec}.{suffix}", 3)
    shown = _decoded(cut)
    frames, _ = read_video_frames(cut)
    assert len(frames) == len(shown)
    np.testing.assert_array_equal(frames, shown)
    picks = [0, len(shown) // 2, len(shown) - 1]
    np.testing.assert_array_equal(read_video_frames(cut, picks)[0], shown[picks])
    _check(cut)


@pytest.mark.parametrize(("codec", "suffix", "options"), [
    ("mpeg4", "avi", {}), ("mpeg4", "mkv", {}),
    ("libx264", "mkv", {"x264-params": "open-gop=1:b-adapt=0"}),
    ("libx264", "avi", {"x264-params": "open-gop=1:b-adapt=0"})])
def test_a_cut_at_a_keyframe_with_leading_b_frames_reads_what_is_shown(
        tmp_path: Path, codec: str, suffix: str, options: dict) -> None:
    """``-ss X -c copy`` starting at a keyframe whose leading B-frames refer to the frames
    before it: the decoder shows none of them, but they were indexed ("could not decode
    frame index 0", or the last frames unreadable)."""
    src = write_video(tmp_path / f"src.{'mp4' if suffix == 'mkv' else suffix}", _grey_ramp(60),
                      codec=codec, fps=25, gop_size=20, max_b_frames=3, options=options)
    with av.open(str(src)) as container:
        keys = [p.is_keyframe for p in container.demux(container.streams.video[0]) if p.size]
    cut = _cut_before(src, tmp_path / f"cut.{suffix}", keys.index(True, 1))
    shown = _decoded(cut)
    with VideoReader(cut) as reader:
        assert len(reader) == len(shown)
    np.testing.assert_array_equal(read_video_frames(cut, [0, len(shown) - 1])[0],
                                  shown[[0, -1]])
    _check(cut)
