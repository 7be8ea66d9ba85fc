"""argparse pieces shared by every command line (``spool ...`` and ``python -m spool.train``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from spool.config import parse_overrides


def model_override(text: str) -> tuple[str, Any]:
    """``--model KEY=VALUE``: a SpoolConfig field and its value (JSON, else a string)."""
    try:
        ((key, value),) = parse_overrides([text]).items()
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--model: ")) from None
    return key, value


def add_model_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                       help: str, **kwargs: Any) -> None:
    """The ``--model KEY=VALUE`` flag (repeatable); its values collect as (key, value)."""
    parser.add_argument("--model", type=model_override, action="append", metavar="KEY=VALUE",
                        help=help, **kwargs)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def refuse_ignored(args: argparse.Namespace, flags: dict[str, Any], why: str) -> None:
    """``ValueError`` naming the first of ``flags`` (name -> its parser default) given with
    another value: the command would ignore it. ``why``: to what it applies, instead."""
    for key, default in flags.items():
        value = getattr(args, key)
        if isinstance(value, list):  # nargs: a list given, the default a tuple
            value = tuple(value)
        if value != default:
            raise ValueError(f"--{key.replace('_', '-')}: {why}")


def refuse_file_for_folder(path: str | None, flag: str) -> None:
    """A folder flag (``--offload-dir``) naming what cannot be a folder (a file, a path under
    one, a place that cannot be written in, an empty path): refused up front, where every
    video would fail on it. Nothing is made: other flags may be refused after."""
    if path is None:
        return
    if not path:
        raise ValueError(f"{flag}: an empty path; name a folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag}: {path} is a file, not a folder")
    found = os.path.abspath(path)
    while not os.path.exists(found):  # the nearest part of it that is there
        found = os.path.dirname(found)
    if not os.path.isdir(found):
        raise ValueError(f"{flag}: {path} is under {found}, a file")
    if not os.access(found, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: {found} is not writable")
