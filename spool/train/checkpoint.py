"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

``checkpoints/step_00000120/`` holds the model as ``save_pretrained`` writes it (loadable with
``load_classifier``), ``optimizer.safetensors``, ``rng.safetensors`` (every rank's torch / CUDA
generator) and ``trainer_state.json`` (step, epoch, optimizer param groups, scheduler, running
metrics, Python / NumPy RNG, the run's config). A checkpoint is written to a hidden folder and
renamed into place, so a directory named ``step_*`` is always complete.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from spool.errors import CheckpointNotFoundError
from spool.io_utils import atomic_save_safetensors

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
RNG_NAME = "rng.safetensors"
CHECKPOINT_DIR = "checkpoints"


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
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, cached = numpy_state
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], rng_per_rank: list[dict[str, Any]]) -> Path:
    """Write a complete checkpoint to ``directory`` (atomically: via a hidden sibling)."""
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    opt_tensors, opt_data = optimizer_to_files(optimizer)
    atomic_save_safetensors(opt_tensors, tmp / OPTIMIZER_NAME)
    rng_tensors = {f"rank{r}.{k}": v for r, rng in enumerate(rng_per_rank)
                   for k, v in rng["tensors"].items()}
    atomic_save_safetensors(rng_tensors, tmp / RNG_NAME)
    full = {**state, "optimizer": opt_data,
            "rng": [{"python": rng["python"], "numpy": rng["numpy"]} for rng in rng_per_rank]}
    (tmp / STATE_NAME).write_text(json.dumps(full, indent=1))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def load_checkpoint(directory: Path, rank: int = 0) -> dict[str, Any]:
    """Read a checkpoint: the JSON state plus ``optimizer`` (a state dict) and this rank's
    ``rng`` (or ``None`` when the checkpoint was written by fewer ranks)."""
    directory = Path(directory)
    path = directory / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {directory} is not a training checkpoint")
    state = json.loads(path.read_text())
    state["optimizer"] = optimizer_from_files(load_file(directory / OPTIMIZER_NAME),
                                              state["optimizer"])
    rngs = state.pop("rng")
    state["rng"] = None
    if rank < len(rngs):
        prefix = f"rank{rank}."
        tensors = {k[len(prefix):]: v for k, v in load_file(directory / RNG_NAME).items()
                   if k.startswith(prefix)}
        state["rng"] = {"tensors": tensors, **rngs[rank]}
    return state


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete step checkpoints of a run, oldest first."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_resume(resume: str, out_dir: str) -> Path | None:
    """``auto``: the newest checkpoint in ``out_dir`` (None if there is none); else a path."""
    if resume == "auto":
        found = list_checkpoints(Path(out_dir))
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_NAME).is_file():
        raise CheckpointNotFoundError(f"resume: {path} is not a training checkpoint (no "
                                      f"{STATE_NAME}); pass a checkpoints/step_N directory "
                                      "or 'auto'")
    return path


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
