"""Writing the rows of a token cache's ``tokens.npy``: a new cache's partial file, resumed
after a kill (:class:`PartialTokens`), or rows of a complete cache encoded again in place
(:class:`RowsToRedo`)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from spool.data.cached_tokens import CACHE_META, PARTIAL_NAME, PROGRESS_NAME, TOKENS_NAME
from spool.data.token_space import make_room, reserve_file
from spool.io_utils import atomic_write_text, fsync_directory, fsync_path

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 30.0


class PartialTokens:
    """``tokens.npy`` being written: a fixed-name partial file (memory-mapped) and a record of
    the videos done, kept only for the same settings (``key``, a digest of them), and of the
    version of each file (``sources``): a video whose file changed since is encoded again.

    The record outlives the move of the finished file to ``tokens.npy`` until ``cache.json``
    is written: a run killed in between takes that ``tokens.npy`` back as its partial file.
    """

    heartbeat: Callable[[], object] | None = None  # called with each save (the lock's)
    changed = 0  # videos done by an earlier run whose files changed since

    def __init__(self, out: Path, shape: tuple[int, ...], dtype: np.dtype, key: str,
                 sources: list[tuple[int, int] | None], earlier_keys: Iterable[str] = (),
                 settings: dict | None = None) -> None:
        self.path, self.record = out / PARTIAL_NAME, out / PROGRESS_NAME
        self.shape = shape
        self.key = key
        self.settings = settings  # what ``key`` digests, kept to say what changed
        self.keys = {key, *earlier_keys}  # a partial file of an earlier version goes on
        self.sources = sources
        self.done = self._read_done(dtype)
        if self.done is None:  # nothing to continue: start over
            self.done = np.zeros(shape[0], dtype=bool)
            self.record.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
        make_room(self.path, shape, dtype)
        mode = "r+" if self.path.exists() else "w+"
        self.tokens = np.lib.format.open_memmap(self.path, mode=mode, dtype=dtype, shape=shape)
        reserve_file(self.path)
        self.saved_at = time.monotonic()
        if self.changed:  # the record stops claiming their rows before they are overwritten
            self.save_progress()

    def _read_done(self, dtype: np.dtype) -> np.ndarray | None:
        """The videos done by an earlier run with the same settings, or None."""
        if not (self.record.exists() or self.path.exists()):
            return None
        if not self.record.exists():
            logger.info(f"{self.path.parent}: the partial cache there has no record of the "
                        "videos it holds (stopped before its first); starting over")
            return None
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
            if record["key"] not in self.keys:  # (finished: its tokens.npy stays until replaced)
                return self._other_settings(record)
            final = self.path.parent / TOKENS_NAME
            if record.get("finished") and not self.path.exists():
                os.replace(final, self.path)  # killed while it replaced the old cache
            header = np.load(self.path, mmap_mode="r")
            if header.shape == self.shape and header.dtype == dtype:
                done = np.zeros(self.shape[0], dtype=bool)
                for start, stop in record["done"]:
                    done[start:stop] = True
                same = np.array([was is not None and tuple(was) == now for was, now
                                 in zip(record["sources"], self.sources, strict=True)], bool)
                self.changed = int((done & ~same).sum())
                if self.changed:
                    logger.info(f"{self.path.parent}: {self.changed} videos of the partial "
                                "cache there changed since; encoding them again")
                return done & same
            return self._other_settings(record)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: as good as made with other settings
        logger.info(f"{self.path.parent}: the partial cache there could not be read; "
                    "starting over")
        return None

    def _other_settings(self, record: dict) -> None:
        logger.info(f"{self.path.parent}: the partial cache there ({_count(record)} of "
                    f"{len(record['sources'])} videos done) was made with other settings "
                    f"({changed_settings(record.get('settings'), self.settings)}); "
                    "starting over")

    def todo(self) -> list[int]:
        return np.flatnonzero(~self.done).tolist()

    def write(self, indices: np.ndarray, tokens: np.ndarray) -> None:
        self.tokens[indices] = tokens
        self.done[indices] = True
        if time.monotonic() - self.saved_at >= PROGRESS_EVERY_S:
            self.save_progress()

    def save_progress(self, finished: bool = False) -> None:
        """Tokens to disk first, then the record that says they are there."""
        if self.heartbeat is not None:
            self.heartbeat()
        if self.tokens is not None:
            self.tokens.flush()
        edges = np.flatnonzero(np.diff(np.concatenate([[0], self.done.view(np.int8), [0]])))
        ranges = edges.reshape(-1, 2).tolist()  # runs of done videos as [start, stop)
        atomic_write_text(self.record, json.dumps({"key": self.key, "done": ranges,
                                                   "sources": self.sources,
                                                   "finished": finished,
                                                   "settings": self.settings}))
        self.saved_at = time.monotonic()

    def close(self) -> None:
        """Save what is done (also when the run fails or is interrupted) and unmap."""
        if self.tokens is None:
            return
        try:
            self.save_progress()
        except Exception:
            raise  # a real error (a full disk): a second try would only fail again
        except BaseException:
            # A Ctrl-C or SIGTERM (not Exceptions) that lands while the rows are flushed would
            # leave no record of them (before the first periodic one, none at all): save
            # again, then stop as the signal asked.
            try:
                self.save_progress()
            except Exception as err:
                logger.warning(f"{self.record}: could not save the progress record: {err}")
            raise
        finally:
            self.tokens = None

    def finish(self, final: Path) -> None:
        """Move the complete tokens to ``final`` (the record stays: see the class)."""
        fsync_path(self.path)
        self.save_progress(finished=True)
        os.replace(self.path, final)
        fsync_directory(final.parent)


def changed_settings(theirs: dict | None, ours: dict | None) -> str:
    """The names of the settings that differ, for a message (what an earlier version did not
    record cannot be named)."""
    if not theirs or not ours:
        return "which ones: not recorded by the earlier version that made it"
    ours = json.loads(json.dumps(ours))  # tuples as JSON has them
    # A setting only one side records (compute_dtype: absent for float32) changed too.
    changed = sorted(k for k in ours.keys() | theirs.keys() if theirs.get(k) != ours.get(k))
    return ", ".join(unrecorded_name(k, theirs) for k in changed) or "an earlier version"


def unrecorded_name(key: str, theirs: dict) -> str:
    """``key`` for a message of changed settings, said to be new where an earlier version
    made the cache without recording it (a named backbone's architecture)."""
    if key == "backbone_architecture" and key not in theirs:
        return f"{key}, not recorded by the earlier version that made it"
    return key


def _count(record: dict) -> int:
    return sum(stop - start for start, stop in record["done"])


class RowsToRedo:
    """The rows of a complete cache's ``tokens.npy`` to encode again, in place: those no
    sample reads (``failed``: videos that could not be read) and those whose file changed
    since (``changed``: its size or modification time differs from ``cache.json``'s, or
    ``cache.json`` predates the record). The new ``cache.json`` is written last."""

    def __init__(self, path: Path, meta: dict, sources: list) -> None:
        self.path = path
        self.tokens = np.load(path, mmap_mode="r+")
        self.shape = self.tokens.shape
        used = meta.get("rows", range(len(meta["samples"])))
        known = meta.get("sources", [None] * len(used))
        self.failed = sorted(set(range(self.shape[0])) - set(used))
        self.changed = [i for i, was in zip(used, known, strict=True)
                        if was is None or tuple(was) != sources[i]]
        self._todo = sorted(self.failed + self.changed)
        self.heartbeat: Callable[[], object] | None = None
        self.beat_at = time.monotonic()
        if self.changed:  # cache.json stops vouching for their rows before they are written
            redo = set(self.changed)  # (a kill mid-way, then the old file back: "done")
            sources = [None if row in redo else was for row, was in zip(used, known, strict=True)]
            atomic_write_text(path.parent / CACHE_META, json.dumps(dict(meta, sources=sources),
                                                                   indent=1))

    def todo(self) -> list[int]:
        return self._todo

    def write(self, indices: np.ndarray, tokens: np.ndarray) -> None:
        self.tokens[indices] = tokens
        if self.heartbeat is not None and time.monotonic() - self.beat_at >= PROGRESS_EVERY_S:
            self.heartbeat()
            self.beat_at = time.monotonic()

    def close(self) -> None:
        self.tokens.flush()
        self.tokens = None
        fsync_path(self.path)
