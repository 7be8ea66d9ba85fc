"""What a resumed run may change, and the run directory's record of its settings.

A resume compares the checkpoint's settings with the new run's:

- refused, before any step: ``task``, ``architecture`` and every model (``SpoolConfig``)
  field that shapes the network or what it computes (heads and their split, layers, window,
  pooling and merging, backbone and preprocessing, class names, head settings), compared as
  the model is built (``init`` and a token cache included), and a token cache made again
  with another backbone (``builders.check_resumed_backbone``). The checkpoint's weights were
  trained as the old model, and the run would publish them as the new one.
- allowed with one note (old -> new): the other settings of training and data (``lr``,
  ``epochs``, ``batch_size``, ``label_smoothing``, ``grad_clip``, ``augment``,
  ``num_frames``, data paths, ..., the sampling of a token cache made again at another rate,
  and the number of processes): they change the remaining steps, not what the weights are.
- neither: settings of one invocation, its output or its speed and memory (:data:`IGNORED`,
  :data:`MODEL_IGNORED`).

Record: ``train_config.json`` holds the settings the run goes on with, and each resume appends
one JSON line to ``resumes.jsonl``: the step and checkpoint it went on from, the noted changes
(``{field: [old, new]}``, so the settings of the earlier steps can be told) and its full
settings.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from spool.config import CONFIG_NAME, SpoolConfig
from spool.io_utils import atomic_write
from spool.train.checkpoint import list_checkpoints, results_written
from spool.train.config import PATH_FIELDS, TrainConfig

CONFIG_FILE = "train_config.json"
HISTORY_FILE = "resumes.jsonl"

# TrainConfig fields a resume may change silently: they steer this invocation (where it
# writes, when it stops or saves, how it logs) or only its speed and memory, not the weights.
# ``model`` is compared field by field as the model is built (below).
IGNORED = ("out_dir", "resume", "stop_after_steps", "num_workers", "device",
           "gradient_checkpointing", "save_every", "keep_checkpoints", "eval_every",
           "eval_batch_size", "log_every", "tensorboard", "quiet", "name", "model")
REFUSED = ("task", "architecture")  # another kind of model
# SpoolConfig fields a resume may change with a note. Dropout is the identity in eval mode:
# the same weights compute the same function, and only the regularisation of the remaining
# steps changes (as with label smoothing). initializer_range only draws initial weights,
# which the checkpoint's replace.
# sampling: how the frames are taken (num_frames etc., or a token cache's rate, which the
# cache's path alone does not show: a cache made again at another fps under the same path).
MODEL_NOTED = ("hidden_dropout", "attention_dropout", "classifier_dropout",
               "initializer_range", "sampling")
SAMPLING_FIELDS = {"num_frames", "frame_stride", "fps"}  # TrainConfig's, that make sampling
# SpoolConfig fields of speed and memory only, or that the trainer derives from settings
# compared as TrainConfig fields (background_classes: background), or that save_pretrained
# writes (use_pretrained_backbone: the weights are the checkpoint's either way).
MODEL_IGNORED = ("backbone_chunk_size", "attn_implementation", "attention_chunk_frames",
                 "gradient_checkpointing", "architectures", "background_classes",
                 "use_pretrained_backbone")
# Every other SpoolConfig field is refused: it shapes the network or what it computes, or
# (freeze_backbone) which parameters train, which the checkpoint's optimizer state is for.


def _absolute(name: str, value: Any) -> Any:
    """A checkpoint's path setting as ``to_saved_dict`` gives it (checkpoints before it was
    saved so hold paths as given: taken relative to this working directory)."""
    if not isinstance(value, str) or os.path.isabs(value):
        return value
    if name == "init" and not os.path.exists(value):
        return value  # a hub id
    return os.path.abspath(value)


def _same_backbone(old: Any, new: Any, old_set: Any, new_set: Any) -> bool:
    """Whether ``backbone_name`` ``old`` (the checkpoint's model) and ``new`` name one
    backbone: one string, one local folder, or (a folder given relative to another working
    directory) the same folder in both runs' saved settings (``*_set``, made absolute)."""
    if old == new:
        return True
    if isinstance(old, str) and isinstance(new, str) and os.path.isdir(old) \
            and os.path.isdir(new):
        return os.path.samefile(old, new)
    return old_set is not None and old_set == new_set


def _model_changes(path: Path, state: dict[str, Any], cfg: TrainConfig,
                   model_config: SpoolConfig) -> tuple[dict[str, list], dict[str, list]]:
    """(refused, noted) changes of the model's settings, ``{"model.<field>": [old, new]}``:
    the checkpoint's ``config.json`` against ``model_config``, the model the run built."""
    try:
        old = json.loads((Path(path) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no model config: the fields the run was given
        old = state["config"].get("model", {})
    new = model_config.to_dict()
    old_set = _absolute("backbone_name", state["config"].get("model", {}).get("backbone_name"))
    new_set = cfg.to_saved_dict()["model"].get("backbone_name")
    refused: dict[str, list] = {}
    noted: dict[str, list] = {}
    for name, value in new.items():
        if name in MODEL_IGNORED or name not in old or old[name] == value:
            continue  # a field missing from an older checkpoint's config: not known
        if name == "backbone_name" and _same_backbone(old[name], value, old_set, new_set):
            continue
        if name == "backbone_config" and value is None and isinstance(old[name], dict):
            continue  # the named backbone's own, which save_pretrained wrote in (compared above)
        (noted if name in MODEL_NOTED else refused)[f"model.{name}"] = [old[name], value]
    return refused, noted


def _describe(changes: dict[str, list]) -> str:
    return ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changes.items())


def refuse_earlier_run(out: Path, resume: str | None,
                       found: tuple[Path, Any] | None = None) -> None:
    """``ValueError`` when a run in ``out`` would replace or mix with an earlier run's work:
    its checkpoints (pruned with this run's, newest step first) unless resumed; (no
    checkpoint to go on from, e.g. deleted for space) its saved ``model/`` and results; or
    (resuming ``found``, another run's checkpoint) its own checkpoints and logs."""
    earlier = list_checkpoints(out)
    if earlier and not resume:
        raise ValueError(f"out_dir: {out} holds checkpoints of an earlier run (the newest: "
                         f"{earlier[-1].name}); pass --resume auto to continue it, or another "
                         "--out-dir")
    finished = [n for n in ("model", "results.json") if (out / n).exists()]
    if finished and not earlier and found is None:
        raise ValueError(f"out_dir: {out} holds an earlier run's {' and '.join(finished)} and "
                         "no checkpoint to continue it from; give another --out-dir (or "
                         "remove them to start again there)")
    if earlier and found is not None and _another_runs(found, out, earlier[-1].parent):
        raise ValueError(f"resume: {found[0]} is another run's checkpoint, and {out} holds a run "
                         f"of its own (the newest: {earlier[-1].name}): their histories would "
                         "mix; resume it into a new --out-dir, or --resume auto to continue the "
                         f"run in {out}")


def _another_runs(found: tuple[Path, Any], out: Path, own: Path) -> bool:
    """Whether checkpoint ``found`` is of another run than ``out``'s: outside its checkpoints
    and saved by a run into another folder (a copy of its own, or an old one, is not)."""
    saved = (found[1].get("config") or {}).get("out_dir")
    return found[0].resolve().parent != own.resolve() and saved is not None and \
        Path(saved).resolve() != out.resolve()


def cpu_threads(device: torch.device) -> int | None:
    """The CPU thread count a CPU run's weights depend on (kernels sum in another order with
    another count); None on a GPU."""
    return torch.get_num_threads() if device.type == "cpu" else None


def device_said(device: torch.device) -> str:
    threads = cpu_threads(device)
    return f"{device} ({threads} thread{'s' if threads > 1 else ''} each)" if threads \
        else str(device)


def check_resume(path: Path, state: dict[str, Any], cfg: TrainConfig,
                 model_config: SpoolConfig, world_size: int,
                 device: torch.device | None = None) -> dict[str, Any]:
    """Compare the checkpoint at ``path`` (its ``state``) with the run ``cfg`` that resumes it
    (``model_config``: the model the run built). A ``ValueError`` naming every change of the
    model or task; else the record of the resume, with the changes to note under
    ``"changed"`` (``{field: [old, new]}``; :func:`note` says them). An init other than the
    run's is unused (``"init_unused"``) and set back to the run's in ``cfg``."""
    old, new = state["config"], cfg.to_saved_dict()
    refused = {name: [old[name], new[name]] for name in REFUSED
               if name in old and old[name] != new[name]}
    model_refused, model_noted = _model_changes(path, state, cfg, model_config)
    refused.update(model_refused)
    if refused:
        raise ValueError(f"resume: {path} was trained with another model or task than this "
                         f"run builds ({_describe(refused)}); its weights would go on, and be "
                         "published, as a model they were not trained as. Resume with the "
                         "checkpoint's settings, or train the new model in another --out-dir "
                         f"(--init {path} starts it from these weights)")
    changed = {}
    for name, value in new.items():
        if name in IGNORED or name in REFUSED or name not in old:
            continue
        before = _absolute(name, old[name]) if name in PATH_FIELDS else old[name]
        if before != value:
            changed[name] = [before, value]
    if changed.keys() & SAMPLING_FIELDS:  # those say it already
        model_noted.pop("model.sampling", None)
    changed.update(model_noted)
    # The weights to start from: a resume goes on from the checkpoint's, whatever init says;
    # the run keeps its own init in what it saves from here on.
    init_unused = changed.pop("init", None)
    if init_unused:
        cfg.init = init_unused[0]
    if state.get("world_size", world_size) != world_size:
        changed["world_size"] = [state["world_size"], world_size]
    threads = None if device is None else cpu_threads(device)
    if None not in (threads, state.get("threads")) and state["threads"] != threads:
        changed["threads"] = [state["threads"], threads]
    if state["epoch"] >= cfg.epochs and results_written(Path(cfg.out_dir), state["step"]):
        # A finished run: nothing is trained, or written, with the new values.
        return {"step": state["step"], "checkpoint": str(Path(path).resolve()), "changed": {},
                "finished": True}
    return {"step": state["step"], "checkpoint": str(Path(path).resolve()), "changed": changed,
            **({"init_unused": init_unused} if init_unused else {})}


def note(record: dict[str, Any]) -> str | None:
    """The note of a resume's changed settings (:func:`check_resume`), or None."""
    notes = []
    if record.get("init_unused"):
        notes.append(f"note: init {record['init_unused'][1]} is not used: a resume goes on "
                     f"from its checkpoint's weights (the run's init stays "
                     f"{record['init_unused'][0]})")
    if record["changed"]:
        notes.append(f"note: resuming with {_describe(record['changed'])}: the new values are "
                     "used from here on, so the run will not repeat an uninterrupted one "
                     f"exactly (recorded in {HISTORY_FILE})")
    return "\n".join(notes) or None


def record_settings(out: Path, cfg: TrainConfig, resumed: dict[str, Any] | None) -> None:
    """Keep the record of the run's settings in ``out``: ``train_config.json`` holds the ones
    the run goes on with (so ``--config train_config.json --resume auto`` continues as the
    last invocation did); a new run drops an older run's ``resumes.jsonl``, and a resume
    appends its record (the changes, old -> new, against its checkpoint) and settings to it.
    A finished run "resumed" trains nothing: both stay as they were."""
    if resumed is not None and resumed.get("finished"):  # its record stays as it was
        return
    out = Path(out)
    saved = cfg.to_saved_dict()
    text = json.dumps(saved, indent=1)
    atomic_write(out / CONFIG_FILE, lambda p: Path(p).write_text(text))
    if resumed is None:
        (out / HISTORY_FILE).unlink(missing_ok=True)
        return
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **resumed, "config": saved}
    with open(out / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
