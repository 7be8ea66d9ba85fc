"""Two CPU processes (torchrun, gloo) train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_MODEL, final_weights, read_epochs, read_steps, tiny_video_dataset

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def _train_with_one_and_two_processes(tmp_path: Path, config: dict) -> tuple[Path, Path]:
    """Run directories of ``config`` trained by one process and by a 2-rank torchrun."""
    (tmp_path / "run.json").write_text(json.dumps(config))
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "spool.train", "--config", "run.json", "--out-dir", str(one)],
         tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          "-m", "spool.train", "--config", "run.json", "--out-dir", str(two)], tmp_path)
    return one, two


def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    root = tiny_video_dataset()
    # Augmentation on (it is seeded per sample); dropout off: its masks depend on how the
    # batch is split over ranks, so only dropout-free runs can agree bit for bit.
    config = dict(train_data=str(root / "train.txt"), val_data=str(root / "val.txt"),
                  model=dict(TINY_MODEL), num_frames=4, epochs=2, batch_size=4, lr=3e-3,
                  warmup_epochs=0.5, num_workers=1, tensorboard=False, quiet=True, seed=7,
                  device="cpu")
    one, two = _train_with_one_and_two_processes(tmp_path, config)

    steps_one, steps_two = read_steps(one), read_steps(two)
    assert [s for s, _ in steps_one] == [s for s, _ in steps_two] == list(range(1, 9))
    torch.testing.assert_close([x for _, x in steps_two], [x for _, x in steps_one],
                               rtol=1e-5, atol=1e-6)
    a, b = final_weights(one), final_weights(two)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    # Epoch metrics are reduced over both ranks: the same numbers as the single process.
    for ra, rb in zip(read_epochs(one), read_epochs(two), strict=True):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            assert abs(float(ra[key]) - float(rb[key])) < 1e-5, key


def _rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun ``parent`` started (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == parent:  # the parent pid
            for item in environ:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(stat.parent.name)
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="finds the ranks through /proc")
def test_a_signal_to_one_rank_stops_all_at_the_same_step(tmp_path: Path) -> None:
    root = tiny_video_dataset()
    # 40 steps: the signal must land before the last one (as in test_train_interrupt.py).
    config = dict(train_data=str(root / "train.txt"), model=dict(TINY_MODEL), num_frames=4,
                  epochs=10, batch_size=4, lr=3e-3, warmup_epochs=0.5, num_workers=0,
                  tensorboard=False, quiet=True, seed=7, device="cpu")
    (tmp_path / "run.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "spool.train", "--config", "run.json",
                "--out-dir", str(run)]
    proc = subprocess.Popen(torchrun, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "steps.csv").is_file() or len(
                (run / "steps.csv").read_text().splitlines()) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        os.kill(_rank_pids(proc.pid)[1], signal.SIGTERM)  # rank 1 only
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = read_steps(run)[-1][0]
    assert stopped < 40, out
    assert f"interrupted at step {stopped}; checkpoint saved to" in out
    state = json.loads((run / "checkpoints" / f"step_{stopped:08d}" /
                        "trainer_state.json").read_text())
    assert state["step"] == stopped and len(state["rng"]) == 2  # both ranks saved there
    _run([*torchrun, "--resume", "auto"], tmp_path)
    assert [s for s, _ in read_steps(run)] == list(range(1, 41))


def test_two_process_frames_training_weighs_every_frame_alike(tmp_path: Path) -> None:
    """Frames task, whole videos of different lengths, batch 2: each rank's loss was its own
    videos' mean, averaged over ranks, so a short video's frames weighed more than one
    process gives them (step 1: loss 2.222237 vs 2.222037)."""
    from train_helpers import segmentation_videos

    root = segmentation_videos((300, 320), (10, 20))
    config = dict(task="frames", train_data=str(root / "train.csv"), model=dict(TINY_MODEL),
                  epochs=1, batch_size=2, lr=3e-3, warmup_epochs=0.5, num_workers=0,
                  tensorboard=False, quiet=True, seed=1, device="cpu")
    one, two = _train_with_one_and_two_processes(tmp_path, config)
    steps_one, steps_two = read_steps(one), read_steps(two)
    assert [s for s, _ in steps_one] == [s for s, _ in steps_two] == [1, 2]
    torch.testing.assert_close([x for _, x in steps_two], [x for _, x in steps_one],
                               rtol=1e-6, atol=1e-7)
    a, b = final_weights(one), final_weights(two)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
