"""Disk space for a token cache: checked and reserved before the first video is encoded."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from spool.data.cached_tokens import CACHE_META, TOKENS_NAME
from spool.errors import InsufficientSpaceError
from spool.io_utils import human_size, reserve_space

logger = logging.getLogger("spool.data.cache")


def make_room(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse to start when the disk cannot hold the tokens (a memory-mapped write to a full
    disk kills the process with SIGBUS, without a message). An old cache beside them that
    leaves too little room is removed, saying so."""
    need = int(np.prod(shape)) * dtype.itemsize
    have = path.stat().st_blocks * 512 if path.exists() else 0  # already allocated
    free = shutil.disk_usage(path.parent).free
    old = path.parent / TOKENS_NAME
    held = old.stat().st_blocks * 512 if old.is_file() else 0
    if free < need - have <= free + held:
        logger.warning(f"{path.parent}: no room for the new token cache ({human_size(need)}) "
                       f"beside the old one ({human_size(held)}, {human_size(free)} free): "
                       "removing the old cache and starting over")
        (path.parent / CACHE_META).unlink(missing_ok=True)  # first: never a cache without
        old.unlink()
        free = shutil.disk_usage(path.parent).free
    if need - have > free:
        raise InsufficientSpaceError(
            f"{path.parent}: the token cache needs {human_size(need)} ({shape[0]} videos x "
            f"{shape[1]} views x {shape[2]} frames x {shape[3]} tokens x {shape[4]} dims x "
            f"{dtype.itemsize} bytes, {human_size(have)} of it written already) but "
            f"{human_size(free)} is free there; free some space, cache fewer views or frames, "
            "use --dtype float16, or cache elsewhere (--out)")


def reserve_file(path: Path) -> None:
    """Allocate the whole file now, so that a disk filling up later fails no write to it
    (where the file system cannot, the check of the free space stands alone)."""
    size = path.stat().st_size
    try:
        reserve_space(path, size)
    except OSError as err:
        raise InsufficientSpaceError(f"{path.parent}: no space left for the token cache "
                                     f"({human_size(size)}): {err}") from err
