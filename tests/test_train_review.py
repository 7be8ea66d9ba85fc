"""Findings of a review of the training loop: what a run keeps when its last validation
fails, a stop signal during validation, and results.json with no finite validation loss."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_MODEL, final_weights, read_steps, train_config_dict

from spool.errors import CheckpointNotFoundError
from spool.train.config import TrainConfig
from spool.train.signals import TrainingInterrupted
from spool.train.trainer import Trainer, train


def test_a_failed_last_validation_keeps_the_training_and_a_resume_validates(
        tmp_path: Path, monkeypatch) -> None:
    evaluate = Trainer.evaluate

    def out_of_memory_at_the_end(self):
        if self.epoch + 1 == self.cfg.epochs:
            raise RuntimeError("CUDA out of memory (simulated)")
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", out_of_memory_at_the_end)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(TrainConfig(**train_config_dict(tmp_path / "run")))
    assert (tmp_path / "run" / "checkpoints" / "step_00000008").is_dir()  # was: none at all
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    rows = train(TrainConfig(**train_config_dict(tmp_path / "run", resume="auto")))
    assert [s for s, _ in read_steps(tmp_path / "run")] == list(range(1, 9))  # none again
    assert [row["epoch"] for row in rows] == [1, 2] and "val_loss" in rows[-1]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 8


def test_a_signal_during_validation_stops_at_that_epochs_end(tmp_path: Path,
                                                              monkeypatch) -> None:
    evaluate = Trainer.evaluate

    def signalled(self):
        if self.epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", signalled)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4;"):  # was: step 5
        train(TrainConfig(**train_config_dict(tmp_path / "run")))
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    rows = train(TrainConfig(**train_config_dict(tmp_path / "run", resume="auto")))
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [s for s, _ in read_steps(tmp_path / "run")] == list(range(1, 9))


class _WorkersKilled(torch.utils.data.Dataset):
    """A validation set of ``size`` items whose loading dies of the job's SIGTERM at item
    ``at``."""

    def __init__(self, dataset, at: int | None, size: int | None = None) -> None:
        self.dataset, self.at, self.size = dataset, at, size or len(dataset)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if index == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid(s) 123) exited unexpectedly")
        return self.dataset[index]


def _killed_in_validation(evaluate, at: int | None, size: int | None = None):
    def killed(self):
        self.val_set = _WorkersKilled(self.val_set, at, size)
        return evaluate(self)
    return killed


def test_a_validation_whose_loader_dies_of_the_signal_stops_the_run(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """A scheduler's SIGTERM during a validation reaches its DataLoader workers too: the run
    stops at the epoch's last step, and a resume validates that epoch again, with the
    metrics of a run never stopped."""
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", _killed_in_validation(evaluate, at=1))
    run = dict(eval_batch_size=1)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4;"):
        train(TrainConfig(**train_config_dict(tmp_path / "run", **run)))
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000004" /
                        "trainer_state.json").read_text())
    assert (state["epoch"], state["history"]) == (0, [])  # the epoch's row is not written
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    rows = train(TrainConfig(**train_config_dict(tmp_path / "run", resume="auto", **run)))
    assert [s for s, _ in read_steps(tmp_path / "run")] == list(range(1, 9))
    whole = train(TrainConfig(**train_config_dict(tmp_path / "whole", **run)))
    for row, expected in zip(rows, whole, strict=True):  # the same metrics as without a stop
        for key in ("epoch", "train_loss", "train_top1", "val_loss", "val_top1"):
            assert row[key] == pytest.approx(expected[key], rel=1e-6), key


def test_a_validation_that_fails_otherwise_after_the_signal_keeps_the_steps(
        tmp_path: Path, monkeypatch) -> None:
    """Whatever fails in a validation after a stop signal (here not its loader), the run
    keeps its finished steps in a checkpoint and stops as interrupted."""
    def fails_after_the_signal(self):
        os.kill(os.getpid(), signal.SIGTERM)
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Trainer, "evaluate", fails_after_the_signal)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4;"):
        train(TrainConfig(**train_config_dict(tmp_path / "run")))
    assert (tmp_path / "run" / "checkpoints" / "step_00000004").is_dir()


def test_results_json_stays_valid_json_without_a_finite_validation_loss(tmp_path: Path) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 100)
    (tmp_path / "val.txt").write_text("bad.mp4 0\n")  # unreadable, reported: val loss NaN
    train(TrainConfig(**train_config_dict(tmp_path / "run", epochs=1,
                                          val_data=str(tmp_path / "val.txt"))))
    text = (tmp_path / "run" / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert results["final"]["val_loss"] is None


def test_a_run_from_an_init_resumes_without_it(tmp_path: Path) -> None:
    """The run's checkpoint holds its model's config and every weight: a resume read the init
    again, and failed once it was gone (moved, cleaned from scratch space, a hub id offline)."""
    import shutil

    train(TrainConfig(**train_config_dict(tmp_path / "pre", epochs=1, val_data=None,
                                          model={**TINY_MODEL, "local_frame_range": 1})))
    shutil.copytree(tmp_path / "pre" / "model", tmp_path / "init")
    run = dict(init=str(tmp_path / "init"), val_data=None, model={})
    train(TrainConfig(**train_config_dict(tmp_path / "whole", **run)))
    train(TrainConfig(**train_config_dict(tmp_path / "run", stop_after_steps=3, **run)))
    shutil.rmtree(tmp_path / "init")
    train(TrainConfig(**train_config_dict(tmp_path / "run", resume="auto", **run)))
    assert read_steps(tmp_path / "run") == read_steps(tmp_path / "whole")  # the init's model
    assert final_weights(tmp_path / "run").keys() == final_weights(tmp_path / "whole").keys()
    for key, value in final_weights(tmp_path / "whole").items():
        torch.testing.assert_close(final_weights(tmp_path / "run")[key], value)
    with pytest.raises(CheckpointNotFoundError, match="init"):  # starting anew still needs it
        train(TrainConfig(**train_config_dict(tmp_path / "new", **run)))


def test_an_epochs_learning_rate_is_that_of_its_last_step(tmp_path: Path) -> None:
    """metrics.csv (and results.json) gave the rate after the epoch's last scheduler step,
    which no step used: 5e-06 at the end of a run whose last step used 5e-04."""
    import csv

    rows = train(TrainConfig(**train_config_dict(tmp_path / "run", val_data=None)))
    with open(tmp_path / "run" / "steps.csv", newline="") as f:
        used = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f)}
    assert [row["step"] for row in rows] == [4, 8]
    assert [row["lr"] for row in rows] == pytest.approx([used[4], used[8]], rel=1e-6)
    assert rows[-1]["lr"] > 1e-5  # the warm-up-cosine's rate at step 8 of 8, not after it


def test_a_failing_loader_stops_the_run_only_after_a_stop_signal() -> None:
    """A scheduler's SIGTERM reaches the DataLoader workers too, and the batch they were
    loading fails: after the signal that is the run's stop (a checkpoint of its whole steps,
    then TrainingInterrupted), without one it is an error as before."""
    from spool.train.signals import StopSignals, until_stopped

    def loader():
        yield 1
        raise RuntimeError("DataLoader worker (pid(s) 123) exited unexpectedly")

    stopped = []
    with StopSignals() as signals:
        with pytest.raises(RuntimeError, match="exited unexpectedly"):
            list(until_stopped(loader(), signals, stopped.append, torch.device("cpu")))
        assert stopped == []
        signals.received = signal.SIGTERM

        def stop(signum):
            stopped.append(signum)
            raise TrainingInterrupted(signum, "interrupted")

        with pytest.raises(TrainingInterrupted):
            list(until_stopped(loader(), signals, stop, torch.device("cpu")))

        class Unstartable:  # the workers' forkserver killed by the group's SIGTERM
            def __iter__(self):
                raise EOFError("unexpected EOF")

        with pytest.raises(TrainingInterrupted):  # was: the EOFError's traceback, exit 1
            list(until_stopped(Unstartable(), signals, stop, torch.device("cpu")))
    assert stopped == [signal.SIGTERM, signal.SIGTERM]


def test_the_last_step_is_written_once_and_its_state_then_updated(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The checkpoint before the last validation and the final one are of the same step:
    the model and optimizer were written twice (three times when save_every fell there)."""
    from spool.train import checkpoint

    writes = []
    put_in_place = checkpoint._put_in_place
    monkeypatch.setattr(checkpoint, "_put_in_place",
                        lambda new, target: (writes.append(target.name), put_in_place(new, target)))
    train(TrainConfig(**train_config_dict(tmp_path / "run", save_every=4)))
    assert writes == ["step_00000004", "step_00000008"]  # was: step_00000008 three times
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000008" /
                        "trainer_state.json").read_text())
    assert (state["epoch"], len(state["history"])) == (2, 2)  # the finished run's state
    assert "val_loss" in state["history"][-1]
    rows = train(TrainConfig(**train_config_dict(tmp_path / "run", resume="auto")))
    assert len(rows) == 2 and writes == ["step_00000004", "step_00000008"]  # nothing to do


