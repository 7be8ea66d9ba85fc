"""What one video's file in a frame cache depends on, and whether a file holds it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from spool.data.segmentation import LABEL_RULES_REVISION, SegmentationSample
from spool.io_utils import file_location


@dataclasses.dataclass(frozen=True)
class Keys:
    """What one video's file depends on: the shared settings of its tokens (``settings``),
    its video file (``source``: path, size, modification time) and what its labels come from
    (``labels``: the classes, the label rules, its annotations). Files of an earlier version
    held all of it in ``settings`` and ``source`` (``legacy_*``)."""

    settings: str
    source: str
    labels: str
    legacy_settings: str
    legacy_source: str


def video_keys(sample: SegmentationSample, settings: dict[str, Any], class_names: list[str]
               ) -> Keys:
    st = os.stat(sample.video)
    version = {"video": file_location(sample.video), "size": st.st_size,
               "mtime_ns": st.st_mtime_ns}
    labels = (None if sample.frame_labels is None
              else hashlib.sha256(np.ascontiguousarray(sample.frame_labels, np.int64)
                                  .tobytes()).hexdigest())
    annotations = {"frame_labels": labels, "segments": None if sample.segments is None else
                   [list(s) for s in sample.segments]}
    rules = {"classes": class_names, "label_rules": LABEL_RULES_REVISION}
    return Keys(json.dumps(settings, sort_keys=True), json.dumps(version, sort_keys=True),
                json.dumps({**annotations, **rules}, sort_keys=True),
                json.dumps({**settings, **rules}, sort_keys=True),
                json.dumps({**version, **annotations}, sort_keys=True))


def cached_state(path: Path, keys: Keys) -> str | None:
    """``"done"``, ``"labels"`` (its tokens hold, its labels are to be redone) or None."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # missing or damaged: redo
        return None
    source = resolved_source(meta.get("source"))
    if meta.get("settings") == keys.settings and source == keys.source:
        return "done" if meta.get("labels") == keys.labels else "labels"
    if (meta.get("settings"), source) == (keys.legacy_settings, keys.legacy_source):
        return "done"
    return None


def resolved_source(source: str | None) -> str | None:
    """A ``source`` key with its video's :func:`file_location`: the same file however its
    path was typed (earlier files hold it as typed, relative to the working directory)."""
    try:
        found = json.loads(source)
        return json.dumps({**found, "video": file_location(found["video"])}, sort_keys=True)
    except (TypeError, ValueError, KeyError):
        return None
