"""Write uint8 RGB frames to a video file with PyAV (tests, synthetic data, benchmarks)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from spool.video.index import open_file

__all__ = ["SUPPORTED_CODECS", "write_video"]

# Default pixel format per encoder: the one every player and decoder accepts for that codec.
_DEFAULT_PIX_FMT = {
    "libx264": "yuv420p",
    "libvpx-vp9": "yuv420p",
    "mpeg4": "yuv420p",
    "mjpeg": "yuvj420p",
    "ffv1": "bgr0",  # lossless RGB: read back bit for bit
    "rawvideo": "bgr24",  # what AVI's uncompressed RGB means; rgb24 would read back swapped
}
SUPPORTED_CODECS = tuple(_DEFAULT_PIX_FMT)

# Speed-oriented defaults: these files are test fixtures and demo data, not archives.
_DEFAULT_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast", "crf": "18"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"},
    "mpeg4": {"qscale": "3"},
    "mjpeg": {"qscale": "3"},
}


def _deterministic_options(codec: str, opts: dict[str, str]) -> dict[str, str]:
    """``opts`` plus what makes the bytes a function of the frames alone."""
    opts = {**opts}
    # Without it muxers and encoders write random UIDs (Matroska/WebM) and version strings.
    opts["flags"] = _add_flag(opts.get("flags"), "+bitexact")
    if codec == "libx264":
        # x264's macroblock-tree rate control reads uninitialised heap memory when B-frames are
        # on (core 165: the bytes change with MALLOC_PERTURB_, even with threads=1), so the
        # same frames gave different files from run to run. Off, unless the caller sets it.
        params = opts.get("x264-params", "")
        if "mbtree" not in params:
            opts["x264-params"] = f"{params}:mbtree=0" if params else "mbtree=0"
    return opts


def _add_flag(flags: str | None, flag: str) -> str:
    return flag if not flags else flags if flag in flags else f"{flags}{flag}"


def _as_frame_array(frame: Any) -> np.ndarray:
    arr = np.asarray(frame.numpy() if hasattr(frame, "numpy") else frame)
    if arr.dtype != np.uint8:
        raise ValueError(f"frames: expected dtype uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ValueError(f"frames: expected each frame [H, W, 3] or [H, W], got {arr.shape}")
    return np.ascontiguousarray(arr)


def _check_even(codec: str, pix_fmt: str, hw: tuple[int, ...]) -> None:
    # 4:2:0 chroma covers 2x2 pixels: these encoders reject odd sizes with an opaque error.
    if pix_fmt.endswith("420p") and codec != "ffv1" and (hw[0] % 2 or hw[1] % 2):
        raise ValueError(f"frames: {codec} with pix_fmt {pix_fmt} needs an even width and "
                         f"height, got {hw[1]}x{hw[0]}; pass pix_fmt='yuv444p' or crop")


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction = 25,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    *,
    timestamps: Sequence[float] | None = None,
    time_base: Fraction | None = None,
    gop_size: int | None = None,
    max_b_frames: int | None = None,
    rotation: int = 0,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    deterministic: bool = True,
) -> Path:
    """Encode frames (uint8, [T, H, W, 3] RGB or [T, H, W] gray) into ``path``.

    The container is picked from the suffix (.mp4, .mkv, .webm, .avi, ...). ``frames`` may be an
    array or any iterable of per-frame arrays (long videos need not fit in memory).
    ``timestamps`` (seconds, strictly increasing, one per frame) writes a variable-frame-rate
    file; they are rounded to ``time_base`` (default 1/1000 s). ``rotation`` stores a display
    rotation (degrees counter-clockwise) in the container. ``options`` are encoder options
    (e.g. ``{"crf": "0"}``) merged over speed-oriented defaults; ``container_options`` go to
    the muxer (e.g. ``{"movflags": "+faststart"}``). ``deterministic`` (the default) makes
    the file's bytes a function of the frames and arguments alone, the same in every run and
    process: one encoder thread (the output of a threaded encoder depends on the core count),
    bit-exact muxing (no random UIDs or version strings) and, for libx264, no macroblock-tree
    rate control; pass False to encode large videos faster. Returns the path.
    """
    if codec not in _DEFAULT_PIX_FMT:
        raise ValueError(f"codec: expected one of {SUPPORTED_CODECS}, got {codec!r}")
    rate = Fraction(fps).limit_denominator(100_000)
    if rate <= 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if timestamps is not None:
        time_base = time_base or Fraction(1, 1000)
        pts_list = [round(Fraction(t).limit_denominator(10**9) / time_base) for t in timestamps]
        if any(b <= a for a, b in zip(pts_list, pts_list[1:], strict=False)):
            raise ValueError("timestamps: expected strictly increasing values after rounding")
    else:
        time_base = time_base or 1 / rate
        pts_list = None
    opts = {**_DEFAULT_OPTIONS.get(codec, {}), **(options or {})}
    muxer_opts = dict(container_options or {})
    if deterministic:
        opts = _deterministic_options(codec, opts)
        muxer_opts["fflags"] = _add_flag(muxer_opts.get("fflags"), "+bitexact")

    written = 0
    with open_file(os.fspath(path), mode="w", options=muxer_opts) as container:
        stream = None
        for i, frame in enumerate(frames):
            arr = _as_frame_array(frame)
            if stream is None:
                stream = container.add_stream(codec, rate=rate, options=opts)
                stream.height, stream.width = arr.shape[:2]
                _check_even(codec, pix_fmt or _DEFAULT_PIX_FMT[codec], arr.shape[:2])
                stream.pix_fmt = pix_fmt or (
                    "gray" if arr.ndim == 2 and codec == "ffv1" else _DEFAULT_PIX_FMT[codec]
                )
                stream.codec_context.time_base = time_base
                if deterministic:  # also the threads of the RGB -> YUV conversion
                    stream.codec_context.thread_count = 1
                if gop_size is not None:
                    stream.codec_context.gop_size = gop_size
                if max_b_frames is not None:
                    stream.codec_context.max_b_frames = max_b_frames
                if rotation % 360:
                    stream.set_display_rotation(rotation)
            if arr.shape[:2] != (stream.height, stream.width):
                raise ValueError(f"frames: frame {i} has shape {arr.shape}, frame 0 was "
                                 f"{(stream.height, stream.width)}")
            vf = av.VideoFrame.from_ndarray(arr, format="gray" if arr.ndim == 2 else "rgb24")
            if pts_list is not None:
                if i >= len(pts_list):
                    raise ValueError(f"timestamps: {len(pts_list)} given, but more frames")
                vf.pts = pts_list[i]
            else:  # frame i at i / fps, in whatever time base was asked for
                vf.pts = round(Fraction(i) / rate / Fraction(time_base))
            vf.time_base = time_base
            container.mux(stream.encode(vf))
            written += 1
        if stream is None:
            raise ValueError("frames: expected at least one frame, got none")
        if pts_list is not None and written != len(pts_list):
            raise ValueError(f"timestamps: {len(pts_list)} given for {written} frames")
        container.mux(stream.encode(None))
    return path
