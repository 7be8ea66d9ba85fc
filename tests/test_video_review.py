"""Defects found reviewing the video reader on real-world files (eighth session)."""

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from spool.video import VideoReader, read_video_frames, write_video
from spool.video.completeness import check_file_complete
from spool.video.index import VideoDecodeError


def _ts_part(path: Path, first: int, n: int, audio: bool, rng) -> None:
    with av.open(str(path), "w", format="mpegts") as c:
        v = c.add_stream("mpeg2video", rate=25, options={"qscale": "2"})
        v.width, v.height, v.pix_fmt = 640, 480, "yuv420p"
        a = c.add_stream("mp2", rate=48000) if audio else None
        apts = first * 1920
        for i in range(first, first + n):
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            c.mux(v.encode(frame))
            while a is not None and apts < (i + 1) * 1920:
                sound = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16",
                                                   layout="mono")
                sound.sample_rate, sound.pts, sound.time_base = 48000, apts, Fraction(1, 48000)
                apts += 1152
                c.mux(a.encode(sound))
        c.mux(v.encode(None))
        if a is not None:
            c.mux(a.encode(None))


def test_a_stream_found_mid_file_does_not_stop_reading(tmp_path: Path):
    """Defect: joined MPEG-TS recordings whose middle part has audio made PyAV's end-of-file
    flush raise IndexError (not a decode error, so datasets did not skip the video either);
    every frame is there, and the reader now reads them all."""
    rng = np.random.default_rng(0)
    parts = []
    for name, first, n, audio in (("a", 0, 30, False), ("b", 200, 5, True), ("c", 205, 5, False)):
        _ts_part(tmp_path / f"{name}.ts", first, n, audio, rng)
        parts.append((tmp_path / f"{name}.ts").read_bytes())
    path = tmp_path / "joined.ts"
    path.write_bytes(b"".join(parts))
    expected = []
    with av.open(str(path)) as c, pytest.raises(IndexError):  # PyAV's own flush trips
        for frame in c.decode(video=0):
            expected.append(frame.to_ndarray(format="rgb24"))
    frames, _ = read_video_frames(path)
    assert len(frames) == len(expected) == 40
    np.testing.assert_array_equal(frames[[0, 35, 39]], np.stack(expected)[[0, 35, 39]])


def test_a_codec_without_a_decoder_is_a_decode_error(tmp_path: Path):
    """Defect: a stream FFmpeg has no decoder for gave "'NoneType' object has no attribute
    'width'" (an AttributeError: a dataset stopped instead of skipping the video)."""
    src = write_video(tmp_path / "clip.avi", np.zeros((5, 32, 32, 3), np.uint8), fps=10,
                      codec="mjpeg")
    bad = tmp_path / "unknown.avi"
    bad.write_bytes(src.read_bytes().replace(b"MJPG", b"QQQQ"))
    with pytest.raises(VideoDecodeError, match="unknown.avi: no decoder for its video codec"):
        read_video_frames(bad)


def test_dropped_frames_of_an_avi_are_not_a_truncation(tmp_path: Path):
    """Defect: AVI's header counts the empty chunks of dropped frames, which the demuxer
    skips, so a whole file with gaps was refused as truncated."""
    frames = np.stack([np.full((32, 32, 3), 20 * i, np.uint8) for i in range(10)])
    times = [0, .1, .2, .5, .6, .7, 1.0, 1.1, 1.2, 1.3]
    path = write_video(tmp_path / "gaps.avi", frames, fps=10, codec="mjpeg", timestamps=times,
                       time_base=Fraction(1, 10))
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 14
    np.testing.assert_allclose(read_video_frames(path)[1], times, atol=1e-6)
    check_file_complete(path)


def test_an_mp4_trimmed_at_its_end_by_an_edit_list_is_whole(tmp_path: Path):
    """Defect: an edit list showing the first half of the samples (a lossless trim) was
    refused as truncated: the header counts every sample."""
    base = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    src = write_video(tmp_path / "src.mp4", np.stack([np.roll(base, 3 * i, 1)
                                                      for i in range(100)]),
                      fps=25, gop_size=10, max_b_frames=2)
    data = bytearray(src.read_bytes())
    at = data.find(b"elst")
    span = struct.unpack(">I", data[at + 12:at + 16])[0]
    data[at + 12:at + 16] = struct.pack(">I", span // 2)
    path = tmp_path / "trimmed.mp4"
    path.write_bytes(data)
    with VideoReader(path) as reader:
        assert len(reader) == 50
    check_file_complete(path)


def test_joined_recordings_with_b_frames_keep_the_decoders_order(tmp_path: Path):
    """Defect: two H.264 recordings with B-frames joined end to end, the second's clock
    starting inside the first's span, came back interleaved (sorted by pts, index exact),
    as frame k was no longer the k-th frame shown."""
    tb = Fraction(1, 90000)

    def part(path: Path, levels: list[int], start: int) -> bytes:
        with av.open(str(path), "w", format="mpegts") as c:
            s = c.add_stream("libx264", rate=25, options={"bf": "2", "g": "10"})
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
            s.codec_context.time_base = tb
            for k, level in enumerate(levels):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, np.uint8),
                                                   format="rgb24")
                frame.pts, frame.time_base = start + k * 3600, tb
                for packet in s.encode(frame):
                    c.mux(packet)
            for packet in s.encode(None):
                c.mux(packet)
        return path.read_bytes()

    path = tmp_path / "joined.ts"
    path.write_bytes(part(tmp_path / "a.ts", [10 * k for k in range(20)], 0)
                     + part(tmp_path / "b.ts", [5 + 10 * k for k in range(20)], 46234))
    with av.open(str(path)) as c:
        shown = [frame.to_ndarray(format="rgb24") for frame in c.decode(video=0)]
    frames, _ = read_video_frames(path)
    np.testing.assert_array_equal(frames, np.stack(shown))
    with VideoReader(path) as reader:
        assert not reader.index.exact
        np.testing.assert_array_equal(reader.get([25, 3])[0], np.stack(shown)[[25, 3]])


