"""``spool cache``: run a frozen backbone once over a dataset and store its tokens."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from spool.cli_args import (
    add_model_argument,
    nonnegative_int,
    positive_float,
    positive_int,
    refuse_ignored,
    seed,
)
from spool.config import SpoolConfig
from spool.runtime import DTYPES

# Flags of one task (name -> its default): given for the other task, they would be ignored.
CLIP_FLAGS = {"views": 1, "num_frames": 16, "frame_stride": None, "crop_scale": (0.4, 1.0),
              "hflip": False, "batch_size": 8,
              "num_workers": 2}  # the frames task encodes each video whole, in this process
FRAME_FLAGS = {"fps": 15.0, "split": "train.split1"}
# What --model may set here: the frame encoder, and how it runs.
CACHE_FIELDS = (*SpoolConfig.FRAME_ENCODER_FIELDS, "backbone_chunk_size", "freeze_backbone")


def run(args: argparse.Namespace) -> int:
    import torch

    from spool.data.cache import build_cache
    from spool.data.dataset import VideoClipDataset, read_annotations
    from spool.data.segmentation import check_segmentation_source
    from spool.models.frame_encoder import FrameEncoderModel
    from spool.models.pretrained import load_pretrained
    from spool.runtime import refuse_torchrun, resolve_device, resolve_dtype
    from spool.video.samplers import clip_sampler
    from spool.video.transforms import RandomResizedCrop

    refused = refuse_torchrun("spool cache", "--device cuda uses one GPU; a cache is made "
                              "once, and spool train reads it under torchrun")
    if refused is not None:
        return refused
    frames = args.task == "frames"
    refuse_ignored(args, CLIP_FLAGS if frames else FRAME_FLAGS,
                   f"applies to --task {'clips' if frames else 'frames'}, not to --task "
                   f"{args.task}")
    if not frames and args.views == 1:  # view 0, the evaluation clip, is never augmented
        refuse_ignored(args, {k: CLIP_FLAGS[k] for k in ("crop_scale", "hflip")},
                       "applies to augmented views (--views 2 or more)")
    overrides = dict(args.model or [])
    others = sorted(set(overrides) - set(CACHE_FIELDS))
    if others:
        raise ValueError(f"--model: {others} do not change a cache (it holds the frame "
                         f"encoder's tokens: {', '.join(CACHE_FIELDS)}); give them to spool "
                         "train")
    device = resolve_device(args.device)  # a GPU that is not there: said before the work
    args.compute_dtype = resolve_dtype(args.compute_dtype, device)
    if frames:  # a mistyped root is said before a backbone is loaded
        check_segmentation_source(args.data, "data (--data)")
        if not Path(args.data).is_dir() and args.split != FRAME_FLAGS["split"]:
            raise ValueError("--split: applies to an MS-TCN root (--data DIR); got a "
                             "segments CSV")
    torch.manual_seed(args.seed)  # a randomly initialised backbone is reproducible
    if args.init is not None:
        model = load_pretrained(args.init, **overrides)
    else:
        model = FrameEncoderModel(**overrides)
    if frames:
        return _cache_frames(args, model, device)
    class_names = None
    if args.classes_from is not None:
        _, class_names = read_annotations(args.classes_from)
    samples, names = read_annotations(args.data, class_names)
    augmentation = RandomResizedCrop(tuple(args.crop_scale), args.hflip) if args.views > 1 \
        else None
    dataset = VideoClipDataset(samples, names, clip_sampler(args.num_frames, args.frame_stride),
                               model.config.preprocessing(), augmentation, seed=args.seed)
    start = time.perf_counter()
    summary = build_cache(model, dataset, args.out, views=args.views,
                          batch_size=args.batch_size, num_workers=args.num_workers,
                          dtype=args.dtype, device=device,
                          compute_dtype=args.compute_dtype, progress=not args.quiet)
    what = f"{summary.cached} videos x {args.views} view(s) of {args.num_frames} frames"
    if summary.reused:
        redone = []
        if summary.changed:
            redone.append(f"re-encoded the {summary.changed} whose files changed since")
        if summary.retried:
            redone.append(f"tried again the {summary.retried} that could not be read before "
                          f"({summary.retried - len(summary.failures)} read now)")
        if summary.relabelled:
            redone.append("wrote the new labels into cache.json")
        done = (", ".join(redone) + ", nothing else recomputed" if redone
                else "nothing recomputed")
        print(f"spool cache: already done: {summary.path} holds {what} made with these "
              f"settings; {done}")
    else:
        print(f"cached {what} to {summary.path} in {time.perf_counter() - start:.1f}s")
    return _report_failures(summary, len(dataset))


def _cache_frames(args: argparse.Namespace, model, device) -> int:
    """Every frame of each video at ``--fps``, with its label: a variable-length cache."""
    from spool.data.frame_cache import build_frame_cache
    from spool.data.segmentation import read_segmentation
    from spool.video.samplers import FpsSampler

    class_names = None
    if args.classes_from is not None:
        _, class_names = read_segmentation(args.classes_from, args.split)
    samples, names = read_segmentation(args.data, args.split, class_names)
    start = time.perf_counter()
    summary = build_frame_cache(model, samples, names, args.out, FpsSampler(args.fps),
                                dtype=args.dtype, device=device,
                                compute_dtype=args.compute_dtype, progress=not args.quiet)
    what = f"every frame at {args.fps:g} fps of {summary.cached} videos"
    if summary.reused:
        print(f"spool cache: already done: {summary.path} holds {what} made with these "
              "settings; nothing recomputed")
    else:
        kept = f" ({summary.kept} of them kept from an earlier run)" if summary.kept else ""
        print(f"cached {what} to {summary.path} in {time.perf_counter() - start:.1f}s{kept}")
    return _report_failures(summary, len(samples))


def _report_failures(summary, total: int) -> int:
    """The exit code: 1, with a line naming ``failures.csv``, when videos could not be read."""
    if not summary.failures:
        return 0
    print(f"spool cache: {len(summary.failures)} of {total} videos could not be read and "
          f"are not in the cache; listed in {summary.path / 'failures.csv'}", file=sys.stderr)
    return 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cache", help="store frozen-backbone tokens of a dataset for fast training",
        description="Run the frozen backbone once over labelled videos and store the tokens "
                    "with the backbone's weights (clips: [N, views, T, L, D] in a "
                    "memory-mapped tokens.npy; frames: videos/NAME.safetensors of tokens "
                    "[T, L, D] and labels [T]); `spool train --train-cache DIR` then never "
                    "runs the backbone.")
    parser.add_argument("--task", choices=("clips", "frames"), default="clips",
                        help="clips: clips of labelled videos [N, views, T, L, D]; frames: "
                             "every frame at --fps with per-frame labels (segmentation)")
    parser.add_argument("--data", required=True,
                        help="clips: annotation file ('path label' lines) or class-folder "
                             "directory; frames: a segments CSV (video,start_s,end_s,label) or "
                             "an MS-TCN root (mapping.txt, groundTruth/, splits/, videos/)")
    frames = parser.add_argument_group("frames task only (refused with --task clips, unless at "
                                       "their defaults)")
    frames.add_argument("--split", default=FRAME_FLAGS["split"],
                        help="MS-TCN root: the split bundle (train.split1)")
    frames.add_argument("--fps", type=positive_float, default=FRAME_FLAGS["fps"],
                        help="the rate frames are sampled at (15)")
    parser.add_argument("--out", required=True, help="cache directory")
    parser.add_argument("--init", help="take the backbone from this checkpoint (a Spool, a "
                        "classifier or another cache's backbone/ directory)")
    add_model_argument(parser, "frame-encoder fields of SpoolConfig, e.g. backbone_name=DIR, "
                               "image_size=224, backbone_config=@hf_config.json (repeatable)")
    parser.add_argument("--classes-from", help="annotation file whose class list to use "
                        "(for a val split that lacks some classes)")
    clips = parser.add_argument_group("clips task only (refused with --task frames, unless at "
                                      "their defaults)")
    clips.add_argument("--num-frames", type=positive_int, default=CLIP_FLAGS["num_frames"],
                       help="frames per clip (%(default)s)")
    clips.add_argument("--frame-stride", type=positive_int, default=CLIP_FLAGS["frame_stride"],
                       help="frames between sampled frames (default: spread over the video)")
    clips.add_argument("--views", type=positive_int, default=CLIP_FLAGS["views"],
                       help="clips per video: view 0 the evaluation clip, 1.. augmented "
                       "training clips (%(default)s: no augmentation to train on)")
    clips.add_argument("--crop-scale", type=positive_float, nargs=2,
                       default=CLIP_FLAGS["crop_scale"], metavar=("MIN", "MAX"),
                       help="area range of augmented views' random crops (0.4 1.0)")
    clips.add_argument("--hflip", action="store_true", help="flip augmented views at random")
    clips.add_argument("--batch-size", type=positive_int, default=CLIP_FLAGS["batch_size"],
                       help="clips per backbone call (%(default)s)")
    clips.add_argument("--num-workers", type=nonnegative_int,
                       default=CLIP_FLAGS["num_workers"],
                       help="decoding processes (%(default)s; 0: in this one)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="how the tokens are stored (%(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the backbone runs (auto: CUDA when available)")
    parser.add_argument("--compute-dtype", choices=DTYPES, default="auto",
                        help="the backbone's autocast dtype, as spool extract's --dtype (auto: "
                             "bfloat16 on GPU, float32 on CPU); tokens made in another dtype "
                             "are made again")
    parser.add_argument("--seed", type=seed, default=0,
                        help="draws a random backbone's weights and the augmented views (0)")
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bars")
    parser.set_defaults(func=run)
