"""Process-wide settings: the device and dtype a job runs with, glibc's allocator, and the
notes a process says once."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys
import warnings
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "DTYPES", "EVERY_RANK", "available_memory_bytes", "configure_logging",
           "process_rank", "notes_said", "resolve_device", "resolve_dtype", "tune_cpu_allocator",
           "warn_once"]

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(name: str = "auto", index: int | None = None) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda`` -> a ``torch.device``; ``index``
    picks the GPU (a torchrun process's local rank)."""
    import torch

    if name not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {name!r}")
    use_cuda = torch.cuda.is_available() if name == "auto" else name == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for but torch.cuda.is_available() is False")
    if not use_cuda:
        return torch.device("cpu")
    if index is not None and index >= torch.cuda.device_count():
        # Else torch.cuda.set_device fails later with "invalid device ordinal".
        count = torch.cuda.device_count()
        raise ValueError(f"device: this process is local rank {index} but this machine has "
                         f"{count} GPU(s); start at most {count} processes per node "
                         f"(torchrun --nproc_per_node={count}), or pass --device cpu")
    return torch.device("cuda", index if index is not None else torch.cuda.current_device())


MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: this container's memory limit


def available_memory_bytes() -> int | None:
    """Memory this process can still take: the kernel's ``MemAvailable``, capped by a cgroup
    limit where there is one; None where neither can be read."""
    found = []
    with contextlib.suppress(OSError):
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            used = int((CGROUP / "memory.current").read_text())
            found.append(int(limit) - used + _inactive_file_bytes())
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _inactive_file_bytes() -> int:
    """The cgroup's page cache that the kernel drops first (what offloaded states and decoded
    files fill): not in use, as kubelet's working set counts memory; 0 where unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in (CGROUP / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "inactive_file":
                return int(value)
    return 0


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype: ``auto`` is bfloat16 on GPU and float32 on CPU (where bf16 matmuls
    are slow)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def autocast_to(dtype: torch.dtype, device: torch.device) -> torch.autocast:
    """A forward under ``torch.autocast`` in ``dtype`` on ``device`` (a no-op in float32)."""
    import torch

    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_applied = False


def tune_cpu_allocator() -> bool:
    """Make glibc reuse large freed blocks instead of mapping fresh pages for each tensor.

    glibc serves every allocation above 32 MiB (its largest mmap threshold) with new mmap'd
    pages that the kernel faults in and zeroes on first touch, and unmaps them on free. A
    temporal layer at base size makes several such tensors per call, so it pays that again
    every layer. With mmap off (``M_MMAP_MAX=0``) and no trimming the heap keeps and reuses
    them. The cost: freed memory stays with the process and is reused only where it fits, so
    peak RSS grows (docs/benchmarks.md has both sides measured).

    Called by the ``spool`` CLI; call it first thing in your own scripts for the same
    effect. Does nothing off Linux/glibc or with ``SPOOL_MALLOC_TUNING=0``. Returns whether
    the settings are in effect.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("SPOOL_MALLOC_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; trimming off first, so freed blocks are not handed back.
    _applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
                    and libc.mallopt(_M_MMAP_MAX, 0))
    return _applied


class _ConsoleHandler(logging.Handler):
    """Plain lines: INFO to stdout, warnings and errors to stderr, whichever streams are
    current when a message is emitted (test runners and notebooks replace them), each on a
    line of its own beside progress bars (:func:`print_line`)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            print_line(self.format(record), stream)
        except Exception:  # a closed stream must not end the job
            self.handleError(record)


def print_line(text: str, stream: TextIO | None = None) -> None:
    """``text`` on a line of its own in ``stream`` (stdout), progress bars shown on stderr
    cleared first and drawn again below (written plainly, a line landed on the end of a
    bar's). It is flushed before the bars come back: stdout is buffered in a pipe
    (``2>&1 | tee``). Where stdout goes elsewhere (a file) the bars are left alone: drawn again
    for every line, they filled stderr's log."""
    from tqdm import tqdm

    stream = sys.stdout if stream is None else stream
    with (tqdm.external_write_mode(file=stream) if _same_file(stream, sys.stderr)
          else contextlib.nullcontext()):
        stream.write(text + "\n")
        stream.flush()


def _same_file(a: TextIO, b: TextIO) -> bool:
    """Whether two streams reach the same file or terminal (the same object, or descriptors
    of one file; streams without a descriptor, as test runners' and notebooks', count as
    one, since where they go cannot be told)."""
    if a is b:
        return True
    try:
        one, other = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, OSError, ValueError):
        return True
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def process_rank() -> int:
    """This process's rank under ``torchrun`` (``RANK``); 0 when run alone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def refuse_torchrun(command: str, advice: str) -> int | None:
    """For a command that runs in one process (each rank would redo it all): None when run
    alone; under torchrun 2 on ranks > 0, while rank 0 says why once (a ``ValueError``)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    if world <= 1:
        return None
    if process_rank() > 0:
        return 2
    raise ValueError(f"{command} runs in a single process; run it without torchrun ({advice})")


_ON = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's truthy values
# ``extra=`` of a message that each rank has its own of (about a video it read, a claim of
# its own, itself stalled): said by every rank under torchrun, where other messages (notes
# on the settings, which every rank reaches alike) are rank 0's alone.
EVERY_RANK = {"every_rank": True}


def rank_prefix() -> str:
    """``"[rank N] "`` on a torchrun rank N > 0, else nothing: what starts its own lines."""
    rank = process_rank()
    return f"[rank {rank}] " if rank else ""


def _own_messages(record: logging.LogRecord) -> bool:
    """A rank > 0's filter: its errors and the messages marked :data:`EVERY_RANK`."""
    return record.levelno >= logging.ERROR or getattr(record, "every_rank", False)


def configure_logging() -> None:
    """Spool's library messages as terse lines, once under torchrun (rank 0's, and each
    rank's own: :data:`EVERY_RANK`, prefixed with its rank); transformers' chatter off."""
    logger = logging.getLogger("spool")
    rank = process_rank()
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter(f"{rank_prefix()}%(message)s"))
        if rank:
            handler.addFilter(_own_messages)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if rank > 0:  # under torchrun, library warnings once (rank 0's), not per rank
        warnings.simplefilter("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1").upper() in _ON:
        # transformers read it when imported, before this: its "Loading weights" bar stayed
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


_said: set[Hashable] = set()
_muted: list[bool] = []


def warn_once(log: logging.Logger, message: str, key: Hashable = None,
              every_rank: bool = False) -> None:
    """Log ``message`` as a warning the first time ``key`` (the message itself by default)
    comes up in this process: a loop over videos repeats the call. Silent within
    :func:`notes_said`. ``every_rank``: a note on this rank's own video (:data:`EVERY_RANK`)."""
    key = message if key is None else key
    if key not in _said and not _muted:
        _said.add(key)
        log.warning(message, extra=EVERY_RANK if every_rank else None)


@contextlib.contextmanager
def notes_said() -> Iterator[None]:
    """Within it, :func:`warn_once` says nothing: the notes were said already, e.g. by an
    earlier epoch's DataLoader workers (each epoch's start afresh)."""
    _muted.append(True)
    try:
        yield
    finally:
        _muted.pop()
