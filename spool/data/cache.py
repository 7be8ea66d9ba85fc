"""Frozen-backbone token cache: run the backbone once, train the temporal stack on its output.

A cache is a directory:

- ``tokens.npy``: ``[N, V, T, L, D]`` backbone tokens (a NumPy array read memory-mapped, so
  a cache larger than RAM works), ``V`` views per video;
- ``backbone/``: ``config.json`` + ``model.safetensors`` of the frame encoder that made them,
  so a model trained on the cache can be saved with the very same backbone;
- ``cache.json`` (written last: a cache without it is incomplete): samples, class names and
  the clip settings.

View 0 is the deterministic evaluation clip; views 1.. (``views > 1``) are training-augmented
clips, and training on the cache picks one of a video's views per epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from spool.config import SpoolConfig
from spool.data.dataset import VideoClipDataset, VideoSample, worker_init_fn
from spool.io_utils import atomic_path, atomic_save_safetensors, atomic_write
from spool.layers.backbone import FrameEncoder
from spool.models.pretrained import WEIGHTS_NAME, check_and_load_state_dict
from spool.models.spool import Spool

CACHE_META = "cache.json"
TOKENS_NAME = "tokens.npy"
BACKBONE_DIR = "backbone"
_DTYPES = {"float32": np.float32, "float16": np.float16}


def find_backbone(model: torch.nn.Module) -> FrameEncoder:
    """The :class:`FrameEncoder` of a Spool model or classifier."""
    for module in model.modules():
        if isinstance(module, FrameEncoder):
            return module
    raise ValueError("model: has no backbone (built with with_backbone=False?); the cache "
                     "needs one to encode frames")


def _backbone_config(model: torch.nn.Module) -> SpoolConfig:
    config = model.config_for_saving() if hasattr(model, "config_for_saving") else model.config
    # Only the backbone part matters; a zero-layer, one-head Spool records it in the Spool
    # format (one head: any hidden size passes the head-divisibility check).
    return config.replace(num_hidden_layers=0, num_attention_heads=1, num_lookback_heads=1,
                          num_lookahead_heads=0, class_names=None)


def frame_encoder_model(**fields: Any) -> Spool:
    """A zero-layer Spool: just the backbone described by SpoolConfig ``fields``."""
    base = {"num_hidden_layers": 0, "num_attention_heads": 1, "num_lookback_heads": 1,
            "num_lookahead_heads": 0}
    return Spool(SpoolConfig(**{**base, **fields})).eval()


@torch.no_grad()
def build_cache(model: torch.nn.Module, dataset: VideoClipDataset, out_dir: str | os.PathLike,
                *, views: int = 1, batch_size: int = 8, num_workers: int = 0,
                dtype: str = "float32", device: str | torch.device = "cpu",
                progress: bool = False) -> Path:
    """Encode every video of ``dataset`` with ``model``'s backbone into ``out_dir``.

    ``dataset`` must yield single clips (``num_clips=1``); its ``train`` flag is ignored:
    view 0 is always the evaluation clip, views ``1 .. views-1`` training-augmented ones
    (each video is decoded once for all its views).
    Returns ``out_dir``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    if views < 1 or dataset.num_clips != 1:
        raise ValueError(f"views >= 1 and dataset.num_clips == 1 expected, got {views}, "
                         f"{dataset.num_clips}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CACHE_META).unlink(missing_ok=True)  # incomplete until rewritten
    encoder = find_backbone(model).to(device).eval()
    config = _backbone_config(model)
    L, D = config.num_spatial_tokens, config.hidden_size
    shape = (len(dataset), views, dataset.num_frames, L, D)
    stacked = _ViewStack(dataset, views)
    with atomic_path(out / TOKENS_NAME) as tmp:
        tokens = np.lib.format.open_memmap(tmp, mode="w+", dtype=_DTYPES[dtype], shape=shape)
        loader = DataLoader(stacked, batch_size=batch_size, num_workers=num_workers,
                            worker_init_fn=worker_init_fn)
        if progress:
            from tqdm import tqdm
            loader = tqdm(loader, desc=f"caching {views} view(s)", unit="batch")
        for batch in loader:
            video = batch["video"].to(device)  # [B, V, T, H, W, 3]
            out_tokens = encoder(video.flatten(0, 1)).float().cpu()
            tokens[batch["index"].numpy()] = out_tokens.view(len(video), views,
                                                             *shape[2:]).numpy()
        tokens.flush()
        del tokens
    backbone = Spool(config, with_backbone=False)
    state = {f"backbone.{k}": v for k, v in encoder.state_dict().items()}
    state.update(backbone.state_dict())
    _save_backbone(state, config, out / BACKBONE_DIR)
    meta = {
        "samples": [[s.path, s.label] for s in dataset.samples],
        "class_names": dataset.class_names, "views": views, "dtype": dtype,
        "shape": list(shape), "num_frames": dataset.num_frames,
        "image_size": dataset.image_size, "frame_stride": dataset.frame_stride,
        "crop_scale": list(dataset.crop_scale), "hflip": dataset.hflip, "seed": dataset.seed,
        "backbone_config_hash": config.config_hash(),
        "backbone_digest": weights_digest(encoder.state_dict()),
    }
    atomic_write(out / CACHE_META, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
    return out


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """Short hash of tensor values: two caches agree only if made by identical weights."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def checkpoint_backbone_digest(model_dir: str | os.PathLike) -> str | None:
    """:func:`weights_digest` of the backbone stored in a ``save_pretrained`` directory."""
    state = load_file(Path(model_dir) / WEIGHTS_NAME)
    marker = "backbone."
    backbone = {k[k.index(marker) + len(marker):]: v for k, v in state.items()
                if k.startswith(marker) or f".{marker}" in k}
    return weights_digest(backbone) if backbone else None


def _save_backbone(state: dict[str, torch.Tensor], config: SpoolConfig, directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    atomic_save_safetensors(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    config.save_pretrained(directory)


def read_cache_meta(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """``cache.json`` of a complete cache; a clear error for anything else."""
    path = Path(cache_dir) / CACHE_META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {cache_dir} is not a complete token cache "
                                "(write one with `spool cache`)")
    return json.loads(path.read_text())


def cache_backbone_config(cache_dir: str | os.PathLike) -> SpoolConfig:
    """The Spool config (backbone part, ``hidden_size``, ``L``) the cache was made with."""
    return SpoolConfig.from_pretrained(Path(cache_dir) / BACKBONE_DIR)


def load_cache_backbone(model: torch.nn.Module, cache_dir: str | os.PathLike) -> None:
    """Copy the cache's backbone weights into ``model``'s backbone (same architecture)."""
    path = Path(cache_dir) / BACKBONE_DIR / WEIGHTS_NAME
    state = {k[len("backbone."):]: v for k, v in load_file(path).items()
             if k.startswith("backbone.")}
    check_and_load_state_dict(find_backbone(model), state, str(path))


class _ViewStack(Dataset):
    """Items ``{"video": [V, T, S, S, 3], "index": i}``: view 0 the evaluation clip, views
    ``1 ..`` training-augmented (epoch = view), decoded once per video."""

    def __init__(self, dataset: VideoClipDataset, views: int) -> None:
        self.dataset = dataset
        self.plan = [(0, False)] + [(v, True) for v in range(1, views)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"video": torch.stack(self.dataset.views(index, self.plan)), "index": index}


class CachedTokenDataset(Dataset):
    """Items ``{"tokens": [T, L, D] float32, "label": int, "index": int}`` from a cache.

    ``train=True`` with a multi-view cache picks one of its views (the clean one included)
    from ``(seed, epoch, index)``; otherwise view 0 (the evaluation clip).
    """

    def __init__(self, cache_dir: str | os.PathLike, train: bool = False, seed: int = 0) -> None:
        self.cache_dir = Path(cache_dir)
        self.meta = read_cache_meta(cache_dir)
        self.samples = [VideoSample(p, int(y)) for p, y in self.meta["samples"]]
        self.class_names: list[str] = list(self.meta["class_names"])
        self.views = int(self.meta["views"])
        self.num_frames = int(self.meta["num_frames"])
        self.train = train
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, object]:
        view = 0
        if self.train and self.views > 1:
            view = int(np.random.default_rng([self.seed, self.epoch, index])
                       .integers(self.views))
        tokens = torch.from_numpy(np.array(self.tokens[index, view], dtype=np.float32))
        return {"tokens": tokens, "label": self.samples[index].label, "index": index}
