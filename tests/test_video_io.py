"""Reading video files: bit-exact lossless round trips, seek == full decode, formats, errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from spool.video.io import (
    VideoDecodeError,
    VideoReader,
    apply_rotation,
    probe_video,
    read_video_frames,
    write_video,
)


def _noise(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _smooth(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Moving gradients and a moving block: lossy codecs keep it close to the source."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3), np.uint8)
    phase = rng.uniform(0, 6, 3)
    for i in range(t):
        for c in range(3):
            frames[i, ..., c] = 128 + 100 * np.sin(xx / 9 + yy / 13 + phase[c] + i * 0.3)
        x = (3 * i) % max(w - 8, 1)
        frames[i, 4:12, x:x + 8] = (255, 255, 255)
    return frames


@pytest.fixture(scope="module")
def h264_short_gop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """200 frames of H.264 with B-frames and a keyframe every 8 frames."""
    path = tmp_path_factory.mktemp("vid") / "gop8.mp4"
    frames = _smooth(200, 48, 64)
    write_video(path, frames, fps=25, codec="libx264", gop_size=8, max_b_frames=2)
    return path, frames


# --- lossless round trips and timestamps -------------------------------------------------------

@pytest.mark.parametrize(("name", "codec", "pix_fmt"), [
    ("ffv1.mkv", "ffv1", "bgr0"),
    ("raw.avi", "rawvideo", "bgr24"),
    ("raw.nut", "rawvideo", "rgb24"),
])
def test_lossless_frames_are_bit_exact(tmp_path: Path, name: str, codec: str,
                                       pix_fmt: str) -> None:
    frames = _noise(12, 24, 40)
    path = write_video(tmp_path / name, frames, fps=30, codec=codec, pix_fmt=pix_fmt)
    got, ts = read_video_frames(path)
    assert got.dtype == np.uint8 and got.shape == frames.shape
    np.testing.assert_array_equal(got, frames)
    np.testing.assert_allclose(ts, np.arange(12) / 30, atol=1e-3)


@pytest.mark.parametrize(("name", "codec"), [
    ("vfr.mkv", "ffv1"), ("vfr.mp4", "libx264"), ("vfr.webm", "libvpx-vp9"),
])
def test_variable_frame_rate_timestamps(tmp_path: Path, name: str, codec: str) -> None:
    times = [0.0, 0.04, 0.1, 0.11, 0.5, 0.52, 1.0, 1.25]
    frames = _noise(len(times), 32, 32) if codec == "ffv1" else _smooth(len(times), 32, 32)
    path = write_video(tmp_path / name, frames, fps=25, codec=codec, timestamps=times)
    got, ts = read_video_frames(path)
    np.testing.assert_allclose(ts, times, atol=1e-6)
    # Sparse reads map frame index -> pts exactly, also with uneven spacing.
    sub, sub_ts = read_video_frames(path, [6, 2, 4], strategy="seek")
    np.testing.assert_allclose(sub_ts, [times[6], times[2], times[4]], atol=1e-6)
    np.testing.assert_array_equal(sub, got[[6, 2, 4]])
    if codec == "ffv1":
        np.testing.assert_array_equal(got, frames)
    info = probe_video(path)
    assert info.num_frames == len(times) and info.num_frames_exact
    assert info.fps == pytest.approx((len(times) - 1) / 1.25)


# --- seeking gives the same frames as decoding everything ----------------------------------------

def test_seek_equals_full_decode_h264(h264_short_gop: tuple[Path, np.ndarray]) -> None:
    path, _ = h264_short_gop
    full, full_ts = read_video_frames(path, strategy="sequential")
    assert full.shape == (200, 48, 64, 3)
    rng = np.random.default_rng(1)
    picks = [[0, 199], [7, 8, 9], [190, 3, 100, 100, 57], rng.integers(0, 200, 20).tolist(),
             list(range(5, 200, 25))]
    for idx in picks:
        for strategy in ("seek", "auto"):
            with VideoReader(path) as reader:
                got, ts = reader.get(idx, strategy=strategy)
                seeks = reader.num_seeks
                assert reader.num_fallbacks == 0  # the seeks landed where planned
            np.testing.assert_array_equal(got, full[idx])
            np.testing.assert_array_equal(ts, full_ts[idx])
    # Sparse frames: the seek path is really taken. Without frame threads, whose packets in
    # flight (one a thread: 16 on a 16-core machine) can already hold the next target.
    with VideoReader(path, thread_type="NONE") as reader:
        reader.get(list(range(5, 200, 25)), strategy="seek")
        assert reader.num_seeks >= 7
    assert seeks >= 1


@pytest.mark.parametrize("thread_type", ["NONE", "SLICE", "FRAME"])
def test_decoder_threading_gives_the_same_frames(h264_short_gop: tuple[Path, np.ndarray],
                                                 thread_type: str) -> None:
    """The clip datasets read with slice threads, long videos with AUTO: same frames."""
    path, _ = h264_short_gop
    idx = [5, 60, 61, 130, 199, 3]
    with VideoReader(path) as reader:  # AUTO
        want, want_ts = reader.get(idx, strategy="seek")
    with VideoReader(path, thread_type=thread_type) as reader:
        got, ts = reader.get(idx, strategy="seek")
        assert reader.num_seeks >= 2
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ts, want_ts)


def test_reader_keeps_position_and_goes_back(h264_short_gop: tuple[Path, np.ndarray]) -> None:
    path, _ = h264_short_gop
    full, _ = read_video_frames(path)
    with VideoReader(path) as reader:
        for start in (0, 16, 32, 150, 20, 0):  # forward windows, then back
            got, _ = reader.get(range(start, start + 16))
            np.testing.assert_array_equal(got, full[start:start + 16])


@pytest.mark.parametrize(("name", "codec"), [
    ("vp9.webm", "libvpx-vp9"), ("mpeg4.avi", "mpeg4"), ("h264.mkv", "libx264"),
])
def test_seek_equals_full_decode_other_formats(tmp_path: Path, name: str, codec: str) -> None:
    path = write_video(tmp_path / name, _smooth(60, 32, 48), fps=25, codec=codec, gop_size=6)
    full, _ = read_video_frames(path, strategy="sequential")
    idx = [59, 1, 30, 13, 44]
    for thread_type in ("AUTO", "NONE"):  # without frame threads' packets in flight, it seeks
        with VideoReader(path, thread_type=thread_type) as reader:
            got, _ = reader.get(idx, strategy="seek")
            assert reader.num_fallbacks == 0
            assert reader.num_seeks >= 3 or thread_type == "AUTO"
        np.testing.assert_array_equal(got, full[idx])


@pytest.mark.parametrize("codec", ["mpeg1video", "mpeg2video"])
def test_mpeg_ps_reads_equal_sequential_decode(tmp_path: Path, codec: str) -> None:
    """After a seek the MPEG-PS demuxer shifts pts by a packet: a frame came back as an earlier
    one's picture. Every read must match a plain PyAV decode."""
    path = tmp_path / "ps.mpg"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size, stream.codec_context.max_b_frames = 12, 2
        base = _noise(1, 48, 64)[0]
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 3 * i, axis=1), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as src:
        full = np.stack([f.to_ndarray(format="rgb24") for f in src.decode(video=0)])
    with VideoReader(path) as reader:
        for idx, strategy in ((list(range(8, 16)), "seek"), ([47, 3, 30, 12], "seek"),
                              ([50, 20, 59, 5], "auto")):
            got, _ = reader.get(idx, strategy=strategy)
            np.testing.assert_array_equal(got, full[idx])


