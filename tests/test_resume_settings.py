"""Resuming with changed settings: a change of the model or task is refused, other training
settings are used with one note, and the run keeps the record of its earlier settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from train_helpers import TINY_MODEL, read_steps, train_config_dict

from spool.cli import main
from spool.train.config import TrainConfig
from spool.train.trainer import Trainer, train


def _started(tmp_path: Path, steps: int = 2) -> tuple[Path, Path]:
    """A run stopped after ``steps`` steps, and its saved config (``--config`` file)."""
    run = tmp_path / "run"
    config = tmp_path / "run.json"
    config.write_text(json.dumps(train_config_dict(run)))
    assert main(["train", "--config", str(config), "--stop-after-steps", str(steps)]) == 0
    return run, config


def test_resume_with_another_head_split_is_refused_before_training(tmp_path: Path,
                                                                   capsys) -> None:
    """The reviewer's case: a "lookback-only" model resumed from bidirectional weights went
    on silently and was published as lookback-only."""
    run, config = _started(tmp_path)
    saved = (run / "train_config.json").read_text()
    capsys.readouterr()
    code = main(["train", "--config", str(config), "--resume", "auto",
                 "--model", "num_lookback_heads=4", "--model", "num_lookahead_heads=0"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    checkpoint = run / "checkpoints" / "step_00000002"
    assert f"resume: {checkpoint} was trained with another model or task" in err
    assert "model.num_lookahead_heads 2 -> 0, model.num_lookback_heads 2 -> 4" in err
    assert "another --out-dir" in err and f"--init {checkpoint}" in err
    # Nothing trained or rewritten.
    assert [s for s, _ in read_steps(run)] == [1, 2]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]
    assert (run / "train_config.json").read_text() == saved
    assert not (run / "model").exists()
    # The way on that the error names: a new run from these weights.
    new = {**TINY_MODEL, "num_lookback_heads": 4, "num_lookahead_heads": 0}
    train(TrainConfig(**train_config_dict(tmp_path / "new", model=new, init=str(checkpoint),
                                          stop_after_steps=1)))
    assert read_steps(tmp_path / "new")[-1][0] == 1


@pytest.mark.parametrize("change, named", [
    (dict(model={**TINY_MODEL, "local_frame_range": 0}), "model.local_frame_range 2 -> 0"),
    (dict(model={**TINY_MODEL, "num_hidden_layers": 2}), "model.num_hidden_layers 1 -> 2"),
    (dict(model={**TINY_MODEL, "token_merging": 2}), "model.token_merging 1 -> 2"),
    (dict(model={**TINY_MODEL, "freeze_backbone": False}),
     "model.freeze_backbone True -> False"),
    (dict(architecture="frame_pooling"), "architecture spool -> frame_pooling"),
])
def test_resume_with_another_model_is_refused(tmp_path: Path, change, named) -> None:
    run, _ = _started(tmp_path)
    with pytest.raises(ValueError, match="trained with another model or task") as err:
        Trainer(TrainConfig(**train_config_dict(run, resume="auto", **change)))
    assert named in str(err.value)
    assert [s for s, _ in read_steps(run)] == [1, 2]


def test_resume_with_other_training_settings_notes_each_change(tmp_path: Path,
                                                               spool_log) -> None:
    spool_log.set_level(logging.INFO)
    run, _ = _started(tmp_path)
    spool_log.clear()
    model = {**TINY_MODEL, "hidden_dropout": 0.1}  # a note, not a refusal: no other network
    train(TrainConfig(**train_config_dict(
        run, resume="auto", num_frames=6, augment=False, grad_clip=None, label_smoothing=0.1,
        model=model, log_every=3, num_workers=1, name="again", stop_after_steps=3)))
    notes = [r.getMessage() for r in spool_log.records if "note: resuming" in r.getMessage()]
    assert notes == ["[again] note: resuming with num_frames 4 -> 6, augment True -> False, "
                     "grad_clip 1.0 -> None, label_smoothing 0.0 -> 0.1, model.hidden_dropout "
                     "0.0 -> 0.1: the new values are used from here on, so the run will not "
                     "repeat an uninterrupted one exactly (recorded in resumes.jsonl)"]
    assert read_steps(run)[-1][0] == 3


def test_resume_keeps_the_started_settings_and_records_each_resume(tmp_path: Path) -> None:
    """train_config.json was rewritten with the resumed run's values and nothing said that
    the earlier steps had trained with others: resumes.jsonl now records each change."""
    run, config = _started(tmp_path)
    started = json.loads((run / "train_config.json").read_text())
    assert not (run / "resumes.jsonl").exists()
    assert main(["train", "--config", str(config), "--resume", "auto", "--lr", "0.01",
                 "--stop-after-steps", "4"]) == 0
    assert main(["train", "--config", str(config), "--resume", "auto", "--lr", "0.01",
                 "--epochs", "3", "--stop-after-steps", "5"]) == 0
    assert json.loads((run / "train_config.json").read_text()) == {**started, "lr": 0.01,
                                                                   "epochs": 3}
    first, second = [json.loads(line) for line in
                     (run / "resumes.jsonl").read_text().splitlines()]
    assert (first["step"], first["changed"]) == (2, {"lr": [0.003, 0.01]})
    assert first["checkpoint"] == str(run / "checkpoints" / "step_00000002")
    assert first["config"] == {**started, "lr": 0.01}
    assert (second["step"], second["changed"]) == (4, {"epochs": [2, 3]})
    assert second["config"] == {**started, "lr": 0.01, "epochs": 3}


def test_a_relative_backbone_folder_resumes_from_another_directory(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """The model holds backbone_name as given ("hfbb"); train_config.json the absolute path:
    one folder, not a change of backbone."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    (start / "hfbb").mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    fields = train_config_dict(start / "run", model={**TINY_MODEL, "backbone_name": "hfbb"})
    train(TrainConfig(**fields, stop_after_steps=2))
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--config", str(start / "run" / "train_config.json"),
                 "--resume", "auto", "--stop-after-steps", "3"]) == 0
    assert [s for s, _ in read_steps(start / "run")] == [1, 2, 3]


def test_grad_clip_none_turns_clipping_off_from_the_cli(tmp_path: Path, monkeypatch) -> None:
    """`--grad-clip 0` was refused and nothing else turned clipping off from the command line
    (TrainConfig takes None); `--grad-clip none` does, and the run records it."""
    import torch

    run = tmp_path / "run"
    config = tmp_path / "run.json"
    config.write_text(json.dumps(train_config_dict(run, epochs=1)))
    clipped = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda *a, **k: clipped.append(1) or real(*a, **k))
    assert main(["train", "--config", str(config), "--grad-clip", "none"]) == 0
    assert json.loads((run / "train_config.json").read_text())["grad_clip"] is None
    assert clipped == []
    assert main(["train", "--config", str(config), "--out-dir", str(tmp_path / "b"),
                 "--grad-clip", "0.5"]) == 0
    assert json.loads((tmp_path / "b" / "train_config.json").read_text())["grad_clip"] == 0.5
    assert len(clipped) == 4  # every step