def test_a_checkpoint_of_another_branch_at_the_same_step_is_written_whole(
        tmp_path: Path) -> None:
    """Only a run's own checkpoint of a step may have just its state updated: a resume that
    skipped a damaged step_8 and trained to step 8 again kept that checkpoint's old weights
    under its new state."""
    from safetensors.torch import load_file

    run = dict(save_every=4, val_data=None, keep_checkpoints=3)
    train(TrainConfig(**train_config_dict(tmp_path / "run", **run)))
    step8 = tmp_path / "run" / "checkpoints" / "step_00000008"
    state = json.loads((step8 / "trainer_state.json").read_text())
    del state["scheduler"]  # damaged, in a way that only loading it shows
    (step8 / "trainer_state.json").write_text(json.dumps(state))
    train(TrainConfig(**train_config_dict(tmp_path / "run", resume="auto", lr=1e-3, **run)))
    saved = load_file(step8 / "model.safetensors")
    final = final_weights(tmp_path / "run")
    assert saved.keys() == final.keys()
    for key, value in final.items():
        torch.testing.assert_close(saved[key], value)


def _two_ranks_one_loader_fails(rank: int, port: int, out: str) -> None:
    """Rank 0's loader fails after the job's SIGTERM (its workers died); rank 1's returns a
    batch it had already, and would go on to a step and its gradient all-reduce."""
    import datetime
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from spool.distributed import cleanup_distributed
    from spool.train.signals import StopSignals, until_stopped

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=90))
    model = DistributedDataParallel(torch.nn.Linear(8, 8))

    def loader():
        yield torch.randn(4, 8)
        if rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid(s) 123) exited unexpectedly")
        yield torch.randn(4, 8)

    def stop(signum):
        raise TrainingInterrupted(signum, "interrupted")

    steps = 0
    try:
        with StopSignals() as signals:
            for batch in until_stopped(loader(), signals, stop, torch.device("cpu")):
                model(batch).sum().backward()
                steps += 1
        result = "finished"
    except TrainingInterrupted as stopped:
        result = f"stopped {stopped.signum}"
    except Exception as err:  # a collective timed out: the ranks were in different ones
        result = f"{type(err).__name__}"
    Path(out, f"rank{rank}").write_text(f"{result} after {steps} steps")
    del model  # as spool's own teardown: DDP would keep the group alive past its destruction
    dist.barrier()  # neither tears down the group while the other still uses it
    cleanup_distributed()


