"""Frames a sampler picked, read a chunk at a time: each chunk's distinct frames once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def decode_chunks(indices: Sequence[int], size: int) -> Iterator[slice]:
    """Slices of ``indices`` holding at most ``size`` distinct frames each, to read a chunk at a
    time. A run of one repeated index (an fps above the video's) stays in one chunk: split,
    the next chunk would start behind the reader, which would seek back for it. A run can be
    long (a still frame held for minutes), so read and encode each chunk's distinct frames
    once and expand them (:func:`distinct_frames`)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size: expected a positive integer, got {size!r}")
    start, n = 0, len(indices)
    while start < n:
        stop, distinct = start + 1, 1
        while stop < n:
            new = indices[stop] != indices[stop - 1]
            if new and distinct == size:
                break
            distinct += new
            stop += 1
        yield slice(start, stop)
        start = stop


def distinct_frames(indices: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """The distinct frame indices of a chunk, ascending, and for each entry of ``indices`` its
    position among them: read (and encode) each frame once, then expand with ``x[positions]``."""
    distinct, positions = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    return distinct.tolist(), positions
