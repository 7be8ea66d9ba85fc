"""``python -m spool.train ...`` (also under ``torchrun``): the same as ``spool train``."""

from __future__ import annotations

import argparse
import sys

from spool.commands.train import run
from spool.train.config import add_train_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spool.train",
                                     description="Train a video classifier (see spool train).")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    from spool.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
