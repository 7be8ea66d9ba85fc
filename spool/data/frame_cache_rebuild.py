"""A frame cache made again with other token settings is built aside, then swapped in.

A frame cache keeps one file per video. Made again in place with another backbone, rate,
dtype or preprocessing, its files would be overwritten one by one, and a run interrupted
halfway would leave neither cache. So the new one is built in ``OUT/.spool-rebuild`` (a whole
cache of its own, resumable as any) while the old one stays usable, and swapped in at the end:
``cache.json`` goes first and comes back last, each move is a rename, and a run killed during
the swap finishes it the next time. The disk must hold both meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from spool.data.cache import FAILURES_NAME
from spool.data.cached_tokens import BACKBONE_DIR, CACHE_META
from spool.data.token_rows import unrecorded_name
from spool.io_utils import write_failures

logger = logging.getLogger(__name__)

REBUILD_DIR = ".spool-rebuild"
PARTS = ("videos", BACKBONE_DIR)
# Of cache.json; compute_dtype and weights_dtype are absent for float32 (as in caches made
# before they were kept), backbone_architecture where backbone_config gives it.
TOKEN_SETTINGS = ("sampler", "dtype", "backbone_digest", "frame_encoder",
                  "backbone_architecture", "compute_dtype", "weights_dtype")


def build_folder(out: Path, settings: dict[str, Any]) -> Path | None:
    """Where the cache of token ``settings`` (``cache.json``'s :data:`TOKEN_SETTINGS`) is to
    be built: aside (the rebuild folder) while ``out`` holds a complete cache of other token
    settings, else in ``out`` itself (None). A swap that was cut short is finished first."""
    staging = out / REBUILD_DIR
    if (staging / CACHE_META).is_file():
        replace_cache(out, staging)
    try:
        old = json.loads((out / CACHE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    settings = json.loads(json.dumps(settings))  # as cache.json holds them
    changed = [k for k in TOKEN_SETTINGS if isinstance(old, dict)
               and old.get(k) != settings.get(k)]
    if not changed:
        shutil.rmtree(staging, ignore_errors=True)  # nothing to keep, or no new tokens to make
        return None
    changed = [unrecorded_name(k, old) for k in changed]
    logger.info(f"{out}: the cache there was made with other settings ({', '.join(changed)}); "
                f"it stays until the new one, built in {REBUILD_DIR}, replaces it")
    return staging


def replace_cache(out: Path, staging: Path) -> None:
    """Swap the complete cache in ``staging`` in for ``out``'s, and remove the old one."""
    (out / CACHE_META).unlink(missing_ok=True)  # no cache at all until the new one is whole
    replaced = staging / "replaced"
    replaced.mkdir(exist_ok=True)
    for part in PARTS:
        if (staging / part).exists():  # else moved in already, by a swap cut short
            if (out / part).exists():
                shutil.rmtree(replaced / part, ignore_errors=True)
                os.replace(out / part, replaced / part)
            os.replace(staging / part, out / part)
    meta = json.loads((staging / CACHE_META).read_text(encoding="utf-8"))
    write_failures(out / FAILURES_NAME, [tuple(f) for f in meta.get("failures", [])])
    os.replace(staging / CACHE_META, out / CACHE_META)
    shutil.rmtree(staging, ignore_errors=True)
