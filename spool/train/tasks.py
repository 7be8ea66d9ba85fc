"""What a training run learns: clip classification or per-frame classification (segmentation).

A task owns everything the training loop does not: the datasets and model it builds, how a
batch becomes a loss, the running training metrics, the validation metrics and the columns of
``metrics.csv``. The loop itself (:class:`~spool.train.trainer.Trainer`: optimizer, schedule,
DDP, checkpoints, resume, signals) is the same for both.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from spool.config import SpoolConfig
from spool.data.dataset import collate_readable
from spool.data.frame_cache import FrameTokenDataset, VideoFrameDataset, collate_frames
from spool.data.segmentation import check_segmentation_source, read_segmentation
from spool.distributed import all_reduce_sum
from spool.train.builders import build_datasets, build_model, check_sampling, training_sampling
from spool.train.config import TrainConfig
from spool.train.evaluate import evaluate
from spool.train.metrics import EPOCH_FIELDS, MetricTracker
from spool.train.segmentation_eval import evaluate_segmentation
from spool.video.samplers import FpsSampler, make_sampler

# Saved with a checkpoint's epoch rows: 2 has a frames run's accuracies in percent.
METRICS_REVISION = 2


class ClipTask:
    """Clip classification: ``[B, C]`` logits per clip, top-1 / top-5."""

    name: ClassVar[str] = "clips"
    epoch_fields: ClassVar[tuple[str, ...]] = EPOCH_FIELDS
    # row key suffix, label, and the factor to percent: clip top-k are fractions (as
    # torchmetrics gives them), a segmentation's scores percentages (as MS-TCN's eval.py)
    accuracy: ClassVar[tuple[str, str, float]] = ("top1", "top-1", 100.0)
    collate = staticmethod(collate_readable)

    def build(self, cfg: TrainConfig, config: SpoolConfig) -> tuple[Dataset, Any, list[str]]:
        return build_datasets(cfg, config)

    def model(self, cfg: TrainConfig, config: SpoolConfig, names: list[str]) -> torch.nn.Module:
        return build_model(cfg, config, names)

    def sampling(self, train_set: Dataset) -> dict[str, Any]:
        return training_sampling(train_set)

    def tracker(self, num_classes: int) -> MetricTracker:
        return MetricTracker(num_classes)

    def loss(self, trainer, inputs: dict[str, torch.Tensor], labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(mean loss, logits, samples counted) of one local batch."""
        logits = trainer.module(**inputs).logits
        return trainer.model.loss_function(logits, labels, trainer.cfg.label_smoothing), \
            logits, len(labels)

    def restore_history(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """The epoch rows of a checkpoint's ``state``, in this version's units."""
        return state["history"]

    def train_row(self, tracker: MetricTracker) -> dict[str, float]:
        m = tracker.compute()
        return {"train_loss": m["loss"], "train_top1": m["top1"], "train_top5": m["top5"]}

    def describe(self, row: dict[str, Any]) -> str:
        text = f"train loss {row['train_loss']:.4f} top-1 {100 * row['train_top1']:.1f}%"
        if "val_loss" in row:
            text += f", val loss {row['val_loss']:.4f} top-1 {100 * row['val_top1']:.1f}%"
        return text

    def evaluate(self, trainer) -> dict[str, float]:
        cfg = trainer.cfg
        m = evaluate(trainer.model, trainer.val_set, len(trainer.class_names),
                     batch_size=cfg.eval_batch_size or trainer.local_batch,
                     num_workers=0 if trainer.cached else cfg.num_workers,
                     device=trainer.device, amp=cfg.amp, iterate=trainer.batches).metrics
        return {"val_loss": m["loss"], "val_top1": m["top1"], "val_top5": m["top5"]}


class FrameAccuracyTracker:
    """Running loss and frame accuracy over labelled frames; a flat state for all-reduce and
    resume (the same interface as :class:`MetricTracker`)."""

    def __init__(self, num_classes: int) -> None:
        self.totals = torch.zeros(3, dtype=torch.float64)  # loss sum, labelled, correct

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: float) -> None:
        labelled = labels != -100
        correct = (logits.detach().argmax(-1) == labels) & labelled
        self.totals += torch.tensor([loss_sum, float(labelled.sum()), float(correct.sum())],
                                    dtype=torch.float64)

    def all_reduce(self) -> None:
        self.totals = all_reduce_sum(self.totals)

    def compute(self) -> dict[str, float]:
        loss_sum, frames, correct = self.totals.tolist()
        frames = max(frames, 1.0)
        return {"loss": loss_sum / frames, "acc": correct / frames}

    def state_dict(self) -> dict[str, list[float]]:
        return {"totals": self.totals.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.totals = torch.tensor(state["totals"], dtype=torch.float64)


class FrameTask:
    """Per-frame classification: ``[B, T, C]`` logits on crops of up to ``crop_frames``
    frames for training; validation runs every held-out video whole and scores frame
    accuracy, edit and F1@{10,25,50} as MS-TCN does."""

    name: ClassVar[str] = "frames"
    epoch_fields: ClassVar[tuple[str, ...]] = (
        "epoch", "step", "lr", "train_loss", "train_acc", "val_acc", "val_edit", "val_f1@10",
        "val_f1@25", "val_f1@50", "epoch_seconds")
    accuracy: ClassVar[tuple[str, str, float]] = ("acc", "frame accuracy", 1.0)
    collate = staticmethod(collate_frames)

    def build(self, cfg: TrainConfig, config: SpoolConfig) -> tuple[Dataset, Any, list[str]]:
        if cfg.train_cache is not None:
            train: Dataset = FrameTokenDataset(cfg.train_cache, cfg.crop_frames, cfg.augment,
                                               cfg.seed)
            names = train.class_names
        else:
            check_segmentation_source(cfg.train_data, "train_data (--train-data)")
            samples, names = read_segmentation(cfg.train_data, cfg.train_split)
            # An unreadable video is replaced by a readable one (and reported), not fatal.
            train = VideoFrameDataset(samples, names, FpsSampler(cfg.fps),
                                      config.preprocessing(), cfg.crop_frames, cfg.augment,
                                      cfg.seed, substitute=True)
        val: Any = None
        if cfg.val_cache is not None:  # its backbone is checked against the model's
            val = FrameTokenDataset(cfg.val_cache)
            val.use_class_names(names, "val_cache", "the training classes")
            check_sampling(val.sampling, training_sampling(train), "val_cache", cfg.val_cache)
        elif cfg.val_data is not None:  # sampled as training was (evaluate)
            check_segmentation_source(cfg.val_data, "val_data (--val-data)")
            val, val_names = read_segmentation(cfg.val_data, cfg.val_split, names)
            if val_names != names:
                raise ValueError(f"val_data: classes {val_names} differ from the training "
                                 f"classes {names}")
        return train, val, names

    def model(self, cfg: TrainConfig, config: SpoolConfig, names: list[str]) -> torch.nn.Module:
        # The background classes go with the model: evaluation scores segments as training did.
        return build_model(cfg, config, names, background_classes=list(cfg.background) or None)

    def sampling(self, train_set: Dataset) -> dict[str, Any]:
        return training_sampling(train_set)

    def tracker(self, num_classes: int) -> FrameAccuracyTracker:
        return FrameAccuracyTracker(num_classes)

    def loss(self, trainer, inputs: dict[str, torch.Tensor], labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
        out = trainer.module(**inputs, labels=labels)
        return out.loss, out.logits, int((labels != -100).sum())

    def restore_history(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """The epoch rows of a checkpoint's ``state``, frame accuracies in percent (a run
        saved before METRICS_REVISION 2 held them as fractions)."""
        if state.get("metrics_revision", 1) >= 2:
            return state["history"]
        return [{k: 100 * v if k in ("train_acc", "val_acc") and isinstance(v, float) else v
                 for k, v in row.items()} for row in state["history"]]

    def train_row(self, tracker: FrameAccuracyTracker) -> dict[str, float]:
        m = tracker.compute()
        return {"train_loss": m["loss"], "train_acc": 100 * m["acc"]}  # %, as edit and F1

    def describe(self, row: dict[str, Any]) -> str:
        text = (f"train loss {row['train_loss']:.4f} frame accuracy "
                f"{row['train_acc']:.1f}%")
        if "val_acc" in row:
            text += (f", val frame accuracy {row['val_acc']:.1f}% edit "
                     f"{row['val_edit']:.1f} F1@10/25/50 {row['val_f1@10']:.1f}/"
                     f"{row['val_f1@25']:.1f}/{row['val_f1@50']:.1f}")
        return text

    def evaluate(self, trainer) -> dict[str, float]:
        cfg, names = trainer.cfg, trainer.class_names
        background = tuple(names.index(b) for b in cfg.background)
        scores = evaluate_segmentation(
            trainer.model, trainer.val_set, sampler=make_sampler(**trainer.model.config.sampling),
            background=background,
            device=trainer.device, keep=False, iterate=trainer.batches).scores
        return {"val_acc": scores["accuracy"], "val_edit": scores["edit"],
                **{f"val_{k}": scores[k] for k in ("f1@10", "f1@25", "f1@50")}}


TASKS = {task.name: task for task in (ClipTask(), FrameTask())}
