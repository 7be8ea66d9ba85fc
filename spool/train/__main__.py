"""``python -m spool.train ...`` (also under ``torchrun``): the same as ``spool train``."""

from __future__ import annotations

import argparse
import os
import sys

from spool.train.cli import add_train_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spool.train",
                                     description="Train a video classifier (see spool train).")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    from spool.runtime import configure_logging, tune_cpu_allocator
    from spool.train.signals import TrainingInterrupted
    from spool.train.trainer import run_training

    configure_logging()
    tune_cpu_allocator()
    try:
        run_training(config_from_args(args))
    except TrainingInterrupted as stopped:  # saved and said so: 130 (SIGINT) / 143 (SIGTERM)
        return stopped.exit_code
    except KeyboardInterrupt:
        print("python -m spool.train: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # as `spool train`: one line, unless debugging
        if os.environ.get("SPOOL_DEBUG", "") not in ("", "0"):
            raise
        print(f"python -m spool.train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
