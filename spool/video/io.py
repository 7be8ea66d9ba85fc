"""Read frames from video files with PyAV, decoding only what the requested frames need.

Frame ``k`` is the frame with the k-th smallest presentation timestamp (pts). The pts of every
frame come from demuxing the packets (``spool.video.index``), so the index is exact for variable
frame rate and B-frame reordering alike. Sparse requests seek to the keyframe before each needed
frame; dense ones decode straight through. Both give bit-identical frames. MPEG-PS files are
never seeked in (``_UNSEEKABLE_FORMATS``). Files whose pts are missing or do not follow display
order (checked when indexing) are read by counting decoded frames. Frames over the pixel budget
(``spool.video.limits``) are refused from the stream header, before any decoding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from spool.runtime import warn_once
from spool.video.chunks import decode_chunks, distinct_frames
from spool.video.index import (
    DEMUX_ERRORS,
    VideoDecodeError,
    _cached_index,
    _open,
    clear_index_cache,
    frame_numbers,
)
from spool.video.info import VideoInfo
from spool.video.limits import (
    DEFAULT_MAX_PIXELS,
    check_frame_size,
    check_output_size,
    current_max_pixels,
)
from spool.video.orientation import apply_rotation, frame_orientation
from spool.video.writer import SUPPORTED_CODECS, write_video

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_CODECS",
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "apply_rotation",
    "clear_index_cache",
    "probe_video",
    "read_video_frames",
    "write_video",
]

logger = logging.getLogger(__name__)
Strategy = Literal["auto", "seek", "sequential"]
# A seek plus decoder flush costs about as much as decoding a few frames.
_SEEK_COST_FRAMES = 4
# Demuxers whose seeks cannot be trusted. MPEG-PS (.mpg, .vob): after a seek it hands out a
# partial packet and labels the next ones with the following packet's pts, so the decoder
# shows a picture under another frame's pts (and the first frames wanted are nearly always
# missed anyway). Such files are decoded from the start.
_UNSEEKABLE_FORMATS = frozenset({"mpeg"})


def _stream_fps(stream: av.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 1.0


class VideoReader:
    """An open video file; ``get(indices)`` returns frames, decoding as little as it can.

    Keeps the decoder position between calls, so reading consecutive windows of a long video
    one after the other decodes each frame once. Use as a context manager or call ``close()``.
    ``max_pixels``: the largest frame (width x height) it decodes, checked from the header
    first; None: the budget in force (``spool.video.limits.pixel_budget``, 4096x2160 unless
    set); 0: no limit. A larger frame raises ``VideoDecodeError``. ``thread_type``: the
    decoder's threads (``AUTO``: FFmpeg's choice of frame and slice threads; ``NONE``,
    ``SLICE``, ``FRAME``); frames are the same whatever it is (bench/decode_threads.py). Where
    frame threads miss frames (a damaged file), it turns to ``SLICE``.
    """

    def __init__(self, path: str | os.PathLike[str], max_pixels: int | None = None,
                 thread_type: str = "AUTO") -> None:
        self.path = os.fspath(path)
        self.thread_type = thread_type
        self.max_pixels = current_max_pixels(max_pixels)
        self.index = _cached_index(self.path, self.max_pixels)
        if len(self.index.pts) == 0:
            raise VideoDecodeError(f"{self.path}: the video stream has no frames")
        self._pts_to_idx = {p: i for i, p in enumerate(self.index.pts.tolist())}
        self._container, self._stream = _open(self.path, self.max_pixels, thread_type=thread_type)
        self.rotation, self.mirrored = 0, False  # the display matrix of the last frame decoded
        sar, (w, h) = self._stream.sample_aspect_ratio, (self._stream.width, self._stream.height)
        if sar and sar != 1:  # anamorphic (DVD, DV, broadcast): what torchvision and decord do
            warn_once(logger, f"{self.path}: pixels are not square (aspect {sar}): frames are "
                      f"read as stored, {w}x{h}, not as players show them, {round(w * sar)}x{h} "
                      "(said for the first such video only)", key="non-square pixels",
                      every_rank=True)
        self._reformatter = VideoReformatter()
        self.num_seeks = 0
        self.num_fallbacks = 0  # passes redone from the start because a seek missed frames
        # Turned off too if the demuxer refuses a seek.
        self._can_seek = (self.index.exact
                          and self._container.format.name not in _UNSEEKABLE_FORMATS)
        self._start()

    def __len__(self) -> int:
        return len(self.index.pts)

    def frame_times(self) -> np.ndarray | None:
        """``[N]`` seconds at which each frame is shown (its pts), in display order; None where
        the file's timestamps are missing, repeated or not in display order."""
        if not self.index.exact:
            return None
        return self.index.pts * float(self.index.time_base)

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    # Decoding state: a frame generator, the file position of the last packet fed to the
    # decoder, the last frame that came out, and the pts from which output is trustworthy.
    def _start(self) -> None:
        self._pos, self._last_out = -1, -1
        self._valid_from: int | None = -(2**62)  # decoding from packet 0 is valid throughout
        self._frames: Iterator[tuple[int, av.VideoFrame]] | None = self._decode()

    def _restart(self) -> None:
        # Reopening is the one way back to packet 0 that works for every demuxer.
        self._container.close()
        self._container, self._stream = _open(self.path, self.max_pixels,
                                              thread_type=self.thread_type)
        self._start()

    def _seek(self, t: int) -> None:
        """Go to the keyframe frame ``t`` decodes from (or to the start, if seeking fails)."""
        if self.index.seek_pos[t] == 0:
            self._restart()  # packet 0 need not be a keyframe: start over rather than seek
            return
        try:
            self._container.seek(int(self.index.seek_pts[t]), stream=self._stream,
                                 backward=True, any_frame=False)
        except av.FFmpegError:
            self._can_seek = False  # the demuxer's position is unknown now: start over
            self._restart()
            return
        self._pos, self._last_out = int(self.index.seek_pos[t]) - 1, -1
        self.num_seeks += 1
        self._valid_from = None  # frames are trustworthy from the first keyframe fed on
        self._frames = self._decode()

    def _decode(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """Yield (frame index, frame) for correctly decodable frames, in output order."""
        packets = self._container.demux(self._stream)
        count = 0
        while True:
            try:
                packet = next(packets, None)
            except DEMUX_ERRORS:
                packet = None  # unreadable tail: flush what the decoder holds
            if packet is not None and packet.size and packet.pts is not None:
                i = self._pts_to_idx.get(packet.pts) if self.index.exact else None
                if i is not None:
                    self._pos = int(self.index.decode_pos[i])
                if self._valid_from is None and packet.is_keyframe:
                    self._valid_from = packet.pts
            try:
                frames = self._stream.decode(packet)
            except av.FFmpegError:
                frames = []  # a corrupt packet: skip it, as players do
            for frame in frames:
                if not self.index.exact:
                    i, count = count, count + 1
                elif (frame.pts is None or self._valid_from is None
                      or frame.pts < self._valid_from):
                    continue
                else:
                    i = self._pts_to_idx.get(frame.pts)
                    if i is None:
                        continue
                self._last_out = i
                yield i, frame
            if packet is None or packet.size == 0:
                return

    def _to_rgb(self, frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
        # The header passed, but the size may change mid-stream.
        check_frame_size(self.path, frame.width, frame.height, self.max_pixels)
        self.rotation, self.mirrored = frame_orientation(frame)
        # One reformatter per reader: frame.to_ndarray builds a new swscale context per frame.
        if size is None:
            rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        else:
            # Scaled in the same swscale call as the RGB conversion: a large frame is never
            # held at full size in RGB. ``size`` is that of the upright frame.
            height, width = size[::-1] if self.rotation in (90, 270) else size
            rgb = self._reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                             interpolation="AREA").to_ndarray()
        return apply_rotation(rgb, self.rotation, self.mirrored)

    def _should_seek(self, t: int, strategy: Strategy) -> bool:
        if strategy == "sequential" or not self._can_seek:
            return False
        key, target = int(self.index.seek_pos[t]), int(self.index.decode_pos[t])
        if target <= self._pos or key <= self._pos + 1:
            return False  # already fed, or in the GOP ahead: going on is never slower
        if strategy == "seek":
            return True
        return target - key + _SEEK_COST_FRAMES < target - self._pos

    def _collect(self, wanted: list[int], strategy: Strategy, got: dict[int, np.ndarray],
                 size: tuple[int, int] | None = None) -> None:
        """Decode the sorted frame indices ``wanted`` into ``got``; leaves out what it missed."""
        need = set(wanted)
        for t in wanted:
            if t in got:
                continue
            if self._frames is None or t <= self._last_out:  # behind us: go back
                if strategy != "sequential" and self._can_seek:
                    self._seek(t)
                else:
                    self._restart()
            elif self._should_seek(t, strategy):
                self._seek(t)
            for i, frame in self._frames:
                if i in need and i not in got:
                    got[i] = self._to_rgb(frame, size)
                if i >= t:
                    break
            else:
                self._frames = None  # end of file: the later targets do not decode either
                return

    def get(self, indices: Sequence[int] | None = None, strategy: Strategy = "auto",
            size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``[T, H, W, 3]`` uint8 RGB and timestamps ``[T]`` (seconds) for ``indices``.

        ``indices`` are frame numbers in presentation order, any order, repeats allowed;
        ``None`` reads every decodable frame. ``strategy``: "auto" seeks where that saves
        work, "seek" seeks to every keyframe it can, "sequential" never seeks. ``size``
        ``(H, W)``: scale the upright frames to it while converting them to RGB (area
        averaging), cheaper in time and memory than resizing full frames afterwards.
        """
        size = check_output_size(size, self.max_pixels)
        if strategy not in ("auto", "seek", "sequential"):
            raise ValueError(f"strategy: expected 'auto', 'seek' or 'sequential', "
                             f"got {strategy!r}")
        n = len(self)
        if indices is None:
            wanted, strict = list(range(n)), False
        else:
            wanted, strict = frame_numbers(indices), True
            for i in wanted:
                if i < 0:
                    raise ValueError(f"indices: expected frame numbers >= 0, got {i}")
                if i >= n:
                    raise VideoDecodeError(f"{self.path}: frame index {i} is past the last "
                                           f"frame in the file ({n} frames)")
        unique = sorted(set(wanted))
        got: dict[int, np.ndarray] = {}
        plain = self._pos == -1 and self._last_out == -1 and self._valid_from is not None
        seeks = self.num_seeks
        self._collect(unique, strategy, got, size)
        missed = [i for i in unique if i not in got]
        if missed and not (plain and self.num_seeks == seeks):
            # A seek can overshoot on some demuxers: decode plainly from the start.
            self.num_fallbacks += 1
            self._restart()
            self._collect(missed, "sequential", got, size)
            missed = [i for i in unique if i not in got]
        if missed and self.thread_type not in ("NONE", "SLICE"):
            # Frame threads drop the frames in flight when a packet fails (a truncated tail),
            # which slice threads return: so that the frames read do not depend on the thread
            # type, this file is decoded with slice threads from now on.
            self.thread_type = "SLICE"
            self._restart()
            self._collect(missed, "sequential", got, size)
            missed = [i for i in unique if i not in got]
        if missed and (strict or not got):
            more = f" (and {len(missed) - 1} more)" if len(missed) > 1 else ""
            raise VideoDecodeError(f"{self.path}: could not decode frame index {missed[0]}"
                                   f"{more} of {n}; the file may be truncated or corrupt")
        out = [i for i in wanted if i in got]
        if not out:  # nothing asked for: shaped as frames would be, upright
            if size is None:
                ctx = self._stream.codec_context
                size = self.get([0])[0].shape[1:3] if n else (ctx.height, ctx.width)
            return np.zeros((0, *size, 3), np.uint8), np.zeros((0,), np.float64)
        if self.index.exact:
            times = self.index.pts[out] * float(self.index.time_base)
        else:
            times = np.asarray(out, np.float64) / _stream_fps(self._stream)
        shapes = {got[i].shape for i in out}
        if len(shapes) > 1:
            raise VideoDecodeError(f"{self.path}: the frame size changes within the video "
                                   f"({', '.join(sorted(f'{w}x{h}' for h, w, _ in shapes))}); "
                                   f"Spool's commands read one size per video; in Python, "
                                   f"VideoReader.get(size=(height, width)) scales every "
                                   f"frame to one")
        return np.stack([got[i] for i in out]), np.asarray(times, np.float64)

    def get_chunks(self, indices: Sequence[int], size: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``indices`` read a chunk of at most ``size`` distinct frames at a time
        (:func:`~spool.video.chunks.decode_chunks`): yields each chunk's distinct frames,
        their timestamps, and ``positions`` to expand whatever is made of them back to the
        chunk's indices (``x[positions]``), so a repeated frame is decoded, and worked on, once.
        """
        for part in decode_chunks(indices, size):
            distinct, positions = distinct_frames(indices[part])
            frames, stamps = self.get(distinct)
            yield frames, stamps, positions

    def info(self) -> VideoInfo:
        """Probe results; decodes frame 0 to learn the rotation and the upright size."""
        first, _ = self.get([0])
        n, tb, pts = len(self), float(self.index.time_base), self.index.pts
        if self.index.exact and n > 1:
            span = float(pts[-1] - pts[0]) * tb
            fps = (n - 1) / span if span > 0 else _stream_fps(self._stream)
            rate = self._stream.average_rate
            # Timestamps are rounded to the time base (milliseconds in Matroska/WebM), so the
            # measured rate of a 24000/1001 video is 23.97589: where the container's rate
            # explains the span to within that rounding, it is the exact one.
            if rate and span > 0 and abs((n - 1) / float(rate) - span) <= 2 * tb:
                fps = float(rate)
            last = self.index.last_duration * tb or span / (n - 1)
            duration, start = span + last, float(pts[0]) * tb
        else:
            fps = _stream_fps(self._stream)
            duration, start = n / fps, float(pts[0]) * tb if self.index.exact else 0.0
        ctx = self._stream.codec_context
        return VideoInfo(
            path=self.path, num_frames=n, num_frames_exact=self.index.exact, fps=fps,
            duration=duration, width=first.shape[2], height=first.shape[1],
            rotation=self.rotation, codec=ctx.name, pix_fmt=ctx.pix_fmt, start_time=start,
            mirrored=self.mirrored)


def probe_video(path: str | os.PathLike[str], exact: bool = True,
                max_pixels: int | None = None) -> VideoInfo:
    """Frame count, fps, duration, upright size, rotation and codec of a video file.

    ``exact=True`` counts the frames by demuxing every packet (cheap: no decoding; cached for
    the readers). ``exact=False`` reads only the headers and the first frame, so
    ``num_frames`` and ``duration`` are estimates (``num_frames_exact`` is False; 0 where the
    headers do not say, as in raw elementary streams). ``max_pixels``: as for ``VideoReader``.
    """
    max_pixels = current_max_pixels(max_pixels)
    if exact:
        with VideoReader(path, max_pixels) as reader:
            return reader.info()
    _open(path, max_pixels, headers_only=True)[0].close()  # the size, before decoding a frame
    container, stream = _open(path, max_pixels)
    with container:
        try:
            frame = next(container.decode(stream), None)
        except DEMUX_ERRORS as e:
            raise VideoDecodeError(f"{path}: cannot decode the first frame: {e}") from e
        if frame is None:
            raise VideoDecodeError(f"{path}: the video stream has no decodable frame")
        check_frame_size(os.fspath(path), frame.width, frame.height, max_pixels)
        (rotation, mirrored), tb = frame_orientation(frame), stream.time_base or Fraction(1, 1)
        h, w = (frame.width, frame.height) if rotation in (90, 270) else (frame.height, frame.width)
        fps = _stream_fps(stream)
        if stream.duration:
            duration = float(stream.duration * tb)
        else:
            duration = container.duration / av.time_base if container.duration else 0.0
        return VideoInfo(
            path=os.fspath(path), num_frames=stream.frames or round(duration * fps),
            num_frames_exact=False, fps=fps, duration=duration, width=w, height=h,
            rotation=rotation, codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt,
            start_time=float(stream.start_time * tb) if stream.start_time is not None else 0.0,
            mirrored=mirrored)


def read_video_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | None = None,
    strategy: Strategy = "auto",
    size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode frames ``indices`` (presentation order; ``None`` = all) from ``path``.

    Returns ``frames`` uint8 ``[T, H, W, 3]`` RGB, upright (display rotation applied), and
    ``timestamps`` float64 ``[T]`` in seconds (pts * time_base). Raises ``FileNotFoundError``
    for a missing file and ``VideoDecodeError`` for an unreadable one or a frame that cannot
    be decoded (with ``indices=None`` a truncated file gives the frames that decode), or
    frames over ``max_pixels``. ``size`` and ``max_pixels``: see ``VideoReader``.
    """
    with VideoReader(path, max_pixels) as reader:
        return reader.get(indices, strategy=strategy, size=size)