def test_stream_without_timestamps_is_read_by_count(tmp_path: Path) -> None:
    """A raw H.264 elementary stream has no pts: frames are numbered in decode output order."""
    path = write_video(tmp_path / "raw.h264", _smooth(30, 32, 48), fps=25, gop_size=8)
    full, ts = read_video_frames(path)
    assert full.shape == (30, 32, 48, 3)
    np.testing.assert_allclose(ts, np.arange(30) / 25)
    got, _ = read_video_frames(path, [29, 3, 10], strategy="seek")
    np.testing.assert_array_equal(got, full[[29, 3, 10]])
    info = probe_video(path)
    assert info.num_frames == 30 and not info.num_frames_exact


def test_pts_out_of_display_order_are_read_by_count(tmp_path: Path) -> None:
    """H.264 with B-frames in AVI: the demuxer's pts follow decode order, so sorting frames by
    them would swap neighbours; the reader numbers decoded frames instead (as with box.mp4, a
    VLC-muxed MP4, and packed MPEG-4 B-frames in Megamind.avi: tests/test_real_footage.py)."""
    frames = _smooth(40, 48, 64)
    path = write_video(tmp_path / "h264.avi", frames, fps=25, codec="libx264", gop_size=8,
                       max_b_frames=2)
    got, ts = read_video_frames(path)
    assert got.shape == frames.shape
    per_frame = np.abs(got.astype(int) - frames).mean(axis=(1, 2, 3))
    assert per_frame.max() < 8, per_frame.round(1)  # a swapped frame is off by ~20
    np.testing.assert_allclose(ts, np.arange(40) / 25, atol=1e-3)
    assert not probe_video(path).num_frames_exact
    sub, _ = read_video_frames(path, [30, 5, 17])
    np.testing.assert_array_equal(sub, got[[30, 5, 17]])


