"""torch.distributed set-up for ``torchrun``: gloo on CPU, NCCL on GPU, rank-0 helpers."""

from __future__ import annotations

import datetime
import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from spool.errors import RankZeroStopped
from spool.runtime import resolve_device

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its device, whether it logs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto", timeout: datetime.timedelta | None = None
                      ) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``), or run alone when they are absent.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``. ``timeout``: how long a
    collective waits for the other ranks (torch's default, 10 min for NCCL, 30 for gloo).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
    return DistInfo(rank, world, local_rank, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        # A DDP wrapper in a reference cycle keeps the group alive past destroy_process_group;
        # freed at exit instead, gloo's threads abort the process (SIGABRT) now and then.
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wait_for_ranks(what: str, say_every_s: float = 600.0) -> None:
    """A barrier that rank 0 waits at aloud: every ``say_every_s`` it logs which ranks have
    not arrived (still at ``what``, or hung: a stopped process is not a dead one to torchrun).
    Polled, so a signal stops the wait at once."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    store, rank = dist.distributed_c10d._get_default_store(), dist.get_rank()
    store.set(f"spool/arrived/{what}/{rank}", "1")
    work, start = dist.barrier(async_op=True), time.monotonic()
    said = start
    while not work.is_completed():
        time.sleep(0.2)
        if rank == 0 and time.monotonic() - said >= say_every_s:
            said = time.monotonic()
            late = [r for r in range(dist.get_world_size())
                    if not store.check([f"spool/arrived/{what}/{r}"])]
            if late:
                logger.warning(f"rank 0 finished {what}; waiting {(said - start) / 60:.0f} min "
                               f"for rank {', '.join(map(str, late))} (still working, or hung)")
    work.wait()


def on_rank0(is_main: bool, fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 only (``is_main``); if it fails, every rank stops (the others would
    wait for rank 0 forever)."""
    result, error = None, None
    if is_main:
        try:
            result = fn()
        except Exception as err:  # any error: a KeyError too would leave them waiting
            error = err
    message = broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise RankZeroStopped(f"rank 0 stopped: {message}")
    return result


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks (itself without torch.distributed); NCCL reduces on the
    GPU, so the sum travels through it and comes back to ``tensor``'s device."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    moved = tensor.to(device)
    dist.all_reduce(moved)
    return moved.to(tensor.device)
