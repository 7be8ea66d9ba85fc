"""Matching a dataset's class names to a model's (or a training set's), by name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from spool.io_utils import read_text_file

logger = logging.getLogger(__name__)


def read_class_names(path: Path) -> list[str]:
    """A ``classes.txt``: one class name per line (blank lines skipped)."""
    names = [line.strip() for line in read_text_file(path, "a class list").splitlines()
             if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names in {names}")
    return names


def class_index_map(names: Sequence[str], target: Sequence[str], what: str,
                    target_what: str) -> list[int] | None:
    """For each of ``names``, its index in ``target``; None when the two lists are equal.

    Caches list their classes in the order they were given (a ``classes.txt``, sorted class
    folders), so the same classes may come in another order, and a held-out split may lack
    some: labels are then mapped by name. A class ``target`` lacks raises ``ValueError``.
    """
    names, target = list(names), list(target)
    if names == target:
        return None
    index = {name: i for i, name in enumerate(target)}
    unknown = [name for name in names if name not in index]
    if unknown:
        raise ValueError(f"{what}: classes {unknown[:20]} are not among {target_what} "
                         f"{target[:20]}")
    how = (f"the same classes as {target_what}, in another order"
           if sorted(names) == sorted(target) else
           f"{len(names)} of {target_what} ({len(target)})")
    logger.info(f"{what}: {how}; labels are mapped by name")
    return [index[name] for name in names]


class FrameLabelMapping:
    """``use_class_names`` for datasets whose items hold per-frame label tensors: the labels
    are mapped by name as items are read (:meth:`relabel`)."""

    class_names: list[str]
    label_map: torch.Tensor | None = None  # own label -> class index in ``class_names``

    def use_class_names(self, class_names: Sequence[str], what: str, target_what: str) -> None:
        """Relabel to ``class_names`` (the model's, the training set's) by name."""
        mapping = class_index_map(self.class_names, class_names, what, target_what)
        if mapping is not None:
            new = torch.tensor(mapping, dtype=torch.int64)
            # A second call maps the labels the first one gave: the maps compose.
            self.label_map = new if self.label_map is None else new[self.label_map]
            self.class_names = list(class_names)

    def relabel(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` in ``class_names``' indices; unlabelled frames (negative) stay so."""
        if self.label_map is None:
            return labels
        return torch.where(labels >= 0, self.label_map[labels.clamp_min(0)], labels)
