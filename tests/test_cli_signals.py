"""SIGTERM (a scheduler's, torchrun's) on the resumable commands: one line saying what was kept,
exit 143, no traceback (it killed them silently), and a rerun goes on from there."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_backbone, tiny_model_args

from spool.video import write_video


def _wait_for(proc: subprocess.Popen, ready, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never got going"
        time.sleep(0.05)


@pytest.mark.parametrize("to_group", [False, True])
def test_sigterm_says_what_was_kept_and_a_rerun_goes_on(tmp_path: Path, to_group: bool) -> None:
    rng = np.random.default_rng(0)
    videos = [write_video(tmp_path / f"v{i:02d}.mkv",
                          rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
                          fps=5, codec="ffv1") for i in range(60)]
    (tmp_path / "bb.json").write_text(json.dumps(tiny_backbone()))
    out = tmp_path / "out"
    # The signal must land before the last video is done: at 32 px the tiny model took 25 ms
    # a video, and a loaded machine let the other 38 finish first. At 224 px, 80 ms.
    cmd = [sys.executable, "-m", "spool.cli", "extract", *map(str, videos), "--out", str(out),
           "--no-progress", "--num-frames", "2", *tiny_model_args(tmp_path / "bb.json"),
           "--model", "image_size=224", "--device", "cpu"]  # a GPU would finish first
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=to_group)
    _wait_for(proc, lambda: len(list(out.glob("*.safetensors"))) >= 2)
    if to_group:  # Ctrl-C's way: every process of the job
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    assert ("spool extract: terminated (SIGTERM); finished videos are kept (with "
            "--offload-dir, a long video's finished layers too), and the same command goes on "
            "from there") in stderr
    kept = len(list(out.glob("*.safetensors")))
    assert 2 <= kept < len(videos)
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    done = re.search(r"(\d+) extracted, (\d+) already done", rerun.stdout)
    assert done and int(done[1]) + int(done[2]) == len(videos) and int(done[2]) == kept


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver workers, /proc")
def test_a_killed_main_process_takes_its_dataloader_workers_with_it(tmp_path: Path) -> None:
    """kill -9 (or the OOM killer) on `spool cache` or `spool train` left the forkserver and
    its DataLoader workers running for good (270-390 MB each): torch's watchdog watches a
    worker's parent, the forkserver, which lives on while the workers hold its pipe."""
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    lines = [f"{write_video(tmp_path / f'v{i:03d}.mkv', frames, fps=5, codec='ffv1')} {i % 2}"
             for i in range(400)]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "bb.json").write_text(json.dumps(tiny_backbone()))
    cmd = [sys.executable, "-m", "spool.cli", "cache", "--data", str(tmp_path / "list.txt"),
           "--out", str(tmp_path / "c"), "--num-frames", "2", "--num-workers", "2",
           "--batch-size", "1", "--device", "cpu", "--model", "image_size=32",
           "--model", f"backbone_config=@{tmp_path / 'bb.json'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        _wait_for(proc, lambda: len(_descendants(proc.pid)) >= 3)  # forkserver + 2 workers
        time.sleep(1.0)  # the workers' watch threads are started in their init
        below = _descendants(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in below if _alive(p)], "DataLoader workers outlived the job"
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left: the suite leaks none
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_stalled_training_step_is_said(monkeypatch, spool_log):
    """Under torchrun a hung rank left the others in a collective for torch's 30 minutes
    without a word (DDP audit); a beat per step keeps the watch quiet, and outside a loop it
    says nothing."""
    import time

    from spool.train import stall

    monkeypatch.setattr(stall, "STALL_AFTER_S", 0.2)
    monkeypatch.setattr(stall, "_state", {"loops": 0, "last": time.monotonic(), "thread": None})
    with stall.watching():
        for _ in range(12):
            time.sleep(0.05)
            stall.beat()
    time.sleep(0.4)  # out of the loop: nothing to watch
    assert "no training step finished" not in spool_log.text
    with stall.watching():
        time.sleep(0.6)
    assert "rank 0: no training step finished for 0 min: waiting for another rank (still " \
           "working, or hung)" in spool_log.text
    assert spool_log.text.count("no training step finished") == 1  # once per stall
