"""What a video file holds, as the readers see it (``spool.video.io.probe_video``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` finds. ``width``/``height`` are those of the upright output frames."""

    path: str
    num_frames: int
    # True: counted from packets with distinct timestamps, one per frame (a damaged file may
    # still decode fewer). False: an estimate (headers, or packets without usable timestamps).
    num_frames_exact: bool
    fps: float  # average frame rate
    duration: float  # seconds
    width: int
    height: int
    rotation: int  # display rotation in degrees counter-clockwise, applied by the readers
    codec: str
    pix_fmt: str | None
    start_time: float  # pts of frame 0 in seconds
    mirrored: bool = False  # mirrored left-right after the rotation (display matrix), as applied
