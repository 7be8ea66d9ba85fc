"""torch.distributed set-up for ``torchrun``: gloo on CPU, NCCL on GPU, rank-0 helpers."""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from spool.runtime import resolve_device

T = TypeVar("T")


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
        raise OSError(f"rank 0 stopped: {message}")
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
