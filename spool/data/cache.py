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

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spool.data.cached_tokens import (  # the reading side, re-exported
    BACKBONE_DIR,
    CACHE_META,
    PARTIAL_NAME,
    PROGRESS_NAME,
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
from spool.data.token_rows import PartialTokens, RowsToRedo, changed_settings
from spool.errors import SpoolLoadError
from spool.io_utils import (
    atomic_write_text,
    file_location,
    file_version,
    human_size,
    lock_directory,
    refresh_claim,
    release_claim,
    remove_stale_temporaries_in,
    write_failures,
)
from spool.layers.backbone import architecture_record
from spool.models.frame_encoder import save_frame_encoder
from spool.models.pretrained import SpoolPreTrainedModel
from spool.models.weights import weights_digest, weights_dtype_record
from spool.runtime import autocast_to
from spool.validation import (
    COMPUTE_IN_FLOAT32,
    STORE_AS_FLOAT32,
    check_storable,
    storage_problem,
)

__all__ = ["BACKBONE_DIR", "CACHE_META", "TOKENS_NAME", "CacheSummary", "CachedTokenDataset",
           "build_cache", "cache_backbone_config", "load_cache_backbone", "read_cache_meta"]

logger = logging.getLogger(__name__)
FAILURES_NAME = "failures.csv"
LOCK_NAME = ".spool-cache.lock"
_DTYPES = {"float32": np.float32, "float16": np.float16}
_WRITTEN_AFTER = ("settings_key", "sources", "failures", "rows")  # cache.json's, not settings


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
    kept: int = 0  # frame caches: videos whose file an earlier (interrupted) run had written
    relabelled: bool = False  # a reused cache's labels or class names rewritten in cache.json


@torch.no_grad()
def build_cache(model: SpoolPreTrainedModel, dataset: VideoClipDataset,
                out_dir: str | os.PathLike, *, views: int = 1, batch_size: int = 8,
                num_workers: int = 0, dtype: str = "float32", device: str | torch.device = "cpu",
                compute_dtype: torch.dtype = torch.float32, progress: bool = False
                ) -> CacheSummary:
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

    The frame encoder runs under ``torch.autocast`` in ``compute_dtype`` (float32: none); the
    tokens are stored as ``dtype``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    if views < 1 or getattr(dataset.sampler, "num_clips", 1) != 1 or dataset.num_frames is None:
        raise ValueError(f"views >= 1 and a single-clip sampler expected, got {views} and "
                         f"{dataset.sampler!r}")
    if views > 1 and dataset.augmentation is None:
        raise ValueError("views: augmented views (views > 1) need the dataset's augmentation")
    out = Path(out_dir)
    refuse_other_cache(out, "clips")
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(out, "spool cache", LOCK_NAME)
    try:
        remove_stale_temporaries_in(out)  # what killed runs left
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
            # the backbone's config (a named one's architecture: next), token pooling.
            "frame_encoder": config.frame_encoder_fields(layout=False),
            **architecture_record(model), **compute_record(compute_dtype),
            **weights_dtype_record(encoder),
        }
        fixed = dataset.augmentation is None
        settings = _tokens_of(meta, fixed)
        key = _settings_key(meta, fixed)
        # Keys of the same settings in earlier caches: the paths as typed, all of meta.
        keys = {key, _settings_key(meta, fixed, resolve=False), _digest(meta)}
        # Which version of each file: not part of the key, so a re-encoded or replaced video
        # costs its own row, not the whole cache.
        meta["sources"] = [file_version(s.path) for s in dataset.samples]
        done = _complete_cache(out, keys, settings, fixed)
        if done is not None:
            _note_partial_of_other_settings(out)
            cached = read_cache_meta(out)
            writer = RowsToRedo(out / TOKENS_NAME, cached, meta["sources"])
            writer.heartbeat = lambda: refresh_claim(lock)  # redoing every row may take hours
            relabelled = _new_labels(cached, meta)
            if not writer.todo():
                writer.close()
                if relabelled or cached.get("settings_key") != key:  # same tokens
                    _write_meta(out, meta, key, [])
                return dataclasses.replace(done, relabelled=relabelled)
            try:  # files fixed since may read now; changed files are other tokens
                failures = _encode(encoder, dataset, views, writer, batch_size, num_workers,
                                   device, compute_dtype, progress)
            finally:
                writer.close()
            rows = _write_meta(out, meta, key, failures)
            return CacheSummary(out, len(rows), reused=True, failures=failures,
                                retried=len(writer.failed), changed=len(writer.changed),
                                relabelled=relabelled)
        # The record names the videos by a digest: it is rewritten every PROGRESS_EVERY_S.
        recorded = dict(settings, samples=_digest(settings["samples"]))
        writer = PartialTokens(out, shape, np.dtype(_DTYPES[dtype]), key, meta["sources"],
                               keys, recorded)
        writer.heartbeat = lambda: refresh_claim(lock)  # other machines judge it by age
        try:
            failures = _encode(encoder, dataset, views, writer, batch_size, num_workers,
                               device, compute_dtype, progress)
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


def _note_partial_of_other_settings(out: Path) -> None:
    """Say that a killed run with other settings left its unfinished cache (as large as a
    whole one), kept so that its command resumes it; a run with a third set replaces it."""
    partial = out / PARTIAL_NAME
    if partial.is_file():
        logger.info(f"{out}: {PARTIAL_NAME} ({human_size(partial.stat().st_size)}) holds an "
                    "unfinished cache of other settings, kept so that their command resumes "
                    f"it; delete it and {PROGRESS_NAME} to free the space")


