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

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spool.config import SpoolConfig
from spool.data.dataset import VideoClipDataset, VideoSample, worker_context, worker_init_fn
from spool.errors import CheckpointNotFoundError, SpoolLoadError
from spool.io_utils import atomic_path, atomic_write_text
from spool.models.frame_encoder import save_frame_encoder
from spool.models.pretrained import (
    SpoolPreTrainedModel,
    check_and_load_state_dict,
    read_weights,
    weights_digest,
)

CACHE_META = "cache.json"
TOKENS_NAME = "tokens.npy"
BACKBONE_DIR = "backbone"
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
    (out / CACHE_META).unlink(missing_ok=True)  # incomplete until rewritten
    encoder = _encoder_of(model).to(device).eval()
    config = model.config
    L, D = config.num_spatial_tokens, config.hidden_size
    shape = (len(dataset), views, dataset.num_frames, L, D)
    stacked = _ViewStack(dataset, views)
    with atomic_path(out / TOKENS_NAME) as tmp:
        tokens = np.lib.format.open_memmap(tmp, mode="w+", dtype=_DTYPES[dtype], shape=shape)
        loader = DataLoader(stacked, batch_size=batch_size, num_workers=num_workers,
                            multiprocessing_context=worker_context(num_workers),
                            worker_init_fn=worker_init_fn)
        if progress:
            from tqdm import tqdm
            loader = tqdm(loader, desc=f"caching {views} view(s)", unit="batch")
        for batch in loader:
            video = batch["video"].to(device)  # [B, V, T, S, S, 3]
            out_tokens = encoder(video.flatten(0, 1)).float().cpu()
            tokens[batch["index"].numpy()] = out_tokens.view(len(video), views,
                                                             *shape[2:]).numpy()
        tokens.flush()
        del tokens
    save_frame_encoder(model, out / BACKBONE_DIR)
    meta = {
        "samples": [[s.path, s.label] for s in dataset.samples],
        "class_names": dataset.class_names, "views": views, "dtype": dtype,
        "shape": list(shape), "num_frames": dataset.num_frames, **dataset.settings(),
        "backbone_digest": weights_digest(encoder.state_dict()),
    }
    atomic_write_text(out / CACHE_META, json.dumps(meta, indent=1))
    return out


def read_cache_meta(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """``cache.json`` of a complete cache; a clear error for anything else."""
    path = Path(cache_dir) / CACHE_META
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: not found; {cache_dir} is not a complete token "
                                      "cache (write one with `spool cache`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SpoolLoadError(f"{path}: not valid JSON ({err})") from err


def cache_backbone_config(cache_dir: str | os.PathLike) -> SpoolConfig:
    """The config of the frame encoder the cache was made with (``hidden_size``, ``L``, ...)."""
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
