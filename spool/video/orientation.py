"""How a player shows a decoded frame: the turn and the mirroring its display matrix asks for
(a phone's rotation tag, a front camera's mirroring)."""

from __future__ import annotations

import math

import av
import numpy as np


def frame_orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """``(rotation, mirrored)`` of ``frame``: turn it counter-clockwise by ``rotation`` degrees
    (a multiple of 90), then mirror it left-right if ``mirrored``. As ``ffmpeg``'s autorotate
    reads the display matrix, with angles rounded to a multiple of 90.

    Where PyAV cannot list a frame's side data (FFmpeg 8's EXIF orientation of a JPEG, which
    it does not know), only the turn is read: an EXIF orientation that mirrors is not applied.
    """
    try:
        data = frame.side_data.get("DISPLAYMATRIX")
    except ValueError:  # side data newer than PyAV: the turn alone (int, INT_MIN if none)
        turn = frame.rotation
        return (round(turn / 90.0) * 90 % 360 if abs(turn) <= 360 else 0), False
    if data is None:
        return 0, False
    m = np.frombuffer(bytes(data), dtype=np.int32).astype(np.float64)
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if not scale0 or not scale1:  # a degenerate matrix: shown as stored
        return 0, False
    # av_display_rotation_get, negated: the clockwise angle FFmpeg's autorotate turns by.
    clockwise = round(math.degrees(math.atan2(m[1] / scale1, m[0] / scale0)) / 90.0) * 90 % 360
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
    matrix says so (:func:`frame_orientation`). A ``ValueError`` for another angle."""
    if rotation % 90:
        raise ValueError(f"rotation: expected a multiple of 90 degrees, got {rotation}")
    k = int(rotation // 90) % 4
    if not k and not mirrored:
        return image
    turned = np.rot90(image, k=k)
    return np.ascontiguousarray(turned[:, ::-1] if mirrored else turned)