def compute_record(compute_dtype: torch.dtype) -> dict[str, str]:
    """The compute dtype as a cache's settings hold it: nothing for float32, so that the keys
    of caches made before it could be chosen stay the same."""
    if compute_dtype == torch.float32:
        return {}
    return {"compute_dtype": str(compute_dtype).removeprefix("torch.")}


def _write_meta(out: Path, meta: dict, key: str, failures: list[SkippedVideo]) -> list[int]:
    """``failures.csv`` and then ``cache.json`` (atomically) for the videos read; returns
    their rows of ``tokens.npy``, which keeps a row per video asked for."""
    failed = {f.index for f in failures}
    rows = [i for i in range(len(meta["samples"])) if i not in failed]
    meta = dict(meta, samples=[meta["samples"][i] for i in rows], settings_key=key,
                sources=[meta["sources"][i] for i in rows],
                failures=failure_rows(failures))
    if failures:
        meta["rows"] = rows
    write_failures(out / FAILURES_NAME, meta["failures"])
    atomic_write_text(out / CACHE_META, json.dumps(meta, indent=1))
    return rows


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _tokens_of(meta: dict, fixed_clips: bool, resolve: bool = True) -> dict:
    """What the tokens depend on: the videos wherever they are (not how their paths were
    typed), not the labels or class names (``cache.json`` is rewritten with new ones), nor
    the seed when it picks nothing (no augmentation: ``fixed_clips``)."""
    tokens_of = dict(meta, samples=[file_location(path) if resolve else path
                                    for path, _ in meta["samples"]], class_names=None)
    if fixed_clips:
        tokens_of["seed"] = None
    return tokens_of


def _settings_key(meta: dict, fixed_clips: bool, resolve: bool = True) -> str:
    return _digest({"tokens_of": _tokens_of(meta, fixed_clips, resolve)})


def _new_labels(cached: dict, meta: dict) -> bool:
    """Whether ``cache.json`` holds other labels or class names than ``meta`` (for the videos
    it holds: those that could not be read are left out of it)."""
    rows = cached.get("rows", range(len(cached["samples"])))
    return (cached["class_names"] != meta["class_names"]
            or [label for _, label in cached["samples"]]
            != [meta["samples"][i][1] for i in rows])


def _complete_cache(out: Path, keys: set[str], settings: dict, fixed_clips: bool
                    ) -> CacheSummary | None:
    """A summary of the complete, readable cache in ``out`` made with ``settings`` (their
    ``keys``: today's, or the key an earlier version gave the same settings)."""
    if not (out / CACHE_META).is_file() or not (out / BACKBONE_DIR).is_dir():
        return None
    try:
        cached = CachedTokenDataset(out)
    except (SpoolLoadError, ValueError):
        return None  # damaged: made again
    if cached.meta.get("settings_key") not in keys:
        made_with = {k: v for k, v in cached.meta.items() if k not in _WRITTEN_AFTER}
        made_with["samples"] = _samples_asked(cached.meta)
        changed = changed_settings(_tokens_of(made_with, fixed_clips), settings)
        logger.info(f"{out}: the cache there was made with other settings ({changed}); it "
                    "stays until the new one replaces it")
        return None
    failures = [SkippedVideo(-1, *f) for f in cached.meta.get("failures", [])]
    return CacheSummary(out, len(cached), reused=True, failures=failures)


def _samples_asked(meta: dict) -> list:
    """The videos a cache was asked for, in their rows: ``cache.json``'s ``samples`` leave out
    those that could not be read (``failures``, in row order; their labels are not kept)."""
    if "rows" not in meta:
        return meta["samples"]
    asked: list = [None] * meta["shape"][0]
    for row, sample in zip(meta["rows"], meta["samples"], strict=True):
        asked[row] = sample
    failed = [i for i, sample in enumerate(asked) if sample is None]
    if len(failed) != len(meta.get("failures", [])):  # not as written: compared as it is
        return meta["samples"]
    for row, (path, *_) in zip(failed, meta["failures"], strict=True):
        asked[row] = [path, None]
    return asked


def report_failure(entry: SkippedVideo) -> None:
    """A video a cache leaves out, on one line: ``FAILED path: Error: message``."""
    logger.warning(f"FAILED {entry.path}: {entry.error}: {entry.message}")


def failure_rows(failures: list[SkippedVideo]) -> list[list[str]]:
    """``path, error, message`` per video a cache leaves out (``cache.json``'s ``failures``
    and, through ``write_failures``, ``failures.csv`` as ``spool extract`` writes it), the
    path resolved: a relative one would name nothing from another working directory."""
    return [[str(Path(f.path).resolve()), f.error, f.message] for f in failures]


def _encode(encoder: torch.nn.Module, dataset: VideoClipDataset, views: int,
            writer: PartialTokens | RowsToRedo, batch_size: int, num_workers: int,
            device: str | torch.device, compute_dtype: torch.dtype, progress: bool
            ) -> list[SkippedVideo]:
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
        with autocast_to(compute_dtype, video.device):
            tokens = encoder(video.flatten(0, 1))
        stored = torch.float16 if writer.tokens.dtype == np.float16 else torch.float32
        if storage_problem(tokens, stored) is not None:  # one pass; then find the video
            for index, clip in zip(batch["index"].tolist(), tokens.view(len(video), -1),
                                   strict=True):
                check_storable(clip, stored, dataset.samples[index].path,
                               advice=STORE_AS_FLOAT32, compute_flag=COMPUTE_IN_FLOAT32)
        tokens = tokens.float().cpu()
        writer.write(batch["index"].numpy(),
                     tokens.view(len(video), *writer.shape[1:]).numpy())
    return sorted(failures)


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


