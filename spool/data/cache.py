"""Frozen-backbone token cache: run the backbone once, train the temporal stack on its output.

A cache is a directory:

- ``tokens.npy``: ``[N, V, T, L, D]`` backbone tokens (a NumPy array read memory-mapped, so
  a cache larger than RAM works), ``V`` views per video;
- ``backbone/``: the :class:`~spool.models.frame_encoder.FrameEncoderModel` that made them
  (``config.json`` + ``model.safetensors``), so a model trained on the cache can be saved with
  the very same backbone and preprocessing;
- ``cache.json`` (written last: a cache without it is incomplete): samples, class names, the
  clip pipeline's settings and a digest of the backbone's weights.

View 0 is the deterministic evaluation clip; views 1.. (``views > 1``) are training-augmented
clips, and training on the cache picks one of a video's views per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spool.config import SpoolConfig
from spool.data.classes import class_index_map
from spool.data.dataset import VideoClipDataset, VideoSample, worker_context, worker_init_fn
from spool.errors import CheckpointNotFoundError, InsufficientSpaceError, SpoolLoadError
from spool.io_utils import (
    atomic_write_text,
    fsync_directory,
    fsync_path,
    is_stale_temporary,
    lock_directory,
    read_json,
    release_claim,
    reserve_space,
)
from spool.models.frame_encoder import save_frame_encoder
from spool.models.pretrained import (
    SpoolPreTrainedModel,
    check_and_load_state_dict,
    read_weights,
    weights_digest,
)

logger = logging.getLogger(__name__)
CACHE_META = "cache.json"
TOKENS_NAME = "tokens.npy"
PARTIAL_NAME = ".tokens.partial.npy"  # tokens.npy while it is written
PROGRESS_NAME = ".tokens.progress.json"  # which videos the partial file holds
LOCK_NAME = ".spool-cache.lock"
PROGRESS_EVERY_S = 30.0
_META_KEYS = ("samples", "class_names", "views", "dtype", "shape", "num_frames",
              "backbone_digest")
BACKBONE_DIR = "backbone"
_INCOMPLETE = "{} is not a complete token cache (write one with `spool cache`)"
_DTYPES = {"float32": np.float32, "float16": np.float16}


def _encoder_of(model: SpoolPreTrainedModel) -> torch.nn.Module:
    encoder = model.frame_encoder
    if encoder is None:
        raise ValueError("model: has no backbone (built with with_backbone=False?); the cache "
                         "needs one to encode frames")
    return encoder


@torch.no_grad()
def build_cache(model: SpoolPreTrainedModel, dataset: VideoClipDataset,
                out_dir: str | os.PathLike, *, views: int = 1, batch_size: int = 8,
                num_workers: int = 0, dtype: str = "float32", device: str | torch.device = "cpu",
                progress: bool = False) -> Path:
    """Encode every video of ``dataset`` with ``model``'s frame encoder into ``out_dir``.

    ``dataset``'s sampler must give single clips. View 0 is always the evaluation clip, views
    ``1 .. views-1`` augmented ones (each video is decoded once for all its views). Returns
    ``out_dir``.

    Resumable: tokens go to a partial file beside a progress record of the videos done
    (updated every ``PROGRESS_EVERY_S`` seconds), so a re-run with the same settings after a
    crash or Ctrl-C continues where it stopped; other settings start over. The disk space
    the tokens need is checked, and reserved, before the first video.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    if views < 1 or getattr(dataset.sampler, "num_clips", 1) != 1:
        raise ValueError(f"views >= 1 and a single-clip sampler expected, got {views} and "
                         f"{dataset.sampler!r}")
    if views > 1 and dataset.augmentation is None:
        raise ValueError("views: augmented views (views > 1) need the dataset's augmentation")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(out, "spool cache", LOCK_NAME)
    try:
        (out / CACHE_META).unlink(missing_ok=True)  # incomplete until rewritten
        _remove_stale_temporaries(out)
        encoder = _encoder_of(model).to(device).eval()
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
            "frame_encoder": config.frame_encoder_fields(),
        }
        writer = _PartialTokens(out, shape, np.dtype(_DTYPES[dtype]), meta)
        try:
            _encode(encoder, dataset, views, writer, batch_size, num_workers, device,
                    progress)
        finally:
            writer.close()
        writer.finish(out / TOKENS_NAME)
        save_frame_encoder(model, out / BACKBONE_DIR)
        atomic_write_text(out / CACHE_META, json.dumps(meta, indent=1))
    finally:
        release_claim(lock)
    return out


