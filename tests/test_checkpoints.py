"""Training checkpoints survive a kill at any point: forced interleavings of save and prune."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config

from spool import claims
from spool.errors import SpoolLoadError
from spool.models.classification import SpoolForVideoClassification
from spool.train import checkpoint as ckpt


class Killed(Exception):
    """Stands for the process dying at this point."""


@pytest.fixture
def run(tmp_path: Path, monkeypatch, caplog):
    model = SpoolForVideoClassification(
        tiny_config(hidden_size=24, num_spatial_tokens=17, class_names=["a", "b"]),
        with_backbone=False)
    optimizer = torch.optim.AdamW(model.parameters())
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    monkeypatch.setattr(logging.getLogger("spool"), "propagate", True)  # for caplog
    caplog.set_level(logging.WARNING)

    def save(step: int, keep: int = 1) -> Path:
        state = {"step": step, "epoch": 0, "step_in_epoch": step, "scheduler": {},
                 "config": {}, "history": [], "tracker": {}, "world_size": 1}
        path = tmp_path / ckpt.CHECKPOINT_DIR / f"step_{step:08d}"
        ckpt.save_checkpoint(path, model, optimizer, state, [ckpt.capture_rng()])
        ckpt.prune_checkpoints(tmp_path, keep)
        return path

    def resume() -> int | None:
        with pytest.MonkeyPatch.context() as m:  # the killed process is gone
            m.setattr(claims, "process_alive", lambda pid: False)
            ckpt.recover_checkpoints(tmp_path)
        found = ckpt.resolve_resume("auto", str(tmp_path))
        return None if found is None else found[1]["step"]

    return SimpleNamespace(out=tmp_path, root=tmp_path / ckpt.CHECKPOINT_DIR, save=save,
                           resume=resume)


def _die_at_move(monkeypatch, number: int) -> None:
    """The process dies at the ``number``-th rename (1-based) and cleans nothing up."""
    calls = []
    real = ckpt._move

    def move(src: Path, dst: Path) -> None:
        calls.append((src, dst))
        if len(calls) == number:
            raise Killed
        real(src, dst)

    monkeypatch.setattr(ckpt, "_move", move)
    monkeypatch.setattr(ckpt, "shutil", SimpleNamespace(rmtree=lambda *a, **k: None))


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_killed_before_the_new_checkpoint_is_in_place(run, monkeypatch) -> None:
    run.save(2)
    _die_at_move(monkeypatch, 1)
    with pytest.raises(Killed):
        run.save(4)
    monkeypatch.undo()
    assert run.resume() == 2  # the old one was not touched; the new one's folder is hidden
    assert _names(run.root) == ["step_00000002"]


def test_killed_while_replacing_a_checkpoint_of_the_same_step(run, monkeypatch) -> None:
    # The final checkpoint replaces one taken at the same step (--save-every): the old code
    # deleted it first, and a kill before the rename left no checkpoint at all.
    run.save(8)
    _die_at_move(monkeypatch, 2)  # moved aside, the new one not yet renamed into place
    with pytest.raises(Killed):
        run.save(8)
    monkeypatch.undo()
    assert "step_00000008" not in _names(run.root)
    assert run.resume() == 8
    assert _names(run.root) == ["step_00000008"]


def test_killed_after_replacing_before_deleting_the_old_one(run, monkeypatch) -> None:
    run.save(8)
    _die_at_move(monkeypatch, 3)  # the old one's move to the trash
    with pytest.raises(Killed):
        run.save(8)
    monkeypatch.undo()
    assert run.resume() == 8
    assert _names(run.root) == ["step_00000008"]


def test_killed_while_pruning(run, monkeypatch) -> None:
    run.save(2)

    def rmtree_part(path, ignore_errors=False):  # deletes one file, then the process dies
        next(Path(path).glob("*.safetensors")).unlink()
        raise Killed

    monkeypatch.setattr(ckpt, "shutil", SimpleNamespace(rmtree=rmtree_part))
    with pytest.raises(Killed):
        run.save(4)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(run.out)] == ["step_00000004"]
    assert run.resume() == 4
    assert _names(run.root) == ["step_00000004"]  # the half-deleted trash is gone


@pytest.mark.parametrize("damage,reason", [
    (lambda p: p.joinpath("model.safetensors").write_bytes(
        p.joinpath("model.safetensors").read_bytes()[:-40]), "model.safetensors"),
    (lambda p: p.joinpath("trainer_state.json").write_text("{\"step\": 4,"),
     "trainer_state.json: not valid JSON"),
    (lambda p: p.joinpath("rng.safetensors").unlink(), "rng.safetensors: missing"),
    (lambda p: p.joinpath("optimizer.safetensors").write_bytes(b"\0" * 16),
     "optimizer.safetensors: not a readable safetensors file"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_an_intact_one(run, caplog, damage,
                                                                  reason) -> None:
    run.save(2, keep=2)
    damage(run.save(4, keep=2))
    (run.root / "step_abc").mkdir()  # not checkpoints: ignored
    (run.root / "step_00000009.bak").mkdir()
    (run.root / "notes").mkdir()
    assert run.resume() == 2
    assert f"skipping checkpoint {run.root / 'step_00000004'}" in caplog.text
    assert reason in caplog.text
    assert "resuming from step_00000002" in caplog.text
    # The next save keeps the newest intact checkpoints and deletes the damaged one.
    run.save(6, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(run.out)] == ["step_00000002",
                                                                "step_00000006"]


def test_every_checkpoint_damaged_or_an_explicit_damaged_one_is_an_error(run) -> None:
    path = run.save(2)
    (path / "trainer_state.json").write_text("[")
    with pytest.raises(SpoolLoadError, match="every checkpoint is damaged"):
        run.resume()
    with pytest.raises(SpoolLoadError, match=f"{path / 'trainer_state.json'}: not valid JSON"):
        ckpt.resolve_resume(str(path), str(run.out))


def test_no_checkpoints_and_stray_folders_only(run) -> None:
    assert run.resume() is None
    (run.root / "step_abc").mkdir(parents=True)
    shutil.copytree(run.root / "step_abc", run.root / "step_12x")
    assert run.resume() is None


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path: Path) -> None:
    """``step_<digits>`` need not be zero-padded to 8 digits (a hand-made folder, a run past
    10^8 steps): step 10 is newer than step 9 whatever the names sort as."""
    for name in ("step_9", "step_100", "step_10", "step_000000011", "notes", "step_x"):
        (tmp_path / ckpt.CHECKPOINT_DIR / name).mkdir(parents=True)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "step_9", "step_10", "step_000000011", "step_100"]


def test_each_rank_loads_its_own_python_and_numpy_rng_state(run) -> None:
    """rng_per_rank[r] is what rank r gets back: a run resumed on two ranks must not give
    rank 1 the Python / NumPy streams of rank 0 (both would draw the same augmentations)."""
    import random

    import numpy as np

    states = []
    for seed in (1, 2):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        states.append(ckpt.capture_rng())
    model = SpoolForVideoClassification(
        tiny_config(hidden_size=24, num_spatial_tokens=17, class_names=["a", "b"]),
        with_backbone=False)
    optimizer = torch.optim.AdamW(model.parameters())
    state = {"step": 3, "epoch": 0, "step_in_epoch": 3, "scheduler": {}, "config": {}}
    path = ckpt.save_checkpoint(run.root / "step_00000003", model, optimizer, state, states)
    for rank in (0, 1):
        loaded = ckpt.load_checkpoint(path, rank)["rng"]
        assert loaded["python"] == states[rank]["python"]
        assert loaded["numpy"] == states[rank]["numpy"]
        assert torch.equal(loaded["tensors"]["torch"], states[rank]["tensors"]["torch"])
    assert ckpt.load_checkpoint(path, 2)["rng"] is None  # written by fewer ranks


def test_a_resume_sets_aside_a_checkpoint_of_its_own_step_from_elsewhere(tmp_path: Path
                                                                          ) -> None:
    """Resuming from step 10 of another folder: this run's own step 10 (and later ones)
    belong to the abandoned branch and are moved aside; earlier ones stay."""
    root = tmp_path / ckpt.CHECKPOINT_DIR
    for step in (5, 10, 15):
        (root / f"step_{step:08d}").mkdir(parents=True)
    elsewhere = tmp_path / "other" / "step_00000010"
    elsewhere.mkdir(parents=True)
    note = ckpt.set_aside_later_checkpoints(tmp_path, elsewhere, 10)
    assert note is not None
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000005"]
    assert _names(root / "abandoned_from_step_00000010") == ["step_00000010", "step_00000015"]
    # Resuming from one of its own: that one stays, the later ones move.
    (root / "step_00000020").mkdir()
    ckpt.set_aside_later_checkpoints(tmp_path, root / "step_00000005", 5)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000005"]


def test_a_state_without_a_whole_step_is_an_incomplete_checkpoint(run) -> None:
    """Valid JSON is not enough: a state with no step, or a step that is no integer, makes
    the checkpoint one to skip (and prune), not one to resume from."""
    import json

    path = run.save(1)
    assert ckpt.checkpoint_problem(path) is None
    state_file = path / ckpt.STATE_NAME
    state = json.loads(state_file.read_text())
    for bad in ({k: v for k, v in state.items() if k != "step"}, {**state, "step": "1"},
                [state]):
        state_file.write_text(json.dumps(bad))
        assert "holds no step" in ckpt.checkpoint_problem(path)


@pytest.mark.parametrize("make", [
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    lambda params: torch.optim.AdamW(params, lr=0.1),
])
def test_optimizer_state_round_trips_through_the_files(make) -> None:
    """optimizer_from_files inverts optimizer_to_files, non-tensor entries included (torch's
    own optimizers keep tensors today; Adam's ``step`` was a plain int before torch 1.12, and
    other optimizers may keep numbers), and the state loads back into a fresh optimizer."""
    model = torch.nn.Linear(3, 2)
    optimizer = make(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    optimizer.state[model.bias]["updates"] = 1  # a non-tensor entry
    tensors, data = ckpt.optimizer_to_files(optimizer)
    back = ckpt.optimizer_from_files(tensors, json.loads(json.dumps(data)))
    want = optimizer.state_dict()
    assert back["param_groups"] == json.loads(json.dumps(want["param_groups"]))
    assert back["state"].keys() == want["state"].keys()
    for idx, entry in want["state"].items():
        assert back["state"][idx].keys() == entry.keys()
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(back["state"][idx][name], value)
            else:
                assert back["state"][idx][name] == value
    make(model.parameters()).load_state_dict(back)
