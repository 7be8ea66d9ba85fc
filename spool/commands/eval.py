"""``spool eval``: top-1, top-5, per-class accuracy and a confusion matrix of a classifier."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any


def evaluate_checkpoint(model_dir: str, data: str | None = None, cache: str | None = None, *,
                        num_clips: int = 1, num_frames: int | None = None,
                        frame_stride: int | None = None, batch_size: int = 8,
                        num_workers: int = 2, device: str = "auto",
                        out_dir: str | None = None) -> dict[str, Any]:
    """Evaluate a ``save_pretrained`` classifier on videos (``data``) or a token ``cache``.

    Returns ``{"top1", "top5", "loss", "count", "per_class": {name: accuracy},
    "confusion": [[...]]}``; with ``out_dir``, also writes ``metrics.json``,
    ``confusion_matrix.png`` and ``predictions.csv`` there.
    """
    import csv
    import json

    import torch

    from spool.data.cache import CachedTokenDataset, checkpoint_backbone_digest
    from spool.data.dataset import VideoClipDataset, read_annotations
    from spool.models.classification import load_classifier
    from spool.train.evaluate import evaluate
    from spool.train.metrics import per_class_accuracy, plot_confusion_matrix

    if (data is None) == (cache is None):
        raise ValueError("data/cache: give exactly one of --data and --cache")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with_backbone = cache is None  # scoring a cache never needs the backbone
    model = load_classifier(model_dir, with_backbone=with_backbone).to(device)
    names = model.class_names
    if cache is not None:
        dataset = CachedTokenDataset(cache)
        if dataset.class_names != names:
            raise ValueError(f"cache: classes {dataset.class_names} differ from the model's "
                             f"{names}")
        if checkpoint_backbone_digest(model_dir) != dataset.meta["backbone_digest"]:
            raise ValueError(f"cache: {cache} was made by another backbone than the one in "
                             f"{model_dir}; evaluate on videos (--data) or re-cache with "
                             f"`spool cache --init {model_dir}`")
    else:
        clip = model.clip_settings
        samples, _ = read_annotations(data, names)
        dataset = VideoClipDataset(
            samples, names, num_frames=num_frames or clip.get("num_frames", 16),
            image_size=model.config.image_size, num_clips=num_clips,
            frame_stride=frame_stride if frame_stride is not None else clip.get("frame_stride"))
    result = evaluate(model, dataset, len(names), batch_size=batch_size,
                      num_workers=num_workers if cache is None else 0, device=device,
                      keep_scores=True)
    metrics = result.metrics
    confusion = result.tracker.confusion
    report = {**metrics, "per_class": dict(zip(names, per_class_accuracy(confusion),
                                               strict=True)),
              "confusion": confusion.tolist(), "class_names": names}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=1))
        plot_confusion_matrix(confusion, names, out / "confusion_matrix.png",
                              title=f"{Path(model_dir).name}: top-1 {100 * metrics['top1']:.1f}%")
        with open(out / "predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "prediction", "score"])
            for i, scores in zip(result.indices, result.scores, strict=True):
                pred = int(scores.argmax())
                writer.writerow([dataset.samples[i].path, names[dataset.samples[i].label],
                                 names[pred], f"{float(scores[pred]):.4f}"])
    return report


def format_report(report: dict[str, Any]) -> str:
    """The printed table: overall metrics, then accuracy per class."""
    lines = [f"videos: {report['count']}   top-1: {100 * report['top1']:.2f}%   "
             f"top-5: {100 * report['top5']:.2f}%   loss: {report['loss']:.4f}",
             "", f"{'class':<32} {'accuracy':>9}"]
    for name, acc in report["per_class"].items():
        text = "n/a" if math.isnan(acc) else f"{100 * acc:.1f}%"
        lines.append(f"{name:<32} {text:>9}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = evaluate_checkpoint(args.model, args.data, args.cache, num_clips=args.num_clips,
                                 num_frames=args.num_frames, frame_stride=args.frame_stride,
                                 batch_size=args.batch_size, num_workers=args.num_workers,
                                 device=args.device, out_dir=args.out)
    print(format_report(report))
    if args.out:
        print(f"\nwrote {args.out}/metrics.json, confusion_matrix.png, predictions.csv")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate a trained classifier (top-1, top-5, per class, confusion)",
        description="Evaluate a classifier saved by `spool train` (its model/ directory) on "
                    "labelled videos or on a token cache made with the same backbone.")
    parser.add_argument("--model", required=True, help="classifier directory (run/model)")
    parser.add_argument("--data", help="annotation file or class-folder directory")
    parser.add_argument("--cache", help="token cache from `spool cache` instead of videos")
    parser.add_argument("--num-clips", type=int, default=1,
                        help="clips per video, softmax scores averaged (test-time averaging)")
    parser.add_argument("--num-frames", type=int, default=None,
                        help="frames per clip (default: as in training)")
    parser.add_argument("--frame-stride", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", help="directory for metrics.json, confusion_matrix.png and "
                        "predictions.csv")
    parser.set_defaults(func=run)
