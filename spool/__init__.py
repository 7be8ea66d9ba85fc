"""Spool: a bidirectional temporal transformer over foundation image models for video."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Spool", "SpoolConfig", "SpoolOutput", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `spool --help` and the config do not import torch and transformers.
    if name == "SpoolConfig":
        from spool.config import SpoolConfig

        return SpoolConfig
    if name in ("Spool", "SpoolOutput"):
        from spool.models import spool as module

        return getattr(module, name)
    raise AttributeError(f"module 'spool' has no attribute {name!r}")
