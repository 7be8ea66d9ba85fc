"""Evaluation loop: decoded clips or cached tokens, several clips per video, any number of ranks."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from spool.data.dataset import (
    SkippedVideo,
    collate_readable,
    report_skipped,
    worker_context,
    worker_init_fn,
)
from spool.io_utils import atomic_write_text
from spool.models.classification import VideoClassifier
from spool.models.long_video_state import said_out_of_room
from spool.train.metrics import MetricTracker, average_clip_scores


@dataclass
class EvalResult:
    """Metrics over every rank and, for the samples this rank saw, the class probabilities
    ``[n, C]`` (softmax, averaged over a video's clips) and the predicted classes ``[n]``
    (top-1's: from the logits, which the softmax can round into a tie)."""

    tracker: MetricTracker
    indices: list[int] = field(default_factory=list)
    scores: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    skipped: list[SkippedVideo] = field(default_factory=list)  # this rank's unreadable videos
    num_skipped: int = 0  # over every rank

    @property
    def metrics(self) -> dict[str, float]:
        return self.tracker.compute()


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype:
    """What :func:`autocast_context` computes in: bf16 on CUDA when enabled, else float32
    (bf16 matmuls are slow on the CPU)."""
    return torch.bfloat16 if enabled and device.type == "cuda" else torch.float32


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; nothing on CPU (bf16 matmuls there are slow)."""
    if autocast_dtype(device, enabled) == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The ``video=`` or ``tokens=`` keyword of a batch (and the padding ``mask=`` of a batch
    of frame crops), on ``device``."""
    key = "tokens" if "tokens" in batch else "video"
    inputs = {key: batch[key].to(device, non_blocking=True)}
    if "mask" in batch:
        inputs["mask"] = batch["mask"].to(device, non_blocking=True)
    return inputs


@torch.no_grad()
def evaluate(model: VideoClassifier, dataset: Dataset, num_classes: int, *,
             batch_size: int = 8, num_workers: int = 0, device: torch.device | str = "cpu",
             amp: bool = True, keep_scores: bool = False,
             iterate: Callable[[DataLoader], Iterable[dict]] = iter) -> EvalResult:
    """Loss, top-1/top-5 and confusion matrix of ``model`` on ``dataset``.

    Items with ``video: [K, T, H, W, 3]`` (``K`` clips) are scored by the mean of the clips'
    softmax probabilities, and the loss is the NLL of that mean. Under torch.distributed each
    rank takes every ``world``-th sample (no padding, so nothing is counted twice) and the
    metrics are summed over ranks. Videos that cannot be read are reported, left out of the
    metrics and counted (``num_skipped``). ``iterate`` wraps the loader (training's
    validation stops on a signal all ranks agree on).
    """
    device = torch.device(device)
    rank, world = 0, 1
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    indices = list(range(rank, len(dataset), world))
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                        collate_fn=collate_readable,
                        multiprocessing_context=worker_context(num_workers),
                        worker_init_fn=worker_init_fn, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    tracker = MetricTracker(num_classes)
    result = EvalResult(tracker)
    all_scores, all_predictions = [], []
    seen: set[str] = set()
    for batch in iterate(loader):
        result.skipped.extend(batch["skipped"])
        report_skipped(batch["skipped"], seen)
        if "label" not in batch:  # every video of the batch was unreadable
            continue
        inputs = model_inputs(batch, device)
        labels = batch["label"].to(device)
        (key, x), = inputs.items()
        multi = key == "video" and x.ndim == 6
        if multi:
            B, K = x.shape[:2]
            x = x.flatten(0, 1)
        with autocast_context(device, amp):
            logits = model(**{key: x}).logits.float()
        if multi:
            scores = average_clip_scores(logits.view(B, K, -1))
            loss_sum = F.nll_loss(scores.clamp_min(1e-12).log(), labels, reduction="sum")
        else:
            scores = logits
            loss_sum = model.loss_function(logits, labels, reduction="sum")
        tracker.update(scores, labels, float(loss_sum))
        if keep_scores:
            result.indices.extend(batch["index"].tolist())
            all_scores.append(scores.cpu() if multi else scores.softmax(-1).cpu())
            all_predictions.append(scores.argmax(-1).cpu())  # as the tracker's top-1
    tracker.all_reduce()
    skipped = torch.tensor(len(result.skipped), device=device)
    if world > 1:
        dist.all_reduce(skipped)
    result.num_skipped = int(skipped)
    if keep_scores:
        result.scores = torch.cat(all_scores) if all_scores else torch.zeros(0, num_classes)
        result.predictions = (torch.cat(all_predictions) if all_predictions
                              else torch.zeros(0, dtype=torch.int64))
    model.train(was_training)
    return result


def checkpoint_label(model_dir: str | os.PathLike) -> str:
    """A checkpoint's name in figures: its run's folder for a run's ``model/`` (every run
    saves there, so "model" named them all alike)."""
    path = Path(model_dir)
    return (path.parent.name or path.name) if path.name == "model" else path.name


def skipped_fields(count: int, skipped: list[SkippedVideo]) -> dict[str, Any]:
    """The report's ``skipped`` (unreadable videos over every rank, not in the metrics) and
    ``skipped_videos`` (this rank's: path, error, message)."""
    return {"skipped": count, "skipped_videos": [[v.path, v.error, v.message]
                                                 for v in skipped]}


def skipped_note(report: dict[str, Any]) -> str:
    """What follows the video count in a printed report: `` (1 unreadable, skipped)``, ``(1
    unreadable, 2 out of memory or disk, skipped)``; `` (3 skipped)`` when other ranks skipped
    some (their reasons are theirs)."""
    count = report.get("skipped")
    if not count:
        return ""
    rows = report.get("skipped_videos", [])
    if len(rows) != count:
        return f" ({count} skipped)"
    short = sum(said_out_of_room(error, message) for _, error, message in rows)
    why = [f"{count - short} unreadable"] * (count > short) + \
        [f"{short} out of memory or disk"] * (short > 0)
    return f" ({', '.join(why)}, skipped)"


def _counted_on(bar: tqdm) -> Callable[[DataLoader], Iterator[dict]]:
    """``evaluate``'s ``iterate``: the loader, each batch's videos (scored or skipped)
    counted on ``bar``."""
    def iterate(loader: DataLoader) -> Iterator[dict]:
        for batch in loader:
            yield batch
            bar.update(len(batch.get("label", ())) + len(batch["skipped"]))
    return iterate


def evaluate_checkpoint(model_dir: str | os.PathLike, data: str | None = None,
                        cache: str | None = None, *, overrides: dict[str, Any] | None = None,
                        num_clips: int = 1,
                        num_frames: int | None = None, frame_stride: int | None = None,
                        batch_size: int = 8, num_workers: int = 2, device: str = "auto",
                        amp: bool = True, out_dir: str | os.PathLike | None = None,
                        on_report: Callable[[dict[str, Any]], object] | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """Evaluate a saved classifier on videos (``data``) or a token ``cache`` (``progress``: a
    bar of its videos).

    Videos are sampled as in training (the checkpoint's ``config.sampling``) unless
    ``num_frames`` / ``frame_stride`` say otherwise. Returns ``{"top1", "top5", "loss",
    "count", "per_class": {name: accuracy}, "confusion": [[...]], "class_names"}``; with
    ``out_dir``, also writes ``metrics.json``, ``confusion_matrix.png`` and
    ``predictions.csv`` (``score``: the predicted class's probability) there, after calling
    ``on_report`` with the report (which a failed write then does not lose). ``amp``: bf16
    autocast on a GPU, as training validates (the report's ``dtype`` says what ran).
    """
    from spool.data.cache import CachedTokenDataset
    from spool.data.dataset import VideoClipDataset, read_annotations
    from spool.models.classification import load_classifier
    from spool.models.pretrained import checkpoint_backbone_digest
    from spool.runtime import resolve_device
    from spool.train.builders import check_cache_source, check_sampling
    from spool.train.metrics import json_text, per_class_accuracy, plot_confusion_matrix
    from spool.video.samplers import clip_sampler

    if (data is None) == (cache is None):
        raise ValueError("data/cache: give exactly one of --data and --cache")
    if cache is not None and (num_frames is not None or frame_stride is not None):
        raise ValueError("num_frames/frame_stride: a token cache holds the clips it was made "
                         "with; they apply to videos (--data)")
    if cache is not None and num_clips != 1:
        raise ValueError(f"num_clips: a token cache holds one evaluation clip per video, so "
                         f"--num-clips {num_clips} cannot apply; evaluate videos (--data)")
    dev = resolve_device(device)
    model = load_classifier(model_dir, with_backbone=cache is None, **(overrides or {})).to(dev)
    names = model.class_names
    if cache is not None:
        dataset: Dataset = CachedTokenDataset(cache)
        dataset.use_class_names(names, "cache", "the model's classes")
        check_cache_source(dataset.meta, checkpoint_backbone_digest(model_dir), model.config,
                           "cache", cache, f"the one in {model_dir}",
                           f"evaluate on videos (--data) or re-cache with `spool cache --init "
                           f"{model_dir}`")
        check_sampling(dataset.sampling, model.config.sampling, "cache", cache,
                       f"{model_dir} was trained on clips that")
    else:
        trained = dict(model.config.sampling or {})
        frames = num_frames or trained.get("num_frames", 16)
        stride = frame_stride if frame_stride is not None else trained.get("frame_stride")
        samples, _ = read_annotations(data, names)
        dataset = VideoClipDataset(samples, names, clip_sampler(frames, stride, num_clips),
                                   model.config.preprocessing())
    with tqdm(total=len(dataset), desc="eval", unit="video", disable=not progress,
              dynamic_ncols=True) as bar:
        result = evaluate(model, dataset, len(names), batch_size=batch_size,
                          num_workers=num_workers if cache is None else 0, device=dev,
                          amp=amp, keep_scores=True, iterate=_counted_on(bar))
    metrics, confusion = result.metrics, result.tracker.confusion
    report = {**metrics, "per_class": dict(zip(names, per_class_accuracy(confusion),
                                               strict=True)),
              "confusion": confusion.tolist(), "class_names": names,
              "dtype": str(autocast_dtype(dev, amp)).removeprefix("torch."),
              **skipped_fields(result.num_skipped, result.skipped)}
    if on_report is not None:
        on_report(report)
    if out_dir is not None:
        out = Path(out_dir)
        # Written last, and an earlier run's removed first (its picture too): a run stopped
        # between the files leaves no metrics.json or picture beside another run's files.
        for name in ("metrics.json", "confusion_matrix.png"):
            (out / name).unlink(missing_ok=True)
        rows = [[dataset.samples[i].path, names[dataset.samples[i].label], names[int(c)],
                 f"{float(p[c]):.4f}"]
                for i, p, c in zip(result.indices, result.scores, result.predictions,
                                   strict=True)]
        buffer = io.StringIO()
        csv.writer(buffer).writerows([["path", "label", "prediction", "score"], *rows])
        atomic_write_text(out / "predictions.csv", buffer.getvalue())  # before the picture
        plot_confusion_matrix(confusion, names, out / "confusion_matrix.png",
                              title=f"{checkpoint_label(model_dir)}: top-1 "
                                    f"{100 * metrics['top1']:.1f}%")
        atomic_write_text(out / "metrics.json", json_text(report))
    return report
