"""Frame samplers: indices on edge cases, settings round trip, errors naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from spool.video.samplers import (
    ClipSampler,
    FpsSampler,
    SlidingWindowSampler,
    StrideSampler,
    UniformSampler,
    make_sampler,
)


def test_uniform_centres_of_segments() -> None:
    assert UniformSampler(4)(16) == [[2, 6, 10, 14]]
    assert UniformSampler(8)(16) == [[1, 3, 5, 7, 9, 11, 13, 15]]
    assert UniformSampler(3)(10) == [[1, 5, 8]]
    assert UniformSampler(16)(3000)[0][-1] < 3000


def test_uniform_short_videos_repeat_frames() -> None:
    assert UniformSampler(8)(3) == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert UniformSampler(5)(1) == [[0, 0, 0, 0, 0]]
    clip = UniformSampler(7)(5)[0]
    assert len(clip) == 7 and clip == sorted(clip) and set(clip) == set(range(5))


def test_fps_sampler() -> None:
    assert FpsSampler(10)(30, fps=30) == [list(range(0, 30, 3))]
    assert FpsSampler(10)(31, fps=30) == [list(range(0, 31, 3))]
    assert FpsSampler(10)(11, fps=25) == [[0, 2, 5, 7, 10]]
    assert FpsSampler(10, max_frames=4)(300, fps=30) == [[0, 3, 6, 9]]
    # 29.97 -> 10 fps over a minute: no float drift, evenly ~3 frames apart.
    clip = FpsSampler(10)(1798, fps=30000 / 1001)[0]
    assert len(clip) == 600 and clip[-1] <= 1797
    assert {b - a for a, b in zip(clip, clip[1:], strict=False)} <= {2, 3}
    # Upsampling repeats frames; a 1-frame video gives that frame.
    assert FpsSampler(20)(3, fps=10) == [[0, 0, 1, 1, 2, 2]]
    assert FpsSampler(10)(1, fps=30) == [[0]]


def test_fps_sampler_needs_fps() -> None:
    with pytest.raises(ValueError, match="fps"):
        FpsSampler(10)(30)
    with pytest.raises(ValueError, match="fps"):
        FpsSampler(10)(30, fps=0)


def test_stride_sampler() -> None:
    assert StrideSampler(3)(10) == [[0, 3, 6, 9]]
    assert StrideSampler(4)(10) == [[0, 4, 8]]  # 10 not a multiple of 4
    assert StrideSampler(5)(1) == [[0]]
    assert StrideSampler(2, max_frames=3)(100) == [[0, 2, 4]]


def test_sliding_window_covers_everything() -> None:
    assert SlidingWindowSampler(4, 4)(8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # 10 frames, clips of 4 every 4: the last clip is aligned to end on the last frame.
    assert SlidingWindowSampler(4, 4)(10) == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert SlidingWindowSampler(4, 4, tail="pad")(10) == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
    assert SlidingWindowSampler(4, 2)(7) == [[0, 1, 2, 3], [2, 3, 4, 5], [3, 4, 5, 6]]
    for n in range(1, 40):
        for clip_len, stride in [(4, 1), (4, 3), (5, 5), (8, 3)]:
            for tail in ("align", "pad"):
                clips = SlidingWindowSampler(clip_len, stride, tail)(n)
                assert all(len(c) == clip_len for c in clips)
                assert set().union(*clips) == set(range(n)), (n, clip_len, stride, tail)


def test_sliding_window_short_video_is_one_padded_clip() -> None:
    assert SlidingWindowSampler(5, 2)(3) == [[0, 1, 2, 2, 2]]
    assert SlidingWindowSampler(4, 1)(1) == [[0, 0, 0, 0]]
    assert SlidingWindowSampler(4, 2)(4) == [[0, 1, 2, 3]]


def test_one_frame_video() -> None:
    for sampler in (UniformSampler(4), StrideSampler(2), SlidingWindowSampler(3, 1)):
        clips = sampler(1, fps=25)
        assert all(i == 0 for c in clips for i in c) and len(clips) == 1


@pytest.mark.parametrize("sampler", [
    UniformSampler(8), FpsSampler(12.5, max_frames=16), StrideSampler(2),
    SlidingWindowSampler(16, 8, tail="pad"),
])
def test_to_dict_round_trip(sampler) -> None:
    d = sampler.to_dict()
    assert isinstance(d["name"], str)
    rebuilt = make_sampler(**d)
    assert rebuilt == sampler and type(rebuilt) is type(sampler)
    assert rebuilt(50, fps=25) == sampler(50, fps=25)


def test_make_sampler_by_name() -> None:
    assert make_sampler("uniform", num_frames=2)(10) == [[2, 7]]
    assert make_sampler("sliding", clip_len=3, stride=3)(6) == [[0, 1, 2], [3, 4, 5]]
    assert make_sampler("stride", stride=5)(10) == [[0, 5]]
    assert make_sampler("fps", target_fps=5)(10, fps=10) == [[0, 2, 4, 6, 8]]


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("bogus", {}, "name"),
    ("uniform", {"num_frames": 0}, "num_frames"),
    ("uniform", {"num_frames": -3}, "num_frames"),
    ("uniform", {"num_frames": 2.5}, "num_frames"),
    ("stride", {"stride": 0}, "stride"),
    ("sliding", {"clip_len": 4, "stride": 0}, "stride"),
    ("sliding", {"clip_len": 0, "stride": 1}, "clip_len"),
    ("sliding", {"clip_len": 4, "stride": 2, "tail": "wrap"}, "tail"),
    ("fps", {"target_fps": 0}, "target_fps"),
    ("fps", {"target_fps": 10, "max_frames": 0}, "max_frames"),
    ("uniform", {"frames": 3}, "frames"),
])
def test_invalid_parameters(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_sampler(name, **kwargs)


@pytest.mark.parametrize("num_frames", [0, -1, None, 2.0])
def test_invalid_num_frames(num_frames) -> None:
    for sampler in (UniformSampler(2), StrideSampler(2), SlidingWindowSampler(2, 1)):
        with pytest.raises(ValueError, match="num_frames"):
            sampler(num_frames)


def test_random_clip_starts_are_uniform() -> None:
    """Every start alike: rounding a uniform position drew the first and last half as often."""
    rng = np.random.default_rng(0)
    starts = [ClipSampler(8, 2)(19, rng=rng)[0][0] for _ in range(20000)]  # 5 possible starts
    share = np.bincount(starts, minlength=5) / len(starts)
    assert share.shape == (5,) and np.abs(share - 0.2).max() < 0.015, share
    assert ClipSampler(8, 2)(10, rng=rng) == [[0, 2, 4, 6, 8, 9, 9, 9]]  # too short: no choice


def test_uniform_random_draws_one_frame_of_each_segment() -> None:
    """TSN's sampling: position i draws from exactly the frames of segment i (8 frames in 4
    segments: {0, 1}, {2, 3}, {4, 5}, {6, 7}), the last frame of the video included."""
    rng = np.random.default_rng(0)
    draws = [UniformSampler(4)(8, rng=rng)[0] for _ in range(400)]
    for i in range(4):
        assert {d[i] for d in draws} == {2 * i, 2 * i + 1}


def test_several_clips_start_at_the_first_frame_and_end_on_the_last() -> None:
    """num_clips clips spread evenly over the free range, the first from frame 0 and the last
    ending on the last frame (21 frames, clips of 4 frames 2 apart: starts 0, 7, 14)."""
    assert ClipSampler(4, 2, num_clips=3)(21) == [
        [0, 2, 4, 6], [7, 9, 11, 13], [14, 16, 18, 20]]
    assert ClipSampler(3, 1)(11) == [[4, 5, 6]]  # one clip: the middle


def test_sliding_pad_tail_starts_at_the_next_stride() -> None:
    """tail="pad" with stride < clip_len: the extra clip starts one stride after the last
    whole window (9), not right after its end (10)."""
    assert SlidingWindowSampler(4, 3, tail="pad")(12) == [
        [0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [9, 10, 11, 11]]
    assert SlidingWindowSampler(4, 3, tail="align")(12)[-1] == [8, 9, 10, 11]


def test_fps_max_frames_is_a_cap_also_just_below_one_more_frame() -> None:
    """max_frames=5 of a 6-frame video at its own rate: 5 frames, by index and by time."""
    assert FpsSampler(10, max_frames=5)(6, fps=10) == [[0, 1, 2, 3, 4]]
    vfr = [0.0, 0.1, 0.25, 0.3, 0.4, 0.5]  # not evenly spaced: picked by time
    assert len(FpsSampler(10, max_frames=5)(6, fps=10, timestamps=vfr)[0]) == 5
