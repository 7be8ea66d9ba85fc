"""``TrainConfig``: every setting of a training run, from a JSON file and/or command-line flags."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spool.config import check_known_fields
from spool.data.segmentation import check_segmentation_source
from spool.errors import SpoolLoadError
from spool.io_utils import looks_like_path

# Settings that steer one invocation, not the run: never saved with it, so resuming from the
# saved config does not repeat them.
RUN_CONTROL_FIELDS = ("resume", "stop_after_steps")
PATH_FIELDS = ("out_dir", "train_data", "val_data", "train_cache", "val_cache", "init")
# What ``architecture`` may name (spool.models.classification.classifier_class's names).
ARCHITECTURES = {  # per task; class names work too
    "clips": ("spool", "frame_pooling", "SpoolForVideoClassification",
              "FramePoolingForVideoClassification"),
    "frames": ("spool", "linear_probe", "ms_tcn", "SpoolForFrameClassification",
               "FrameProbeForFrameClassification", "MSTCNForFrameClassification"),
}
# Names of earlier versions, still read from JSON files.
_LEGACY_KEYS = {"train": "train_data", "val": "val_data"}


def _check(condition: bool, argument: str, expected: str, given: Any) -> None:
    if not condition:
        raise ValueError(f"{argument}: expected {expected}, got {given!r}")


def _is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclass
class TrainConfig:
    """Settings of ``spool train``; ``batch_size`` is the global batch over all ranks.

    ``task``: ``clips`` (clip classification) or ``frames`` (per-frame classification,
    temporal action segmentation). Data: ``train_data``/``val_data`` are annotation files
    (``path label`` lines) or class-folder directories for clips; a segments CSV or an MS-TCN
    root (with ``train_split``/``val_split``) for frames, sampled at ``fps``;
    ``train_cache``/``val_cache`` are token caches from ``spool cache`` (the backbone is then
    never run). Frames train on random crops of up to ``crop_frames`` frames (whole videos
    with ``augment`` false) and validate on whole videos (``background`` classes are not
    segments in edit and F1). Model:
    ``architecture`` (clips: ``spool``, ``frame_pooling``; frames: ``spool``,
    ``linear_probe``, ``ms_tcn``), ``model`` (SpoolConfig fields) and/or ``init`` (a Spool or
    classifier checkpoint).
    """

    out_dir: str = "runs/spool"
    task: str = "clips"
    train_data: str | None = None
    val_data: str | None = None
    train_cache: str | None = None
    val_cache: str | None = None
    architecture: str = "spool"
    init: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    num_frames: int = 16
    frame_stride: int | None = None
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    hflip: bool = False
    num_clips: int = 1
    crop_frames: int | None = 512
    fps: float = 15.0
    background: list[str] = field(default_factory=list)
    train_split: str = "train.split1"
    val_split: str = "test.split1"
    epochs: int = 10
    batch_size: int = 8
    eval_batch_size: int | None = None
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"
    amp: bool = True
    gradient_checkpointing: bool = False
    save_every: int = 0
    keep_checkpoints: int = 2
    eval_every: int = 1
    resume: str | None = None
    stop_after_steps: int | None = None
    log_every: int = 10
    tensorboard: bool = True
    quiet: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        # Folders a relative ``init`` was looked for in before it was read as a hub id (a
        # config file's; see read_config_file), named when the hub cannot provide it either.
        # Not a setting (no field): never saved, compared or given.
        self.init_looked_in: tuple[str, ...] = ()
        self.validate()

    def validate(self) -> None:
        """``ValueError`` naming the first bad setting."""
        for name in (*PATH_FIELDS, "resume", "name"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, str) and value != ""), name,
                   "a non-empty string" + ("" if name == "out_dir" else " or None"), value)
        _check(self.out_dir is not None, "out_dir", "a directory", self.out_dir)
        if (self.train_data is None) == (self.train_cache is None):
            raise ValueError("train_data/train_cache: give exactly one of an annotation file or "
                             "class folder (train_data) and a token cache (train_cache), got "
                             f"{self.train_data!r} and {self.train_cache!r}")
        if self.val_data is not None and self.val_cache is not None:
            raise ValueError("val_data/val_cache: give at most one")
        for name in ("num_frames", "num_clips", "epochs", "batch_size", "keep_checkpoints",
                     "eval_every", "log_every"):
            _check(_is_int(getattr(self, name), 1), name, "an integer >= 1", getattr(self, name))
        _check(isinstance(self.task, str) and self.task in ARCHITECTURES, "task",
               f"one of {tuple(ARCHITECTURES)}", self.task)
        _check(_is_number(self.fps) and self.fps > 0, "fps", "a finite number > 0", self.fps)
        _check(isinstance(self.background, list) and all(isinstance(b, str)
                                                         for b in self.background),
               "background", "a list of class names", self.background)
        for name in ("train_split", "val_split"):
            _check(isinstance(getattr(self, name), str), name, "a split name",
                   getattr(self, name))
        for name in ("frame_stride", "eval_batch_size", "stop_after_steps", "crop_frames"):
            value = getattr(self, name)
            _check(value is None or _is_int(value, 1), name, "None or an integer >= 1", value)
        for name in ("num_workers", "save_every"):
            _check(_is_int(getattr(self, name), 0), name, "an integer >= 0", getattr(self, name))
        _check(_is_int(self.seed, 0) and self.seed < 2**32, "seed",
               "an integer in [0, 2**32)", self.seed)
        _check(_is_number(self.lr) and self.lr > 0, "lr", "a finite number > 0", self.lr)
        for name in ("weight_decay", "warmup_epochs"):
            _check(_is_number(getattr(self, name)) and getattr(self, name) >= 0, name,
                   "a finite number >= 0", getattr(self, name))
        _check(_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio",
               "a number in [0, 1]", self.min_lr_ratio)
        _check(_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
               "label_smoothing", "a number in [0, 1)", self.label_smoothing)
        _check(self.grad_clip is None or (_is_number(self.grad_clip) and self.grad_clip > 0),
               "grad_clip", "None or a finite number > 0", self.grad_clip)
        scale = self.crop_scale
        _check(isinstance(scale, (list, tuple)) and len(scale) == 2
               and all(_is_number(v) for v in scale) and 0 < scale[0] <= scale[1] <= 1,
               "crop_scale", "[min, max] with 0 < min <= max <= 1", scale)
        for name in ("augment", "hflip", "amp", "gradient_checkpointing", "tensorboard",
                     "quiet"):
            _check(isinstance(getattr(self, name), bool), name, "true or false",
                   getattr(self, name))
        _check(self.device in ("auto", "cpu", "cuda"), "device", "'auto', 'cpu' or 'cuda'",
               self.device)
        _check(self.architecture in ARCHITECTURES.get(self.task, ()), "architecture",
               f"one of {ARCHITECTURES.get(self.task)} for task {self.task!r}",
               self.architecture)
        _check(isinstance(self.model, dict), "model", "a dict of SpoolConfig fields",
               self.model)
        check_known_fields(self.model, "model")
        self._check_applies()

    def _check_applies(self) -> None:
        """``ValueError`` for a setting (other than its default) the run would ignore."""
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING
                    else f.default_factory() for f in dataclasses.fields(self)}
        changed = {k for k in defaults if getattr(self, k) != defaults[k]}
        # Per task, the settings of the other task only.
        other = {"clips": ("crop_frames", "fps", "background", "train_split", "val_split"),
                 "frames": ("num_frames", "frame_stride", "num_clips", "crop_scale", "hflip")}
        for name in other.get(self.task, ()):
            if name in changed:
                flag = f"--{name.replace('_', '-')}"
                raise ValueError(f"{name} ({flag}): applies to the {_other_task(self.task)} "
                                 f"task only, not to --task {self.task}")
        for name in ("label_smoothing", "eval_batch_size"):  # clips only, without a task
            if name in changed and self.task == "frames":  # group in the flags' help
                flag = f"--{name.replace('_', '-')}"
                raise ValueError(f"{name} ({flag}): applies to the clips task only, not to "
                                 "--task frames")
        if "crop_frames" in changed and self.task == "frames" and not self.augment:
            raise ValueError("crop_frames (--crop-frames): random crops are augmentation; with "
                             "augment false (--no-augment) every video trains whole")
        if self.hflip and not self.augment:
            raise ValueError("hflip (--hflip): flips are augmentation; it does not apply with "
                             "augment false (--no-augment)")
        if self.hflip and self.train_cache is not None:
            raise ValueError("hflip (--hflip): does not apply to train_cache, whose views were "
                             "fixed when it was made (spool cache --views, --hflip)")
        # Settings of how videos are read, given with a cache whose tokens were made already.
        made_by = {"crop_scale": "--crop-scale", "fps": "--fps", "train_split": "--split"}
        for name, flag in made_by.items():  # (a resume's saved fps is the cache's sampling)
            if name in changed and self.train_cache is not None and \
                    not (name == "fps" and self.resume is not None):
                raise ValueError(f"{name} (--{name.replace('_', '-')}): does not apply to "
                                 f"--train-cache, whose tokens were made already (spool cache "
                                 f"{flag})")
        for name, data in (("train_split", self.train_data), ("val_split", self.val_data)):
            kind = name.split("_")[0]
            if name in changed and data is not None:  # a typo in the root: say that instead
                check_segmentation_source(data, f"{kind}_data (--{kind}-data)")
            if name in changed and not (data is not None and Path(data).is_dir()):
                raise ValueError(f"{name} (--{name.replace('_', '-')}): applies to an MS-TCN "
                                 f"root given as --{kind}-data")
        for name in ("num_frames", "frame_stride"):  # the cache's clips were sampled already
            # (a resume may read a train_config.json that an earlier version saved with them)
            if name in changed and self.task == "clips" and self.train_cache is not None \
                    and self.resume is None:
                flag = f"--{name.replace('_', '-')}"
                raise ValueError(f"{name} ({flag}): applies to --train-data; the clips of "
                                 f"--train-cache were sampled when it was made (spool cache "
                                 f"{flag})")
        if self.task == "clips" and self.num_clips != 1 and self.val_data is None:
            raise ValueError("num_clips (--num-clips): applies to val_data (clips per held-out "
                             "video); a token cache holds one clip per video")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_saved_dict(self) -> dict[str, Any]:
        """What ``train_config.json`` holds: paths made absolute (so the run resumes from any
        working directory) and no run-control settings."""
        data = self.to_dict()
        for name in RUN_CONTROL_FIELDS:
            data.pop(name)
        for name in PATH_FIELDS:
            value = data[name]
            if value is not None and _path_under(value, os.getcwd(), name) != value:
                data[name] = os.path.abspath(value)  # a hub id (init) stays as it is
        data["model"] = _local_backbone_absolute(data["model"], os.getcwd())
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ValueError(f"train config: expected a dict of fields, got {type(data).__name__}")
        data = {_LEGACY_KEYS.get(k, k): v for k, v in data.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        """A JSON file of fields; relative paths in it are relative to the file's folder."""
        data = read_config_file(path)
        try:
            cfg = cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err
        cfg.init_looked_in = init_looked_in(path, data.get("init"))
        return cfg


