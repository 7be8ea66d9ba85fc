"""Spool: a bidirectional temporal transformer over foundation image models for video."""

from spool.config import SpoolConfig
from spool.models.spool import Spool, SpoolOutput

__version__ = "0.1.0"
__all__ = ["Spool", "SpoolConfig", "SpoolOutput", "__version__"]