def _encode(encoder: torch.nn.Module, dataset: VideoClipDataset, views: int,
            writer: _PartialTokens, batch_size: int, num_workers: int,
            device: str | torch.device, progress: bool) -> None:
    """Run ``encoder`` over the videos ``writer`` still lacks, recording them as done."""
    todo = writer.todo()
    if len(todo) < len(dataset):
        logger.info(f"{writer.path.parent}: resuming, {len(dataset) - len(todo)} of "
                    f"{len(dataset)} videos are cached already")
    loader = DataLoader(_ViewStack(dataset, views), batch_size=batch_size, sampler=todo,
                        num_workers=num_workers,
                        multiprocessing_context=worker_context(num_workers),
                        worker_init_fn=worker_init_fn)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc=f"caching {views} view(s)", unit="batch")
    for batch in loader:
        video = batch["video"].to(device)  # [B, V, T, S, S, 3]
        tokens = encoder(video.flatten(0, 1)).float().cpu()
        writer.write(batch["index"].numpy(),
                     tokens.view(len(video), *writer.shape[1:]).numpy())


class _PartialTokens:
    """``tokens.npy`` being written: a fixed-name partial file (memory-mapped) and a record of
    the videos done, kept only for the same settings (a digest of ``meta``)."""

    def __init__(self, out: Path, shape: tuple[int, ...], dtype: np.dtype,
                 meta: dict[str, Any]) -> None:
        self.path, self.record = out / PARTIAL_NAME, out / PROGRESS_NAME
        self.shape = shape
        self.key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        self.done = self._read_done(dtype)
        if self.done is None:  # nothing to continue: start over
            self.done = np.zeros(shape[0], dtype=bool)
            self.record.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
        _check_free_space(self.path, shape, dtype)
        mode = "r+" if self.path.exists() else "w+"
        self.tokens = np.lib.format.open_memmap(self.path, mode=mode, dtype=dtype, shape=shape)
        _reserve(self.path)
        self.saved_at = time.monotonic()

    def _read_done(self, dtype: np.dtype) -> np.ndarray | None:
        """The videos done by an earlier run with the same settings, or None."""
        if not (self.record.exists() or self.path.exists()):
            return None
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
            header = np.load(self.path, mmap_mode="r")
            if (record["key"] == self.key and header.shape == self.shape
                    and header.dtype == dtype):
                done = np.zeros(self.shape[0], dtype=bool)
                for start, stop in record["done"]:
                    done[start:stop] = True
                return done
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

    def save_progress(self) -> None:
        """Tokens to disk first, then the record that says they are there."""
        self.tokens.flush()
        edges = np.flatnonzero(np.diff(np.concatenate([[0], self.done.view(np.int8), [0]])))
        ranges = edges.reshape(-1, 2).tolist()  # runs of done videos as [start, stop)
        atomic_write_text(self.record, json.dumps({"key": self.key, "done": ranges}))
        self.saved_at = time.monotonic()

    def close(self) -> None:
        """Save what is done (also when the run fails or is interrupted) and unmap."""
        if self.tokens is not None:
            self.save_progress()
            self.tokens = None

    def finish(self, final: Path) -> None:
        """Move the complete tokens to ``final`` and drop the progress record."""
        fsync_path(self.path)
        os.replace(self.path, final)
        fsync_directory(final.parent)
        self.record.unlink(missing_ok=True)


