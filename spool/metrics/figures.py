"""Figures of their own, outside pyplot, written as PNG files.

A library that called ``matplotlib.use("Agg")`` switched a notebook's or a GUI session's
backend for good (later ``plt.show()`` showed nothing); a ``Figure`` made directly leaves
pyplot, its backend and its figures alone. The PNG carries no matplotlib version, so the
same inputs give the same bytes with any version.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from spool.io_utils import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "save_png"]


def new_figure(width: float, height: float) -> Figure:
    """A ``width x height`` inch figure that pyplot does not know of."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_png(fig: Figure, path: str | os.PathLike, dpi: int) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically (a temporary file, then a rename)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
