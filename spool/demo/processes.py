"""Training several demo models at once, one process each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def map_in_processes(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(job) for job in jobs]``, run in ``workers`` processes when ``workers > 1``."""
    if workers <= 1:
        return [fn(job) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter per worker, no inherited thread pools.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))
