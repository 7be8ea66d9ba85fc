"""Resuming a training run: from the saved config, from any directory, and what it says."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import (
    TINY_MODEL,
    final_weights,
    read_epochs,
    read_steps,
    train_config_dict,
)

from spool.cli import main
from spool.train.builders import warmup_cosine
from spool.train.config import TrainConfig, read_config_file
from spool.train.trainer import Trainer, train


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


def test_a_resume_without_the_runs_flags_goes_on_with_its_settings(tmp_path: Path,
                                                                   capsys) -> None:
    """``spool train --out-dir RUN --resume auto`` alone continues RUN as it was set up (it
    built the default model, DINOv2-B from the hub, and failed); flags given change it."""
    run = tmp_path / "run"
    assert main(["train", *_flags(train_config_dict(run)), "--stop-after-steps", "3"]) == 0
    capsys.readouterr()
    assert main(["train", "--out-dir", str(run), "--resume", "auto", "--quiet",
                 "--stop-after-steps", "5"]) == 0
    assert "note: resuming with" not in capsys.readouterr().out  # nothing changed
    saved = json.loads((run / "train_config.json").read_text())  # as saved before b04eba8:
    (run / "train_config.json").write_text(json.dumps({**saved, "stop_after_steps": 5}))
    assert main(["train", "--out-dir", str(run), "--resume", "auto", "--lr", "0.01"]) == 0
    assert "note: resuming with lr 0.003 -> 0.01" in capsys.readouterr().out
    assert [s for s, _ in read_steps(run)] == list(range(1, 9)) and final_weights(run)
    capsys.readouterr()  # without --resume, a used folder lends no settings
    assert main(["train", "--out-dir", str(run)]) == 2
    assert "give exactly one of an annotation file" in capsys.readouterr().err


def test_a_resume_with_another_cpu_thread_count_is_said(tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    """CPU kernels sum in another order with another thread count (the weights of a resumed
    run then differ from the uninterrupted run's by round-off): the checkpoint records the
    count, and a resume with another says so."""
    run, threads = tmp_path / "run", torch.get_num_threads()
    assert main(["train", *_flags(train_config_dict(run)), "--stop-after-steps", "3"]) == 0
    state = json.loads((run / "checkpoints" / "step_00000003" / "trainer_state.json")
                       .read_text())
    assert state["threads"] == threads
    capsys.readouterr()
    try:
        torch.set_num_threads(threads + 1)
        assert main(["train", "--out-dir", str(run), "--resume", "auto",
                     "--stop-after-steps", "5"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert f"note: resuming with threads {threads} -> {threads + 1}" in capsys.readouterr().out
    # On a GPU the CPU's threads compute none of it: not recorded, not compared.
    from spool.train.resume_settings import cpu_threads, device_said

    assert cpu_threads(torch.device("cuda")) is None and device_said(torch.device("cuda")) \
        == "cuda"
    with monkeypatch.context() as m:
        m.setattr(torch, "get_num_threads", lambda: 1)
        assert device_said(torch.device("cpu")) == "cpu (1 thread each)"


def test_a_checkpoint_named_without_out_dir_resumes_its_own_run(tmp_path: Path,
                                                                monkeypatch) -> None:
    """``--resume RUN/checkpoints/step_N`` alone went on in the default --out-dir
    (runs/spool): the run's steps split over two folders."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", *_flags(train_config_dict(run)), "--stop-after-steps", "3"]) == 0
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    assert main(["train", "--resume", f"{checkpoint}/", "--quiet"]) == 0
    assert [s for s, _ in read_steps(run)] == list(range(1, 9)) and final_weights(run)
    assert not (tmp_path / "runs").exists()


def test_a_resume_takes_what_the_flags_do_not_give_from_the_runs_file(tmp_path: Path,
                                                                     spool_log,
                                                                     monkeypatch) -> None:
    """Of the run's own settings, a resume takes neither one invocation's (quiet, device) nor
    the other of a pair a flag sets (a cache for the videos); a damaged file is said and the
    flags alone are used; without a file, the error says where settings were looked for."""
    import argparse

    from spool.train.cli import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    run = tmp_path / "run"
    run.mkdir()
    fields = train_config_dict(run, quiet=True, device="cpu", hflip=True, num_clips=3,
                               crop_scale=[0.5, 1.0])
    (run / "train_config.json").write_text(json.dumps(fields))
    resume = ["--out-dir", str(run), "--resume", "auto"]
    cfg = config_from_args(parser.parse_args([*resume, "--train-cache", str(tmp_path / "c")]))
    assert (cfg.train_data, cfg.train_cache) == (None, str(tmp_path / "c"))
    assert (cfg.val_data, cfg.lr, cfg.quiet, cfg.device) == (fields["val_data"], 3e-3, False,
                                                             "auto")
    assert not cfg.hflip and cfg.num_clips == 3  # how the cache's videos were read: not kept
    assert cfg.num_frames == 4  # but the sampling is the cache's too, which a resume compares
    cfg = config_from_args(parser.parse_args([*resume, "--val-cache", str(tmp_path / "v")]))
    assert cfg.hflip and cfg.num_clips == 1 and cfg.val_data is None
    cfg = config_from_args(parser.parse_args([*resume, "--no-hflip", "--no-augment"]))
    assert not cfg.hflip and not cfg.augment  # on/off settings turn either way
    frames = {**fields, "task": "frames", "fps": 5.0, "num_frames": 16, "num_clips": 1,
              "crop_scale": [0.4, 1.0], "hflip": False}
    (run / "train_config.json").write_text(json.dumps(frames))
    cfg = config_from_args(parser.parse_args([*resume, "--train-cache", str(tmp_path / "c")]))
    assert cfg.fps == 5.0
    (run / "train_config.json").write_text(json.dumps(fields)[:-9])
    cfg = config_from_args(parser.parse_args([*resume, "--train-data", fields["train_data"]]))
    assert cfg.train_data == fields["train_data"] and cfg.val_data is None
    assert "train_config.json: not valid JSON" in spool_log.text
    assert "resuming with the flags given alone" in spool_log.text
    spool_log.clear()
    monkeypatch.setenv("RANK", "1")  # under torchrun: rank 0 says it
    config_from_args(parser.parse_args([*resume, "--train-data", fields["train_data"]]))
    assert "not valid JSON" not in spool_log.text
    monkeypatch.delenv("RANK")
    (run / "train_config.json").unlink()
    with pytest.raises(ValueError, match=r"got None and None \(none read from .*run/train_"):
        config_from_args(parser.parse_args(resume))


def test_an_init_given_to_a_resume_is_said_to_be_unused(tmp_path: Path, capsys) -> None:
    """A resume goes on from its checkpoint's weights: an --init added to it was noted as
    'the new values are used from here on', and recorded as the run's init."""
    done = tmp_path / "done"
    assert main(["train", *_flags(train_config_dict(done, epochs=1))]) == 0
    run = tmp_path / "run"
    assert main(["train", *_flags(train_config_dict(run)), "--stop-after-steps", "3"]) == 0
    capsys.readouterr()
    assert main(["train", *_flags(train_config_dict(run)), "--resume", "auto",
                 "--init", str(done / "model")]) == 0
    out = capsys.readouterr().out
    assert f"note: init {done / 'model'} is not used: a resume goes on from its checkpoint's " \
           "weights (the run's init stays None)" in out and "new values" not in out
    assert json.loads((run / "train_config.json").read_text())["init"] is None
    state = sorted((run / "checkpoints").iterdir())[-1] / "trainer_state.json"
    assert json.loads(state.read_text())["config"]["init"] is None  # a later resume's ground


def _flags(fields: dict) -> list[str]:
    """``spool train`` flags for :func:`train_config_dict`'s fields (quiet, no TensorBoard)."""
    out = ["--quiet", "--no-tensorboard"]
    for key, value in fields.items():
        if key == "model":
            out += [a for k, v in value.items() for a in ("--model", f"{k}={json.dumps(v)}")]
        elif key not in ("quiet", "tensorboard"):
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def test_relative_paths_resume_from_another_directory(tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    fields = train_config_dict(Path("run"))
    monkeypatch.chdir(start)
    for key in ("train_data", "val_data"):  # relative to the working directory
        fields[key] = os.path.relpath(fields[key], start)
    assert main(["train", *_flags(fields), "--stop-after-steps", "3"]) == 0
    assert read_steps(start / "run")[-1][0] == 3

    monkeypatch.chdir(elsewhere)
    saved = "../start/run/train_config.json"
    assert main(["train", "--config", saved, "--resume", "auto"]) == 0
    assert [s for s, _ in read_steps(start / "run")] == list(range(1, 9))
    assert final_weights(start / "run") and not (elsewhere / "run").exists()

    # Resuming a finished run says so and changes nothing.
    state = next((start / "run" / "checkpoints").iterdir()) / "trainer_state.json"
    stamp = state.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--config", saved, "--resume", "auto"]) == 0
    assert "run already finished at step 8; nothing to do" in capsys.readouterr().out
    assert state.stat().st_mtime_ns == stamp
    assert [s for s, _ in read_steps(start / "run")] == list(range(1, 9))
    # Even with other settings: its record stays (train_config.json took lr 1.0 and
    # resumes.jsonl a change, and "the new values are used from here on" was said).
    record = (start / "run" / "train_config.json").read_text()
    history = (start / "run" / "resumes.jsonl").read_text()
    assert main(["train", "--config", saved, "--resume", "auto", "--lr", "1"]) == 0
    assert "new values are used" not in capsys.readouterr().out
    assert (start / "run" / "train_config.json").read_text() == record
    assert (start / "run" / "resumes.jsonl").read_text() == history
    # Unless its results were never written (killed just before): they are written now,
    # with the new values, so those are noted and recorded as for any resume.
    (start / "run" / "results.json").unlink()
    assert main(["train", "--config", saved, "--resume", "auto", "--lr", "1"]) == 0
    said = capsys.readouterr().out  # (it said "nothing to do", then wrote them)
    assert "note: resuming with lr " in said
    assert ("run already finished at step 8; writing the model/ and results.json it stopped "
            "before") in said and (start / "run" / "results.json").is_file()
    assert (start / "run" / "resumes.jsonl").read_text() != history


def test_a_hub_id_as_init_stays_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    """init = "org/name" was joined to the config file's folder (and made absolute in
    train_config.json), so a hub id could only be given on the command line, once."""
    monkeypatch.chdir(tmp_path)
    fields = {**train_config_dict(tmp_path / "run"), "init": "someorg/spool-k400"}
    (tmp_path / "cfg").mkdir()
    config = _write_config(tmp_path / "cfg" / "run.json", **fields)
    assert read_config_file(config)["init"] == "someorg/spool-k400"
    assert TrainConfig(**fields).to_saved_dict()["init"] == "someorg/spool-k400"
    (tmp_path / "cfg" / "local").mkdir()  # a folder of that name is a path, as before
    local = _write_config(tmp_path / "cfg" / "local.json", **{**fields, "init": "local"})
    assert read_config_file(local)["init"] == str(tmp_path / "cfg" / "local")
    assert TrainConfig(**{**fields, "init": "./weights"}).to_saved_dict()["init"] == str(
        tmp_path / "weights")


def test_resume_auto_without_checkpoint_says_so(tmp_path: Path, capsys) -> None:
    config = _write_config(tmp_path / "run.json", **train_config_dict(tmp_path / "typo"))
    assert main(["train", "--config", str(config), "--resume", "auto",
                 "--stop-after-steps", "1"]) == 0
    err = capsys.readouterr().err
    assert f"no checkpoint in {tmp_path / 'typo' / 'checkpoints'}: starting from scratch" in err


def test_a_fresh_run_into_a_used_out_dir_is_refused(tmp_path: Path, capsys) -> None:
    """Without --resume, a run in a folder holding an earlier run's checkpoints mixed the two:
    pruning by step deleted its own, and --resume auto then took up the earlier run."""
    config = _write_config(tmp_path / "run.json", **train_config_dict(tmp_path / "run"))
    assert main(["train", "--config", str(config), "--stop-after-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of an earlier run (the newest: step_00000001); pass --resume " \
           "auto to continue it, or another --out-dir" in err
    assert main(["train", "--config", str(config), "--resume", "auto",
                 "--stop-after-steps", "2"]) == 0  # the way on


def test_resume_from_a_path_that_is_no_checkpoint_is_one_line(tmp_path: Path, capsys) -> None:
    config = _write_config(tmp_path / "run.json", **train_config_dict(tmp_path / "run"))
    (tmp_path / "empty").mkdir()
    assert main(["train", "--config", str(config), "--resume", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{tmp_path / 'empty'} is not a training checkpoint" in err


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(logging.getLogger("spool"), "propagate", True)  # for caplog
    caplog.set_level(logging.WARNING)
    full, part = tmp_path / "full", tmp_path / "part"
    train(TrainConfig(**train_config_dict(full, save_every=2)))
    train(TrainConfig(**train_config_dict(part, save_every=2, stop_after_steps=6)))
    newest = part / "checkpoints" / "step_00000006"
    (newest / "optimizer.safetensors").write_bytes(b"")  # e.g. the disk filled up
    train(TrainConfig(**train_config_dict(part, save_every=2, resume="auto")))
    assert f"skipping checkpoint {newest}" in caplog.text
    assert read_steps(part) == read_steps(full)
    a, b = final_weights(full), final_weights(part)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_with_a_new_lr_and_weight_decay_uses_them(tmp_path: Path, monkeypatch,
                                                         caplog) -> None:
    monkeypatch.setattr(logging.getLogger("spool"), "propagate", True)  # for caplog
    caplog.set_level(logging.INFO)
    first, second = tmp_path / "first", tmp_path / "second"
    train(TrainConfig(**train_config_dict(first, save_every=3, stop_after_steps=3)))
    resume = str(first / "checkpoints" / "step_00000003")
    cfg = TrainConfig(**train_config_dict(second, resume=resume, lr=1e-2, weight_decay=0.5))
    trainer = Trainer(cfg)  # quiet: the note is shown all the same
    try:
        factor = warmup_cosine(2, 8, cfg.min_lr_ratio)(3)
        decay, no_decay = trainer.optimizer.param_groups
        assert decay["lr"] == pytest.approx(1e-2 * factor) and decay["weight_decay"] == 0.5
        assert no_decay["lr"] == decay["lr"] and no_decay["weight_decay"] == 0.0
        assert trainer.scheduler.base_lrs == [1e-2, 1e-2]
    finally:
        trainer.close()
    assert "lr 0.003 -> 0.01, weight_decay 0.05 -> 0.5" in caplog.text
    train(cfg)
    with open(second / "steps.csv", newline="") as f:
        lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f)}
    schedule = warmup_cosine(2, 8, cfg.min_lr_ratio)
    assert lrs == {s: pytest.approx(1e-2 * schedule(s - 1)) for s in range(4, 9)}
    saved = json.loads((second / "checkpoints" / "step_00000008" / "trainer_state.json")
                       .read_text())["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in saved] == [0.5, 0.0]


def test_explicit_resume_from_an_older_step_sets_the_later_ones_aside(tmp_path: Path) -> None:
    full, run = tmp_path / "full", tmp_path / "run"
    train(TrainConfig(**train_config_dict(full)))
    fields = train_config_dict(run, save_every=2, keep_checkpoints=3)
    train(TrainConfig(**fields, stop_after_steps=6))
    ckpts = run / "checkpoints"
    # Redo from step 2 (the user's choice), preempted at step 3.
    train(TrainConfig(**fields, resume=str(ckpts / "step_00000002"), stop_after_steps=3))
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "abandoned_from_step_00000002", "step_00000002", "step_00000003"]
    assert sorted(p.name for p in (ckpts / "abandoned_from_step_00000002").iterdir()) == [
        "step_00000004", "step_00000006"]
    assert [s for s, _ in read_steps(run)] == [1, 2, 3]
    train(TrainConfig(**fields, resume="auto"))  # continues the redo, from step 3
    assert read_steps(run) == read_steps(full)


def test_explicit_resume_sets_a_finished_branchs_model_aside(tmp_path: Path) -> None:
    """The finished branch's model/ and results.json stayed: had the new branch died between
    its last checkpoint and its own model/, --resume auto found results.json at the same
    step, said "run already finished" and kept the other branch's weights for good."""
    run = tmp_path / "run"
    fields = train_config_dict(run, save_every=2, keep_checkpoints=5)
    train(TrainConfig(**fields))
    ckpts = run / "checkpoints"
    final = sorted(ckpts.glob("step_*"))[-1].name
    train(TrainConfig(**fields, resume=str(ckpts / "step_00000002"), stop_after_steps=3))
    aside = ckpts / "abandoned_from_step_00000002"
    assert not (run / "model").exists() and not (run / "results.json").exists()
    assert (aside / "model").is_dir() and (aside / "results.json").is_file()
    assert (aside / final).is_dir()


def test_a_refused_explicit_resume_moves_nothing(tmp_path: Path) -> None:
    """The set-aside ran before the resume's own checks: a resume refused (fewer epochs than
    the checkpoint's) had already moved the finished run's model/ and results.json away."""
    run = tmp_path / "run"
    fields = train_config_dict(run, save_every=2, keep_checkpoints=5)
    train(TrainConfig(**fields))
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(ValueError, match="epochs"):
        train(TrainConfig(**{**fields, "epochs": 1},
                          resume=str(run / "checkpoints" / "step_00000006")))
    assert sorted(p.name for p in run.rglob("*")) == before


def test_a_local_backbone_directory_is_saved_absolute(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "hfbb").mkdir()
    monkeypatch.chdir(tmp_path)
    fields = train_config_dict(Path("run"))
    for name, saved in (("hfbb", str(tmp_path / "hfbb")),
                        ("facebook/dinov2-small", "facebook/dinov2-small")):  # a hub id
        cfg = TrainConfig(**{**fields, "model": {**fields["model"], "backbone_name": name}})
        assert cfg.to_saved_dict()["model"]["backbone_name"] == saved
    # In a config file, relative to the file's folder (as its other paths are).
    (tmp_path / "cfg" / "bb").mkdir(parents=True)
    config = _write_config(tmp_path / "cfg" / "run.json",
                           **{**fields, "model": {"backbone_name": "bb"}})
    monkeypatch.chdir(tmp_path / "hfbb")
    assert read_config_file(config)["model"]["backbone_name"] == str(tmp_path / "cfg" / "bb")


def test_training_renews_its_run_lock(tmp_path: Path, monkeypatch) -> None:
    """The heartbeat that keeps other machines from taking a live run's lock after 6 hours."""
    import spool.train.trainer as trainer_module

    renewed = []
    monkeypatch.setattr(trainer_module, "RENEW_EVERY_S", 0.0)
    monkeypatch.setattr(trainer_module, "refresh_claim", lambda claim: renewed.append(claim))
    train(TrainConfig(**train_config_dict(tmp_path / "run", stop_after_steps=3)))
    assert len(renewed) == 3 and renewed[0].path.name == trainer_module.LOCK_NAME


def test_resume_with_another_batch_size_goes_on_from_the_samples_seen(tmp_path: Path) -> None:
    """Batch 2 -> 8 after 6 steps (12 of 16 samples of epoch 1): the step and the schedule's
    position were kept in old batches, so the rest of epoch 1 was skipped and epoch 2 ran at
    the schedule's end ("step 7/4")."""
    run = tmp_path / "run"
    train(TrainConfig(**train_config_dict(run, batch_size=2, epochs=2, stop_after_steps=6)))
    seen: list[tuple[int, list[int]]] = []
    step = Trainer.train_step

    def spy(self, batch):
        seen.append((self.epoch, sorted(batch["index"].tolist())))
        return step(self, batch)
    cfg = TrainConfig(**train_config_dict(run, batch_size=8, epochs=2, resume="auto"))
    trainer = Trainer(cfg)
    assert (trainer.steps_per_epoch, trainer.step_in_epoch) == (2, 1)  # 12 seen // 8
    assert trainer.scheduler.last_epoch == 1
    schedule = warmup_cosine(round(cfg.warmup_epochs * 2), 4, cfg.min_lr_ratio)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr * schedule(1))
    trainer.train_step = spy.__get__(trainer)
    trainer.fit()
    assert [epoch for epoch, _ in seen] == [0, 1, 1]  # the rest of epoch 1, all of epoch 2
    assert sorted(seen[1][1] + seen[2][1]) == list(range(16))
    assert [s for s, _ in read_steps(run)] == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # in order
    # Each epoch's rate is its last step's (metrics.csv gave the one a step later: the
    # schedule's count no longer equals the optimizer steps taken).
    with open(run / "steps.csv", newline="") as f:
        used = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f)}
    epochs = {int(r["step"]): float(r["lr"]) for r in read_epochs(run)}
    assert epochs == pytest.approx({7: used[7], 9: used[9]}, rel=1e-6)


def test_resume_with_epochs_below_the_checkpoint_is_refused(tmp_path: Path, spool_log) -> None:
    """At 4 steps an epoch, step 6 is mid-epoch 2: with epochs=1 the run said "already
    finished" and published those mid-epoch weights as final."""
    run = tmp_path / "run"
    train(TrainConfig(**train_config_dict(run, epochs=3, stop_after_steps=6)))
    with pytest.raises(ValueError, match=r"epochs \(--epochs\): 1, but .* after 1 epochs and "
                       r"2 steps; resume with --epochs 2 or more"):
        Trainer(TrainConfig(**train_config_dict(run, epochs=1, resume="auto")))
    assert not (run / "model").exists()
    train(TrainConfig(**train_config_dict(run, epochs=2, resume="auto")))  # 2 is enough
    assert (run / "model").exists()
    # A finished run needs as many epochs as it had: the advice said one more.
    with pytest.raises(ValueError, match=r"after 2 epochs and 0 steps; resume with --epochs 2 "):
        Trainer(TrainConfig(**train_config_dict(run, epochs=1, resume="auto")))
    spool_log.clear()
    train(TrainConfig(**train_config_dict(run, epochs=2, resume="auto", quiet=False)))
    assert "at step 8 (the end of epoch 2)" in spool_log.text  # said "(epoch 3)" of 2
    assert "run already finished" in spool_log.text


def test_a_warm_up_as_long_as_the_run_is_said(tmp_path: Path, spool_log) -> None:
    """warmup_epochs >= epochs ended the run at its peak lr without a word."""
    spool_log.set_level(logging.WARNING)
    Trainer(TrainConfig(**train_config_dict(tmp_path / "a", warmup_epochs=2.0))).close()
    assert "the learning rate never decays" in spool_log.text
    spool_log.clear()
    Trainer(TrainConfig(**train_config_dict(tmp_path / "b", warmup_epochs=1.0))).close()
    assert "never decays" not in spool_log.text


def test_any_error_on_rank_0_reaches_the_other_ranks(monkeypatch) -> None:
    """Only ValueError/OSError were broadcast: a KeyError (a malformed trainer_state.json)
    escaped rank 0 before the broadcast, and the other ranks waited for it until NCCL's
    timeout."""
    from spool import distributed

    sent = []
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj: sent.append(obj) or obj)

    def broken():
        raise KeyError("history")
    with pytest.raises(KeyError):
        distributed.on_rank0(True, broken)
    assert sent == ["KeyError: 'history'"]
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj: "KeyError: 'history'")
    with pytest.raises(OSError, match="rank 0 stopped: KeyError: 'history'"):
        distributed.on_rank0(False, broken)


