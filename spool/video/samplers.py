"""Frame samplers: which frame indices to read from a video of ``num_frames`` frames.

Each sampler is a small callable object, ``sampler(num_frames, fps=None, rng=None,
timestamps=None) -> list[list[int]]``: a list of clips, each a list of frame indices in
presentation order (the input of ``read_video_frames``). The same samplers serve training,
evaluation, token caches and extraction. Given an ``rng``, the clip samplers draw one randomly
placed clip (temporal jitter for training); without one they are deterministic. ``to_dict()``
gives a sampler's settings, and ``make_sampler(**d)`` rebuilds it.
"""

from __future__ import annotations

import logging
import math
import operator
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np

from spool.runtime import warn_once

logger = logging.getLogger(__name__)

__all__ = [
    "SAMPLERS", "ClipSampler", "FpsSampler", "FrameSampler", "SlidingWindowSampler",
    "StrideSampler", "UniformSampler", "clip_sampler", "make_sampler",
    "sampler_settings",
]


def _positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}") from None
    if v <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {v}")
    return v


def _positive_float(name: str, value: Any) -> float:
    try:
        if isinstance(value, (bool, str)):
            raise TypeError  # True is 1.0 and "30" a number to float(): neither is a rate
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return v


class FrameSampler(ABC):
    """Base class: validates ``num_frames`` and returns clips of frame indices."""

    name: ClassVar[str]
    needs_fps: ClassVar[bool] = False

    def __call__(self, num_frames: int, fps: float | None = None,
                 rng: np.random.Generator | None = None,
                 timestamps: Any = None) -> list[list[int]]:
        """Clips (lists of frame indices) for a video of ``num_frames`` frames at ``fps``;
        with ``rng``, one randomly placed clip where the sampler supports it. ``timestamps``
        (the reader's ``frame_times()``) matter to samplers that pick by time (``fps``)."""
        n = _positive_int("num_frames", num_frames)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: expected None or a numpy.random.Generator, got {rng!r}")
        return self._sample(n, fps, rng)

    @abstractmethod
    def _sample(self, num_frames: int, fps: float | None,
                rng: np.random.Generator | None) -> list[list[int]]: ...

    @abstractmethod
    def _settings(self) -> dict[str, Any]: ...

    def to_dict(self) -> dict[str, Any]:
        """Settings, with the factory ``name``: ``make_sampler(**s.to_dict())`` rebuilds ``s``."""
        return {"name": self.name, **self._settings()}

    def step_seconds(self, fps: float) -> float:
        """Seconds from one sampled frame to the next in a video at ``fps``, for where the
        frames cannot show it (one frame): here one frame of the video."""
        return 1.0 / _positive_float("fps", fps)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrameSampler) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))


def _note_repeats(indices: list[int], target_fps: float) -> None:
    """Say once per process that a video sampled above its own rate repeats frames: each
    repeat costs a frame's compute (and a row of a per-frame output) and adds nothing."""
    repeats = len(indices) - len(set(indices))
    if repeats > max(1, 0.05 * len(indices)):
        warn_once(logger, f"sampling at {target_fps:g} fps repeats frames of a video with fewer "
                  f"frames per second: {repeats} of {len(indices)} samples repeat the frame "
                  "before (said once); an fps at or below the videos' own rates avoids the "
                  "extra compute", key="sampling repeats frames")


MAX_FPS, MAX_REPEATS = 1000.0, 100  # FpsSampler: above both, a typo (see FpsSampler._count)


class SamplingError(ValueError):
    """A sampler that cannot take this video's frames (for its frame rate): a batch job fails
    the video, not the job, as other videos may take the same settings."""


def _cap(indices: list[int], max_frames: int | None) -> list[int]:
    return indices if max_frames is None else indices[:max_frames]


