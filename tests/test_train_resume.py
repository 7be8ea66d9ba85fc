"""Resuming a training run: from the saved config, from any directory, and what it says."""

from __future__ import annotations

import json
from pathlib import Path

from train_helpers import final_weights, read_steps, train_config_dict

from spool.cli import main


def _write_config(path: Path, **fields) -> Path:
    path.write_text(json.dumps(fields))
    return path


def test_saved_config_finishes_a_time_boxed_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = _write_config(tmp_path / "run.json", **train_config_dict(run))
    assert main(["train", "--config", str(config), "--stop-after-steps", "3"]) == 0
    assert read_steps(run)[-1][0] == 3 and not (run / "model").exists()
    saved = json.loads((run / "train_config.json").read_text())
    assert "stop_after_steps" not in saved and "resume" not in saved
    # The saved config carries no stop: resuming from it runs to the end.
    assert main(["train", "--config", str(run / "train_config.json"), "--resume", "auto"]) == 0
    assert [s for s, _ in read_steps(run)] == list(range(1, 9))
    assert final_weights(run)  # model/ was written: the run finished
