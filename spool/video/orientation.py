"""How a player shows a decoded frame: the turn and the mirroring its display matrix asks
for (a phone's rotation tag; a front camera's or an EXIF orientation's mirroring)."""

from __future__ import annotations

import math

import av
import numpy as np


def frame_orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """``(rotation, mirrored)`` of ``frame``: turn it counter-clockwise by ``rotation`` degrees
    (a multiple of 90), then mirror it left-right if ``mirrored``. As ``ffmpeg``'s autorotate
    reads the display matrix, with angles rounded to a multiple of 90."""
    if math.isnan(frame.rotation):  # a degenerate matrix
        return 0, False
    try:
        data = frame.side_data.get("DISPLAYMATRIX")
    except ValueError:  # side data newer than PyAV (FFmpeg 8's EXIF): the turn alone
        return round(frame.rotation / 90.0) * 90 % 360, False
    if data is None:
        return 0, False
    m = np.frombuffer(bytes(data), dtype=np.int32)
    clockwise = round(-frame.rotation / 90.0) * 90 % 360
    # FFmpeg's choices (fftools): transpose cclock_flip or clock at 90, clock_flip or cclock
    # at 270, hflip and/or vflip at 180, vflip at 0; each written as a turn, then a mirror.
    if clockwise == 90:
        return 270, bool(m[3] > 0)
    if clockwise == 270:
        return 90, bool(m[3] < 0)
    hflip, vflip = bool(m[0] < 0), bool(m[4] < 0)
    if clockwise == 180:
        return (180 if vflip else 0), hflip != vflip
    return (180 if vflip else 0), vflip


def apply_rotation(image: np.ndarray, rotation: int, mirrored: bool = False) -> np.ndarray:
    """Turn ``image`` [H, W, C] counter-clockwise by ``rotation`` (a multiple of 90) degrees,
    then mirror it left-right if ``mirrored``: how a player shows a frame whose display
    matrix says so (:func:`frame_orientation`)."""
    k = int(round(rotation / 90.0)) % 4
    if not k and not mirrored:
        return image
    turned = np.rot90(image, k=k)
    return np.ascontiguousarray(turned[:, ::-1] if mirrored else turned)