# --- formats ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "codec", "pix_fmt", "tol"), [
    ("h264.mp4", "libx264", None, 12),
    ("vp9.webm", "libvpx-vp9", None, 12),
    ("h264.mkv", "libx264", None, 12),
    ("mjpeg.avi", "mjpeg", None, 12),
    ("mpeg4.avi", "mpeg4", None, 12),
    ("yuv444.mp4", "libx264", "yuv444p", 4),
])
def test_formats_decode_close_to_source(tmp_path: Path, name: str, codec: str,
                                        pix_fmt: str | None, tol: float) -> None:
    frames = _smooth(10, 48, 64)
    opts = {"crf": "0"} if pix_fmt == "yuv444p" else None
    path = write_video(tmp_path / name, frames, fps=25, codec=codec, pix_fmt=pix_fmt,
                       options=opts)
    got, ts = read_video_frames(path)
    assert got.shape == frames.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - frames).mean() < tol
    np.testing.assert_allclose(ts, np.arange(10) / 25, atol=1e-3)
    info = probe_video(path)
    expected_codec = {"libx264": "h264", "libvpx-vp9": "vp9"}.get(codec, codec)
    assert (info.num_frames, info.width, info.height, info.codec) == (10, 64, 48, expected_codec)
    assert info.fps == pytest.approx(25) and info.duration == pytest.approx(0.4, abs=1e-3)


def test_gray_and_odd_size(tmp_path: Path) -> None:
    gray = np.random.default_rng(0).integers(0, 256, (4, 61, 97), dtype=np.uint8)
    got, _ = read_video_frames(write_video(tmp_path / "gray.mkv", gray, codec="ffv1",
                                           pix_fmt="gray"))
    assert got.shape == (4, 61, 97, 3)
    np.testing.assert_array_equal(got, np.repeat(gray[..., None], 3, axis=-1))

    odd = _noise(4, 61, 97)
    got, _ = read_video_frames(write_video(tmp_path / "odd.mkv", odd, codec="ffv1"))
    np.testing.assert_array_equal(got, odd)
    got, _ = read_video_frames(write_video(tmp_path / "odd.mp4", odd, codec="libx264",
                                           pix_fmt="yuv444p", options={"crf": "0"}))
    assert got.shape == odd.shape and np.abs(got.astype(int) - odd).max() <= 3
    with pytest.raises(ValueError, match="even width and height"):
        write_video(tmp_path / "odd420.mp4", odd, codec="libx264")


def test_apply_rotation_is_counter_clockwise() -> None:
    img = np.arange(6).reshape(2, 3, 1)  # [[0, 1, 2], [3, 4, 5]]
    # Counter-clockwise by 90: the right column becomes the top row.
    np.testing.assert_array_equal(apply_rotation(img, 90)[..., 0], [[2, 5], [1, 4], [0, 3]])
    np.testing.assert_array_equal(apply_rotation(img, 180)[..., 0], [[5, 4, 3], [2, 1, 0]])
    np.testing.assert_array_equal(apply_rotation(img, -90), apply_rotation(img, 270))
    assert apply_rotation(img, 360) is img


