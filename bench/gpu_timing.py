"""Timing on a device for ``bench/gpu_checks.py``: the run's budget, synchronised timings,
peak memory, the matmul peak, CUDA graph replay and device-time stamps."""

from __future__ import annotations

import time

import torch


class Clock:
    """Wall-clock budget of the whole run."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.perf_counter() + budget_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def failure(err: BaseException) -> str:
    """A failed cell's entry in the tables."""
    if is_oom(err):
        return "out of device memory"
    return f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def timed(fn, device: torch.device, runs: int, max_s: float) -> list[float]:
    """Seconds per call of ``fn`` after one warm-up call (where compilation happens): at least
    one run, at most ``runs``, stopping once ``max_s`` of runs are spent."""
    fn()
    sync(device)
    xs: list[float] = []
    while len(xs) < runs and sum(xs) < max_s:
        t = time.perf_counter()
        fn()
        sync(device)
        xs.append(time.perf_counter() - t)
    return xs


def peak_memory(device: torch.device, fn) -> int | None:
    """Peak bytes allocated on ``device`` while ``fn`` runs (None off CUDA)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of the best of ``repeats`` n x n matmuls in ``dtype``."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n ** 3 / min(timed(lambda: a @ b, device, repeats, 30.0))


def cuda_graphed(fn, device: torch.device):
    """``fn()`` (inputs captured by closure, so static) replayed from one CUDA graph: no kernel
    launches from Python. Off CUDA it returns ``fn`` itself (smoke tests of the plumbing)."""
    if device.type != "cuda":
        return fn
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up: library workspaces, Spool's cached masks
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out
    return replay


class Stamps:
    """Device-time intervals: CUDA events on a GPU, perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pairs: dict[str, list] = {}

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, name: str, start, end) -> None:
        self.pairs.setdefault(name, []).append((start, end))

    def totals(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {k: sum(a.elapsed_time(b) / 1e3 for a, b in v) for k, v in self.pairs.items()}
        return {k: sum(b - a for a, b in v) for k, v in self.pairs.items()}
