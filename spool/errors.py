"""Spool's exceptions for things that cannot be loaded (checkpoints, weights, caches, configs).

Bad arguments and bad input are ``ValueError`` naming the argument; anything that cannot be
loaded is a :class:`SpoolLoadError` (an ``OSError``) saying what was looked for and how to fix it.
"""

from __future__ import annotations


class SpoolLoadError(OSError):
    """A checkpoint, weights file, token cache or config that cannot be found or read."""


class CheckpointNotFoundError(SpoolLoadError, FileNotFoundError):
    """Nothing loadable where a checkpoint (or cache) was expected."""


class CheckpointMismatchError(SpoolLoadError, ValueError):
    """A checkpoint whose tensors do not fit the model its config describes."""


class SpoolBusyError(OSError):
    """A directory that another live Spool process is writing (a training run, a cache)."""


class InsufficientSpaceError(OSError):
    """Not enough free disk space for an output, found before writing it."""
