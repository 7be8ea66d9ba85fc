"""Stopping a training run on SIGINT / SIGTERM: finish the step, save a checkpoint, exit.

While :class:`StopSignals` is active the two signals only set a flag; the trainer checks it
after every step (under DDP every rank takes the maximum over all ranks, so they all stop
after the same step), saves a checkpoint and raises :class:`TrainingInterrupted`, which the
command line turns into exit code 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from spool.train import stall

logger = logging.getLogger(__name__)
T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# torchrun passes a signal on to its workers, which may have had it already from the
# terminal: a repeat this soon is the same request, not a second Ctrl-C.
_REPEAT_S = 2.0


class TrainingInterrupted(Exception):
    """A run stopped by a signal after saving a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self):  # pickled from a worker process (the demo's) to its parent
        return type(self), (self.signum, str(self))


class StopSignals:
    """Context manager: SIGINT / SIGTERM set :attr:`received` (the first signal's number)
    instead of ending the process; a second Ctrl-C later on quits at once
    (``KeyboardInterrupt``). Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received, self._at = signum, time.monotonic()
            if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
                again = " again" if signum == signal.SIGINT else ""  # a scheduler's SIGTERM
                logger.warning(f"{signal.Signals(signum).name}: stopping after this step and "
                               f"saving a checkpoint (Ctrl-C{again} to quit at once)")
        elif signum == signal.SIGINT and time.monotonic() - self._at > _REPEAT_S:
            raise KeyboardInterrupt


def agreed_stop(received: int | None, device: torch.device) -> int | None:
    """The signal every rank stops for: the largest any rank has received (None: go on).
    One tiny all-reduce per step under torch.distributed."""
    return _agree(received, False, device)[0]


def _agree(received: int | None, more: bool, device: torch.device) -> tuple[int | None, bool]:
    """:func:`agreed_stop`, and whether any rank has ``more`` batches."""
    if not (dist.is_available() and dist.is_initialized()):
        return received, more
    flags = torch.tensor([received or 0, int(more)], dtype=torch.int32, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    signum, more = flags.tolist()
    return signum or None, bool(more)


def until_stopped(loader: Iterable[T], signals: StopSignals, stop: Callable[[int], object],
                  device: torch.device) -> Iterator[T]:
    """``loader``'s batches, each once every rank has fetched its own and none has a stop
    signal; after the caller's step on it, again unless one came meanwhile (a tiny
    all-reduce each time under torch.distributed). Else ``stop`` is called with the signal
    all agree on (it saves a checkpoint and raises :class:`TrainingInterrupted`). A
    scheduler's SIGTERM reaches every process of the job, the DataLoader workers too: a batch
    that fails to load after it is not an error, and every rank stops at the same whole step
    (a rank whose loader failed while another's went on to a step would wait in different
    collectives). Ranks may hold different numbers of batches (validation shards): one that
    has run out takes part in the agreements until every rank has."""
    def check(more: bool) -> bool:
        signum, any_more = _agree(signals.received, more, device)
        stall.beat()
        if signum:
            stop(signum)
        return any_more

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    with stall.watching() if distributed else contextlib.nullcontext():
        yield from _agreed_batches(loader, signals, check)


def _agreed_batches(loader: Iterable[T], signals: StopSignals, check: Callable[[bool], bool]
                    ) -> Iterator[T]:
    batches, more = None, True
    while True:
        if more:
            try:  # starting the workers too: a group SIGTERM may kill their forkserver
                batches = iter(loader) if batches is None else batches
                batch = next(batches)
            except StopIteration:
                more = False
            except Exception:
                if signals.received is None:
                    raise
                check(True)  # this rank's signal is among those agreed on: it stops here
                raise
        if not check(more):
            return
        if more:
            yield batch
        check(more)  # one that came during the caller's step


@contextlib.contextmanager
def stop_on_failure(signals: StopSignals, stop: Callable[[int], object]) -> Iterator[None]:
    """An ``Exception`` inside after a stop signal calls ``stop`` with the signal (it saves a
    checkpoint and raises :class:`TrainingInterrupted`): whatever failed, the finished steps
    are kept. One process only: under torch.distributed the other ranks would not take part,
    so the error stands (a loader that dies of the signal is :func:`until_stopped`'s)."""
    try:
        yield
    except TrainingInterrupted:  # stopped already (in validation): saved once, said once
        raise
    except Exception:
        if signals.received is None or (dist.is_available() and dist.is_initialized()):
            raise
        stop(signals.received)
        raise