def test_apply_rotation_refuses_an_angle_between_right_angles() -> None:
    """45 degrees was rounded to 0 (the image came back as it was), 135 to 180."""
    img = np.zeros((2, 3, 1), dtype=np.uint8)
    for angle in (45, 135, -10):
        with pytest.raises(ValueError, match="multiple of 90"):
            apply_rotation(img, angle)
    assert apply_rotation(img, -90).shape == (3, 2, 1)  # a right angle either way


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path: Path, ext: str, rotation: int) -> None:
    frames = np.zeros((3, 32, 64, 3), np.uint8)
    frames[:, :8, :16] = 255  # a white top-left corner
    path = write_video(tmp_path / f"rot.{ext}", frames, codec="libx264", pix_fmt="yuv444p",
                       rotation=rotation, options={"crf": "0"})
    got, _ = read_video_frames(path)
    expected = np.stack([np.rot90(f, rotation // 90) for f in frames])
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).max() <= 3
    for info in (probe_video(path), probe_video(path, exact=False)):
        assert info.rotation == rotation
        assert (info.height, info.width) == got.shape[1:3]



def _as_displayed(image: np.ndarray, a: int, b: int, c: int, d: int) -> np.ndarray:
    """``image`` moved as a display matrix ``[a b 0; c d 0; 0 0 1]`` says (libavutil's
    display.h: a pixel ``(x, y)`` goes to ``(a x + c y, b x + d y)``, y pointing down)."""
    ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    x, y = a * xs + c * ys, b * xs + d * ys
    out = np.zeros((np.ptp(y) + 1, np.ptp(x) + 1, 3), np.uint8)
    out[y - y.min(), x - x.min()] = image[ys, xs]
    return out


@pytest.mark.parametrize("matrix", [(1, 0, 0, 1), (-1, 0, 0, 1), (1, 0, 0, -1), (-1, 0, 0, -1),
                                    (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, -1, 0), (0, -1, -1, 0),
                                    (0, 0, 0, 0)])
def test_a_display_matrix_that_mirrors_is_applied(tmp_path: Path, matrix) -> None:
    """A mirroring display matrix (a front camera's) was read as a turn: left-right mirrored
    frames came out upside down, top-bottom mirrored ones as stored. A degenerate (all-zero)
    matrix is shown as stored (it turned frames by 270: PyAV gives INT_MIN as its angle)."""
    unit, one = 1 << 16, 1 << 30
    a, b, c, d = matrix
    image = np.kron(np.random.default_rng(0).integers(0, 256, (2, 4, 3)),
                    np.ones((8, 8, 1))).astype(np.uint8)
    path = tmp_path / "mirrored.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "bgr0"
        stream.set_display_matrix([a * unit, b * unit, 0, c * unit, d * unit, 0, 0, 0, one])
        for pts in range(2):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    got, _ = read_video_frames(path)
    expected = image if matrix == (0, 0, 0, 0) else _as_displayed(image, a, b, c, d)
    np.testing.assert_array_equal(got[0], expected)
    info = probe_video(path, exact=False)
    assert (info.height, info.width) == got.shape[1:3]
    np.testing.assert_array_equal(apply_rotation(image, info.rotation, info.mirrored), got[0])

# --- errors -------------------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video_frames(path)
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        probe_video(path)


@pytest.mark.parametrize("content", [b"", b"this is a text file, not a video\n" * 20])
def test_not_a_video(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match="fake.mp4"):
        read_video_frames(path)
    with pytest.raises(VideoDecodeError, match="fake.mp4"):
        probe_video(path)


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoDecodeError, match="no video stream"):
        read_video_frames(path)



def test_cover_art_is_not_a_video(tmp_path: Path) -> None:
    """An .mp4 of audio and cover art (a podcast's, yt-dlp's thumbnail) was read as a 1-frame
    video of the cover at 90000 fps, and its features saved as a success."""
    path = tmp_path / "podcast.mp4"
    with av.open(str(path), "w") as c:
        audio = c.add_stream("aac", rate=8000)
        cover = c.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        picture = picture.reformat(format="yuvj420p")
        picture.pts = 0
        c.mux(cover.encode(picture))
        c.mux(cover.encode(None))
        for k in range(4):
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            sound.sample_rate, sound.pts = 8000, 1024 * k
            c.mux(audio.encode(sound))
        c.mux(audio.encode(None))
    for read in (read_video_frames, probe_video):
        with pytest.raises(VideoDecodeError, match="no video stream in the file "
                                                   r"\(only a still picture: cover art\)"):
            read(path)


def test_the_main_video_stream_is_read(tmp_path: Path) -> None:
    """Of two video streams, the one ffmpeg picks (here the larger, flagged default), not the
    first (a small preview track)."""
    path = tmp_path / "two_tracks.mkv"
    sizes = {"preview": (16, 16), "main": (48, 32)}
    with av.open(str(path), "w") as c:
        streams = {}
        for name, (w, h) in sizes.items():
            streams[name] = c.add_stream("ffv1", rate=5)
            streams[name].width, streams[name].height, streams[name].pix_fmt = w, h, "bgr0"
        streams["preview"].disposition = av.stream.Disposition(0)
        streams["main"].disposition = av.stream.Disposition.default
        for pts in range(3):
            for name, (w, h) in sizes.items():
                frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 200, np.uint8), "rgb24")
                frame.pts = pts
                c.mux(streams[name].encode(frame))
        for stream in streams.values():
            c.mux(stream.encode(None))
    frames, _ = read_video_frames(path)
    assert frames.shape == (3, 32, 48, 3)
    info = probe_video(path, exact=False)
    assert (info.width, info.height, info.num_frames) == (48, 32, 3)


