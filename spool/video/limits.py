"""The pixel budget: how large a frame the readers agree to decode.

A few kilobytes of H.264 can declare 8192x8192 frames (solid colour compresses to almost
nothing), and decoding a clip of them takes gigabytes. The readers compare the size in the
stream header with the budget before decoding anything, and every decoded frame again (the size
may change mid-stream).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["DEFAULT_MAX_PIXELS", "check_frame_size", "parse_max_pixels", "pixel_budget"]

# DCI 4K: every 4K video passes (3840x2160 UHD too); 8K and forged headers do not.
DEFAULT_MAX_PIXELS = 4096 * 2160

_budget: ContextVar[int] = ContextVar("spool_max_pixels", default=DEFAULT_MAX_PIXELS)


def current_max_pixels(max_pixels: int | None = None) -> int:
    """``max_pixels`` itself, or the budget in force where it is None; 0 means no limit."""
    value = _budget.get() if max_pixels is None else max_pixels
    if value < 0:
        raise ValueError(f"max_pixels: expected >= 0 (0: no limit), got {value}")
    return value


@contextmanager
def pixel_budget(max_pixels: int) -> Iterator[None]:
    """Within the block, readers built without ``max_pixels`` use this one (0: no limit)."""
    token = _budget.set(current_max_pixels(max_pixels))
    try:
        yield
    finally:
        _budget.reset(token)


def check_frame_size(path: str, width: int, height: int, max_pixels: int) -> None:
    """Raise ``VideoDecodeError`` for frames over ``max_pixels`` (0: no limit)."""
    if not max_pixels or width * height <= max_pixels:
        return
    from spool.video.io import VideoDecodeError  # io imports this module

    raise VideoDecodeError(
        f"{path}: the frames are {width}x{height} ({_pixels(width * height)}, "
        f"{width * height * 3 / 1e6:.0f} MB per decoded RGB frame), over the pixel budget of "
        f"{_pixels(max_pixels)}; if the file is genuine, raise the budget "
        f"(spool extract --max-pixels {width}x{height}; max_pixels= in Python)")


def parse_max_pixels(text: str) -> int:
    """``"3840x2160"``, ``"8294400"`` or ``"0"`` (no limit) -> a pixel count."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    value = int(match[1]) * int(match[2]) if match else int(text) if text.isdigit() else -1
    if value < 0 or (value == 0 and text != "0"):
        raise ValueError(f"expected WIDTHxHEIGHT (e.g. 3840x2160), a pixel count or 0 for no "
                         f"limit, got {text!r}")
    return value


def check_output_size(size: object, max_pixels: int) -> tuple[int, int] | None:
    """``size`` as a reader takes it: None, or ``(height, width)`` in whole pixels >= 1 within
    ``max_pixels`` (0: no limit); else ``ValueError`` naming it."""
    if size is None:
        return None
    try:
        height, width = (operator.index(x) for x in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):  # not a pair, or not of whole numbers
        raise ValueError(f"size: expected (height, width) in whole pixels, got {size!r}") from None
    if min(height, width) < 1:
        raise ValueError(f"size: expected (height, width) >= 1, got {size!r}")
    if max_pixels and height * width > max_pixels:
        raise ValueError(f"size: (height, width) = ({height}, {width}) is over the pixel budget of "
                         f"{_pixels(max_pixels)} (max_pixels)")
    return height, width


def _pixels(count: int) -> str:
    """A pixel count for people: megapixels, or pixels where that would read 0.0 MP."""
    return f"{count / 1e6:.1f} MP" if count >= 100_000 else f"{count:,} pixels"