def test_every_rank_stops_at_the_same_step_when_one_loader_fails(tmp_path: Path) -> None:
    """The failed rank stopped while the other went on to its step: each waited in another
    collective until the timeout, with no checkpoint."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_ranks_one_loader_fails, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == [
        f"stopped {int(signal.SIGTERM)} after 1 steps"] * 2


def _two_ranks_uneven_batches(rank: int, port: int, out: str) -> None:
    """Rank 0 holds 3 batches, rank 1 two (validation shards without padding)."""
    import datetime

    import torch.distributed as dist

    from spool.distributed import cleanup_distributed
    from spool.train.signals import StopSignals, until_stopped

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=90))
    with StopSignals() as signals:
        seen = list(until_stopped(range(3 - rank), signals, print, torch.device("cpu")))
    total = torch.tensor([len(seen)])
    dist.all_reduce(total)  # the ranks still meet in the same collective
    Path(out, f"rank{rank}").write_text(f"{seen} of {int(total)}")
    cleanup_distributed()


def test_ranks_with_different_numbers_of_batches_each_get_theirs(tmp_path: Path) -> None:
    """Validation shards are not padded: the rank that runs out takes part in the others'
    stop agreements until they have run out too."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_ranks_uneven_batches, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == [
        "[0, 1, 2] of 5", "[0, 1] of 5"]


