"""Frozen-backbone token cache: run the backbone once, train the temporal stack on its output.

A cache is a directory:

- ``tokens.npy``: ``[N, V, T, L, D]`` backbone tokens (a NumPy array read memory-mapped, so
  a cache larger than RAM works), ``V`` views per video;
- ``backbone/``: the :class:`~spool.models.frame_encoder.FrameEncoderModel` that made them
  (``config.json`` + ``model.safetensors``), so a model trained on the cache can be saved with
  the very same backbone and preprocessing;
- ``cache.json`` (written last: a cache without it is incomplete): samples, class names, the
  clip pipeline's settings and a digest of the backbone's weights; the videos that could not
  be read (also in ``failures.csv``) are left out of ``samples``, their rows of ``tokens.npy``
  unused.

View 0 is the deterministic evaluation clip; views 1.. (``views > 1``) are training-augmented
clips, and training on the cache picks one of a video's views per epoch.
"""


from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spool.data.cached_tokens import (  # the reading side, re-exported
    BACKBONE_DIR,
    CACHE_META,
    TOKENS_NAME,
    CachedTokenDataset,
    cache_backbone_config,
    encoder_on,
    load_cache_backbone,
    read_cache_meta,
    refuse_other_cache,
)
from spool.data.dataset import (
    UNREADABLE,
    SkippedVideo,
    VideoClipDataset,
    collate_readable,
    skipped_video,
    unreadable_item,
    worker_context,
    worker_init_fn,
)
from spool.data.token_space import make_room, reserve_file
from spool.errors import SpoolLoadError
from spool.io_utils import (
    atomic_write_text,
    file_version,
    fsync_directory,
    fsync_path,
    is_stale_temporary,
    lock_directory,
    refresh_claim,
    release_claim,
    write_failures,
)
from spool.models.frame_encoder import save_frame_encoder
from spool.models.pretrained import SpoolPreTrainedModel, weights_digest

__all__ = ["BACKBONE_DIR", "CACHE_META", "TOKENS_NAME", "CacheSummary", "CachedTokenDataset",
           "build_cache", "cache_backbone_config", "load_cache_backbone", "read_cache_meta"]

logger = logging.getLogger(__name__)
PARTIAL_NAME = ".tokens.partial.npy"  # tokens.npy while it is written
PROGRESS_NAME = ".tokens.progress.json"  # which videos the partial file holds
FAILURES_NAME = "failures.csv"
LOCK_NAME = ".spool-cache.lock"
PROGRESS_EVERY_S = 30.0
_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class CacheSummary:
    """What :func:`build_cache` did: ``reused`` a complete cache of the same settings (after
    trying again the ``retried`` videos it could not read), or ``cached`` videos;
    ``failures``: the videos that could not be read (not in the cache)."""

    path: Path
    cached: int
    reused: bool = False
    failures: list[SkippedVideo] = field(default_factory=list)
    retried: int = 0  # videos that had failed, tried again over a reused cache
    changed: int = 0  # videos re-encoded over a reused cache: their files changed since


