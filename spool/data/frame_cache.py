"""Per-frame datasets for segmentation: variable-length token caches and decoded crops.

A frame cache holds every sampled frame of each video (any length, at the sampler's rate):

- ``videos/<name>.safetensors``: ``tokens [T, L, D]``, ``labels [T]`` (class indices,
  ``-100`` unlabelled), ``frame_indices [T]`` and ``timestamps [T]`` (seconds); one file per
  video, written atomically, so an interrupted ``build_frame_cache`` resumes where it stopped;
- ``backbone/``: the :class:`~spool.models.frame_encoder.FrameEncoderModel` that made them;
- ``cache.json`` (written last): class names, the videos, the sampler, the weights' digest;
  the videos that could not be read are left out and listed (``failures``, and
  ``failures.csv``).

Training takes random temporal crops of up to ``crop_frames`` frames (drawn from ``(seed,
epoch, index)``); evaluation takes whole videos.
"""

from __future__ import annotations

import dataclasses
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset
from tqdm import tqdm

from spool.claims import lock_directory, release_claim, remove_stale_temporaries_in
from spool.data.cache import (
    FAILURES_NAME,
    LOCK_NAME,
    CacheSummary,
    compute_record,
    failure_rows,
    report_failure,
)
from spool.data.cached_tokens import (
    BACKBONE_DIR,
    CACHE_META,
    encoder_on,
    refuse_other_cache,
)
from spool.data.classes import FrameLabelMapping
from spool.data.dataset import first_readable, skipped_video, split_readable
from spool.data.frame_cache_keys import video_keys
from spool.data.frame_cache_rebuild import build_folder, replace_cache
from spool.data.frame_cache_video import ReadFailed, reading, write_video_file
from spool.data.segmentation import (
    IGNORE_INDEX,
    SegmentationSample,
    warn_if_labels_disagree,
)
from spool.errors import SpoolLoadError
from spool.io_utils import (
    atomic_write_text,
    read_json,
    write_failures,
)
from spool.layers.backbone import architecture_record
from spool.models.frame_encoder import save_frame_encoder
from spool.models.long_video import whole_video_indices
from spool.models.pretrained import SpoolPreTrainedModel
from spool.models.weights import weights_digest, weights_dtype_record
from spool.runtime import autocast_to, notes_said
from spool.validation import all_finite
from spool.video.completeness import check_reader_complete
from spool.video.io import VideoReader
from spool.video.samplers import FrameSampler
from spool.video.transforms import FramePreprocessing

_DTYPES = {"float32": torch.float32, "float16": torch.float16}
DECODE_CHUNK_FRAMES = 64  # frames decoded at full size at once for frame training


def _video_file(out: Path, name: str) -> Path:
    return out / "videos" / f"{name}.safetensors"


