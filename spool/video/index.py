"""The frame index of a video file: every frame's pts and where to seek from, built by demuxing.

Frame ``k`` is the frame with the k-th smallest pts, provided the pts give display order (checked
here); otherwise frames are numbered in the decoder's output order. One index per file version
is cached, so a reader opened again on the same file does not demux it again.
"""

from __future__ import annotations

import operator
import os
import stat
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from spool.video.limits import check_frame_size

_INDEX_CACHE_SIZE = 64
# Packets decoded at indexing time (B-frame streams only) to check the pts order.
_ORDER_CHECK_PACKETS = 16
# What ends a demux early: an unreadable tail, or PyAV's end-of-file flush, which raises
# IndexError when FFmpeg found a stream mid-file (joined MPEG-TS recordings).
DEMUX_ERRORS = (av.FFmpegError, IndexError)
# Containers whose files play joined end to end (``cat a.ts b.ts``): MPEG-TS and MPEG-PS.
_JOINABLE_FORMATS = frozenset({"mpegts", "mpeg"})
# Codec options for opens that only read headers and packets: stream probing decodes nothing
# (it would decode a frame of a forged 8192x8192 header before the size could be checked).
_HEADERS_ONLY = {"skip_frame": "all"}


class VideoDecodeError(ValueError):
    """A file that is not a readable video, or a frame that cannot be decoded from it."""


# What a file that is no readable video raises: Spool's reader errors, file-system errors and
# FFmpeg's own. Anything else (a ValueError from a setting or a shape, say) is a bad setting
# or a bug, not bad input, and stops a batch job rather than failing each of its videos.
UNREADABLE = (VideoDecodeError, OSError, av.FFmpegError)


@dataclass(frozen=True)
class _FrameIndex:
    """Per frame, in presentation order: pts, decode position, and where to seek from."""

    pts: np.ndarray  # [N] int64, increasing
    decode_pos: np.ndarray  # [N] packet number in file order
    seek_pos: np.ndarray  # [N] packet number of the keyframe to start decoding from
    seek_pts: np.ndarray  # [N] pts of that keyframe (the seek target)
    time_base: Fraction
    last_duration: int  # pts units; 0 if unknown
    # False: pts missing, duplicated or not in display order; frames are then counted in the
    # decoder's output order (always display order) and read without seeking.
    exact: bool
    # Seconds where the last packet of the other streams (audio, subtitles) ends; None: none.
    others_end: float | None = None
    # Video packets that show no frame, counted by the header only: those an edit list leaves
    # out (``-ss ... -c copy``), and those a decoder does not show before the first keyframe
    # of a file cut mid-GOP.
    discarded: int = 0


