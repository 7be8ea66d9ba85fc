"""argparse pieces shared by every command line (``spool ...`` and ``python -m spool.train``)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from spool.config import backbone_identity, check_known_fields


def parse_config_value(text: str) -> Any:
    """A ``--model KEY=VALUE`` value: JSON where it parses (numbers, lists, objects, true),
    ``@FILE`` for the JSON in a file (e.g. a backbone config), else the plain string (a
    backbone name or path)."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--model: cannot read JSON from {text[1:]!r}: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["num_hidden_layers=4", "backbone_name=/models/dinov2"]`` -> SpoolConfig fields; a
    ``ValueError`` names a pair without ``=`` or an unknown field."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--model: expected KEY=VALUE, got {pair!r}")
        check_known_fields([key], "--model")
        out[key] = parse_config_value(value)
        if key == "backbone_name" and isinstance(out[key], str):
            out[key] = backbone_identity(out[key])
    return out


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


def seed(text: str) -> int:
    """An argparse type: a seed, an integer in [0, 2**32) (what numpy and spool train take)."""
    value = _int_at_least(text, 0)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {value}")
    return value


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


def positive_float_or_none(text: str) -> float | None:
    """An argparse type: a finite number > 0, or ``none``."""
    return None if text.strip().lower() == "none" else positive_float(text)


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
