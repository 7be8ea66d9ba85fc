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


class RankZeroStopped(OSError):
    """Under torchrun, on ranks > 0: rank 0 failed at a step it runs for all (and says why)."""


class InsufficientSpaceError(OSError):
    """Not enough free disk space for an output, found before writing it."""


class TrainingDivergedError(ValueError):
    """The training loss is no longer finite (the learning rate too high, say): the run stops
    at that step, before the optimizer writes NaN into the weights, its last checkpoint kept."""

    @classmethod
    def at(cls, step: int, loss: float, lr: float) -> TrainingDivergedError:
        return cls(f"step {step}: the loss is {loss:g} at lr {lr:.2e}: training diverged; "
                   "the weights were not updated with it and the last checkpoint is kept; "
                   "lower --lr (or set --grad-clip) and start again or resume")
