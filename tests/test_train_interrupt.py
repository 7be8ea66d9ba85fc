"""One run per training directory, and a run stopped by a signal saves and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import read_steps, train_config_dict

from spool.cli import main
from spool.errors import SpoolBusyError
from spool.train.config import TrainConfig
from spool.train.trainer import LOCK_NAME, Trainer

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
