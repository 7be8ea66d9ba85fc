"""Training several demo models at once, one process each."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def map_in_processes(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(job) for job in jobs]``, run in ``workers`` processes when ``workers > 1``."""
    if workers <= 1:
        return [fn(job) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # spawn: a fresh interpreter per worker, no inherited thread pools.
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
    futures = [pool.submit(fn, job) for job in jobs]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)  # the first failure, not the first job's end
        for future in futures:
            if future.done() and future.exception() is not None:
                future.result()  # raises it
        return [future.result() for future in futures]
    except BrokenProcessPool as err:
        _stop(pool)
        left = sum(not f.done() or f.exception() is not None for f in futures)
        raise ChildProcessError(f"a worker process died (killed, or out of memory?) with {left} "
                                f"of {len(jobs)} jobs unfinished") from err
    except BaseException:  # Ctrl-C, SIGTERM, a job's error: stop the others now, not after
        _stop(pool)  # every job has run
        raise
    finally:
        pool.shutdown(wait=True)


def die_with_parent(parent: int) -> None:
    """In a worker: end when process ``parent`` does. A parent killed outright (kill -9, the
    out-of-memory killer) cannot stop its workers, which trained on, orphaned, beside the
    rerun. Linux: the kernel's parent-death signal; elsewhere a thread that watches."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        try:
            asked = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig,
                                                            signal.SIGKILL) == 0
        except (AttributeError, OSError):  # a libc without it: the thread below
            asked = False
        if os.getppid() != parent:  # gone before the signal was asked for
            os._exit(1)
        if asked:
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="spool-parent-watch").start()


def _stop(pool: Any) -> None:
    """Cancel the jobs not started and SIGTERM the workers: each stops as a signalled run does
    (no public way to reach them before Python 3.14's terminate_workers)."""
    processes = getattr(pool, "_processes", None) or {}  # shutdown drops the pool's reference
    pool.shutdown(wait=False, cancel_futures=True)
    for process in list(processes.values()):
        process.terminate()
    for process in list(processes.values()):  # not left to run their jobs out at exit
        process.join(30)
        if process.is_alive():  # one that outlives SIGTERM
            process.kill()
            process.join()
