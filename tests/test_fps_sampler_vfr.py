"""FpsSampler on a variable-frame-rate video: frames picked by the time they are shown."""

import numpy as np
import pytest

from spool.video.samplers import FpsSampler


def test_fps_sampler_follows_timestamps_of_a_vfr_video():
    """Defect: from the average rate alone, a VFR video shown at 0, .1, .15, .5, .51, 1.2 s
    sampled at 2 fps gave the frames shown at 0, .15, .51 s instead of those at 0, .5, 1 s."""
    ts = np.array([0, 0.1, 0.15, 0.5, 0.51, 1.2]) + 3.0  # a start time, too
    fps = 5 / 1.2
    assert FpsSampler(2)(6, fps) == [[0, 2, 4]]  # the constant-rate assumption
    assert FpsSampler(2)(6, fps, timestamps=ts) == [[0, 3, 4]]


@pytest.mark.parametrize("fps,target,n", [(30, 10, 31), (25, 8, 50), (24000 / 1001, 6, 97),
                                          (10, 25, 7), (8, 8, 1)])
def test_fps_sampler_constant_rate_timestamps_agree_with_index_rule(fps, target, n):
    ts = np.arange(n) / fps + 1.5
    assert FpsSampler(target)(n, fps, timestamps=ts) == FpsSampler(target)(n, fps)


def test_fps_sampler_rejects_bad_timestamps():
    with pytest.raises(ValueError, match="timestamps"):
        FpsSampler(2)(3, 10, timestamps=[0, 0.2, 0.1])
    with pytest.raises(ValueError, match="timestamps"):
        FpsSampler(2)(3, 10, timestamps=[0, 0.1])


def test_rounded_constant_rate_timestamps_keep_the_index_rule():
    """Matroska rounds pts to milliseconds: 24000/1001 fps frame 3 (125.125 ms) is stamped
    125 ms, exactly 8 fps frame 1's time. Picking by those times would take frame 3 where the
    frame shown at 125 ms is frame 2; a constant rate (up to rounding) keeps the index rule."""
    fps, n = 24000 / 1001, 97
    ts = np.round(np.arange(n) / fps, 3)
    assert FpsSampler(8)(n, fps, timestamps=ts) == FpsSampler(8)(n, fps)
    assert FpsSampler(8)(n, fps)[0][:2] == [0, 2]


def test_use_timestamps_off_and_settings_round_trip():
    from spool.video.samplers import make_sampler

    ts = np.array([0, 0.1, 0.15, 0.5, 0.51, 1.2])
    by_rate = FpsSampler(2, use_timestamps=False)
    assert by_rate(6, 5 / 1.2, timestamps=ts) == [[0, 2, 4]]
    assert make_sampler(**by_rate.to_dict()) == by_rate != FpsSampler(2)
    with pytest.raises(ValueError, match="use_timestamps"):
        FpsSampler(2, use_timestamps="yes")


def test_extract_and_forward_long_pick_frames_of_a_vfr_video_by_time(tmp_path):
    """End to end: the reader's frame times reach the sampler (``spool extract`` and
    ``Spool.forward_long``), so a VFR file at 2 fps gives the frames shown at 0, .5, 1 s."""
    import json

    import torch
    from conftest import tiny_backbone, tiny_config, tiny_model_args
    from safetensors.torch import load_file

    from spool import Spool
    from spool.cli import main
    from spool.video import VideoReader, write_video

    times = [0.0, 0.1, 0.15, 0.5, 0.51, 1.2]
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "vfr.mkv", frames, fps=5, codec="ffv1", timestamps=times)
    with VideoReader(path) as reader:
        np.testing.assert_allclose(reader.frame_times(), times, atol=1e-6)
    config = tmp_path / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))
    assert main(["extract", str(path), "--out", str(tmp_path / "out"),
                 *tiny_model_args(config), "--no-progress", "--sampler", "fps", "--fps", "2"]) == 0
    out = load_file(tmp_path / "out" / "vfr.safetensors")
    assert out["frame_indices"].tolist() == [[0, 3, 4]]
    with torch.no_grad():
        long = Spool(tiny_config()).eval().forward_long(path, sampler=FpsSampler(2))
    assert long.frame_indices.tolist() == [0, 3, 4]


def test_settings_saved_before_use_timestamps_compare_equal():
    from spool.train.builders import check_sampling
    from spool.video.samplers import sampler_settings

    old = {"name": "fps", "target_fps": 2.0, "max_frames": None}  # a checkpoint of before
    assert sampler_settings(old) == FpsSampler(2).to_dict()
    check_sampling(old, FpsSampler(2).to_dict(), "val_cache", "c/")
    with pytest.raises(ValueError, match="sampled as"):
        check_sampling(old, FpsSampler(3).to_dict(), "val_cache", "c/")


def test_a_pause_does_not_sample_past_the_last_frame():
    """Defect: the last frame lasted the mean interval, which a pause inflates: frames shown
    at 0, .1, 2.0, 2.1 s (a 2.2 s video) gave 28 frames at 10 fps, 6 of them past its end."""
    ts = [0.0, 0.1, 2.0, 2.1]
    (indices,) = FpsSampler(10)(4, 4 / 2.2, timestamps=ts)
    assert indices == [0] + [1] * 19 + [2, 3]


