"""Training and evaluation of video classifiers (``spool train`` / ``python -m spool.train``)."""

from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "Trainer", "train"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI imports spool.train.config to build its parser without loading the model.
    if name == "TrainConfig":
        from spool.train.config import TrainConfig
        return TrainConfig
    if name in ("Trainer", "train"):
        from spool.train import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module 'spool.train' has no attribute {name!r}")
