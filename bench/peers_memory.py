"""Memory for ``bench/peers.py``: per-phase peak RSS of a child process, its address-space
cap, the estimates checked before a child is started, and what the machine has available."""

from __future__ import annotations

import ctypes
import os
import resource

import peers_models as pm  # pm.DIMS: switched by use_dims, so read at call time

GIB = 1024 ** 3
MIB = 1024 ** 2


class Memory:
    """Peak resident memory of this process, per phase.

    ``begin()`` returns freed heap memory to the OS (``malloc_trim``), records the current RSS
    and resets the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``, Linux;
    this also resets ``getrusage().ru_maxrss``). ``peak()`` reads the high-water mark
    (``VmHWM``); peak - RSS at ``begin()`` is what the phase needed on top of what was already
    resident (weights, inputs). The high-water mark sees every allocation that was live at
    once; with ``tune_cpu_allocator`` (mmap off) it also sees the heap's fragmentation, which
    is part of what that allocator setting costs.
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


def forward_bytes(key: str, T: int, dense_per_n2: float = 240.0) -> int:
    """Rough estimate of what one forward needs on top of the weights and the input, in bytes
    (what the tables report as peak memory). ``dense_per_n2``: bytes per (F L)^2 of the dense
    attention, fitted from the smaller T's measured in the same run when there are any."""
    d = pm.DIMS
    L = pm.tokens_per_frame(1)
    act = (T + 2) * L * d.hidden * 4  # one [T+2, L, D] fp32 activation
    if key == "spool":
        # The w=16 blocked stack (the largest of the group) measured ~26 activations at
        # T = 8 .. 128, plus a backbone chunk of 32 frames (~600 MiB at base size).
        return 28 * act + 24 * 32 * L * d.hidden * 4
    if key == "dense":
        N = (T + 2) * L
        # reference attention: the bool [H, N, N] mask and fp32 [H, N, N] scores/probabilities
        return int(dense_per_n2 * N * N)
    P = (d.image // d.peer_patch) ** 2  # patches per frame
    if key == "timesformer":
        n = P * T + 1
        # eager attention: spatial [T, H, P+1, P+1] and temporal [P, H, T, T] scores, ~3 live
        scores = 3 * 4 * d.peer_heads * (T * (P + 1) ** 2 + P * T * T)
        return 20 * n * d.peer_hidden * 4 + scores
    if key == "videomae":
        return 20 * (P * T // 2) * d.peer_hidden * 4  # SDPA (CPU flash): no N^2 buffer
    raise KeyError(key)


def estimate_memory(key: str, T: int, params: int, dense_per_n2: float = 240.0) -> int:
    """Rough estimate of a child's peak RSS in bytes, checked before it is started: Python +
    torch + transformers, the fp32 weights of the child's ``params`` and one forward. A child
    started anyway that goes past the cap fails an allocation (``limit_memory``), and that is
    reported as its OOM."""
    return int(0.8 * GIB) + 4 * params + forward_bytes(key, T, dense_per_n2)


def dense_bytes_per_n2(res: dict) -> float:
    """Bytes per (F L)^2 of the dense-masked temporal stack, from its largest measured T
    (240 before any is measured: a bool and four fp32 [H, N, N] tensors, H = 12)."""
    done = [(T, r["memory"]) for (k, T), r in res["rows"].items()
            if k == "dense_cached" and r["memory"]]
    if not done:
        return 240.0
    T, mem = max(done)
    return 1.1 * mem / ((T + 2) * pm.tokens_per_frame(1)) ** 2


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or ("alloc" in text and "memory" in text)
