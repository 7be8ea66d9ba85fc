"""The frame index of a video file: every frame's pts and where to seek from, built by demuxing.

Frame ``k`` is the frame with the k-th smallest pts, provided the pts give display order (checked
here); otherwise frames are numbered in the decoder's output order. One index per file version
is cached, so a reader opened again on the same file does not demux it again.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

_INDEX_CACHE_SIZE = 64
# Packets decoded at indexing time (B-frame streams only) to check the pts order.
_ORDER_CHECK_PACKETS = 16


class VideoDecodeError(ValueError):
    """A file that is not a readable video, or a frame that cannot be decoded from it."""


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


_index_cache: OrderedDict[tuple, _FrameIndex] = OrderedDict()


def _open(path: str | os.PathLike[str]) -> tuple[av.container.InputContainer, av.VideoStream]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such video file", path)
    try:
        container = av.open(path, mode="r")
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{path}: cannot open as a video file: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path}: no video stream in the file")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _pts_give_display_order(stream: av.VideoStream, pts: list[int],
                            packets: list[av.Packet]) -> bool:
    """Whether sorting frames by pts puts them in display order (the decoder's output order).

    Not so where a muxer wrote decode times as pts (VLC 2.1's MP4 output; H.264 in AVI) or an
    AVI demuxer guessed them wrongly (packed MPEG-4 B-frames). Without B-frames, display order
    is file order; with them, the first ``packets`` are decoded and their frames' pts checked.
    """
    if not stream.codec_context.has_b_frames:
        return bool(np.all(np.diff(np.asarray(pts, np.int64)) > 0))
    stream.thread_type = "SLICE"  # frame threads would hold back the few frames decoded here
    out: list[int] = []
    for packet in packets:
        try:
            out += [f.pts for f in stream.decode(packet) if f.pts is not None]
        except av.FFmpegError:
            pass  # a damaged packet: judge from the frames that did come out
    return bool(np.all(np.diff(np.asarray(out, np.int64)) > 0))


def _build_index(container: av.container.InputContainer, stream: av.VideoStream) -> _FrameIndex:
    pts: list[int | None] = []
    keys: list[bool] = []
    first: list[av.Packet] = []  # to check the pts against the decoder's output order
    last_duration = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            pts.append(packet.pts)
            keys.append(packet.is_keyframe)
            last_duration = packet.duration or 0
            if len(first) < _ORDER_CHECK_PACKETS:
                first.append(packet)
    except av.FFmpegError:
        pass  # truncated or corrupt tail: index what could be read
    n = len(pts)
    tb = stream.time_base or Fraction(1, 1)
    exact = (n > 0 and None not in pts and len(set(pts)) == n
             and _pts_give_display_order(stream, pts, first))
    if not exact:
        idx = np.arange(n, dtype=np.int64)
        return _FrameIndex(idx, idx, idx * 0, idx * 0, tb, last_duration, False)
    file_pts = np.asarray(pts, dtype=np.int64)
    order = np.argsort(file_pts, kind="stable")
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
    )


def _cached_index(path: str) -> _FrameIndex:
    """The frame index of ``path``, demuxed once per file version (size and mtime)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    index = _index_cache.get(key)
    if index is None:
        container, stream = _open(path)
        with container:
            index = _build_index(container, stream)
        _index_cache[key] = index
        if len(_index_cache) > _INDEX_CACHE_SIZE:
            _index_cache.popitem(last=False)
    _index_cache.move_to_end(key)
    return index


def clear_index_cache() -> None:
    """Forget cached frame indices (benchmarks use it to time cold reads)."""
    _index_cache.clear()