@torch.no_grad()
def build_frame_cache(model: SpoolPreTrainedModel, samples: list[SegmentationSample],
                      class_names: list[str], out_dir: str | os.PathLike,
                      sampler: FrameSampler, *, dtype: str = "float32",
                      device: str | torch.device = "cpu",
                      compute_dtype: torch.dtype = torch.float32, progress: bool = False
                      ) -> CacheSummary:
    """Encode every sampled frame of each video with ``model``'s frame encoder, with its
    label at its own time. Videos already cached with the same settings, from the same video
    file (path, size, modification time) and with the same labels are kept. A video that
    cannot be read is reported on one line, left out and listed in ``failures.csv`` (and
    ``cache.json``'s ``failures``), as :func:`~spool.data.cache.build_cache` does. The frame
    encoder runs on ``device`` under ``torch.autocast`` in ``compute_dtype`` (float32: none);
    the tokens are stored as ``dtype``."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    model.eval()
    encoder = encoder_on(model, device)  # stream_tokens runs it where its weights are
    names = [s.name for s in samples]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"samples: names {twice[:5]} are given to several videos; each "
                         "video needs its own name (its file in the cache)")
    out = Path(out_dir)
    refuse_other_cache(out, "frames")
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_directory(out, "spool cache", LOCK_NAME)
    remove_stale_temporaries_in(out)  # a killed run's cache.json (a rebuild's go with it)
    # What the tokens depend on, as cache.json records it (the weights hashed once: it is
    # every parameter of the backbone).
    made_with = {"sampler": sampler.to_dict(), "dtype": dtype,
                 "backbone_digest": weights_digest(encoder.state_dict()),
                 "frame_encoder": model.config.frame_encoder_fields(layout=False),
                 **architecture_record(model), **compute_record(compute_dtype),
                 **weights_dtype_record(encoder)}
    try:  # other tokens than a complete cache's are made aside (frame_cache_rebuild)
        staging = build_folder(out, made_with)
        with autocast_to(compute_dtype, next(encoder.parameters()).device):
            summary = _encode_videos(model, samples, class_names, staging or out, sampler,
                                     made_with, progress)
        if staging is not None:
            replace_cache(out, staging)
        return dataclasses.replace(summary, path=out)
    finally:
        release_claim(lock)


def _encode_videos(model: SpoolPreTrainedModel, samples: list[SegmentationSample],
                   class_names: list[str], out: Path, sampler: FrameSampler,
                   made_with: dict[str, Any], progress: bool) -> CacheSummary:
    """:func:`build_frame_cache`'s work, in ``out`` (which it holds); ``made_with``: the
    token settings ``cache.json`` records."""
    try:  # a complete cache of these settings, untouched by this run, was "already done"
        before = json.loads((out / CACHE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    (out / CACHE_META).unlink(missing_ok=True)  # incomplete until rewritten
    remove_stale_temporaries_in(out / "videos")  # a killed run's half-written video
    dtype = made_with["dtype"]
    # Each video's key (its names kept: files made before hold them). The preprocessing
    # record names its rules' revision: tokens made by older rules are redone.
    settings = {**{k: v for k, v in made_with.items() if k != "backbone_digest"},
                "digest": made_with["backbone_digest"],
                "preprocessing": dataclasses.asdict(model.config.preprocessing())}
    videos, failures, written = [], [], 0
    for i, sample in enumerate(tqdm(samples, desc="frame cache", unit="video",
                                    disable=not progress)):
        path = _video_file(out, sample.name)
        try:  # only reading the video: an error writing the cache still stops the job
            with reading():
                keys = video_keys(sample, settings, class_names)
            written += write_video_file(model, sample, sampler, path, keys, _DTYPES[dtype],
                                        progress)
        except ReadFailed as failed:
            failures.append(skipped_video(i, sample.video, failed.error))
            report_failure(failures[-1])
            path.unlink(missing_ok=True)  # tokens of an earlier version of the file
            continue
        with safe_open(str(path), framework="pt") as f:
            num = f.get_slice("labels").get_shape()[0]
        videos.append({"name": sample.name, "video": sample.video, "num_frames": num})
    save_frame_encoder(model, out / BACKBONE_DIR)
    meta = {"kind": "frames", "class_names": list(class_names), "videos": videos,
            **made_with, "failures": failure_rows(failures)}
    write_failures(out / FAILURES_NAME, meta["failures"])
    atomic_write_text(out / CACHE_META, json.dumps(meta, indent=1))
    # The videos may be named otherwise (another working directory, a link): their tokens are
    # keyed on the files themselves, so nothing encoded means nothing changed.
    same = _without_paths(before) == _without_paths(json.loads(json.dumps(meta)))
    return CacheSummary(out, len(videos), reused=same and not written and not failures,
                        failures=failures, kept=len(videos) - written)


def _without_paths(meta: dict | None) -> dict | None:
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), list):
        return meta
    return {**meta, "videos": [{k: v for k, v in video.items() if k != "video"}
                               if isinstance(video, dict) else video
                               for video in meta["videos"]]}


def read_frame_cache_meta(cache_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(cache_dir) / CACHE_META
    meta = read_json(path, f"{cache_dir} is not a complete frame cache (write one with `spool "
                           "cache --task frames`)")
    if not isinstance(meta, dict) or meta.get("kind") != "frames":
        raise SpoolLoadError(f"{path}: a clip cache, not a frame cache")
    return meta


def _crop(num_frames: int, crop_frames: int | None, rng: np.random.Generator | None) -> slice:
    """Frames of one item: a random window of ``crop_frames`` when training, else all."""
    if rng is None or crop_frames is None or num_frames <= crop_frames:
        return slice(0, num_frames)
    start = int(rng.integers(0, num_frames - crop_frames + 1))
    return slice(start, start + crop_frames)


class FrameTokenDataset(FrameLabelMapping, Dataset):
    """Items ``{"tokens": [T, L, D] float32, "labels": [T], "index": i}`` from a frame cache,
    and the frames' ``frame_indices``, ``timestamps`` (pts) and the video's ``start_time``
    (the pts of its frame 0) where the cache holds them; with ``augment``, a random crop of
    up to ``crop_frames`` frames per epoch."""

    def __init__(self, cache_dir: str | os.PathLike, crop_frames: int | None = None,
                 augment: bool = False, seed: int = 0) -> None:
        self.cache_dir = Path(cache_dir)
        self.meta = read_frame_cache_meta(cache_dir)
        self.class_names: list[str] = list(self.meta["class_names"])
        self.videos = self.meta["videos"]
        self.crop_frames, self.augment, self.seed, self.epoch = crop_frames, augment, seed, 0

    @property
    def sampling(self) -> dict[str, Any]:
        return self.meta["sampler"]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.videos[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.augment else None
        rows = _crop(entry["num_frames"], self.crop_frames, rng)
        path = _video_file(self.cache_dir, entry["name"])
        try:
            return self._read(path, entry, rows, index)
        except SafetensorError as err:  # a copy cut short, say: its file named, no traceback
            raise SpoolLoadError(f"{path}: cannot be read ({err}); run the spool cache "
                                 "command that made the cache again to redo it") from err

    def _read(self, path: Path, entry: dict[str, Any], rows: Any, index: int
              ) -> dict[str, Any]:
        with safe_open(str(path), framework="pt") as f:
            made = json.loads((f.metadata() or {}).get("settings") or "{}")
            if made and (made.get("digest"), made.get("sampler")) != (
                    self.meta["backbone_digest"], self.meta["sampler"]):
                raise SpoolLoadError(f"{self.cache_dir}: made again since this run opened it "
                                     f"({entry['name']} holds other tokens); start it again")
            tokens = f.get_slice("tokens")[rows].float()
            if not all_finite(tokens):  # else the model's check, naming no file
                raise SpoolLoadError(f"{path}: the tokens of {entry['name']} hold NaN or "
                                     "infinite values: the file is damaged (or its float16 "
                                     "overflowed); delete it and run the spool cache "
                                     "command again (which would reuse it as it is)")
            labels = f.get_slice("labels")[rows]
            where = {k: f.get_slice(k)[rows] for k in ("frame_indices", "timestamps")
                     if k in f.keys()}  # what spool eval --cache writes beside each frame
            if "start_time" in f.keys():  # caches written before it was kept lack it
                where["start_time"] = float(f.get_tensor("start_time")[0])
        return {"tokens": tokens, "labels": self.relabel(labels), "index": index, **where}


class VideoFrameDataset(FrameLabelMapping, Dataset):
    """Items ``{"video": [T, S, S, 3] uint8, "labels": [T], "index": i}``: the sampled frames
    of each video (a random crop of up to ``crop_frames`` with ``augment``), decoded and
    preprocessed, with their labels at their own times. The same crops as
    :class:`FrameTokenDataset` for the same seed. A video that cannot be read gives an
    :func:`~spool.data.dataset.unreadable_item`, or with ``substitute`` (training) the next
    readable video's item (:func:`~spool.data.dataset.first_readable`)."""

    def __init__(self, samples: list[SegmentationSample], class_names: list[str],
                 sampler: FrameSampler, preprocessing: FramePreprocessing,
                 crop_frames: int | None = None, augment: bool = False, seed: int = 0,
                 substitute: bool = False) -> None:
        self.samples, self.class_names = list(samples), list(class_names)
        self.substitute = substitute
        self.sampler, self.preprocessing = sampler, preprocessing
        self.crop_frames, self.augment, self.seed, self.epoch = crop_frames, augment, seed, 0
        self.first_epoch: int | None = None  # this process's: what it says of a video, once

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.first_epoch = epoch if self.first_epoch is None else self.first_epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with notes_said() if self._said_before else nullcontext():
            return first_readable(index, len(self), self.substitute, self._item,
                                  lambda i: self.samples[i].video)

    @property
    def _said_before(self) -> bool:
        """Whether a note on a video was said in an earlier epoch of this run: workers start
        afresh each epoch and would say it again (a resumed run says it in its first)."""
        return self.first_epoch is not None and self.epoch != self.first_epoch

    def _item(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.augment else None
        with VideoReader(sample.video) as reader:
            info = reader.info()
            check_reader_complete(Path(sample.video), reader, info)  # as the frame cache does
            indices = whole_video_indices(reader, self.sampler, "VideoFrameDataset")
            indices = indices[_crop(len(indices), self.crop_frames, rng)]
            # Decoded and preprocessed a chunk at a time: whole crops of full-size frames
            # would take GBs (512 frames of 1080p: 3 GB) for an output of MBs.
            frames, stamps = [], []
            for chunk, times, positions in reader.get_chunks(indices, DECODE_CHUNK_FRAMES):
                frames.append(self.preprocessing(torch.from_numpy(chunk))[positions])
                stamps.append(times[positions])
        warn_if_labels_disagree(sample, info.num_frames, info.duration)
        labels = torch.from_numpy(sample.labels_at(indices, np.concatenate(stamps),
                                                   info.start_time))
        return {"video": torch.cat(frames), "labels": self.relabel(labels)}


def collate_frames(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-frame items padded at the end to the longest, with ``"mask" [B, T]`` (True:
    a real frame) and labels ``-100`` on padding; the frame classifiers run each length on its
    own, so padding changes nothing. ``"skipped"``: the unreadable videos, as
    :func:`~spool.data.dataset.collate_readable`."""
    items, skipped = split_readable(items)
    if not items:
        return {"skipped": skipped}
    lengths = torch.tensor([len(item["labels"]) for item in items])
    n = int(lengths.max())
    key = "tokens" if "tokens" in items[0] else "video"

    def padded(x: torch.Tensor, value: int) -> torch.Tensor:
        out = x.new_full((n, *x.shape[1:]), value)
        out[:len(x)] = x
        return out
    return {key: torch.stack([padded(item[key], 0) for item in items]),
            "labels": torch.stack([padded(item["labels"], IGNORE_INDEX) for item in items]),
            "mask": torch.arange(n) < lengths[:, None],
            "index": torch.tensor([item["index"] for item in items]), "skipped": skipped}
