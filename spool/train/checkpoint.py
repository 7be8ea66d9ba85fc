"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

``checkpoints/step_00000120/`` holds the model as ``save_pretrained`` writes it (loadable with
``load_classifier``), ``optimizer.safetensors``, ``rng.safetensors`` (every rank's torch / CUDA
generator) and ``trainer_state.json`` (step, epoch, optimizer param groups, scheduler, running
metrics, Python / NumPy RNG, the run's config).

Crash safety: a checkpoint is written in full to a hidden folder, synced, and renamed into
place before any older one is touched; an older one is deleted by renaming it to a hidden
trash name first, so a ``step_N`` folder is never half-deleted. Resuming takes the newest
checkpoint that loads in full, skipping damaged ones, and ignores folders not named
``step_<digits>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spool.config import CONFIG_NAME
from spool.errors import CheckpointNotFoundError, SpoolLoadError
from spool.io_utils import (
    atomic_save_safetensors,
    atomic_write_text,
    fsync_directory,
    is_stale_temporary,
    remove_stale_temporaries_in,
    temporary_sibling,
)
from spool.models.weights import WEIGHTS_NAME, read_weights

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
RNG_NAME = "rng.safetensors"
CHECKPOINT_DIR = "checkpoints"
FILES = (CONFIG_NAME, WEIGHTS_NAME, OPTIMIZER_NAME, RNG_NAME, STATE_NAME)
_STEP_DIR = re.compile(r"step_(\d+)")
_ASIDE = ".replaced"  # suffix of a checkpoint moved aside while one of its step replaces it
_TRASH = re.compile(r"\..+\.trash-[0-9a-f]+")


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                                    dict[str, Any]]:
    """Split an optimizer state dict into tensors (``"<param>.<name>"``) and JSON data."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], data: dict[str, Any]
                         ) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_files`: a state dict for ``load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in data["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": data["param_groups"]}


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch / CUDA as tensors, Python / NumPy as JSON data."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return {"tensors": tensors,
            "python": [py[0], list(py[1]), py[2]],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def restore_rng(tensors: dict[str, torch.Tensor], python: list, numpy_state: list) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        # By device index ("cuda10" sorts before "cuda2"), and only the devices this process
        # sees: a run resumed with fewer GPUs per process (one per task under SLURM).
        for key in (k for k in tensors if k.startswith("cuda")):
            if (device := int(key[len("cuda"):])) < torch.cuda.device_count():
                torch.cuda.set_rng_state(tensors[key], device)
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, cached = numpy_state
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], rng_per_rank: list[dict[str, Any]],
                    update: bool = False) -> Path:
    """Write a complete checkpoint to ``directory``: every file to a hidden sibling folder,
    synced, then renamed into place (an existing ``directory`` is moved aside first and
    deleted only once the new one is in place). With ``update`` (the weights and optimizer
    unchanged since), one that this ``optimizer`` wrote whole at this step gets only the new
    state."""
    directory = Path(directory)
    written, owner = _WRITTEN.get(directory.resolve(), (None, lambda: None))
    if update and owner() is optimizer and written == _signature(directory) and \
            checkpoint_problem(directory) is None:  # again at its step (before a validation)
        kept = json.loads((directory / STATE_NAME).read_text())
        atomic_write_text(directory / STATE_NAME, json.dumps(
            {**state, "optimizer": kept["optimizer"], "rng": kept["rng"]}, indent=1))
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(directory)
    tmp.mkdir()
    try:
        model.save_pretrained(tmp)
        opt_tensors, opt_data = optimizer_to_files(optimizer)
        atomic_save_safetensors(opt_tensors, tmp / OPTIMIZER_NAME)
        rng_tensors = {f"rank{r}.{k}": v for r, rng in enumerate(rng_per_rank)
                       for k, v in rng["tensors"].items()}
        atomic_save_safetensors(rng_tensors, tmp / RNG_NAME)
        full = {**state, "optimizer": opt_data,
                "rng": [{"python": r["python"], "numpy": r["numpy"]} for r in rng_per_rank]}
        atomic_write_text(tmp / STATE_NAME, json.dumps(full, indent=1))
        fsync_directory(tmp)
        _put_in_place(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _WRITTEN[directory.resolve()] = (_signature(directory), weakref.ref(optimizer))
    return directory


# Checkpoints written whole, by weights file and optimizer (run): only a run's own get their
# state updated (another at the same path, of a branch abandoned, holds other weights).
_WRITTEN: dict[Path, tuple[tuple[int, int] | None, Callable[[], object]]] = {}


def _signature(directory: Path) -> tuple[int, int] | None:
    with contextlib.suppress(OSError):
        st = (directory / WEIGHTS_NAME).stat()
        return st.st_ino, st.st_mtime_ns
    return None


def _move(src: Path, dst: Path) -> None:
    """One rename (a separate function so tests can interrupt a sequence of them)."""
    os.rename(src, dst)


def _put_in_place(new: Path, target: Path) -> None:
    """Rename the complete folder ``new`` onto ``target``. An existing ``target`` is renamed
    to ``.NAME.replaced`` first (:func:`recover_checkpoints` puts it back if the process dies
    before ``new`` is in place) and deleted last."""
    aside = target.with_name(f".{target.name}{_ASIDE}")
    if target.exists():
        if aside.exists():
            discard(aside)
        _move(target, aside)
    _move(new, target)
    fsync_directory(target.parent)
    if aside.exists():
        discard(aside)


def discard(path: Path) -> None:
    """Delete a folder without ever leaving it half-deleted under its name: rename it to a
    hidden trash name, then delete that."""
    trash = path.with_name(f".{path.name.lstrip('.')}.trash-{secrets.token_hex(4)}")
    _move(path, trash)
    fsync_directory(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def recover_checkpoints(out_dir: Path) -> None:
    """Tidy ``checkpoints/`` after a crash: put back a checkpoint moved aside for a
    replacement that never arrived, and delete trash and temporaries of exited processes
    (in the run folder too: ``train_config.json``'s, ``metrics.csv``'s, ...).
    Only the process that owns the run (the run directory's lock) may call this."""
    remove_stale_temporaries_in(out_dir)
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if path.name.endswith(_ASIDE):
            target = root / path.name[1:-len(_ASIDE)]
            if target.exists():
                discard(path)
            else:
                _move(path, target)
                logger.warning(f"{target}: restored (a replacement of it was interrupted)")
        elif _TRASH.fullmatch(path.name) or is_stale_temporary(path):
            shutil.rmtree(path, ignore_errors=True)


def checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a complete checkpoint (a missing or unreadable file), or None.
    Quick: reads the JSON state and the safetensors headers, not the tensors."""
    from safetensors import SafetensorError, safe_open

    for name in FILES:
        if not (directory / name).is_file():
            return f"{name} is missing"
    try:
        state = json.loads((directory / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{STATE_NAME} is not valid JSON ({err})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{STATE_NAME} holds no step"
    for name in (WEIGHTS_NAME, OPTIMIZER_NAME, RNG_NAME):
        try:
            with safe_open(directory / name, "pt"):
                pass
        except (SafetensorError, OSError) as err:
            return f"{name} is damaged ({err})"
    return None


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointNotFoundError(f"{path}: not found; {path.parent} is not a complete "
                                      "training checkpoint") from err
    except (OSError, ValueError) as err:
        raise SpoolLoadError(f"{path}: not valid JSON ({err}); the checkpoint is damaged, "
                             "resume from another one") from err
    keys = ("step", "epoch", "step_in_epoch", "optimizer", "rng", "scheduler", "config")
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise SpoolLoadError(f"{path}: no {missing} in it; the checkpoint is damaged, resume "
                             "from another one")
    return state


def load_checkpoint(directory: Path, rank: int = 0) -> dict[str, Any]:
    """Read a whole checkpoint: the JSON state plus ``weights`` (the model's state dict),
    ``optimizer`` (a state dict) and this rank's ``rng`` (or ``None`` when the checkpoint was
    written by fewer ranks). A missing or damaged file is a ``SpoolLoadError`` naming it."""
    directory = Path(directory)
    state = _read_state(directory / STATE_NAME)
    state["weights"] = read_weights(directory / WEIGHTS_NAME)
    try:
        state["optimizer"] = optimizer_from_files(read_weights(directory / OPTIMIZER_NAME),
                                                  state["optimizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise SpoolLoadError(f"{directory / STATE_NAME}: optimizer state does not match "
                             f"{OPTIMIZER_NAME} ({err})") from err
    rngs = state.pop("rng")
    state["rng"] = None
    rng_tensors = read_weights(directory / RNG_NAME)
    if rank < len(rngs):
        prefix = f"rank{rank}."
        tensors = {k[len(prefix):]: v for k, v in rng_tensors.items() if k.startswith(prefix)}
        if "torch" not in tensors:
            raise SpoolLoadError(f"{directory / RNG_NAME}: no RNG state of rank {rank}")
        state["rng"] = {"tensors": tensors, **rngs[rank]}
    return state


def list_checkpoints(out_dir: Path) -> list[Path]:
    """The ``step_<digits>`` folders of a run, oldest first (complete or not: see
    :func:`checkpoint_problem`); other folders are not checkpoints."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir()
             if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resume_candidate(resume: str | None, out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a resume would go on from, found without loading it (``auto``: the newest
    in ``out_dir`` with its model's config; else the path given), or None. Its config rebuilds
    the run's model: a resume needs no ``init``, which may be gone by then."""
    if not resume:
        return None
    found = [Path(resume)] if resume != "auto" else list_checkpoints(Path(out_dir))
    found = [path for path in found if (path / CONFIG_NAME).is_file()]
    return found[-1] if found else None


def resolve_resume(resume: str, out_dir: str, rank: int = 0
                   ) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from and its :func:`load_checkpoint` state.

    ``auto``: the newest checkpoint in ``out_dir`` that loads in full (None if there is none;
    damaged ones are skipped, saying why, and if all are damaged that is an error); else the
    path of a checkpoint, which must load.
    """
    if resume != "auto":
        path = Path(resume)
        if not (path / STATE_NAME).is_file():
            raise CheckpointNotFoundError(f"resume: {path} is not a training checkpoint (no "
                                          f"{STATE_NAME}); pass a checkpoints/step_N "
                                          "directory or 'auto'")
        return path, load_checkpoint(path, rank)
    skipped = []
    for path in reversed(list_checkpoints(Path(out_dir))):
        try:
            state = load_checkpoint(path, rank)
        except SpoolLoadError as err:
            logger.warning(f"skipping checkpoint {path}: {err}")
            skipped.append(path.name)
            continue
        if skipped:
            logger.warning(f"resuming from {path.name}, the newest intact checkpoint (newer "
                           f"ones are damaged: {', '.join(skipped)})")
        return path, state
    if skipped:
        raise SpoolLoadError(f"{Path(out_dir) / CHECKPOINT_DIR}: every checkpoint is damaged "
                             f"({', '.join(skipped)}); delete them to start from scratch")
    return None


def apply_hyperparameters(optimizer: torch.optim.Optimizer,
                          scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float,
                          weight_decays: list[float]) -> None:
    """After loading a checkpoint's optimizer and scheduler state (which hold the saved
    run's values), put ``lr`` (under this run's schedule) and ``weight_decays`` (one per
    param group) in force."""
    step = scheduler.last_epoch
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, decay, factor in zip(optimizer.param_groups, weight_decays,
                                    scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(step)
        group["weight_decay"] = decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def results_written(out_dir: Path, step: int) -> bool:
    """Whether ``out_dir``'s ``results.json`` is of a run at ``step`` (one left by a shorter
    run that this one trained on from is not)."""
    try:
        results = json.loads((Path(out_dir) / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and results.get("steps") == step


def set_aside_later_checkpoints(out_dir: Path, resumed: Path, step: int) -> str | None:
    """Move the checkpoints of ``out_dir`` at or after ``step`` (other than ``resumed``, the
    one a run goes on from) into ``checkpoints/abandoned_from_step_<step>[_n]/``: they belong
    to the branch the resume abandons, and would otherwise win ``--resume auto`` and
    rotation; so do that branch's ``model/`` and ``results.json``. Returns a note saying what
    moved where, or None when there was nothing to move."""
    resumed = Path(resumed).resolve()
    later = [p for p in list_checkpoints(out_dir)
             if int(p.name[len("step_"):]) >= step and p.resolve() != resumed]
    if not later:
        return None
    root = Path(out_dir) / CHECKPOINT_DIR
    aside = root / f"abandoned_from_step_{step:08d}"
    n = 1
    while aside.exists():
        n += 1
        aside = root / f"abandoned_from_step_{step:08d}_{n}"
    aside.mkdir()
    for path in later:
        _move(path, aside / path.name)
    # A finished branch's model and results too: left in place, they would pass for this
    # run's if it died between its last checkpoint and writing its own.
    for name in ("model", "results.json"):
        if (Path(out_dir) / name).exists():
            _move(Path(out_dir) / name, aside / name)
    fsync_directory(root)
    fsync_directory(Path(out_dir))
    names = ", ".join(path.name for path in later)
    more = " and that branch's model/" if (aside / "model").exists() else ""
    return (f"note: resuming from step {step}: moved the later checkpoints ({names}){more} to "
            f"{aside}; --resume auto now continues this run")


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; delete the others and damaged ones
    (and what earlier crashes left: :func:`recover_checkpoints`)."""
    recover_checkpoints(out_dir)
    checkpoints = list_checkpoints(out_dir)
    intact = [p for p in checkpoints if checkpoint_problem(p) is None]
    kept = set(intact[-keep:])
    for old in checkpoints:
        if old not in kept:
            if old not in intact:
                logger.warning(f"deleting damaged checkpoint {old}: {checkpoint_problem(old)}")
            discard(old)


def check_epochs_left(path: Path, epoch: int, step_in_epoch: int, epochs: int) -> None:
    """``epochs`` lowered on resume below where the checkpoint at ``path`` is: refused, as
    the run would publish mid-epoch weights as its final ones."""
    if epoch > epochs or (epoch == epochs and step_in_epoch > 0):
        raise ValueError(f"epochs (--epochs): {epochs}, but the checkpoint {path} is after "
                         f"{epoch} epochs and {step_in_epoch} steps; resume with --epochs "
                         f"{epoch + (step_in_epoch > 0)} or more")


def position_in_new_batches(epoch: int, step_in_epoch: int, old_batch: int, new_batch: int,
                            steps_per_epoch: int) -> tuple[int, int]:
    """(step in the epoch, step of the schedule) after a change of the global batch size.

    An epoch's order of samples does not depend on the batch size, so the epoch goes on after
    the samples already seen (up to a batch less one of them again), and the schedule at the
    same fraction of the run. The trainer's ``step`` keeps counting optimizer steps.
    """
    in_epoch = min(step_in_epoch * old_batch // new_batch, steps_per_epoch)
    return in_epoch, epoch * steps_per_epoch + in_epoch