@torch.no_grad()
def build_cache(model: SpoolPreTrainedModel, dataset: VideoClipDataset,
                out_dir: str | os.PathLike, *, views: int = 1, batch_size: int = 8,
                num_workers: int = 0, dtype: str = "float32", device: str | torch.device = "cpu",
                progress: bool = False) -> CacheSummary:
    """Encode every video of ``dataset`` with ``model``'s frame encoder into ``out_dir``.

    ``dataset``'s sampler must give single clips. View 0 is always the evaluation clip, views
    ``1 .. views-1`` augmented ones (each video is decoded once for all its views). A video
    that cannot be read is reported, left out and listed in ``failures.csv``.

    A complete cache of the same settings is reused, after trying again the videos it could
    not read (their tokens go to its unused rows). Otherwise tokens go to a partial
    file beside a progress record of the videos done (updated every ``PROGRESS_EVERY_S``
    seconds), so a re-run with the same settings after a crash or Ctrl-C continues where it
    stopped (encoding again the videos whose files changed since); other settings start
    over. An earlier complete cache stays valid until the new one replaces it at the end
    (unless the disk cannot hold both: then it is removed first, and a warning says so). The
    disk space the tokens need is checked, and reserved, before the first video.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    if views < 1 or getattr(dataset.sampler, "num_clips", 1) != 1:
        raise ValueError(f"views >= 1 and a single-clip sampler expected, got {views} and "
                         f"{dataset.sampler!r}")
    if views > 1 and dataset.augmentation is None:
        raise ValueError("views: augmented views (views > 1) need the dataset's augmentation")
    out = Path(out_dir)
    refuse_other_cache(out, "clips")
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(out, "spool cache", LOCK_NAME)
    try:
        _remove_stale_temporaries(out)
        encoder = encoder_on(model, device)
        config = model.config
        shape = (len(dataset), views, dataset.num_frames, config.num_spatial_tokens,
                 config.hidden_size)
        meta = {
            "samples": [[s.path, s.label] for s in dataset.samples],
            "class_names": dataset.class_names, "views": views, "dtype": dtype,
            "shape": list(shape), "num_frames": dataset.num_frames, **dataset.settings(),
            "backbone_digest": weights_digest(encoder.state_dict()),
            # What the weights' digest misses: the normalisation (non-persistent buffers),
            # the backbone's config, token pooling.
            "frame_encoder": config.frame_encoder_fields(layout=False),
        }
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        # Which version of each file: not part of the key, so a re-encoded or replaced video
        # costs its own row, not the whole cache.
        meta["sources"] = [file_version(s.path) for s in dataset.samples]
        done = _complete_cache(out, key)
        if done is not None:
            writer = _RowsToRedo(out / TOKENS_NAME, read_cache_meta(out), meta["sources"])
            writer.heartbeat = lambda: refresh_claim(lock)  # redoing every row may take hours
            if not writer.todo():
                writer.close()
                return done
            try:  # files fixed since may read now; changed files are other tokens
                failures = _encode(encoder, dataset, views, writer, batch_size, num_workers,
                                   device, progress)
            finally:
                writer.close()
            rows = _write_meta(out, meta, key, failures)
            return CacheSummary(out, len(rows), reused=True, failures=failures,
                                retried=len(writer.failed), changed=len(writer.changed))
        writer = _PartialTokens(out, shape, np.dtype(_DTYPES[dtype]), key, meta["sources"])
        writer.heartbeat = lambda: refresh_claim(lock)  # other machines judge it by age
        try:
            failures = _encode(encoder, dataset, views, writer, batch_size, num_workers,
                               device, progress)
        finally:
            writer.close()
        # The new cache replaces the old: cache.json goes first and comes back last, so that
        # it never describes tokens of another run.
        (out / CACHE_META).unlink(missing_ok=True)
        writer.finish(out / TOKENS_NAME)
        save_frame_encoder(model, out / BACKBONE_DIR)
        rows = _write_meta(out, meta, key, failures)
        writer.record.unlink(missing_ok=True)  # after cache.json: see _PartialTokens
    finally:
        release_claim(lock)
    return CacheSummary(out, len(rows), failures=failures)


def _write_meta(out: Path, meta: dict, key: str, failures: list[SkippedVideo]) -> list[int]:
    """``failures.csv`` and then ``cache.json`` (atomically) for the videos read; returns
    their rows of ``tokens.npy``, which keeps a row per video asked for."""
    failed = {f.index for f in failures}
    rows = [i for i in range(len(meta["samples"])) if i not in failed]
    meta = dict(meta, samples=[meta["samples"][i] for i in rows], settings_key=key,
                sources=[meta["sources"][i] for i in rows],
                failures=[list(f[1:]) for f in failures])
    if failures:
        meta["rows"] = rows
    write_cache_failures(out / FAILURES_NAME, failures)
    atomic_write_text(out / CACHE_META, json.dumps(meta, indent=1))
    return rows


class _RowsToRedo:
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


def _complete_cache(out: Path, key: str) -> CacheSummary | None:
    """A summary of the complete, readable cache in ``out`` made with the settings ``key``."""
    if not (out / CACHE_META).is_file() or not (out / BACKBONE_DIR).is_dir():
        return None
    try:
        cached = CachedTokenDataset(out)
    except (SpoolLoadError, ValueError):
        return None  # damaged: made again
    if cached.meta.get("settings_key") != key:
        logger.info(f"{out}: the cache there was made with other settings; it stays until "
                    "the new one replaces it")
        return None
    failures = [SkippedVideo(-1, *f) for f in cached.meta.get("failures", [])]
    return CacheSummary(out, len(cached), reused=True, failures=failures)


def report_failure(entry: SkippedVideo) -> None:
    """A video a cache leaves out, on one line: ``FAILED path: Error: message``."""
    logger.warning(f"FAILED {entry.path}: {entry.error}: {entry.message}")


def write_cache_failures(path: Path, failures: list[SkippedVideo]) -> None:
    """``failures.csv`` as ``spool extract`` writes it; none left when nothing failed."""
    write_failures(path, [tuple(f[1:]) for f in failures])


def _encode(encoder: torch.nn.Module, dataset: VideoClipDataset, views: int,
            writer: _PartialTokens, batch_size: int, num_workers: int,
            device: str | torch.device, progress: bool) -> list[SkippedVideo]:
    """Run ``encoder`` over the videos ``writer`` still lacks, recording them as done;
    returns the videos that could not be read (each reported on one line)."""
    todo = writer.todo()
    if len(todo) < len(dataset):
        logger.info(f"{writer.path.parent}: resuming, {len(dataset) - len(todo)} of "
                    f"{len(dataset)} videos are cached already")
    loader = DataLoader(_ViewStack(dataset, views), batch_size=batch_size, sampler=todo,
                        num_workers=num_workers, collate_fn=collate_readable,
                        multiprocessing_context=worker_context(num_workers),
                        worker_init_fn=worker_init_fn)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc=f"caching {views} view(s)", unit="batch")
    failures: list[SkippedVideo] = []
    for batch in loader:
        for entry in batch["skipped"]:
            report_failure(entry)
        failures.extend(batch["skipped"])
        if "video" not in batch:
            continue
        video = batch["video"].to(device)  # [B, V, T, S, S, 3]
        tokens = encoder(video.flatten(0, 1)).float().cpu()
        writer.write(batch["index"].numpy(),
                     tokens.view(len(video), *writer.shape[1:]).numpy())
    return sorted(failures)


class _PartialTokens:
    """``tokens.npy`` being written: a fixed-name partial file (memory-mapped) and a record of
    the videos done, kept only for the same settings (``key``, a digest of them), and of the
    version of each file (``sources``): a video whose file changed since is encoded again.

    The record outlives the move of the finished file to ``tokens.npy`` until ``cache.json``
    is written: a run killed in between takes that ``tokens.npy`` back as its partial file.
    """

    heartbeat: Callable[[], object] | None = None  # called with each save (the lock's)
    changed = 0  # videos done by an earlier run whose files changed since

    def __init__(self, out: Path, shape: tuple[int, ...], dtype: np.dtype, key: str,
                 sources: list[tuple[int, int] | None]) -> None:
        self.path, self.record = out / PARTIAL_NAME, out / PROGRESS_NAME
        self.shape = shape
        self.key = key
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
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
            final = self.path.parent / TOKENS_NAME
            if record.get("finished") and record["key"] == self.key and not self.path.exists():
                os.replace(final, self.path)  # killed while it replaced the old cache
            header = np.load(self.path, mmap_mode="r")
            if (record["key"] == self.key and header.shape == self.shape
                    and header.dtype == dtype):
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
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: as good as made with other settings
        logger.info(f"{self.path.parent}: the partial cache there was made with other "
                    "settings; starting over")
        return None

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
                                                   "finished": finished}))
        self.saved_at = time.monotonic()

    def close(self) -> None:
        """Save what is done (also when the run fails or is interrupted) and unmap."""
        if self.tokens is not None:
            self.save_progress()
            self.tokens = None

    def finish(self, final: Path) -> None:
        """Move the complete tokens to ``final`` (the record stays: see the class)."""
        fsync_path(self.path)
        self.save_progress(finished=True)
        os.replace(self.path, final)
        fsync_directory(final.parent)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete what killed runs left (``.tokens.npy.spool-...tmp`` of earlier versions)."""
    for path in out.iterdir():
        if path.is_file() and is_stale_temporary(path):
            path.unlink(missing_ok=True)


class _ViewStack(Dataset):
    """Items ``{"video": [V, T, S, S, 3], "index": i}``: view 0 the evaluation clip, views
    ``1 ..`` augmented (epoch = view), decoded once per video."""

    def __init__(self, dataset: VideoClipDataset, views: int) -> None:
        self.dataset = dataset
        self.plan = [(0, False)] + [(v, True) for v in range(1, views)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, object]:
        try:
            views = self.dataset.views(index, self.plan)
        except UNREADABLE as err:  # reported and left out, not fatal to the whole cache
            return unreadable_item(index, [skipped_video(
                index, self.dataset.samples[index].path, err)])
        return {"video": torch.stack(views), "index": index}


