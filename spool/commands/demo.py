"""``spool demo``: the main job, offline on an embedded default."""

from __future__ import annotations

import argparse
import time

import torch


def run(args: argparse.Namespace) -> int:
    from spool import Spool

    backbone = dict(model_type="dinov2", hidden_size=96, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=192, patch_size=14, image_size=112)
    model = Spool(num_hidden_layers=2, num_attention_heads=4, num_lookahead_heads=2,
                  num_lookback_heads=2, image_size=112, local_frame_range=4,
                  backbone_config=backbone).eval()
    video = torch.randint(0, 256, (2, args.frames, 120, 160, 3), dtype=torch.uint8)
    start = time.perf_counter()
    with torch.no_grad():
        features, context = model(video)
    took = time.perf_counter() - start
    print(f"video {tuple(video.shape)} -> features {tuple(features.shape)}, "
          f"context {tuple(context.shape)} in {took:.2f}s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run Spool offline on an embedded default",
                            description="Run Spool offline on an embedded default model.")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    parser.set_defaults(func=run)
