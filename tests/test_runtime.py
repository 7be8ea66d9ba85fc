"""The CLI's allocator setting: applied on glibc, skipped when opted out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = ("import ctypes; from spool.runtime import tune_cpu_allocator; "
        "ok = tune_cpu_allocator(); libc = ctypes.CDLL('libc.so.6'); "
        "libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p; "
        # Where a 64 MiB block comes from: below the program break = the reusable heap;
        # above it = a fresh mmap (glibc's default for blocks over its mmap threshold).
        "a = libc.malloc(64 << 20); print(ok, a < libc.sbrk(0))")


def _run(env_value: str | None) -> list[str]:
    env = dict(os.environ)
    env.pop("SPOOL_MALLOC_TUNING", None)
    if env_value is not None:
        env["SPOOL_MALLOC_TUNING"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True,
                          text=True, check=True).stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_allocator_tuning_applies_and_can_be_turned_off() -> None:
    assert _run(None) == ["True", "True"]
    assert _run("0") == ["False", "False"]


@pytest.mark.parametrize("rank,shown", [("0", 1), ("1", 0)])
def test_library_warnings_show_on_rank_0_only(monkeypatch, rank: str, shown: int) -> None:
    import warnings

    from spool.runtime import configure_logging

    monkeypatch.setenv("RANK", rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_logging()
        warnings.warn("broadcast_buffers is deprecated", FutureWarning, stacklevel=1)
    assert len(caught) == shown


def test_a_local_rank_beyond_the_gpus_is_refused_by_name(monkeypatch) -> None:
    """torchrun with more processes per node than GPUs: a clear error, not CUDA's "invalid
    device ordinal" from set_device."""
    import torch

    from spool.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", 0) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"local rank 1 .* 1 GPU.*nproc_per_node=1.*cpu"):
        resolve_device("auto", 1)
    assert resolve_device("cpu", 1) == torch.device("cpu")


def test_a_message_during_a_progress_bar_gets_a_line_of_its_own(monkeypatch, capsys) -> None:
    """A warning written while a bar was shown was appended to the bar's line ('eval:
    33%|... 2.49video/s]skipping a.mp4: ...'), so a terminal showed it garbled and the next
    redraw wrote over it."""
    import logging

    from tqdm import tqdm

    from spool.runtime import configure_logging

    configure_logging()
    with tqdm(total=3, desc="eval", file=sys.stderr, mininterval=0) as bar:
        bar.update(1)
        logging.getLogger("spool").warning("skipping a.mp4: VideoDecodeError: not a video")
        bar.update(1)
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert "skipping a.mp4: VideoDecodeError: not a video" in lines, lines