def _check_free_space(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse to start when the disk cannot hold the tokens (a memory-mapped write to a full
    disk kills the process with SIGBUS, without a message)."""
    need = int(np.prod(shape)) * dtype.itemsize
    have = path.stat().st_blocks * 512 if path.exists() else 0  # already allocated
    free = shutil.disk_usage(path.parent).free
    if need - have > free:
        raise InsufficientSpaceError(
            f"{path.parent}: the token cache needs {_size(need)} ({shape[0]} videos x "
            f"{shape[1]} views x {shape[2]} frames x {shape[3]} tokens x {shape[4]} dims x "
            f"{dtype.itemsize} bytes, {_size(have)} of it written already) but "
            f"{_size(free)} is free there; free some space, cache fewer views or frames, "
            "use --dtype float16, or cache elsewhere (--out)")


def _size(n: float) -> str:
    unit = 0
    while n >= 1024 and unit < 3:
        n, unit = n / 1024, unit + 1
    return f"{n:.0f} bytes" if unit == 0 else f"{n:.1f} {('KiB', 'MiB', 'GiB')[unit - 1]}"


def _reserve(path: Path) -> None:
    """Allocate the whole file now, so that a disk filling up later fails no write to it
    (where the file system cannot, the check of the free space stands alone)."""
    size = path.stat().st_size
    try:
        reserve_space(path, size)
    except OSError as err:
        raise InsufficientSpaceError(f"{path.parent}: no space left for the token cache "
                                     f"({_size(size)}): {err}") from err


def _remove_stale_temporaries(out: Path) -> None:
    """Delete what killed runs left (``.tokens.npy.spool-...tmp`` of earlier versions)."""
    for path in out.iterdir():
        if path.is_file() and is_stale_temporary(path):
            path.unlink(missing_ok=True)


def read_cache_meta(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """``cache.json`` of a complete cache; a clear error for anything else."""
    path = Path(cache_dir) / CACHE_META
    meta = read_json(path, _INCOMPLETE.format(cache_dir))
    missing = [k for k in _META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise SpoolLoadError(f"{path}: no {missing} in it; rebuild the cache with `spool cache`")
    return meta


def cache_backbone_config(cache_dir: str | os.PathLike) -> SpoolConfig:
    """The config of the frame encoder the cache was made with (``hidden_size``, ``L``, ...)."""
    # Not a complete cache (of clips or of frames): say so, not that backbone/ is missing.
    read_json(Path(cache_dir) / CACHE_META, _INCOMPLETE.format(cache_dir))
    return SpoolConfig.from_pretrained(Path(cache_dir) / BACKBONE_DIR)


def load_cache_backbone(model: SpoolPreTrainedModel, cache_dir: str | os.PathLike) -> None:
    """Copy the cache's frame-encoder weights into ``model``'s (same architecture)."""
    path = Path(cache_dir) / BACKBONE_DIR / "model.safetensors"
    state = {k[len("backbone."):]: v for k, v in read_weights(path).items()
             if k.startswith("backbone.")}
    check_and_load_state_dict(_encoder_of(model), state, str(path))


class _ViewStack(Dataset):
    """Items ``{"video": [V, T, S, S, 3], "index": i}``: view 0 the evaluation clip, views
    ``1 ..`` augmented (epoch = view), decoded once per video."""

    def __init__(self, dataset: VideoClipDataset, views: int) -> None:
        self.dataset = dataset
        self.plan = [(0, False)] + [(v, True) for v in range(1, views)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"video": torch.stack(self.dataset.views(index, self.plan)), "index": index}


class CachedTokenDataset(Dataset):
    """Items ``{"tokens": [T, L, D] float32, "label": int, "index": int}`` from a cache.

    ``augment=True`` with a multi-view cache picks one of its views (the clean one included)
    from ``(seed, epoch, index)``; otherwise view 0 (the evaluation clip).
    """

    def __init__(self, cache_dir: str | os.PathLike, augment: bool = False,
                 seed: int = 0) -> None:
        self.cache_dir = Path(cache_dir)
        self.meta = read_cache_meta(cache_dir)
        self.samples = [VideoSample(p, int(y)) for p, y in self.meta["samples"]]
        self.class_names: list[str] = list(self.meta["class_names"])
        self.views = int(self.meta["views"])
        self.num_frames = int(self.meta["num_frames"])
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._tokens: np.ndarray | None = None  # opened lazily: memmaps must not be pickled
        self._check_tokens()

    def _check_tokens(self) -> None:
        """``tokens.npy`` must be what ``cache.json`` describes (else a mismatch would surface
        mid-epoch as an IndexError)."""
        path = self.cache_dir / TOKENS_NAME
        meta = self.cache_dir / CACHE_META
        if not path.is_file():
            raise CheckpointNotFoundError(f"{path}: missing, though {meta} is there; rebuild "
                                          "the cache with `spool cache`")
        try:
            tokens = np.load(path, mmap_mode="r")
            shape, dtype = tuple(tokens.shape), str(tokens.dtype)
            del tokens
        except (OSError, ValueError) as err:
            raise SpoolLoadError(f"{path}: not a readable .npy file ({err}); it may be "
                                 "damaged or cut short: rebuild the cache with `spool cache`"
                                 ) from err
        described = tuple(self.meta["shape"])
        expected = (len(self.samples), self.views, self.num_frames, *described[3:])
        if shape != described or described != expected or dtype != self.meta["dtype"]:
            raise SpoolLoadError(
                f"{path}: holds {dtype} tokens of shape {shape}, but {meta} describes "
                f"{self.meta['dtype']} tokens of shape {expected} ({len(self.samples)} videos x "
                f"{self.views} views x {self.num_frames} frames x L x D); the two come from "
                "different runs: rebuild the cache with `spool cache`")

    def use_class_names(self, class_names: Sequence[str], what: str, target_what: str) -> None:
        """Relabel to ``class_names`` (the model's, the training set's) by name."""
        mapping = class_index_map(self.class_names, class_names, what, target_what)
        if mapping is not None:
            self.samples = [VideoSample(s.path, mapping[s.label]) for s in self.samples]
            self.class_names = list(class_names)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.load(self.cache_dir / TOKENS_NAME, mmap_mode="r")
        return self._tokens

    @property
    def sampling(self) -> dict[str, Any] | None:
        """The sampler the cached clips were taken with (``FrameSampler.to_dict()``)."""
        return self.meta.get("sampler")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, object]:
        view = 0
        if self.augment and self.views > 1:
            view = int(np.random.default_rng([self.seed, self.epoch, index])
                       .integers(self.views))
        tokens = torch.from_numpy(np.array(self.tokens[index, view], dtype=np.float32))
        return {"tokens": tokens, "label": self.samples[index].label, "index": index}