def test_no_frames_of_a_rotated_video_have_its_upright_shape(tmp_path: Path):
    """Defect: ``get([])`` on a portrait phone video gave the stored (landscape) shape."""
    path = write_video(tmp_path / "portrait.mp4", np.zeros((4, 32, 64, 3), np.uint8),
                       rotation=90)
    with VideoReader(path) as reader:
        assert reader.get([0])[0].shape == (1, 64, 32, 3)
        assert reader.get([])[0].shape == (0, 64, 32, 3)
        assert reader.get([], size=(8, 16))[0].shape == (0, 8, 16, 3)


def _encode(path: Path, codec: str, n: int, *, b_frames: int | None = None,
            options: dict | None = None, audio: bool = False) -> Path:
    """``n`` frames of a moving gradient, 128 x 96 at 25 fps, as PyAV's encoders write them
    by default (x264: B-pyramid) unless ``b_frames`` is given."""
    yy, xx = np.mgrid[0:96, 0:128]
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        if b_frames is not None:
            s.codec_context.max_b_frames, s.codec_context.gop_size = b_frames, 12
        a = c.add_stream("mp2", rate=48000) if audio else None
        for i in range(n):
            image = np.stack([(xx * 2 + i * 3) % 256, (yy * 3 + i) % 256,
                              (xx + yy + i * 2) % 256], -1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, "rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
            if a is not None:
                sound = av.AudioFrame.from_ndarray(np.zeros((1, 1920), np.int16), format="s16",
                                                   layout="mono")
                sound.sample_rate, sound.pts = 48000, i * 1920
                c.mux(a.encode(sound))
        c.mux(s.encode(None))
        if a is not None:
            c.mux(a.encode(None))
    return path


def _cut(path: Path, fraction: float) -> Path:
    out = path.with_name(f"{path.stem}_cut{path.suffix}")
    data = path.read_bytes()
    out.write_bytes(data[:int(len(data) * fraction)])
    return out


def test_guessed_decode_times_keep_a_matroska_index_exact(tmp_path: Path):
    """Review of my change: Matroska stores no decode times, and FFmpeg's guesses go back
    under x264's B-pyramid, so every such mkv lost its exact index (no seeking, no frame
    times: wrong fps sampling) and, cut, its truncation check. The restart check is for the
    formats that are joined end to end (MPEG-TS/PS)."""
    path = _encode(tmp_path / "x264.mkv", "libx264", 120)
    with VideoReader(path) as reader:
        assert reader.index.exact and reader.frame_times() is not None
    with pytest.raises(VideoDecodeError, match="truncated"):
        check_file_complete(_cut(path, 0.5))


@pytest.mark.parametrize("audio", [False, True])
def test_an_avi_cut_short_is_still_a_truncation(tmp_path: Path, audio: bool):
    """Review of my change: with its index (at the end) cut off, FFmpeg gives an AVI the
    duration of the frames it found, so "the frames reach the declared end" held for every
    cut AVI. Dropped frames are now told by AVI's frame slots instead."""
    path = _encode(tmp_path / "clip.avi", "mpeg4", 120, b_frames=2, audio=audio)
    check_file_complete(path)
    with pytest.raises(VideoDecodeError, match="truncated: the header announces 120 frames"):
        check_file_complete(_cut(path, 0.6))


def test_an_mp4_missing_its_last_packets_is_still_a_truncation(tmp_path: Path):
    """Review of my change: cut to 99%, a faststart MP4 lost trailing B-frames but kept a
    later frame, so its frames still "reached the declared end" with 4 of 120 missing."""
    path = _encode(tmp_path / "clip.mp4", "libx264", 120, options={"movflags": "faststart"})
    check_file_complete(path)
    cut = _cut(path, 0.99)
    with VideoReader(cut) as reader:
        assert len(reader) < 119
    with pytest.raises(VideoDecodeError, match="truncated: the header announces 120 frames"):
        check_file_complete(cut)
