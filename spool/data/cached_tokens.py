"""Reading a token cache that ``spool cache`` wrote (see :mod:`spool.data.cache`).

``cache.json`` is written last, so a folder without it is no complete cache; videos that could
not be read are not in its ``samples`` (``rows`` then gives each sample's row of
``tokens.npy``) but in its ``failures``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spool.config import SpoolConfig
from spool.data.classes import class_index_map
from spool.data.dataset import VideoSample
from spool.errors import CheckpointNotFoundError, SpoolLoadError
from spool.io_utils import read_json
from spool.models.pretrained import SpoolPreTrainedModel
from spool.models.weights import check_and_load_state_dict, read_weights
from spool.validation import all_finite
from spool.video.formats import is_video_name

CACHE_META = "cache.json"
TOKENS_NAME = "tokens.npy"
PARTIAL_NAME = ".tokens.partial.npy"  # tokens.npy while it is written
PROGRESS_NAME = ".tokens.progress.json"  # which videos the partial file holds
BACKBONE_DIR = "backbone"
_META_KEYS = ("samples", "class_names", "views", "dtype", "shape", "num_frames",
              "backbone_digest")
_INCOMPLETE = "{} is not a complete token cache (write one with `spool cache`)"


def _encoder_of(model: SpoolPreTrainedModel) -> torch.nn.Module:
    encoder = model.frame_encoder
    if encoder is None:
        raise ValueError("model: has no backbone (built with with_backbone=False?); the cache "
                         "needs one to encode frames")
    return encoder


def encoder_on(model: SpoolPreTrainedModel, device: str | torch.device) -> torch.nn.Module:
    """``model``'s frame encoder on ``device``, in eval mode: where a cache runs it (each
    cache brings its outputs back to the CPU)."""
    model.check_config_as_built(SpoolConfig.FRAME_ENCODER_FIELDS)  # the cache records them
    return _encoder_of(model).to(device).eval()


def cache_kind(cache_dir: str | os.PathLike) -> str | None:
    """``"clips"`` or ``"frames"``: what ``cache_dir`` holds by its ``cache.json``, or for an
    incomplete cache by its files; None when it holds neither."""
    out = Path(cache_dir)
    try:
        meta = json.loads((out / CACHE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict):
        return "frames" if meta.get("kind") == "frames" else "clips"
    if any((out / name).exists() for name in (TOKENS_NAME, PARTIAL_NAME, PROGRESS_NAME)):
        return "clips"  # an interrupted one too, which the same command resumes
    return "frames" if (out / "videos").is_dir() and not _videos_in(out / "videos") else None


def _videos_in(folder: Path) -> list[str]:
    """The first videos in ``folder`` (a dataset's, which a frame cache replacing the folder
    would delete; other strays, Thumbs.db say, are left to it)."""
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return []
    return [n for n in names if is_video_name(n) and not n.startswith(".")][:3]


def refuse_other_cache(out_dir: str | os.PathLike, kind: str) -> None:
    """``ValueError`` when ``out_dir`` holds a cache of the other kind, or (a cache of frames)
    videos in its ``videos/`` (a dataset's): writing this one there would delete them."""
    found = cache_kind(out_dir)
    if found is not None and found != kind:
        raise ValueError(f"out: {out_dir} holds a cache of {found} (spool cache --task "
                         f"{found}); write the cache of {kind} to another folder")
    if kind == "frames" and (others := _videos_in(Path(out_dir) / "videos")):
        raise ValueError(f"out: {Path(out_dir) / 'videos'} holds videos ({', '.join(others)}): "
                         "a cache of frames keeps its tokens there and replaces the folder when "
                         "made again; give it a folder of its own")


def read_cache_meta(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """``cache.json`` of a complete cache; a clear error for anything else."""
    path = Path(cache_dir) / CACHE_META
    meta = read_json(path, _INCOMPLETE.format(cache_dir))
    if isinstance(meta, dict) and meta.get("kind") == "frames":
        raise SpoolLoadError(f"{path}: a cache of frames (spool cache --task frames), not of "
                             "clips; the frames task reads it (--task frames)")
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
        # Each sample's row of tokens.npy: unreadable videos leave unused rows.
        self.rows = [int(r) for r in self.meta.get("rows", range(len(self.samples)))]
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
        rows = len(self.samples) if "rows" not in self.meta else described[0]
        expected = (rows, self.views, self.num_frames, *described[3:])
        if (len(self.rows) != len(self.samples) or not all(0 <= r < rows for r in self.rows)):
            raise SpoolLoadError(f"{meta}: its rows do not fit its samples; rebuild the cache "
                                 "with `spool cache`")
        if shape != described or described != expected or dtype != self.meta["dtype"]:
            raise SpoolLoadError(
                f"{path}: holds {dtype} tokens of shape {shape}, but {meta} describes "
                f"{self.meta['dtype']} tokens of shape {expected} ({rows} videos x "
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
        tokens = torch.from_numpy(np.array(self.tokens[self.rows[index], view],
                                           dtype=np.float32))
        if not all_finite(tokens):  # else the model's check, naming no file
            raise SpoolLoadError(f"{self.cache_dir}: the tokens of {self.samples[index].path} "
                                 f"(row {self.rows[index]}, view {view}) hold NaN or infinite "
                                 f"values: the cache is damaged (or its float16 overflowed); "
                                 f"delete {self.cache_dir} and make it again with spool cache "
                                 "(which would reuse it as it is)")
        return {"tokens": tokens, "label": self.samples[index].label, "index": index}
