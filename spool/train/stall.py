"""Saying so when training stands still under torch.distributed: a rank stuck in a collective
waits for the others without a word until torch's timeout (30 min with gloo), and a stopped or
hung process is not a dead one to torchrun."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import torch.distributed as dist

from spool.runtime import EVERY_RANK

logger = logging.getLogger(__name__)
STALL_AFTER_S = 300.0
_state = {"loops": 0, "last": time.monotonic(), "thread": None}
_lock = threading.Lock()


def beat() -> None:
    """A step (or a validation batch) finished."""
    _state["last"] = time.monotonic()


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """While inside (nested: validation within a training epoch), a daemon thread logs each
    time :func:`beat` has not been called for ``STALL_AFTER_S``."""
    with _lock:
        _state["loops"] += 1
        beat()
        if _state["thread"] is None:
            _state["thread"] = threading.Thread(target=_watch, name="spool-stall-watch",
                                                daemon=True)
            _state["thread"].start()
    try:
        yield
    finally:
        with _lock:
            _state["loops"] -= 1


def _watch() -> None:
    said = None  # the stall already said: the beat it followed
    while True:
        time.sleep(min(30.0, STALL_AFTER_S / 4))
        idle = time.monotonic() - _state["last"]
        if _state["loops"] and idle >= STALL_AFTER_S and said != _state["last"]:
            said = _state["last"]
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            who = "" if rank else "rank 0: "  # another rank's lines start with its rank
            logger.warning(f"{who}no training step finished for {idle / 60:.0f} min: waiting "
                           "for another rank (still working, or hung); torch stops the job "
                           "when its collective timeout runs out", extra=EVERY_RANK)