def _other_task(task: str) -> str:
    return "frames" if task == "clips" else "clips"


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The fields in a JSON config file (not checked: flags may complete them), its relative
    paths made relative to the file's folder; a ``SpoolLoadError`` naming an unreadable one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as err:
        raise SpoolLoadError(f"{path}: training config not found") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise SpoolLoadError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise SpoolLoadError(f"{path}: expected a JSON object of TrainConfig fields, got "
                             f"{type(data).__name__}")
    data = {_LEGACY_KEYS.get(k, k): v for k, v in data.items()}
    base = os.path.dirname(os.path.abspath(path))
    for name in PATH_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and not os.path.isabs(value):
            data[name] = _path_under(value, base, name)
    return {**data, "model": _local_backbone_absolute(data["model"], base)} \
        if isinstance(data.get("model"), dict) else data


def init_looked_in(path: str | os.PathLike, init: Any) -> tuple[str, ...]:
    """Where ``read_config_file`` looked for the ``init`` it returned before keeping it as a
    hub id (one still relative): in the config file's folder."""
    if not isinstance(init, str) or os.path.isabs(init):
        return ()
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), init)
    return (f"{folder} (relative to the config file's folder)",)


def _path_under(value: str, base: str, name: str) -> str:
    """``value`` as an absolute path under ``base``; but an ``init`` that names no local path
    and reads as a hub id (``org/name``) stays as it is."""
    joined = os.path.join(base, value)  # not normalised: ".." after a link is the link's
    if name == "init" and "/" in value and not looks_like_path(value) \
            and not os.path.exists(joined):
        return value
    return joined


def _local_backbone_absolute(model: dict[str, Any], base: str) -> dict[str, Any]:
    """``model`` with a ``backbone_name`` that names a directory under ``base`` made
    absolute (a hub id, with no such directory, stays as it is)."""
    name = model.get("backbone_name")
    if isinstance(name, str) and name and not os.path.isabs(name) \
            and os.path.isdir(os.path.join(base, name)):
        return {**model, "backbone_name": os.path.abspath(os.path.join(base, name))}
    return model
