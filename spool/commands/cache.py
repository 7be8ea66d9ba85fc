"""``spool cache``: run a frozen backbone once over a dataset and store its tokens."""

from __future__ import annotations

import argparse
import time


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from spool.data.cache import build_cache, frame_encoder_model
    from spool.data.dataset import VideoClipDataset, read_annotations
    from spool.models.classification import CLASSIFIER_NAME, load_classifier
    from spool.models.spool import Spool

    torch.manual_seed(args.seed)  # a randomly initialised backbone is reproducible
    if args.init is not None:
        init = Path(args.init)
        if (init / CLASSIFIER_NAME).is_file():
            model = load_classifier(init)
        else:
            model = Spool.from_pretrained(init)
    else:
        model = frame_encoder_model(**dict(args.model or []))
    class_names = None
    if args.classes_from is not None:
        _, class_names = read_annotations(args.classes_from)
    samples, names = read_annotations(args.data, class_names)
    dataset = VideoClipDataset(samples, names, num_frames=args.num_frames,
                               image_size=model.config.image_size, frame_stride=args.frame_stride,
                               crop_scale=tuple(args.crop_scale), hflip=args.hflip,
                               seed=args.seed)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    out = build_cache(model, dataset, args.out, views=args.views, batch_size=args.batch_size,
                      num_workers=args.num_workers, dtype=args.dtype, device=device,
                      progress=not args.quiet)
    print(f"cached {len(dataset)} videos x {args.views} view(s) of {args.num_frames} frames "
          f"to {out} in {time.perf_counter() - start:.1f}s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from spool.train.config import key_value

    parser = sub.add_parser(
        "cache", help="store frozen-backbone tokens of a dataset for fast training",
        description="Run the frozen backbone once over labelled videos and store the tokens "
                    "[N, views, T, L, D] (memory-mapped .npy) with the backbone's weights; "
                    "`spool train --train-cache DIR` then never runs the backbone.")
    parser.add_argument("--data", required=True,
                        help="annotation file ('path label' lines) or class-folder directory")
    parser.add_argument("--out", required=True, help="cache directory")
    parser.add_argument("--init", help="take the backbone from this Spool/classifier checkpoint")
    parser.add_argument("--model", type=key_value, action="append", metavar="KEY=VALUE",
                        help="backbone fields of SpoolConfig, e.g. backbone_name=DIR, "
                             "image_size=224, backbone_config={...} (repeatable)")
    parser.add_argument("--classes-from", help="annotation file whose class list to use "
                        "(for a val split that lacks some classes)")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--frame-stride", type=int, default=None)
    parser.add_argument("--views", type=int, default=1,
                        help="view 0: evaluation clip; 1..: augmented training clips")
    parser.add_argument("--crop-scale", type=float, nargs=2, default=(0.4, 1.0))
    parser.add_argument("--hflip", action="store_true", help="flip augmented views at random")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=run)