_index_cache: OrderedDict[tuple, _FrameIndex] = OrderedDict()


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _check_regular_file(path: str) -> os.stat_result:
    """Raise unless ``path`` is a regular file or a link to one; never opens it.

    Opening a FIFO blocks until something writes to it, and a device can be read forever.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(2, f"Broken symbolic link (missing target "
                                       f"{os.readlink(path)!r})", path) from None
        raise FileNotFoundError(2, "No such video file", path) from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a file")
        if stat.S_ISDIR(st.st_mode) and not os.access(path, os.R_OK | os.X_OK):
            kind += " that cannot be read, so the videos in it could not be listed"
        raise VideoDecodeError(f"{path}: not a video file: {kind}")
    if st.st_size == 0:  # FFmpeg says "Invalid data found when processing input"
        raise VideoDecodeError(f"{path}: the file is empty (0 bytes)")
    return st


def main_video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    """The video stream ``ffmpeg`` would pick: the largest, a default one first unless another
    is much larger; never a still picture (cover art) attached to an audio file."""
    moving = [s for s in container.streams.video
              if not s.disposition & av.stream.Disposition.attached_pic]

    def score(stream: av.VideoStream) -> tuple[bool, int]:
        context = stream.codec_context  # None where FFmpeg has no decoder for it: last
        area = context.width * context.height if context is not None else 0
        default = bool(stream.disposition & av.stream.Disposition.default)
        return context is not None, area + 5_000_000 * default

    return max(moving, key=score, default=None)


def open_file(path: str, **options) -> av.container.Container:
    """``av.open`` of a file, through FFmpeg's file protocol: a bare name such as
    ``cam1:a.mp4`` (a colon before any slash) is taken for a protocol, and ``file:a.mp4`` for
    another file."""
    return av.open("file:" + path, **options)


def frame_numbers(indices: Sequence[int]) -> list[int]:
    """``indices`` as whole frame numbers (ints, NumPy or 0-d tensor integers); a float or a
    string is a ``ValueError`` rather than truncated or parsed."""
    try:
        return [operator.index(i) for i in indices]
    except TypeError:
        raise ValueError(f"indices: expected whole frame numbers, got {indices!r:.200}") from None


def _open(path: str | os.PathLike[str], max_pixels: int = 0, headers_only: bool = False,
          thread_type: str = "AUTO") -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open the main video stream; refuse frames over ``max_pixels`` (0: no limit).
    ``thread_type``: the decoder's threading (FFmpeg's ``AUTO``: frame and slice threads)."""
    path = os.fspath(path)
    _check_regular_file(path)
    try:
        # Tags that are not UTF-8 (seen in HMDB51 clips) must not make a video unreadable.
        container = open_file(path, mode="r", metadata_errors="ignore",
                              options=_HEADERS_ONLY if headers_only else None)
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{path}: cannot open as a video file: {e}") from e
    stream = main_video_stream(container)
    if stream is None:
        still = " (only a still picture: cover art)" if container.streams.video else ""
        container.close()
        raise VideoDecodeError(f"{path}: no video stream in the file{still}")
    try:
        if stream.codec_context is None:  # FFmpeg has no decoder for it
            raise VideoDecodeError(f"{path}: no decoder for its video codec (this FFmpeg build "
                                   "does not know it)")
        check_frame_size(path, stream.codec_context.width, stream.codec_context.height,
                         max_pixels)
    except VideoDecodeError:
        container.close()
        raise
    stream.thread_type = thread_type
    return container, stream


def _shown_pts(path: str, max_pixels: int, packets: int) -> list[int | None]:
    """The pts of the frames the decoder shows from the first ``packets`` packets the index
    counts (flushed; discarded packets are decoded too, for their references), in the order
    shown; in an open of its own, as the indexing open decodes nothing."""
    container, stream = _open(path, max_pixels)
    out: list[int | None] = []
    counted = 0
    with container:
        stream.thread_type = "SLICE"  # frame threads would hold back the few frames here
        demuxed = container.demux(stream)
        while counted < packets:
            try:
                packet = next(demuxed, None)
            except DEMUX_ERRORS:
                break
            if packet is None:
                break
            if packet.size == 0:
                continue
            counted += not packet.is_discard
            try:
                out += [f.pts for f in stream.decode(packet)]
            except av.FFmpegError:
                pass  # a damaged packet, or one whose references a cut file lacks
        try:
            out += [f.pts for f in stream.decode(None)]
        except av.FFmpegError:
            pass
    return out


def _pts_give_display_order(shown: list[int | None], stream: av.VideoStream,
                            pts: list[int]) -> bool:
    """Whether sorting frames by pts puts them in display order (the decoder's output order).

    Not so where a muxer wrote decode times as pts (VLC 2.1's MP4 output; H.264 in AVI) or an
    AVI demuxer guessed them wrongly (packed MPEG-4 B-frames). Without B-frames, display order
    is file order; with them, the pts of the first frames shown are checked.
    """
    if not stream.codec_context.has_b_frames:
        return bool(np.all(np.diff(np.asarray(pts, np.int64)) > 0))
    shown_pts = [t for t in shown if t is not None]
    return bool(np.all(np.diff(np.asarray(shown_pts, np.int64)) > 0))