def test_a_stream_without_a_decoder_is_picked_last(tmp_path: Path) -> None:
    """The larger or default stream was picked even where FFmpeg has no decoder for it, so a
    file whose other stream decodes was refused (review of the stream choice)."""
    path = tmp_path / "two.mkv"
    with av.open(str(path), "w") as c:
        streams = [c.add_stream("mpeg4", rate=25) for _ in range(2)]
        for stream in streams:
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        streams[0].disposition = av.stream.Disposition(0)
        streams[1].disposition = av.stream.Disposition.default
        for pts in range(3):
            for stream in streams:
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 100, np.uint8), "rgb24")
                frame.pts = pts
                c.mux(stream.encode(frame))
        for stream in streams:
            c.mux(stream.encode(None))
    data = bytearray(path.read_bytes())
    second = data.index(b"V_MPEG4/ISO/ASP", data.index(b"V_MPEG4/ISO/ASP") + 1)
    data[second:second + 15] = b"V_MPEG4/ISO/XSP"  # a codec id FFmpeg does not know
    path.write_bytes(bytes(data))
    assert read_video_frames(path)[0].shape == (3, 48, 64, 3)


def test_a_path_through_a_link_and_dotdot_is_the_files(tmp_path: Path, monkeypatch) -> None:
    """``L/../a.mkv`` with L a link into another folder is the file the OS opens there; made
    absolute lexically, it was ./a.mkv (review of the colon fix)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real" / "sub").mkdir(parents=True)
    Path("L").symlink_to("real/sub")
    write_video("a.mkv", np.zeros((2, 16, 16, 3), np.uint8), codec="ffv1")
    frames = _noise(3, 16, 16)
    write_video("L/../b.mkv", frames, codec="ffv1")
    assert (tmp_path / "real" / "b.mkv").is_file()
    write_video("real/a.mkv", frames, codec="ffv1")
    np.testing.assert_array_equal(read_video_frames("L/../a.mkv")[0], frames)

@pytest.mark.parametrize("name", ["cam1:front.mkv", "2024-01-05T10:30:00.mkv", "file:b.mkv"])
def test_a_colon_in_a_relative_path(tmp_path: Path, monkeypatch, name: str) -> None:
    """FFmpeg took "cam1" in `cam1:front.mkv` for a protocol (Protocol not found), and read
    `file:b.mkv` as the file b.mkv."""
    monkeypatch.chdir(tmp_path)
    write_video("b.mkv", np.zeros((2, 16, 16, 3), np.uint8), codec="ffv1")
    frames = _noise(3, 16, 16)
    write_video(name, frames, codec="ffv1")
    assert Path(name).is_file()  # its own name, not a protocol's path
    np.testing.assert_array_equal(read_video_frames(name)[0], frames)

def test_tags_that_are_not_utf8_do_not_stop_reading(tmp_path: Path) -> None:
    """Some HMDB51 clips carry a Latin-1 title; PyAV's strict decoding of it raised a
    UnicodeDecodeError from every open."""
    path = tmp_path / "latin1_title.avi"
    frames = np.stack([np.full((32, 32, 3), 40 * i, np.uint8) for i in range(3)])
    with av.open(str(path), "w") as c:
        c.metadata["title"] = "SPOOLMARKER"
        s = c.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuvj420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))
    data = path.read_bytes()
    assert data.count(b"SPOOLMARKER") == 1
    path.write_bytes(data.replace(b"SPOOLMARKER", b"SPOOL\xd3\xd3\xd3\xd3\xd3\xd3"))
    with pytest.raises(UnicodeDecodeError):
        av.open(str(path)).close()  # PyAV's default, which the reader must not use
    with VideoReader(path) as reader:
        assert len(reader) == 3
        got, _ = reader.get([0, 2])
    assert got.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(got.mean(axis=(1, 2, 3)), [0, 80], atol=3)


@pytest.mark.parametrize(("name", "codec", "copts", "prefix_readable"), [
    ("moov_at_end.mp4", "libx264", None, False),  # the index is in the lost half
    ("faststart.mp4", "libx264", {"movflags": "+faststart"}, True),
    ("cut.mkv", "libx264", None, True),
    ("cut.webm", "libvpx-vp9", None, True),
    ("cut.avi", "mjpeg", None, True),
])
def test_truncated_file(tmp_path: Path, name: str, codec: str, copts: dict | None,
                        prefix_readable: bool) -> None:
    """A half file decodes to the full file's first frames where its index survived, and is
    reported by name where it did not."""
    src = write_video(tmp_path / f"src_{name}", _smooth(60, 32, 48), codec=codec, gop_size=8,
                      container_options=copts)
    data = src.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    if not prefix_readable:
        with pytest.raises(VideoDecodeError, match=name):
            read_video_frames(path)
        return
    prefix, ts = read_video_frames(path)
    n = len(prefix)
    assert 10 < n < 60
    full, _ = read_video_frames(src, range(n))
    np.testing.assert_array_equal(prefix, full)
    with pytest.raises(VideoDecodeError, match="frame index 59"):
        read_video_frames(path, [0, 59])


def test_index_errors(h264_short_gop: tuple[Path, np.ndarray]) -> None:
    path, _ = h264_short_gop
    with pytest.raises(VideoDecodeError, match="frame index 200"):
        read_video_frames(path, [3, 200])
    with pytest.raises(ValueError, match="indices"):
        read_video_frames(path, [-1])
    with pytest.raises(ValueError, match="strategy"):
        read_video_frames(path, [1], strategy="fast")  # type: ignore[arg-type]
    frames, ts = read_video_frames(path, [])
    assert frames.shape == (0, 48, 64, 3) and ts.shape == (0,)


def test_probe(h264_short_gop: tuple[Path, np.ndarray]) -> None:
    path, _ = h264_short_gop
    info = probe_video(path)
    assert info.num_frames == 200 and info.num_frames_exact
    assert (info.width, info.height, info.rotation, info.codec) == (64, 48, 0, "h264")
    assert info.fps == pytest.approx(25) and info.duration == pytest.approx(8.0, abs=1e-3)
    assert info.start_time == pytest.approx(0.0)
    quick = probe_video(path, exact=False)  # headers and one frame only
    assert not quick.num_frames_exact
    assert (quick.width, quick.height, quick.codec) == (64, 48, "h264")
    assert quick.num_frames == pytest.approx(200, abs=2)
    assert quick.fps == pytest.approx(25) and quick.duration == pytest.approx(8.0, abs=0.1)


def test_dense_indices_decode_without_seeking(h264_short_gop: tuple[Path, np.ndarray]) -> None:
    path, _ = h264_short_gop
    full, _ = read_video_frames(path, strategy="sequential")
    with VideoReader(path) as reader:
        got, _ = reader.get(range(0, 200, 2))
        assert reader.num_seeks == 0
        np.testing.assert_array_equal(got, full[::2])
        got, _ = reader.get([199, 3])  # 3 is behind the decoder: it must go back
        np.testing.assert_array_equal(got, full[[199, 3]])


def test_write_video_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="codec"):
        write_video(tmp_path / "a.mp4", _noise(2, 8, 8), codec="h265")
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mkv", _noise(2, 8, 8).astype(np.float32), codec="ffv1")
    with pytest.raises(ValueError, match="timestamps"):
        write_video(tmp_path / "a.mkv", _noise(2, 8, 8), codec="ffv1", timestamps=[0.0, 0.0])
    with pytest.raises(ValueError, match="at least one frame"):
        write_video(tmp_path / "a.mkv", [], codec="ffv1")


def test_non_square_pixels_are_said(tmp_path: Path, spool_log, monkeypatch) -> None:
    """An anamorphic video (a 16:9 DVD: 720x576, pixel aspect 64:45) is read as stored, as
    torchvision and decord read it; a player shows it 1024x576. That was not said anywhere."""
    from fractions import Fraction

    from spool import runtime

    monkeypatch.setattr(runtime, "_said", set())
    path = tmp_path / "pal.mp4"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 180, 144, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(64, 45)
        for pts, frame in enumerate(_noise(2, 144, 180)):
            frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            frame.pts = pts
            c.mux(stream.encode(frame))
        c.mux(stream.encode(None))
    assert read_video_frames(path)[0].shape == (2, 144, 180, 3)
    assert (f"{path}: pixels are not square (aspect 64/45): frames are read as stored, 180x144, "
            "not as players show them, 256x144") in spool_log.text


# --- the frame index: seek points, repeated pts, a rewritten file -------------------------------

def test_leading_pictures_of_an_open_gop_seek_from_the_keyframe_before(tmp_path: Path) -> None:
    """Open GOPs: the B-frames after an I-frame in the file are shown before it, so they must
    be decoded from the keyframe before, whose pts is not after theirs. Seeking from the I-frame
    would miss them and fall back to decoding the file from its start."""
    frames = _smooth(60, 48, 64)
    path = write_video(tmp_path / "open.mkv", frames, fps=25, codec="libx264", gop_size=20,
                       max_b_frames=3, options={"x264-params": "open-gop=1:b-adapt=0"})
    with VideoReader(path) as reader:
        index = reader.index
        assert index.exact and (index.seek_pts <= index.pts).all()
        full, _ = reader.get(strategy="sequential")
        for t in reversed(range(len(reader))):  # every frame behind the last: a seek each
            np.testing.assert_array_equal(reader.get([t], strategy="seek")[0][0], full[t])
        assert reader.num_seeks > 0 and reader.num_fallbacks == 0


def test_repeated_pts_are_read_by_count(tmp_path: Path) -> None:
    """Two frames with the same pts, past the first packets whose display order is checked
    (H.264 with B-frames): pts cannot number the frames, so they are counted in the decoder's
    order, every one of them read (by pts one was lost)."""
    src = write_video(tmp_path / "src.mp4", _smooth(40, 48, 64), fps=25, codec="libx264",
                      gop_size=8, max_b_frames=2)
    path = tmp_path / "dup.mkv"
    with av.open(str(src)) as inp, av.open(str(path), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        packets = [p for p in inp.demux(stream) if p.size]
        pts = sorted(p.pts for p in packets)
        for packet in packets:
            if packet.pts == pts[30]:
                packet.pts = pts[29]  # frames 29 and 30 share a pts
            packet.stream = copy
            out.mux(packet)
    with av.open(str(path)) as container:
        shown = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(shown) == 40
    got, _ = read_video_frames(path)
    np.testing.assert_array_equal(got, shown)
    np.testing.assert_array_equal(read_video_frames(path, [30, 29, 39])[0], shown[[30, 29, 39]])
    assert not probe_video(path).num_frames_exact


def test_a_file_rewritten_at_the_same_size_is_indexed_again(tmp_path: Path) -> None:
    """The cached index is of a file version: a file replaced by another of the same byte
    size (a re-export) is demuxed again, not read with the old file's frame count."""
    import os
    import shutil

    a = write_video(tmp_path / "a.mkv", _noise(6, 16, 16, seed=1), fps=25, codec="ffv1")
    b = write_video(tmp_path / "b.mkv", _noise(9, 16, 16, seed=2), fps=25, codec="ffv1")
    with open(a, "ab") as f:  # trailing bytes the demuxer ignores: the same size as b
        f.write(b"\0" * (b.stat().st_size - a.stat().st_size))
    assert a.stat().st_size == b.stat().st_size
    path = tmp_path / "v.mkv"
    shutil.copyfile(a, path)
    assert len(read_video_frames(path)[0]) == 6
    mtime = path.stat().st_mtime_ns
    shutil.copyfile(b, path)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    got, _ = read_video_frames(path)
    np.testing.assert_array_equal(got, read_video_frames(b)[0])
