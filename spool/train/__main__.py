"""``python -m spool.train ...`` (also under ``torchrun``): the same as ``spool train``."""

from __future__ import annotations

import argparse
import sys

from spool.train.cli import add_train_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spool.train",
                                     description="Train a video classifier (see spool train).")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    from spool.runtime import tune_cpu_allocator
    from spool.train.trainer import run_training

    tune_cpu_allocator()
    run_training(config_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