def _two_ranks_killed_in_validation(rank: int, port: int, out: str) -> None:
    """A 2-rank run whose rank 0 has its validation loader killed by the job's SIGTERM."""
    import datetime

    import torch.distributed as dist

    from spool.distributed import cleanup_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    # 7 items: rank 0 holds 4, rank 1 three; rank 0's last dies, once rank 1 has run out
    Trainer.evaluate = _killed_in_validation(Trainer.evaluate, at=6 if rank == 0 else None,
                                             size=7)
    try:
        # On the CPU it tests: with a GPU present, rank 1 (LOCAL_RANK 1) was refused by a
        # one-GPU machine and rank 0 met a closed connection.
        train(TrainConfig(**train_config_dict(Path(out, "run"), eval_batch_size=1,
                                              device="cpu")))
        result = "finished"
    except TrainingInterrupted as stopped:
        result = str(stopped)
    except Exception as err:  # a collective timed out: rank 1 waited in validation's
        result = f"{type(err).__name__}: {err}"
    Path(out, f"rank{rank}").write_text(result)
    cleanup_distributed()


def test_a_ddp_validation_whose_loader_dies_of_the_signal_stops_every_rank(
        tmp_path: Path) -> None:
    """Under DDP the rank whose validation loader died raised while the others waited in
    validation's all-reduce until the timeout: the job crashed with no checkpoint. Every
    rank stops at the epoch's last step, with the checkpoint a one-process run has there,
    also when the other rank has run out of validation batches (shards are not padded)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_ranks_killed_in_validation, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}").read_text().startswith("interrupted at step 4;")
    train(TrainConfig(**train_config_dict(tmp_path / "one", stop_after_steps=4)))
    states = [json.loads((tmp_path / run / "checkpoints" / "step_00000004" /
                          "trainer_state.json").read_text()) for run in ("run", "one")]
    for key in ("epoch", "step_in_epoch", "history"):
        assert states[0][key] == states[1][key], key
    for key, value in states[1]["tracker"].items():  # sums over both ranks, once
        torch.testing.assert_close(torch.tensor(states[0]["tracker"][key]), torch.tensor(value),
                                   msg=key)


def test_a_resume_with_its_init_at_hand_builds_the_model_as_before(tmp_path: Path) -> None:
    """The checkpoint's config is the fallback for an init that is gone: with the init at
    hand, settings of the first start that a resume may change (gradient checkpointing)
    follow the resume's own, as before."""
    import shutil

    train(TrainConfig(**train_config_dict(tmp_path / "pre", epochs=1, val_data=None)))
    shutil.copytree(tmp_path / "pre" / "model", tmp_path / "init")
    run = dict(init=str(tmp_path / "init"), val_data=None, model={})
    train(TrainConfig(**train_config_dict(tmp_path / "run", stop_after_steps=3,
                                          gradient_checkpointing=True, **run)))
    trainer = Trainer(TrainConfig(**train_config_dict(tmp_path / "run", resume="auto", **run)))
    try:
        assert trainer.step == 3 and not trainer.model.config.gradient_checkpointing
    finally:
        trainer.close()


