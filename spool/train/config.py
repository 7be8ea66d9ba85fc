"""``TrainConfig``: every setting of a training run, from a JSON file and/or command-line flags."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from spool.config import SpoolConfig
from spool.errors import SpoolLoadError

# Settings that steer one invocation, not the run: never saved with it, so resuming from the
# saved config does not repeat them.
RUN_CONTROL_FIELDS = ("resume", "stop_after_steps")
PATH_FIELDS = ("out_dir", "train_data", "val_data", "train_cache", "val_cache", "init")
# Names of earlier versions, still read from JSON files.
_LEGACY_KEYS = {"train": "train_data", "val": "val_data"}


@dataclass
class TrainConfig:
    """Settings of ``spool train``; ``batch_size`` is the global batch over all ranks.

    Data: ``train_data``/``val_data`` are annotation files (``path label`` lines) or
    class-folder directories; ``train_cache``/``val_cache`` are token caches from ``spool
    cache`` (the backbone is then never run). Model: ``architecture`` (``spool`` or
    ``frame_pooling``), ``model`` (SpoolConfig fields) and/or ``init`` (a Spool or classifier
    checkpoint).
    """

    out_dir: str = "runs/spool"
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
        self.validate()

    def validate(self) -> None:
        """``ValueError`` naming the first bad setting."""
        if (self.train_data is None) == (self.train_cache is None):
            raise ValueError("train_data/train_cache: give exactly one of an annotation file or "
                             "class folder (train_data) and a token cache (train_cache), got "
                             f"{self.train_data!r} and {self.train_cache!r}")
        if self.val_data is not None and self.val_cache is not None:
            raise ValueError("val_data/val_cache: give at most one")
        for name in ("num_frames", "num_clips", "epochs", "batch_size", "keep_checkpoints",
                     "eval_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "save_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError(f"lr > 0, weight_decay >= 0, warmup_epochs >= 0 expected, got "
                             f"{self.lr}, {self.weight_decay}, {self.warmup_epochs}")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"min_lr_ratio in [0, 1] and label_smoothing in [0, 1) expected, "
                             f"got {self.min_lr_ratio}, {self.label_smoothing}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip: expected > 0 or None, got {self.grad_clip}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {self.device!r}")
        known = {f.name for f in dataclasses.fields(SpoolConfig)}
        unknown = sorted(set(self.model) - known)
        if unknown:
            raise ValueError(f"model: unknown SpoolConfig fields {unknown}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_saved_dict(self) -> dict[str, Any]:
        """What ``train_config.json`` holds: paths made absolute (so the run resumes from any
        working directory) and no run-control settings."""
        data = self.to_dict()
        for name in RUN_CONTROL_FIELDS:
            data.pop(name)
        for name in PATH_FIELDS:
            if data[name] is not None:
                data[name] = os.path.abspath(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = {_LEGACY_KEYS.get(k, k): v for k, v in data.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        """A JSON file of fields; relative paths in it are relative to the file's folder."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError as err:
            raise SpoolLoadError(f"{path}: training config not found") from err
        except json.JSONDecodeError as err:
            raise SpoolLoadError(f"{path}: not valid JSON ({err})") from err
        base = os.path.dirname(os.path.abspath(path))
        for name in (*PATH_FIELDS, *_LEGACY_KEYS):
            value = data.get(name)
            if isinstance(value, str) and not os.path.isabs(value):
                data[name] = os.path.join(base, value)
        return cls.from_dict(data)