def test_cuda_rng_states_go_back_to_their_own_devices(monkeypatch) -> None:
    """The states were restored in the order of their names (cuda0, cuda1, cuda10, cuda2,
    ...) with set_rng_state_all, which also failed where fewer GPUs are visible."""
    from spool.train import checkpoint as ckpt

    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 11)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.__setitem__(device, int(state[0])))
    state = ckpt.capture_rng()
    tensors = {"torch": state["tensors"]["torch"],
               **{f"cuda{i}": torch.tensor([i], dtype=torch.uint8) for i in range(12)}}
    ckpt.restore_rng(tensors, state["python"], state["numpy"])
    assert restored == {i: i for i in range(11)}  # cuda11: not seen here


def test_by_default_each_epoch_ends_with_a_checkpoint(tmp_path: Path) -> None:
    """--save-every 0 (the default) wrote a checkpoint at the end only: a run killed (-9, the
    OOM killer) in its last epoch had nothing to resume from. A resume from the epoch's
    checkpoint ends where the uninterrupted run ends."""
    run = tmp_path / "run"
    train(TrainConfig(**train_config_dict(run, val_data=None)))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_00000004", "step_00000008"]
    whole = final_weights(run)
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "step_00000008")
    (run / "results.json").unlink()
    train(TrainConfig(**train_config_dict(run, val_data=None, resume="auto")))
    resumed = final_weights(run)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_checkpoint_with_the_earlier_weight_decay_groups_resumes_with_them(
        tmp_path: Path, monkeypatch, spool_log) -> None:
    """A fine-tuned SigLIP's position table moved to the undecayed group: a checkpoint made
    before, with it decayed, failed to resume ("loaded state dict contains a parameter group
    that doesn't match the size of optimizer's group"). It goes on with its own groups."""
    from spool.train import builders

    siglip = dict(model_type="siglip_vision_model", hidden_size=16, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=32, patch_size=8, image_size=32)
    model = {**TINY_MODEL, "backbone_config": siglip, "freeze_backbone": False}
    fields = dict(model=model, val_data=None, epochs=1)
    real = builders.parameter_groups
    with monkeypatch.context() as patch:  # as an earlier version grouped them
        patch.setattr(builders, "parameter_groups", lambda m, wd, embeddings=None: real(
            m, wd, builders._EMBEDDINGS_BEFORE))
        train(TrainConfig(**train_config_dict(tmp_path / "whole", **fields)))
        train(TrainConfig(**train_config_dict(tmp_path / "run", stop_after_steps=2, **fields)))
    spool_log.set_level(logging.INFO, logger="spool")
    train(TrainConfig(**train_config_dict(tmp_path / "run", resume="auto", **fields)))
    assert "goes on with the weight-decay groups it began with" in spool_log.text
    assert read_steps(tmp_path / "run") == read_steps(tmp_path / "whole")
    for key, value in final_weights(tmp_path / "whole").items():
        torch.testing.assert_close(final_weights(tmp_path / "run")[key], value)
