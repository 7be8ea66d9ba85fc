"""SIGTERM (a scheduler's, torchrun's) on the resumable commands: one line saying what was kept,
exit 143, no traceback (it killed them silently), and a rerun goes on from there."""

from __future__ import annotations

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
