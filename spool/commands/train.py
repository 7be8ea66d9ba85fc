"""``spool train``: train a video classifier, on one process or many (``torchrun``)."""

from __future__ import annotations

import argparse

from spool.train.cli import add_train_arguments, config_from_args

EPILOG = """examples:
  spool train --train-data data/train.txt --val-data data/val.txt --model num_hidden_layers=4 \\
      --model backbone_name=/models/dinov2-base --epochs 20 --out-dir runs/a
  spool cache --data data/train.txt --out cache/train --model backbone_name=/models/dinov2-base
  spool train --train-cache cache/train --val-cache cache/val --model num_hidden_layers=4 ...
  torchrun --nproc_per_node=4 -m spool.train --config run.json     # DDP (spool train works too)
  spool train --config run.json --resume auto                      # continue exactly
"""


def run(args: argparse.Namespace) -> int:
    from spool.train.signals import TrainingInterrupted
    from spool.train.trainer import run_training

    try:
        run_training(config_from_args(args))
    except TrainingInterrupted as stopped:  # saved and said so: 130 (SIGINT) / 143 (SIGTERM)
        return stopped.exit_code
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train a video or frame classifier (CPU, GPU, torchrun)",
        description="Train SpoolForVideoClassification (or the frame-pooling baseline) on "
                    "labelled videos or on a token cache; --task frames trains a frame "
                    "classifier (temporal action segmentation). Flags override --config.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.set_defaults(func=run)