class UniformSampler(FrameSampler):
    """Clips of exactly ``num_frames`` frames, one per equal segment of the video.

    Clip ``k`` of ``num_clips`` takes the frame at ``(k + 0.5) / num_clips`` of each segment
    (one clip: the centres). With an ``rng``: one clip, a random frame of each segment (TSN's
    sampling). A video with fewer frames repeats frames (in order), so the length never changes.
    """

    name = "uniform"

    def __init__(self, num_frames: int, num_clips: int = 1) -> None:
        self.num_frames = _positive_int("num_frames", num_frames)
        self.num_clips = _positive_int("num_clips", num_clips)

    def _sample(self, num_frames: int, fps: float | None,
                rng: np.random.Generator | None) -> list[list[int]]:
        n, K = self.num_frames, self.num_clips
        if rng is not None:
            offsets = rng.random(n)
            return [[min(int(math.floor((i + float(o)) * num_frames / n)), num_frames - 1)
                     for i, o in enumerate(offsets)]]
        # Integer arithmetic: floor((2Ki + 2k + 1) * T / 2KN), exactly (k = 0, K = 1: centres).
        return [[((2 * i + 1) * K + 2 * k - K + 1) * num_frames // (2 * K * n) for i in range(n)]
                for k in range(K)]

    def _settings(self) -> dict[str, Any]:
        # num_clips only when it matters: one-clip settings read as they always have.
        extra = {"num_clips": self.num_clips} if self.num_clips != 1 else {}
        return {"num_frames": self.num_frames, **extra}


class ClipSampler(FrameSampler):
    """Clips of ``num_frames`` frames ``frame_stride`` apart (a dilated clip).

    ``num_clips`` clips start evenly over the free range (one clip: in the middle); with an
    ``rng``, one clip at a random start. Short videos repeat their last frame.
    """

    name = "clip"

    def __init__(self, num_frames: int, frame_stride: int = 1, num_clips: int = 1) -> None:
        self.num_frames = _positive_int("num_frames", num_frames)
        self.frame_stride = _positive_int("frame_stride", frame_stride)
        self.num_clips = _positive_int("num_clips", num_clips)

    def _free(self, num_frames: int) -> int:
        """How many frames later than 0 a clip can start."""
        return max(num_frames - (self.num_frames - 1) * self.frame_stride - 1, 0)

    def _clip_from(self, num_frames: int, start: int) -> list[int]:
        return [min(start + i * self.frame_stride, num_frames - 1)
                for i in range(self.num_frames)]

    def clip_at(self, num_frames: int, position: float) -> list[int]:
        """The clip starting at ``position`` in [0, 1] of the free range."""
        return self._clip_from(num_frames, int(round(position * self._free(num_frames))))

    def _sample(self, num_frames: int, fps: float | None,
                rng: np.random.Generator | None) -> list[list[int]]:
        if rng is not None:  # every start alike (rounding a uniform position halved the ends)
            start = int(rng.integers(0, self._free(num_frames) + 1))
            return [self._clip_from(num_frames, start)]
        K = self.num_clips
        starts = [0.5] if K == 1 else [k / (K - 1) for k in range(K)]
        return [self.clip_at(num_frames, s) for s in starts]

    def _settings(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "frame_stride": self.frame_stride,
                "num_clips": self.num_clips}


class FpsSampler(FrameSampler):
    """One clip: frames at ``target_fps`` from the start (needs the video's ``fps``).

    Frame ``k`` of the clip is the source frame shown at time ``k / target_fps`` after the
    first. For a constant-rate video that is frame ``floor(k * fps / target_fps)``; for a
    variable-rate one (given the frames' ``timestamps``, with ``use_timestamps``) it is found
    by time. A target above the source rate repeats frames. ``max_frames`` keeps only the
    first frames.

    ``revision`` is in the settings so that outputs sampled by an earlier rule are redone:
    revision 2 lets a variable-rate video's last frame last its median frame interval
    (revision 1 took the mean, which a long pause inflates: frames past the end); revision 3
    takes a rate within its timestamps' rounding of a whole multiple (or fraction) of the
    target as exactly that (a 15 fps MP4 of millisecond timestamps reads as 14.99998 fps: 401
    frames of 400 at 15 fps, one repeated; 30 -> 10 fps took frames 2, 5, ...). Settings saved
    by an earlier revision, or without one, read as today's, so a model's sampling still
    compares equal; a later revision's are refused.
    """

    name = "fps"
    needs_fps = True
    REVISION: ClassVar[int] = 3

    def __init__(self, target_fps: float, max_frames: int | None = None,
                 use_timestamps: bool = True, revision: int = REVISION) -> None:
        self.target_fps = _positive_float("target_fps", target_fps)
        self.max_frames = _positive_int("max_frames", max_frames, allow_none=True)
        if not isinstance(use_timestamps, bool):
            raise ValueError(f"use_timestamps: expected True or False, got {use_timestamps!r}")
        if not isinstance(revision, int) or isinstance(revision, bool) \
                or not 1 <= revision <= self.REVISION:
            raise ValueError(f"revision: this Spool samples by fps revision {self.REVISION} "
                             f"(and reads earlier ones as it), got {revision!r}")
        self.use_timestamps = use_timestamps

    def __call__(self, num_frames: int, fps: float | None = None,
                 rng: np.random.Generator | None = None,
                 timestamps: Any = None) -> list[list[int]]:
        """As for every sampler; ``timestamps`` (seconds, one per frame, increasing: the
        reader's) pick by time instead of by index where they show a variable frame rate:
        there frame ``k * fps / target_fps`` is not the one shown at ``k / target_fps``."""
        clips = self._pick(num_frames, fps, rng, timestamps)
        if fps is not None and self.target_fps > fps:  # (a pause in a VFR video repeats too)
            _note_repeats(clips[0], self.target_fps)
        return clips

    def _pick(self, num_frames: int, fps: float | None, rng: np.random.Generator | None,
              timestamps: Any) -> list[list[int]]:
        if timestamps is None or not self.use_timestamps:
            return super().__call__(num_frames, fps, rng)
        n = _positive_int("num_frames", num_frames)
        ts = np.asarray(timestamps, np.float64)
        if ts.shape != (n,) or not np.isfinite(ts).all() or (np.diff(ts) <= 0).any():
            raise ValueError(f"timestamps: expected {n} increasing finite values, got shape "
                             f"{ts.shape}")
        if fps is not None and _constant_rate(ts):
            # The index rule: timestamps rounded to the container's time base (milliseconds in
            # Matroska) would otherwise move a pick that falls within a rounding of a frame.
            return super().__call__(num_frames, fps, rng)
        if n > 1:  # the last frame lasts a typical frame; a pause would inflate the mean
            duration = ts[-1] - ts[0] + float(np.median(np.diff(ts)))
        else:
            duration = n / _positive_float("fps", fps) if fps is not None else 0.0
        count = self._count(float(duration) * self.target_fps - 1e-9, n)
        tol = 1e-6 * (duration / n if duration else 0.0)  # as the index rule's epsilon
        times = ts[0] + np.arange(count) / self.target_fps + tol
        indices = (np.searchsorted(ts, times, side="right") - 1).clip(0, n - 1).tolist()
        return [indices]  # count is at most max_frames

    def _sample(self, num_frames: int, fps: float | None,
                rng: np.random.Generator | None) -> list[list[int]]:
        if fps is None:
            raise ValueError("fps: FpsSampler needs the video's frame rate, got None")
        step = _snapped(_positive_float("fps", fps) / self.target_fps, num_frames / fps)
        count = self._count(num_frames / step - 1e-9, num_frames)  # step: frames per output
        # The epsilon keeps 30 -> 10 fps at 0, 3, 6, ... despite 3 * k not being exact in floats.
        indices = [min(int(math.floor(k * step + 1e-6)), num_frames - 1) for k in range(count)]
        return [indices]  # count is at most max_frames

    def _count(self, samples: float, num_frames: int) -> int:
        """``ceil(samples)`` frames to take (at least 1), at most ``max_frames``. A rate above
        ``MAX_FPS`` taking each frame more than ``MAX_REPEATS`` times is refused: an fps
        typed wrong (1e308 would never end), where a slideshow at 30 fps is a sampling."""
        if self.max_frames is not None and samples > self.max_frames:
            return self.max_frames
        if self.target_fps > MAX_FPS and samples > MAX_REPEATS * num_frames:
            raise SamplingError(f"fps: {self.target_fps:g} fps would take each frame of this "
                                f"video more than {MAX_REPEATS} times; give an fps near the "
                                "videos' own rates")
        return max(1, math.ceil(samples))

    def step_seconds(self, fps: float) -> float:
        """``1 / target_fps``, whatever the video's rate."""
        return 1.0 / self.target_fps

    def _settings(self) -> dict[str, Any]:
        return {"target_fps": self.target_fps, "max_frames": self.max_frames,
                "use_timestamps": self.use_timestamps, "revision": self.REVISION}


def _snapped(step: float, seconds: float) -> float:
    """``step`` (a ratio of frame rates), or the whole number or whole fraction it is within
    the error of a rate read from timestamps rounded to a millisecond over ``seconds``; never
    by 0.08% or more, so that NTSC's 1000/1001 (29.97 against 30) stays itself however
    short the video."""
    tolerance = min(max(1e-6, 2e-3 / seconds), 8e-4) if seconds > 0 else 1e-6
    for whole in (round(step), 1 / max(round(1 / step), 1)):
        if whole > 0 and abs(step - whole) <= tolerance * whole:
            return float(whole)
    return step


def _constant_rate(ts: np.ndarray) -> bool:
    """Whether frames ``ts`` (seconds) are evenly spaced up to timestamp rounding: every
    interval within 1.5 ms (a millisecond time base rounds each end by up to 0.5 ms) or 1%
    of the median interval."""
    if len(ts) < 3:
        return True
    gaps = np.diff(ts)
    median = float(np.median(gaps))
    return bool(np.abs(gaps - median).max() <= max(1.5e-3, 0.01 * median))


class StrideSampler(FrameSampler):
    """One clip: every ``stride``-th frame from frame 0; ``max_frames`` keeps the first ones."""

    name = "stride"

    def __init__(self, stride: int, max_frames: int | None = None) -> None:
        self.stride = _positive_int("stride", stride)
        self.max_frames = _positive_int("max_frames", max_frames, allow_none=True)

    def _sample(self, num_frames: int, fps: float | None,
                rng: np.random.Generator | None) -> list[list[int]]:
        return [_cap(list(range(0, num_frames, self.stride)), self.max_frames)]

    def step_seconds(self, fps: float) -> float:
        """``stride`` frames of a video at ``fps``."""
        return self.stride / _positive_float("fps", fps)

    def _settings(self) -> dict[str, Any]:
        return {"stride": self.stride, "max_frames": self.max_frames}


class SlidingWindowSampler(FrameSampler):
    """Clips of ``clip_len`` consecutive frames starting every ``stride`` frames.

    The clips cover the whole video (with ``stride <= clip_len``, every frame): when the
    windows do not end on the last frame, one more clip covers the end, either aligned to
    end on the last frame (``tail="align"``) or starting at the next stride and padded by
    repeating the last frame (``tail="pad"``). A video shorter than ``clip_len`` gives one
    clip padded with its last frame.
    """

    name = "sliding"

    def __init__(self, clip_len: int, stride: int | None = None,
                 tail: Literal["align", "pad"] = "align") -> None:
        self.clip_len = _positive_int("clip_len", clip_len)
        self.stride = _positive_int("stride", clip_len if stride is None else stride)
        if not isinstance(tail, str) or tail not in ("align", "pad"):
            raise ValueError(f"tail: expected 'align' or 'pad', got {tail!r}")
        self.tail = tail

    def _sample(self, num_frames: int, fps: float | None,
                rng: np.random.Generator | None) -> list[list[int]]:
        L, last = self.clip_len, num_frames - 1
        if num_frames <= L:
            return [[min(i, last) for i in range(L)]]
        starts = list(range(0, num_frames - L + 1, self.stride))
        if starts[-1] + L < num_frames:
            pad_start = min(starts[-1] + self.stride, last)
            starts.append(num_frames - L if self.tail == "align" else pad_start)
        return [[min(s + i, last) for i in range(L)] for s in starts]

    def _settings(self) -> dict[str, Any]:
        return {"clip_len": self.clip_len, "stride": self.stride, "tail": self.tail}


SAMPLERS: dict[str, type[FrameSampler]] = {
    cls.name: cls for cls in (UniformSampler, ClipSampler, FpsSampler, StrideSampler,
                              SlidingWindowSampler)
}


def clip_sampler(num_frames: int, frame_stride: int | None = None,
                 num_clips: int = 1) -> FrameSampler:
    """The classifier's clip sampler: ``num_frames`` spread over the video (``frame_stride``
    None) or ``frame_stride`` apart; ``num_clips`` clips for test-time averaging."""
    if frame_stride is None:
        return UniformSampler(num_frames, num_clips)
    return ClipSampler(num_frames, frame_stride, num_clips)


def sampler_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a ``to_dict()``) with today's defaults filled in, so that settings saved
    before a sampler gained an option compare equal to the same sampler now."""
    try:
        return make_sampler(**settings).to_dict()
    except (TypeError, ValueError):
        return dict(settings)


def make_sampler(name: str, **kwargs: Any) -> FrameSampler:
    """Build a sampler by name: "uniform", "clip", "fps", "stride" or "sliding" (kwargs: its
    settings)."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"name: expected one of {sorted(SAMPLERS)}, got {name!r}")
    cls = SAMPLERS[name]
    try:
        return cls(**kwargs)
    except TypeError as e:  # an unknown or missing keyword: say which, as a ValueError
        raise ValueError(f"make_sampler({name!r}): {e}") from None
