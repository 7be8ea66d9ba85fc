"""One run per training directory, and a run stopped by a signal saves and resumes."""

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
from train_helpers import final_weights, read_steps, train_config_dict

from spool.cli import main
from spool.errors import SpoolBusyError
from spool.train.config import TrainConfig
from spool.train.trainer import LOCK_NAME, Trainer, train

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_a_second_run_into_the_same_directory_fails(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    first = Trainer(TrainConfig(**train_config_dict(run)))  # holds run/ until it ends
    try:
        with pytest.raises(SpoolBusyError, match=f"process {os.getpid()} on "):
            Trainer(TrainConfig(**train_config_dict(run)))
        config = tmp_path / "run.json"
        config.write_text(json.dumps(train_config_dict(run)))
        assert main(["train", "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"{run}: another training run is using it (process {os.getpid()}" in err
    finally:
        first.close()
    assert not (run / "steps.csv").read_text().strip().count("\n")  # the header alone
    # A lock whose process is gone (a crash) is taken over.
    crash = (f"import os; from spool.io_utils import lock_directory; "
             f"lock_directory({str(run)!r}, 'run', {LOCK_NAME!r}); os._exit(9)")
    assert subprocess.run([sys.executable, "-c", crash], env=_env()).returncode == 9
    assert (run / LOCK_NAME).is_file()
    Trainer(TrainConfig(**train_config_dict(run, epochs=1))).fit()
    assert [s for s, _ in read_steps(run)] == [1, 2, 3, 4]
    assert not (run / LOCK_NAME).exists()


# 40 steps, a DataLoader worker. The signal must land before the last step: with 16 steps the
# 14 after it took 1.35 s, which a test process starved on a loaded machine could miss.
FIELDS = dict(epochs=10, num_workers=1, device="cpu")
STEPS = 40


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    train(TrainConfig(**train_config_dict(out, **FIELDS)))
    return out


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.parametrize("signum,to_group", [(signal.SIGINT, True), (signal.SIGTERM, False),
                                             (signal.SIGTERM, True)])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes(tmp_path: Path, uninterrupted: Path,
                                                         signum: int, to_group: bool) -> None:
    # Ctrl-C in a terminal reaches the whole process group (the DataLoader worker too), and
    # so does a scheduler's SIGTERM (SLURM's preemption) or only the main process (torchrun's).
    run = tmp_path / "run"
    (tmp_path / "run.json").write_text(json.dumps(train_config_dict(run, **FIELDS)))
    proc = subprocess.Popen([sys.executable, "-m", "spool.cli", "train", "--config", "run.json"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _lines(run / "steps.csv") < 3:  # header + 2 steps
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, out + err
    stopped = read_steps(run)[-1][0]
    assert 2 <= stopped < STEPS
    checkpoint = run / "checkpoints" / f"step_{stopped:08d}"
    assert (f"interrupted at step {stopped}; checkpoint saved to {checkpoint}; resume with "
            "--resume auto") in err
    assert "Traceback" not in err and not (run / LOCK_NAME).exists()

    assert main(["train", "--config", str(run / "train_config.json"), "--resume", "auto"]) == 0
    assert [s for s, _ in read_steps(run)] == list(range(1, STEPS + 1))
    # As the uninterrupted run, up to the round-off by which processes differ (README).
    steps, full_steps = read_steps(run), read_steps(uninterrupted)
    assert [s for s, _ in steps] == [s for s, _ in full_steps]
    torch.testing.assert_close([x for _, x in steps], [x for _, x in full_steps],
                               rtol=1e-5, atol=1e-6)
    a, b = final_weights(uninterrupted), final_weights(run)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_a_stop_agreed_at_an_epochs_end_checkpoints_once(tmp_path: Path, monkeypatch) -> None:
    """A signal the ranks agreed on at an epoch's end saved the epoch's checkpoint twice (the
    epoch-end one, then the stop's, the same step)."""
    from spool.train import checkpoint, signals

    saved = []
    real = checkpoint.save_checkpoint

    def counted(path, *args, **kwargs):
        saved.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", counted)
    monkeypatch.setattr(signals, "agreed_stop", lambda received, device: signal.SIGTERM)
    with pytest.raises(signals.TrainingInterrupted):
        Trainer(TrainConfig(**train_config_dict(tmp_path / "run", epochs=3))).fit()
    assert saved == ["step_00000004"]


def test_a_new_run_does_not_replace_a_finished_runs_model(tmp_path: Path) -> None:
    """With its checkpoints deleted (for space), a finished run's model/, results.json and
    logs were replaced by a new run into the same folder, exit 0; --resume auto said
    "starting from scratch" and did the same."""
    import shutil

    run = tmp_path / "run"
    Trainer(TrainConfig(**train_config_dict(run, epochs=1))).fit()
    shutil.rmtree(run / "checkpoints")
    weights = (run / "model" / "model.safetensors").read_bytes()
    for resume in (None, "auto"):
        with pytest.raises(ValueError, match=r"holds an earlier run's model and results\.json "
                                             r"and no checkpoint to continue it from"):
            Trainer(TrainConfig(**train_config_dict(run, epochs=1, resume=resume))).fit()
    assert (run / "model" / "model.safetensors").read_bytes() == weights


def test_a_diverging_run_stops_before_nan_weights(tmp_path: Path, capsys) -> None:
    """At --lr 1e10 the loss was NaN from step 2 and the run went on to exit 0, saving a
    model with NaN weights that eval and extract then used."""
    from spool.errors import TrainingDivergedError

    run = tmp_path / "run"
    config = train_config_dict(run, epochs=3, lr=1e10)
    with pytest.raises(TrainingDivergedError, match=r"^step \d+: the loss is nan at lr .*: "
                                                    r"training diverged"):
        Trainer(TrainConfig(**config)).fit()
    assert not (run / "model").exists()
    (tmp_path / "run.json").write_text(json.dumps(config))
    assert main(["train", "--config", str(tmp_path / "run.json"), "--resume", "auto"]) == 2
    assert "training diverged" in capsys.readouterr().err


def test_resuming_another_runs_checkpoint_into_a_run_of_its_own_is_refused(tmp_path):
    """`--out-dir b --resume a/checkpoints/step_3` set b's own checkpoints aside and cut its
    logs after step 3, leaving b's first steps in front of a's weights (exit 0, a note)."""
    from spool.train.checkpoint import list_checkpoints

    for name in ("a", "b"):
        Trainer(TrainConfig(**train_config_dict(tmp_path / name, epochs=1))).fit()
    theirs = list_checkpoints(tmp_path / "a")[-1]
    mine = list_checkpoints(tmp_path / "b")
    with pytest.raises(ValueError, match=r"is another run's checkpoint, and .* holds a run of "
                                         r"its own .*: their histories would mix; .* or "
                                         r"--resume auto to continue the run in"):
        Trainer(TrainConfig(**train_config_dict(tmp_path / "b", epochs=2,
                                                resume=str(theirs))))
    assert list_checkpoints(tmp_path / "b") == mine
    Trainer(TrainConfig(**train_config_dict(tmp_path / "c", epochs=2,
                                            resume=str(theirs)))).fit()  # a new folder: fine
    import shutil  # b's own checkpoint, copied elsewhere and resumed into b: its own run

    shutil.copytree(mine[-1], tmp_path / "scratch" / mine[-1].name)
    Trainer(TrainConfig(**train_config_dict(tmp_path / "b", epochs=2, resume=str(
        tmp_path / "scratch" / mine[-1].name)))).fit()
