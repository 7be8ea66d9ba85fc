"""Memory for ``bench/peers.py``: per-phase peak RSS of a child process, its address-space
cap, the estimates checked before a child is started, and what the machine has available."""

from __future__ import annotations

import ctypes
import os
import resource

from peers_models import HEADS, HIDDEN, L_TOKENS

GIB = 1024 ** 3
MIB = 1024 ** 2


class Memory:
    """Peak resident memory of this process, per phase.

    ``begin()`` returns freed heap memory to the OS (``malloc_trim``), records the current RSS
    and resets the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``, Linux;
    this also resets ``getrusage().ru_maxrss``). ``peak()`` reads the high-water mark
    (``VmHWM``); peak - RSS at ``begin()`` is what the phase needed on top of what was already
    resident (weights, inputs). Large tensors are ``mmap``ed by glibc and come back to the OS
    when freed, so the high-water mark sees every allocation that was live at once.
    """

    def __init__(self) -> None:
        self.libc = ctypes.CDLL("libc.so.6")
        self.page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        try:
            self._clear()
            self.resettable = True
        except OSError:
            self.resettable = False

    @staticmethod
    def _clear() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page_kb * 1024

    @staticmethod
    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def begin(self) -> int:
        self.libc.malloc_trim(0)
        start = self.rss()
        if self.resettable:
            self._clear()
        return start

    def peak(self) -> int:
        if self.resettable:
            return self.status("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def limit_memory(budget: int, mem: Memory) -> None:
    """Safety net: cap the address space so this process's RSS cannot pass ``budget``; an
    allocation beyond it fails with a RuntimeError (reported as OOM) instead of waking the
    kernel's OOM killer, which could pick someone else's process on this shared machine."""
    vm = mem.status("VmSize")
    limit = vm + max(budget - mem.rss(), 256 * MIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def estimate_memory(key: str, T: int, dense_per_n2: float = 240.0) -> int:
    """Rough upper estimate of a child's peak RSS in bytes, checked before it is started.
    ``dense_per_n2``: bytes per (F L)^2 of the dense attention, fitted from the smaller T's
    measured in the same run when there are any (``run``)."""
    base = int(0.8 * GIB)  # python + torch + transformers
    act = (T + 2) * L_TOKENS * HIDDEN * 4  # one [T+2, L, D] fp32 activation
    if key == "spool":
        params = (86_600_000 + 3 * 85_600_000) * 4
        return base + params + 20 * act + 600 * MIB  # blocked stack + backbone chunk of 32
    if key == "dense":
        N = (T + 2) * L_TOKENS
        # reference attention: the bool [H, N, N] mask and fp32 [H, N, N] scores/probabilities
        return int(dense_per_n2 * N * N) + 12 * act
    if key == "timesformer":
        n = 196 * T + 1
        scores = 3 * 4 * HEADS * (T * 197 * 197 + 196 * T * T)  # eager spatial + temporal
        return base + 121_300_000 * 4 + 20 * n * HIDDEN * 4 + scores
    if key == "videomae":
        n = 196 * T // 2
        return base + 86_300_000 * 4 + 20 * n * HIDDEN * 4  # SDPA (CPU flash): no N^2 buffer
    raise KeyError(key)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or ("alloc" in text and "memory" in text)