def test_a_cache_that_recorded_a_relative_backbone_folder_is_taken(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """--model backbone_name=./dino is resolved now; a cache made before recorded ./dino,
    and the same flag was refused as another backbone than the cache's."""
    from spool.cli_args import parse_overrides
    from spool.config import SpoolConfig
    from spool.train import builders

    (tmp_path / "dino").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builders, "cache_backbone_config",
                        lambda cache: SpoolConfig(backbone_name="./dino"))
    model = parse_overrides(["backbone_name=./dino"])
    assert model == {"backbone_name": str((tmp_path / "dino").resolve())}
    fields = train_config_dict(tmp_path / "run", train_data=None, val_data=None,
                               train_cache=str(tmp_path / "c"), model=model)
    del fields["num_frames"]  # a cache's clips were sampled when it was made
    cfg = TrainConfig(**fields)
    assert builders.model_config(cfg).backbone_name == model["backbone_name"]


def test_a_run_on_a_local_backbone_folder_resumes(tmp_path: Path) -> None:
    """The checkpoint's config.json holds the backbone's config (save_pretrained writes it
    in, so the checkpoint stands alone); the resumed run's, built from backbone_name, has
    none: every run on a backbone folder or hub id was refused as another model."""
    from train_helpers import TINY_BACKBONE
    from transformers import AutoConfig, AutoModel

    AutoModel.from_config(AutoConfig.for_model(**TINY_BACKBONE)).save_pretrained(
        tmp_path / "dino")
    model = {**{k: v for k, v in TINY_MODEL.items() if k != "backbone_config"},
             "backbone_name": str(tmp_path / "dino")}
    run = dict(val_data=None, model=model)
    train(TrainConfig(**train_config_dict(tmp_path / "run", stop_after_steps=3, **run)))
    train(TrainConfig(**train_config_dict(tmp_path / "run", resume="auto", **run)))
    assert [s for s, _ in read_steps(tmp_path / "run")] == list(range(1, 9))
    with pytest.raises(ValueError, match="another model"):  # a real change is still refused
        Trainer(TrainConfig(**train_config_dict(
            tmp_path / "run", resume="auto", **{**run, "model": {**model, "image_size": 40}})))


def test_the_stop_is_announced_by_rank_0_alone(monkeypatch, spool_log) -> None:
    """Under torchrun every rank said 'SIGTERM: stopping after this step ...'."""
    from spool.train import signals as stopping

    for rank, said in ((1, False), (0, True)):
        monkeypatch.setattr(stopping.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(stopping.dist, "get_rank", lambda rank=rank: rank)
        spool_log.clear()
        with stopping.StopSignals() as signals:
            signals._handle(signal.SIGTERM, None)
        assert signals.received == signal.SIGTERM
        assert ("SIGTERM: stopping after this step" in spool_log.text) is said


def test_the_stop_says_ctrl_c_again_only_after_a_ctrl_c(spool_log) -> None:
    """A scheduler's SIGTERM was answered with "(Ctrl-C again to quit at once)"."""
    from spool.train import signals as stopping

    for signum, hint in ((signal.SIGTERM, "(Ctrl-C to quit at once)"),
                         (signal.SIGINT, "(Ctrl-C again to quit at once)")):
        spool_log.clear()
        with stopping.StopSignals() as signals:
            signals._handle(signum, None)
        assert hint in spool_log.text
