"""``TrainConfig``: every setting of a training run, from a JSON file and/or command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from spool.config import SpoolConfig

# SpoolConfig fields that describe the backbone, fixed by a token cache.
BACKBONE_FIELDS = ("backbone_name", "backbone_config", "image_size", "image_mean", "image_std",
                   "hidden_size", "num_spatial_tokens")


@dataclass
class TrainConfig:
    """Settings of ``spool train``; ``batch_size`` is the global batch over all ranks.

    Data: ``train``/``val`` are annotation files (``path label`` lines) or class-folder
    directories; ``train_cache``/``val_cache`` are token caches from ``spool cache`` (the
    backbone is then never run). Model: ``architecture`` (``spool`` or ``frame_pooling``),
    ``model`` (SpoolConfig fields) and/or ``init`` (a Spool or classifier checkpoint).
    """

    out_dir: str = "runs/spool"
    train: str | None = None
    val: str | None = None
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
        if (self.train is None) == (self.train_cache is None):
            raise ValueError("train/train_cache: give exactly one of an annotation file or "
                             f"class folder (train) and a token cache (train_cache), got "
                             f"{self.train!r} and {self.train_cache!r}")
        if self.val is not None and self.val_cache is not None:
            raise ValueError("val/val_cache: give at most one")
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"train config: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as a backbone name


def key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), _json_value(value)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``spool train`` / ``python -m spool.train``; each overrides ``--config``."""
    S = argparse.SUPPRESS  # unset flags stay absent, so the config file's value holds
    parser.add_argument("--config", help="JSON file of TrainConfig fields; flags override it")
    g = parser.add_argument_group("data")
    g.add_argument("--train", default=S, help="annotation file ('path label' lines) or a "
                   "directory with one sub-folder per class")
    g.add_argument("--val", default=S, help="held-out videos, same forms as --train")
    g.add_argument("--train-cache", default=S, help="token cache from `spool cache` (the "
                   "backbone is not run)")
    g.add_argument("--val-cache", default=S, help="token cache of the held-out videos")
    g.add_argument("--num-frames", type=int, default=S, help="frames per clip (16)")
    g.add_argument("--frame-stride", type=int, default=S,
                   help="frames between sampled frames (default: spread over the video)")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=S,
                   help="no random crop / temporal jitter")
    g.add_argument("--hflip", action="store_true", default=S,
                   help="random horizontal flips (off by default: they swap left/right motion)")
    g.add_argument("--num-clips", type=int, default=S, help="clips per video at evaluation")
    g.add_argument("--num-workers", type=int, default=S, help="DataLoader workers (2)")
    g = parser.add_argument_group("model")
    g.add_argument("--architecture", choices=("spool", "frame_pooling"), default=S)
    g.add_argument("--init", default=S, help="start from this Spool or classifier checkpoint")
    g.add_argument("--model", type=key_value, action="append", default=S, metavar="KEY=VALUE",
                   help="a SpoolConfig field, value as JSON (repeatable), e.g. "
                        "--model num_hidden_layers=2 --model backbone_name=/path/dinov2")
    g.add_argument("--gradient-checkpointing", action="store_true", default=S)
    g = parser.add_argument_group("optimisation")
    for flag, kind, text in (
            ("--epochs", int, "epochs (10)"), ("--batch-size", int, "global batch (8)"),
            ("--eval-batch-size", int, "evaluation batch"), ("--lr", float, "peak lr (5e-4)"),
            ("--weight-decay", float, "AdamW weight decay (0.05)"),
            ("--warmup-epochs", float, "linear warm-up (1.0)"),
            ("--min-lr-ratio", float, "final lr / peak lr of the cosine (0.01)"),
            ("--grad-clip", float, "max gradient norm (1.0)"),
            ("--label-smoothing", float, "(0.0)"), ("--seed", int, "(0)")):
        g.add_argument(flag, type=kind, default=S, help=text)
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=S)
    g.add_argument("--no-amp", dest="amp", action="store_false", default=S,
                   help="no bf16 autocast on GPU")
    g = parser.add_argument_group("output")
    g.add_argument("--out-dir", default=S, help="run directory (runs/spool)")
    g.add_argument("--save-every", type=int, default=S, help="checkpoint every N steps "
                   "(0: at the end only)")
    g.add_argument("--keep-checkpoints", type=int, default=S, help="step checkpoints kept (2)")
    g.add_argument("--eval-every", type=int, default=S, help="evaluate every N epochs (1)")
    g.add_argument("--resume", default=S, help="a checkpoint directory, or 'auto' for the "
                   "newest one in --out-dir")
    g.add_argument("--stop-after-steps", type=int, default=S,
                   help="checkpoint and stop after this step (a time-boxed or preempted run)")
    g.add_argument("--log-every", type=int, default=S, help="print every N steps (10)")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=S)
    g.add_argument("--quiet", action="store_true", default=S)
    g.add_argument("--name", default=S, help="prefix of the printed lines (several runs at once)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``--config`` file (if any) with every flag that was given on top."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        with open(args.config) as f:
            data = json.load(f)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "func", "command")}
    if "model" in flags:
        flags["model"] = {**data.get("model", {}), **dict(flags["model"])}
    data.update(flags)
    return TrainConfig.from_dict(data)