def _build_index(path: str, max_pixels: int, container: av.container.InputContainer,
                 stream: av.VideoStream) -> _FrameIndex:
    pts: list[int | None] = []
    # In MPEG program and transport streams, which are joined end to end (HLS segments, a
    # recording in parts), decode times that go back are a clock that restarted: sorting by
    # pts would interleave the parts, which the B-frame check of the first packets cannot
    # see. (Other containers cannot be joined so; Matroska's decode times are guesses.)
    joinable = container.format.name in _JOINABLE_FORMATS
    dts: list[int] = []
    keys: list[bool] = []
    last_duration = 0
    others_end: float | None = None  # a truncation check needs where the audio ends too
    discarded = 0
    starts_at_key: bool | None = None  # the first video packet's, discarded ones included
    try:
        for packet in container.demux():  # every stream: their packets interleave anyway
            if packet.size == 0:
                continue
            if starts_at_key is None and packet.stream.index == stream.index:
                starts_at_key = packet.is_keyframe
            if packet.is_discard:  # decoded for reference, never shown
                discarded += packet.stream.index == stream.index
                continue
            if packet.stream.index != stream.index:
                if packet.pts is not None and packet.time_base:
                    end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                    others_end = end if others_end is None else max(others_end, end)
                continue
            pts.append(packet.pts)
            if joinable and packet.dts is not None:
                dts.append(packet.dts)
            keys.append(packet.is_keyframe)
            last_duration = packet.duration or 0
    except DEMUX_ERRORS:
        pass  # truncated or corrupt tail: index what could be read
    n = len(pts)
    tb = stream.time_base or Fraction(1, 1)
    # A file cut by stream copy (``ffmpeg -ss X -c copy``, a broadcast capture) can start
    # with packets that need frames it lacks: mid-GOP, or the leading B-frames of an open
    # GOP. Whether a decoder shows them differs (H.264's shows nothing before a keyframe,
    # MPEG-4 Part 2's shows them), so it is observed: the leading packets through the first
    # keyframe and a margin are decoded, and those that showed no frame are no frames of
    # the file (a header counts them). An edit list's discarded packets start at a keyframe.
    mid_gop = n > 0 and not starts_at_key
    shown: list[int | None] = []
    not_shown = 0
    if mid_gop or stream.codec_context.has_b_frames:
        first_key = keys.index(True) if True in keys else n
        decoded = min(n, (first_key if mid_gop else 0) + _ORDER_CHECK_PACKETS)
        shown = _shown_pts(path, max_pixels, decoded)
        not_shown = max(0, decoded - len(shown))
    restarted = bool(np.any(np.diff(np.asarray(dts, np.int64)) < 0))
    exact = (n > 0 and None not in pts and len(set(pts)) == n and not restarted
             and _pts_give_display_order(shown, stream, pts))
    if not exact:
        idx = np.arange(n - not_shown, dtype=np.int64)
        return _FrameIndex(idx, idx, idx * 0, idx * 0, tb, last_duration, False, others_end,
                           discarded + not_shown)
    file_pts = np.asarray(pts, dtype=np.int64)
    order = np.argsort(file_pts, kind="stable")
    first_shown = min((t for t in shown if t is not None), default=None)
    if first_shown is not None:
        order = order[file_pts[order] >= first_shown]
        discarded += n - len(order)
    # The keyframe to start from: the last one in file order at or before the frame's packet
    # whose pts is not after the frame's (leading pictures of an open GOP precede their I-frame).
    key_pos = np.flatnonzero(np.asarray(keys))
    if key_pos.size == 0 or key_pos[0] != 0:
        key_pos = np.concatenate([[0], key_pos])  # decoding from the start is always valid
    k = np.searchsorted(key_pos, order, side="right") - 1
    while True:
        bad = (k > 0) & (file_pts[key_pos[k]] > file_pts[order])
        if not bad.any():
            break
        k[bad] -= 1
    return _FrameIndex(
        pts=file_pts[order], decode_pos=order, seek_pos=key_pos[k],
        seek_pts=file_pts[key_pos[k]], time_base=tb, last_duration=last_duration, exact=True,
        others_end=others_end, discarded=discarded,
    )


def _cached_index(path: str, max_pixels: int = 0) -> _FrameIndex:
    """The frame index of ``path``, demuxed once per file version (size and mtime)."""
    st = _check_regular_file(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    index = _index_cache.get(key)
    if index is None:
        container, stream = _open(path, max_pixels, headers_only=True)
        with container:
            index = _build_index(path, max_pixels, container, stream)
        _index_cache[key] = index
        if len(_index_cache) > _INDEX_CACHE_SIZE:
            _index_cache.popitem(last=False)
    _index_cache.move_to_end(key)
    return index


def clear_index_cache() -> None:
    """Forget cached frame indices (benchmarks use it to time cold reads)."""
    _index_cache.clear()