def test_settings_carry_the_sampling_revision():
    """Outputs keyed by the sampler's settings are redone after the rule changed; settings
    saved before the revision still rebuild today's sampler."""
    from spool.video.samplers import make_sampler, sampler_settings

    assert FpsSampler(2).to_dict()["revision"] == FpsSampler.REVISION
    before = {"name": "fps", "target_fps": 2.0, "max_frames": None, "use_timestamps": True}
    assert sampler_settings(before) == FpsSampler(2).to_dict() != before
    for earlier in (1, 2):  # a model trained then samples as today
        assert sampler_settings({**before, "revision": earlier}) == FpsSampler(2).to_dict()
    with pytest.raises(ValueError, match="revision"):  # a later Spool's
        make_sampler(**{**before, "revision": FpsSampler.REVISION + 1})


@pytest.mark.parametrize("target, expected", [
    (15, list(range(400))),  # was 401 frames, frame 1 twice
    (5, list(range(0, 400, 3))),  # was 1, 4, 7, ... after 0: a frame early
    (30, [i // 2 for i in range(800)]),  # was 801 frames
])
def test_a_millisecond_clock_does_not_shift_or_repeat_frames(tmp_path, target, expected):
    """A 15 fps MP4 of millisecond timestamps reads as 14.99998 fps: a whole ratio of rates
    came out a hair short, and the index rule picked the frame before, or one too many."""
    from spool.video import VideoReader, write_video

    frames = np.random.default_rng(0).integers(0, 256, (400, 16, 16, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, fps=15,
                       timestamps=[i / 15 for i in range(400)])
    with VideoReader(path) as reader:
        info, times = reader.info(), reader.frame_times()
    assert info.fps != 15  # the case: the rate as read is not exact
    assert FpsSampler(target)(info.num_frames, info.fps, timestamps=times) == [expected]



@pytest.mark.parametrize("n", [20, 59, 61, 3000])
def test_an_ntsc_rate_is_never_taken_for_a_whole_one(n):
    """29.97 fps is 30000/1001 exactly: clips under 2 s were snapped to 30 fps, so where the
    picks fell depended on the clip's length (59 frames: 0, 3, 6, ...; 61: 0, 2, 5, ...)."""
    (picks,) = FpsSampler(10)(n, 30000 / 1001)
    assert picks[:4] == [0, 2, 5, 8][:len(picks[:4])]


def test_sampling_above_a_videos_rate_says_frames_repeat(monkeypatch, spool_log):
    """--fps 15 on a 10 fps video repeated a third of the frames (1.5x the compute, duplicate
    rows in a per-frame output) without a word. Said once per process, with the count."""
    import logging

    from spool import runtime

    monkeypatch.setattr(runtime, "_said", set())
    spool_log.set_level(logging.WARNING, logger="spool")
    FpsSampler(5.0)(100, fps=10.0)  # below the rate: nothing repeats
    FpsSampler(15.0)(100, fps=14.99998)  # the same rate, rounded: one frame at most
    pause = [i / 30 for i in range(30)] + [20 + i / 30 for i in range(30)]  # 19 s still
    assert len(set(FpsSampler(2.0)(60, fps=30.0, timestamps=pause)[0])) < 10  # right repeats
    assert spool_log.records == []
    picks = FpsSampler(15.0)(100, fps=10.0)[0]
    assert len(picks) == 150 and len(set(picks)) == 100
    FpsSampler(15.0)(100, fps=10.0, timestamps=[0.1 * i for i in range(100)])
    (said,) = [r.getMessage() for r in spool_log.records]
    assert said.startswith("sampling at 15 fps repeats frames of a video with fewer frames "
                           "per second: 50 of 150 samples repeat the frame before (said once)")


@pytest.mark.parametrize("timestamps", [None, [i / 30 for i in range(60)],
                                        [0.1 * i ** 1.5 for i in range(60)]])
def test_an_absurd_fps_is_refused_not_sampled_forever(timestamps):
    """`spool extract --fps 1e308` built a list of 1e308 frame indices: hours of CPU and GBs
    of memory, never ending. A rate above 1000 fps taking each frame more than 100 times is
    refused; max_frames caps the work first; slow videos at a usual rate are sampled."""
    for fps in (1e308, 3100.0):
        with pytest.raises(ValueError, match=r"^fps: .* fps would take each frame of this "
                                             r"video more than 100 times"):
            FpsSampler(fps)(60, fps=30.0, timestamps=timestamps)
    assert len(FpsSampler(1e308, max_frames=16)(60, fps=30.0, timestamps=timestamps)[0]) == 16
    assert len(FpsSampler(2900.0)(60, fps=30.0)[0]) == 5800


def test_a_slideshow_or_a_sparse_video_is_sampled_at_a_usual_rate():
    """The first refusal counted repeats alone: a 0.25 fps slideshow at 30 fps, or a camera's
    30 frames over an hour at 1 fps, stopped a whole cache or training run."""
    assert len(FpsSampler(30.0)(8, fps=0.25)[0]) == 960
    bursts = [t + 0.1 * i for t in (0, 1800, 3590) for i in range(10)]
    assert len(FpsSampler(1.0)(30, fps=30 / 3591, timestamps=bursts)[0]) == 3591
