"""Shared benchmark helpers: machine description, alternating timings and docs/benchmarks.md
sections."""

from __future__ import annotations

import os
import platform
import re
import resource
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import torch

K = TypeVar("K", bound=Hashable)
HEADER = "# Benchmarks\n\nEvery table below was produced by the command given with it.\n"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) / 1024
    return float("inf")


NOTES_START = "<!-- notes: written by hand, kept when the section is regenerated -->"
NOTES_END = "<!-- /notes -->"
_NOTES = re.compile(rf"^{re.escape(NOTES_START)}\n.*?^{re.escape(NOTES_END)}\n?", re.S | re.M)


def alternate(runs: dict[K, Callable[[], object]], rounds: int) -> dict[K, list[float]]:
    """Seconds each of ``runs`` took per round, timed in turn in one process with the order
    flipping every round, so that load from other processes falls on each alike; round 0
    warms up and is dropped."""
    times: dict[K, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for r in range(rounds + 1):
        for name in (order if r % 2 else order[::-1]):
            start = time.perf_counter()
            runs[name]()
            if r:
                times[name].append(time.perf_counter() - start)
    return times


def update_section(path: str | os.PathLike, heading: str, body: str) -> None:
    """Replace the ``## heading`` section of ``path`` with ``body`` (or append it). Notes
    written by hand between ``NOTES_START`` and ``NOTES_END`` lines in the old section
    (an analysis of the table, say) are carried over, after the new body."""
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    old = pattern.search(text)
    notes = [m.group(0).rstrip("\n") for m in _NOTES.finditer(old.group(0))] if old else []
    section = "\n\n".join([f"## {heading}", body.strip(), *notes]) + "\n"
    if old:
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(out: str | os.PathLike | None, heading: str, body: str) -> None:
    """Print ``body``; with ``out`` (docs/benchmarks.md), also make it the ``heading``
    section there."""
    print(body)
    if out:
        update_section(out, heading, body)
