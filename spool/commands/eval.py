"""``spool eval``: top-1, top-5, per-class accuracy and a confusion matrix of a classifier."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from spool.cli_args import (
    add_model_argument,
    nonnegative_int,
    positive_float,
    positive_int,
    refuse_file_for_folder,
    refuse_ignored,
)


def format_report(report: dict[str, Any]) -> str:
    """The printed table: overall metrics, then accuracy per class."""
    from spool.train.evaluate import skipped_note

    lines = [f"videos: {report['count']}{skipped_note(report)}   "
             f"top-1: {100 * report['top1']:.2f}%   top-5: {100 * report['top5']:.2f}%   "
             f"loss: {report['loss']:.4f}",
             "", f"{'class':<32} {'accuracy':>9}"]
    for name, acc in report["per_class"].items():
        text = "n/a" if math.isnan(acc) else f"{100 * acc:.1f}%"
        lines.append(f"{name:<32} {text:>9}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from spool.models.pretrained import peek_architecture
    from spool.runtime import refuse_torchrun
    from spool.train.evaluate import evaluate_checkpoint

    refused = refuse_torchrun("spool eval", "spool eval ... --device cuda uses one GPU")
    if refused is not None:
        return refused
    frames = peek_architecture(args.checkpoint).endswith("ForFrameClassification")
    _refuse_ignored(args, frames)
    if args.cache is not None and args.num_workers is not None:
        raise ValueError("--num-workers: applies to videos (--data); a token cache is read "
                         "in this process")
    refuse_file_for_folder(args.offload_dir, "--offload-dir")
    if args.out is not None:
        _make_out_dir(args.out)
    if frames:
        return _run_frames(args)
    # The report is printed before the files are written: a failed write must not lose it.
    report = evaluate_checkpoint(args.checkpoint, args.data, args.cache,
                                 overrides=dict(args.model or []), num_clips=args.num_clips,
                                 num_frames=args.num_frames, frame_stride=args.frame_stride,
                                 batch_size=args.batch_size or 8,
                                 num_workers=2 if args.num_workers is None else args.num_workers,
                                 device=args.device, amp=args.amp is not False,
                                 out_dir=args.out,
                                 on_report=lambda r: print(format_report(r), flush=True),
                                 progress=not args.quiet)
    if args.out:
        print(f"\nwrote {args.out}/metrics.json, confusion_matrix.png, predictions.csv")
    return _nothing_scored(report["count"])


# Flags of one kind of classifier: given for the other kind, they would be ignored (a frame
# classifier runs each video whole, one by one, in float32).
CLIP_FLAGS = {"num_frames": None, "frame_stride": None, "num_clips": 1, "batch_size": None,
              "num_workers": None, "amp": None}
FRAME_FLAGS = {"fps": None, "background": None, "split": None, "chunk_frames": None,
               "offload_dir": None}


def _refuse_ignored(args: argparse.Namespace, frames: bool) -> None:
    """A one-line error for a flag that does not apply to this kind of classifier."""
    flags, kind, other = ((CLIP_FLAGS, "a frame classifier", "clip classifiers") if frames
                          else (FRAME_FLAGS, "a clip classifier", "frame classifiers"))
    refuse_ignored(args, flags, f"applies to {other}; {args.checkpoint} holds {kind}")


def _make_out_dir(out: str) -> None:
    """``--out``, made before the evaluation (which may take hours) rather than found
    unusable after it, with its results lost."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out: {out} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent that is a file, no permission, a read-only disk
        raise ValueError(f"--out: cannot make the folder {out}: {err.strerror or err}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out: {out} is not writable")


def _run_frames(args: argparse.Namespace) -> int:
    from spool.train.segmentation_eval import evaluate_frame_checkpoint, format_segmentation

    scores = evaluate_frame_checkpoint(
        args.checkpoint, args.data, args.cache, split=args.split, fps=args.fps,
        background=None if args.background is None else tuple(args.background),
        overrides=dict(args.model or []), device=args.device, out_dir=args.out,
        chunk_frames=args.chunk_frames or 32, offload_dir=args.offload_dir,
        on_report=lambda s: print(format_segmentation(s), flush=True),
        progress=not args.quiet)
    if args.out and scores["videos"]:
        print(f"\nwrote {args.out}/metrics.json, ribbons.png, predictions/<video>.csv")
    return _nothing_scored(scores["videos"])


def _nothing_scored(count: int) -> int:
    """Exit code: 1 when no video could be scored (the metrics are NaN), as a script that
    checks it must not take them for a result."""
    if count:
        return 0
    print("spool eval: no video could be scored (each was skipped; the lines above say why)",
          file=sys.stderr)
    return 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate a trained classifier (clips: top-1, top-5, confusion; "
                     "frames: accuracy, edit, F1@k)",
        description="Evaluate a classifier saved by `spool train` (its model/ directory) on "
                    "labelled videos or on a token cache made with the same backbone. A frame "
                    "classifier runs every video whole and reports frame accuracy, edit and "
                    "F1@{10,25,50}, with ribbon plots.")
    parser.add_argument("--checkpoint", required=True,
                        help="classifier directory (a run's model/) or hub id")
    add_model_argument(parser, "a SpoolConfig field to override (repeatable), e.g. "
                               "attn_implementation=blocked")
    parser.add_argument("--data", help="clips: annotation file or class-folder directory; "
                        "frame classifiers: segments CSV or MS-TCN root")
    parser.add_argument("--cache", help="token cache from `spool cache` instead of videos")
    parser.add_argument("--split", default=None,
                        help="frame classifiers, MS-TCN root: the split bundle (default: "
                             "test.split1)")
    parser.add_argument("--fps", type=positive_float, default=None,
                        help="frame classifiers: sampling rate (default: as in training)")
    parser.add_argument("--background", nargs="*", metavar="CLASS",
                        help="frame classifiers: classes that are not segments (default: as "
                             "in training; the flag alone: none)")
    parser.add_argument("--chunk-frames", type=positive_int, default=None,
                        help="frame classifiers: frames per temporal chunk (default: 32)")
    parser.add_argument("--offload-dir", metavar="DIR", default=None,
                        help="frame classifiers: keep each video's hidden state [T+2, L, D] in "
                             "a file under DIR instead of RAM (videos too long for memory)")
    parser.add_argument("--num-clips", type=positive_int, default=1,
                        help="clips per video, softmax scores averaged (videos only)")
    parser.add_argument("--num-frames", type=positive_int, default=None,
                        help="frames per clip (default: as in training)")
    parser.add_argument("--frame-stride", type=positive_int, default=None,
                        help="frames between sampled frames (default: as in training)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="clip classifiers (default: 8)")
    parser.add_argument("--num-workers", type=nonnegative_int, default=None,
                        help="clip classifiers: decoding processes (default: 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model runs (auto: CUDA when available)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="clip classifiers: bf16 autocast on GPU, as training validates "
                             "(on); --no-amp: float32 (metrics.json's dtype says which)")
    parser.add_argument("--out", help="directory for metrics.json and, clips: "
                        "confusion_matrix.png and predictions.csv (score: probability of the "
                        "predicted class); frames: ribbons.png and predictions/VIDEO.csv "
                        "(without it, the metrics are printed and nothing is written)")
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bars")
    parser.set_defaults(func=run)
