"""``spool extract``: clip (and frame) features for every video, one file per video."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

EPILOG = """\
examples:
  spool extract videos/ --out feats/ --checkpoint runs/k400/final
  spool extract list.txt --out feats/ --sampler sliding --clip-len 16 --stride 8 --save-features
  torchrun --nproc_per_node=8 -m spool.cli extract videos/ --out feats/ --checkpoint ckpt/

Each video gives OUT/NAME.safetensors with 'context' [n_clips, 2D] (fp32),
'frame_indices' and 'timestamps' [n_clips, T], and with --save-features 'features'
[n_clips, T+2, L, D] (fp16). Re-running the same command skips finished videos. Videos that
cannot be read are listed in OUT/failures.csv; the exit code is 1 if any failed.

List files (.txt, .lst, .list): one path per line, relative to the list's folder. A line
whose first non-blank character is '#' is a comment; '#' elsewhere is part of the path, and
a file whose name starts with '#' is listed as ./#name.mp4. FIFOs, devices and broken links
are reported as failures without being opened.
"""


def build_model(args: argparse.Namespace):
    from spool import Spool, SpoolConfig

    if args.checkpoint:
        marker = Path(args.checkpoint) / "classifier.json"
        if marker.is_file():
            from spool.models.classification import SpoolForVideoClassification, load_classifier

            classifier = load_classifier(args.checkpoint)
            if not isinstance(classifier, SpoolForVideoClassification):
                raise ValueError(f"--checkpoint: {args.checkpoint} holds a "
                                 f"{type(classifier).__name__}, which has no Spool features")
            return classifier.spool
        return Spool.from_pretrained(args.checkpoint)
    backbone_config = None
    if args.backbone_config:
        backbone_config = json.loads(Path(args.backbone_config).read_text())
    torch.manual_seed(0)  # untrained temporal layers: at least the same ones every run
    config = SpoolConfig(num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_lookback_heads=args.heads - args.lookahead_heads,
                         num_lookahead_heads=args.lookahead_heads, image_size=args.image_size,
                         local_frame_range=args.local_frame_range,
                         backbone_name=args.backbone, backbone_config=backbone_config)
    print("note: no --checkpoint, so the temporal layers are untrained (seed 0); the backbone "
          "tokens in 'features' are still meaningful", file=sys.stderr)
    return Spool(config)


def build_sampler(args: argparse.Namespace):
    from spool.video import make_sampler

    if args.sampler == "uniform":
        return make_sampler("uniform", num_frames=args.num_frames)
    if args.sampler == "fps":
        return make_sampler("fps", target_fps=args.fps, max_frames=args.max_frames)
    if args.sampler == "stride":
        return make_sampler("stride", stride=args.stride, max_frames=args.max_frames)
    return make_sampler("sliding", clip_len=args.clip_len, stride=args.stride)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def run(args: argparse.Namespace) -> int:
    from spool.extract import (
        VIDEO_EXTENSIONS,
        FeatureExtractor,
        plan_jobs,
        remove_stale_temporaries,
        write_failures,
    )
    from spool.train.distributed import (
        all_gather_objects,
        barrier,
        cleanup_distributed,
        setup_distributed,
    )

    dist = setup_distributed(args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if dist.is_main:  # only files of processes that are gone: other jobs may share OUT
            remove_stale_temporaries(out_dir)
        every = plan_jobs(args.inputs, out_dir)
        if not every:  # the same on every rank: all return here
            print(f"spool extract: no videos in {' '.join(args.inputs)}: folders are searched "
                  f"for {' '.join(sorted(VIDEO_EXTENSIONS))} files and list files name one "
                  f"video per line; nothing to do", file=sys.stderr)
            return 2
        jobs = every[dist.rank::dist.world_size]  # what plan_jobs(..., rank, world_size) gives
        model = build_model(args)
        extractor = FeatureExtractor(model, build_sampler(args), batch_size=args.batch_size,
                                     device=dist.device, dtype=_dtype(args.dtype, dist.device),
                                     save_features=args.save_features,
                                     max_pixels=args.max_pixels)
        start = time.perf_counter()
        summary = extractor.run(jobs, progress=not args.no_progress, position=dist.local_rank)
        summaries = all_gather_objects((summary.done, summary.skipped, summary.failures,
                                        summary.elsewhere))
        barrier()
    finally:
        cleanup_distributed()
    if not dist.is_main:
        return 1 if any(s[2] for s in summaries) else 0
    done = sum(s[0] for s in summaries)
    skipped = sum(s[1] for s in summaries)
    failures = [f for s in summaries for f in s[2]]
    elsewhere = sum(s[3] for s in summaries)
    write_failures(out_dir / "failures.csv", failures)
    total = done + skipped + elsewhere + len(failures)
    busy = f"{elsewhere} being extracted by another job, " if elsewhere else ""
    print(f"spool extract: {done} extracted, {skipped} already done, {busy}{len(failures)} failed "
          f"of {total} videos in {time.perf_counter() - start:.1f}s "
          f"({dist.world_size} process{'es' if dist.world_size > 1 else ''}); outputs in "
          f"{os.fspath(out_dir)}" + (f"; failures listed in {out_dir / 'failures.csv'}"
                                     if failures else ""))
    return 1 if failures else 0


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum``, rejected at parse time with the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _max_pixels(text: str) -> int:
    from spool.video.limits import parse_max_pixels

    try:
        return parse_max_pixels(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract", help="extract clip/frame features from video files",
        description="Extract Spool clip features (and optionally frame features) from video "
                    "files, one .safetensors file per video.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, directories (searched recursively, following links) or "
                        ".txt lists of paths (see below)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    m = p.add_argument_group("model")
    m.add_argument("--checkpoint", metavar="DIR",
                   help="a Spool or SpoolForVideoClassification checkpoint (save_pretrained)")
    m.add_argument("--backbone", default="facebook/dinov2-base", metavar="NAME",
                   help="without --checkpoint: backbone hub id or local directory "
                        "(default: %(default)s)")
    m.add_argument("--backbone-config", metavar="JSON",
                   help="without --checkpoint: build a randomly initialised backbone from this "
                        "HF config file (offline tests and demos)")
    m.add_argument("--layers", type=_count(0), default=12, help="temporal layers (default: 12)")
    m.add_argument("--heads", type=_count(1), default=12, help="attention heads (default: 12)")
    m.add_argument("--lookahead-heads", type=_count(0), default=6, help="of --heads (default: 6)")
    m.add_argument("--local-frame-range", type=_count(0), default=16, help="w (default: 16)")
    m.add_argument("--image-size", type=_count(1), default=224, help="frame size (default: 224)")
    s = p.add_argument_group("frame sampling")
    s.add_argument("--sampler", choices=["uniform", "fps", "stride", "sliding"],
                   default="uniform", help="how clips are taken (default: %(default)s)")
    s.add_argument("--num-frames", type=_count(1), default=16,
                   help="uniform: frames spread over the video (default: 16)")
    s.add_argument("--fps", type=_positive_float, default=2.0, help="fps: target rate (default: 2)")
    s.add_argument("--stride", type=_count(1), default=8,
                   help="stride: every k-th frame; sliding: clip start step (default: 8)")
    s.add_argument("--clip-len", type=_count(1), default=16, help="sliding: frames per clip")
    s.add_argument("--max-frames", type=_count(1), help="fps/stride: cap on frames per clip")
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=_count(1), default=4, help="clips per forward (default: 4)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when available, one GPU per torchrun process")
    r.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   default="auto", help="autocast dtype; auto: bfloat16 on GPU, float32 on CPU")
    r.add_argument("--save-features", action="store_true",
                   help="also save frame features [n_clips, T+2, L, D] in fp16")
    r.add_argument("--max-pixels", type=_max_pixels, default="4096x2160", metavar="WxH",
                   help="largest frame to decode, as WIDTHxHEIGHT or a pixel count (0: no "
                        "limit); a video with larger frames (from its header, before decoding) "
                        "is reported as failed instead of exhausting memory (default: "
                        "%(default)s)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
