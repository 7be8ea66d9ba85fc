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


BAR_AND_LINES = ("import logging, sys; from tqdm import tqdm; "
                 "from spool.runtime import configure_logging; configure_logging(); "
                 "bar = tqdm(total=3, desc='eval', mininterval=0); bar.update(1); "
                 "[logging.getLogger('spool').info('info line %d', i) for i in range(50)]; "
                 "logging.getLogger('spool').warning('warning line'); bar.update(1); bar.close()")


def test_messages_and_bars_sent_to_one_pipe_each_get_their_lines(tmp_path) -> None:
    """``spool ... 2>&1 | tee log``: stdout is buffered there, so an INFO line written
    through tqdm came out after the bar drawn again, on its line. And with stdout sent to a
    file of its own, the bars on stderr are not drawn again for every INFO line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    both = subprocess.run([sys.executable, "-c", BAR_AND_LINES], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, check=True).stdout.decode()
    lines = both.replace("\r", "\n").splitlines()
    assert all(f"info line {i}" in lines for i in range(50)) and "warning line" in lines, lines
    with open(tmp_path / "out.txt", "w") as out:
        err = subprocess.run([sys.executable, "-c", BAR_AND_LINES], stdout=out,
                             stderr=subprocess.PIPE, env=env, check=True).stderr.decode()
    assert err.count("eval:") <= 6, err  # drawn, updated, around the warning, closed
    assert (tmp_path / "out.txt").read_text().splitlines() == [f"info line {i}"
                                                                for i in range(50)]



def test_a_note_is_said_once_per_key_and_not_within_notes_said(monkeypatch, spool_log) -> None:
    """One mechanism says a note once per process (a loop over videos repeats the call), and
    keeps it quiet where it was said already (a DataLoader worker of a later epoch)."""
    import logging

    from spool import runtime

    monkeypatch.setattr(runtime, "_said", set())
    log = logging.getLogger("spool.test")
    with runtime.notes_said():
        runtime.warn_once(log, "muted")
    for video in ("a.mp4", "b.mp4", "a.mp4"):
        runtime.warn_once(log, f"labels of {video}", key=("labels", video))
        runtime.warn_once(log, "general note")
    runtime.warn_once(log, "muted")  # muted calls are not counted as said
    assert [r.getMessage() for r in spool_log.records] == [
        "labels of a.mp4", "general note", "labels of b.mp4", "muted"]


def _console(monkeypatch, rank: str):
    """The spool logger as `main` sets it up on torchrun rank ``rank`` (its handler made
    afresh, the test's own put back after)."""
    import logging

    from spool.runtime import configure_logging

    logger = logging.getLogger("spool")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setenv("RANK", rank)
    configure_logging()
    return logger


def test_notes_come_from_rank_0_and_each_ranks_own_messages_from_every_rank(
        monkeypatch, capsys) -> None:
    """Under torchrun every rank said every note on the settings ("no --checkpoint: the
    temporal layers are random", "labels are mapped by name"): 8 GPUs, 8 copies. A rank > 0
    says only its errors and its own messages (a video it skipped), with its rank."""
    from spool.runtime import EVERY_RANK

    for rank in ("0", "1"):
        logger = _console(monkeypatch, rank)
        logger.warning("note: the same on every rank")
        logger.info("progress of the job")
        logger.warning("skipping a.mp4: VideoDecodeError", extra=EVERY_RANK)
        logger.error("out of memory")
        said = capsys.readouterr()
        lines = said.out.splitlines() + said.err.splitlines()
        if rank == "0":
            assert sorted(lines) == sorted(["note: the same on every rank", "out of memory",
                                            "progress of the job",
                                            "skipping a.mp4: VideoDecodeError"]), lines
        else:
            assert sorted(lines) == ["[rank 1] out of memory",
                                     "[rank 1] skipping a.mp4: VideoDecodeError"], lines


def test_a_rank_stopped_by_rank_0_leaves_the_error_to_it(monkeypatch, capsys) -> None:
    """Rank 0's error at a step it runs for all (``on_rank0``) reached rank 1 as "rank 0
    stopped: ...": the one error said twice, in two wordings. Another error of rank 1 is said
    with its rank."""
    import logging

    from spool.cli import main
    from spool.commands import cache
    from spool.errors import RankZeroStopped

    monkeypatch.setattr(logging.getLogger("spool"), "handlers", [])
    monkeypatch.setenv("RANK", "1")
    for error, said in ((RankZeroStopped("rank 0 stopped: SpoolBusyError: busy"), ""),
                        (ValueError("--out: not writable"),
                         "spool cache: error (rank 1): --out: not writable\n")):
        def fail(args, error=error):
            raise error

        monkeypatch.setattr(cache, "run", fail)
        assert main(["cache", "--data", "x.txt", "--out", "y"]) == 2
        assert capsys.readouterr().err == said


def test_transformers_loading_bar_is_off_as_the_hubs_are(monkeypatch) -> None:
    """transformers reads HF_HUB_DISABLE_PROGRESS_BARS when imported, before `main` sets it:
    its "Loading weights" bar was drawn by every command that loads a named backbone."""
    from transformers.utils import logging as transformers_logging

    from spool.runtime import configure_logging

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    transformers_logging.enable_progress_bar()
    try:
        configure_logging()
        assert not transformers_logging.is_progress_bar_enabled()
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # asked for: kept
        transformers_logging.enable_progress_bar()
        configure_logging()
        assert transformers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.disable_progress_bar()


def test_a_video_a_rank_skipped_is_its_own_message(spool_log) -> None:
    """Ranks read different videos: what one of them could not read is said by that rank
    (marked EVERY_RANK), not dropped as a note every rank would repeat."""
    from spool.data.dataset import SkippedVideo, report_skipped
    from spool.runtime import warn_once

    report_skipped([SkippedVideo(0, "a.mp4", "VideoDecodeError", "not a video")], set())
    warn_once(logging_getter(), "b.mp4: pixels are not square", every_rank=True)
    warn_once(logging_getter(), "note: the same settings on every rank")
    marked = {r.getMessage(): getattr(r, "every_rank", False) for r in spool_log.records}
    assert marked == {"skipping a.mp4: VideoDecodeError: not a video": True,
                      "b.mp4: pixels are not square": True,
                      "note: the same settings on every rank": False}


def logging_getter():
    import logging

    return logging.getLogger("spool.test")


def test_a_containers_page_cache_counts_as_available(tmp_path, monkeypatch) -> None:
    """Under a cgroup limit, available memory was memory.max - memory.current, which counts
    the page cache an offloaded pass fills: the next long video could be refused for memory
    the kernel would give back. Its inactive file pages count as available now."""
    import spool.runtime as runtime

    gib = 2**30
    monkeypatch.setattr(runtime, "CGROUP", tmp_path)
    monkeypatch.setattr(runtime, "MEMINFO", tmp_path / "meminfo")
    (tmp_path / "meminfo").write_text(f"MemTotal: {64 * gib // 1024} kB\n"
                                      f"MemAvailable: {20 * gib // 1024} kB\n")
    (tmp_path / "memory.max").write_text(f"{8 * gib}\n")
    (tmp_path / "memory.current").write_text(f"{6 * gib}\n")  # 3 GiB of it page cache
    (tmp_path / "memory.stat").write_text(f"anon {3 * gib}\nfile {3 * gib}\n"
                                          f"active_file {gib}\ninactive_file {2 * gib}\n")
    assert runtime.available_memory_bytes() == 4 * gib  # 8 - 6 + 2
    (tmp_path / "memory.stat").unlink()  # unknown: the limit less all it uses, as before
    assert runtime.available_memory_bytes() == 2 * gib
    (tmp_path / "memory.max").write_text("max\n")  # no limit: the machine's
    assert runtime.available_memory_bytes() == 20 * gib
    (tmp_path / "meminfo").unlink()
    assert runtime.available_memory_bytes() is None
