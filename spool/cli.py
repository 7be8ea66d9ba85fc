"""The ``spool`` command line: ``spool demo | extract | cache | train | eval | backbone``.

Each subcommand lives in ``spool/commands/<name>.py`` with a ``register(subparsers)``
function that adds its parser and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS = ("demo", "extract", "cache", "train", "eval", "backbone")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spool",
        description="Spool: video features, training and evaluation with a bidirectional "
                    "temporal transformer over a foundation image model.",
        epilog="Run 'spool COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"spool.commands.{name}"
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from spool.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # before the first large tensor (see its docstring)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
