"""Datasets and data generation."""

from spool.data.synthetic import (
    DEFAULT_CLASSES,
    TIME_REVERSED,
    SyntheticDataset,
    make_synthetic_dataset,
    render_synthetic_clip,
)

__all__ = [
    "DEFAULT_CLASSES",
    "TIME_REVERSED",
    "SyntheticDataset",
    "make_synthetic_dataset",
    "render_synthetic_clip",
]
