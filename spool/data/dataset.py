"""Labelled video datasets: annotation files or class folders, clip decoding and augmentation.

Annotation files follow the VideoMAE / PySlowFast convention, one ``path label`` per line;
labels are integers or class names; relative paths are relative to the file's folder. A
directory with one sub-folder per class works too. Every random choice (which frames, which
crop, whether to flip) is drawn from ``(seed, epoch, index)``, so a sample is the same whatever
the worker, the rank or the point a run was resumed from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spool.video.io import VideoReader
from spool.video.samplers import make_sampler

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")


@dataclass(frozen=True)
class VideoSample:
    """One labelled video: an absolute path and a class index."""

    path: str
    label: int


def _read_class_names(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()
             if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names in {names}")
    return names


def read_annotation_file(path: str | os.PathLike, class_names: Sequence[str] | None = None,
                         root: str | os.PathLike | None = None,
                         check_files: bool = True) -> tuple[list[VideoSample], list[str]]:
    """Parse ``path label`` lines -> (samples, class names).

    Class names come from ``class_names``, else a ``classes.txt`` beside the file, else the
    sorted label names (integer labels: ``"0" .. "max"``). Blank lines and lines starting with
    ``#`` are skipped; a byte-order mark is ignored. A malformed line, an unknown class, a
    negative or out-of-range index or a missing video raises ``ValueError`` naming the file
    and the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    base = Path(root) if root is not None else path.parent
    if class_names is None and (path.parent / "classes.txt").is_file():
        class_names = _read_class_names(path.parent / "classes.txt")
    rows: list[tuple[int, str, str]] = []
    # utf-8-sig: a byte-order mark (Windows editors) would otherwise end up in line 1's path.
    for lineno, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)  # the path may contain spaces, the label may not
        if len(parts) != 2:
            raise ValueError(f"{path}, line {lineno}: expected 'path label', got {raw!r}")
        rows.append((lineno, parts[0], parts[1]))
    if not rows:
        raise ValueError(f"{path}: no 'path label' lines")
    if class_names is None:
        for lineno, _, label in rows:
            # Without class names "-1" would become a class of its own, silently.
            if label.startswith("-") and label[1:].isdigit():
                raise ValueError(f"{path}, line {lineno}: label {label} is negative; labels "
                                 f"are class indices from 0 or class names")
        labels = [label for _, _, label in rows]
        if all(label.isdigit() for label in labels):
            class_names = [str(i) for i in range(max(int(x) for x in labels) + 1)]
        else:
            class_names = sorted(set(labels))
    names = list(class_names)
    index = {name: i for i, name in enumerate(names)}
    samples = []
    for lineno, rel, label in rows:
        if label in index:
            target = index[label]
        elif label.lstrip("-").isdigit():
            target = int(label)
            if not 0 <= target < len(names):
                raise ValueError(f"{path}, line {lineno}: label {target} is out of range for "
                                 f"{len(names)} classes")
        else:
            raise ValueError(f"{path}, line {lineno}: unknown class {label!r}; known classes: "
                             f"{names[:20]}")
        video = Path(rel) if Path(rel).is_absolute() else base / rel
        if check_files and not video.is_file():
            raise ValueError(f"{path}, line {lineno}: video file not found: {video}")
        samples.append(VideoSample(str(video), target))
    return samples, names


def scan_class_folders(root: str | os.PathLike, class_names: Sequence[str] | None = None
                       ) -> tuple[list[VideoSample], list[str]]:
    """``root/<class>/<video>`` -> (samples, class names); classes are the sorted folders."""
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(class_names) if class_names is not None else folders
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise ValueError(f"{root}: folders {unknown} are not among the classes {names}")
    samples = []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS:
                samples.append(VideoSample(str(f), label))
    if not samples:
        raise ValueError(f"{root}: no videos ({', '.join(VIDEO_EXTENSIONS)}) in class folders")
    return samples, names


def read_annotations(source: str | os.PathLike, class_names: Sequence[str] | None = None
                     ) -> tuple[list[VideoSample], list[str]]:
    """An annotation file or a directory of class folders -> (samples, class names)."""
    if os.path.isdir(source):
        return scan_class_folders(source, class_names)
    return read_annotation_file(source, class_names)


def clip_indices(num_video_frames: int, num_frames: int, offsets: np.ndarray,
                 frame_stride: int | None = None) -> list[int]:
    """Frame indices of one clip.

    ``frame_stride=None``: the video is cut into ``num_frames`` equal segments and frame
    ``i`` is at ``offsets[i]`` (in [0, 1)) inside segment ``i`` (0.5: the centre, as the
    uniform sampler). Else ``num_frames`` frames ``frame_stride`` apart from a start at
    ``offsets[0]`` of the free range; short videos repeat their last frame.
    """
    n = num_video_frames
    if frame_stride is None:
        return [min(int(math.floor((i + float(o)) * n / num_frames)), n - 1)
                for i, o in enumerate(offsets)]
    span = (num_frames - 1) * frame_stride + 1
    start = int(round(float(offsets[0]) * max(n - span, 0)))
    return [min(start + i * frame_stride, n - 1) for i in range(num_frames)]


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> tuple[int, int, int, int]:
    """(top, left, h, w) covering ``scale`` of the area at aspect ``ratio`` (torchvision's
    RandomResizedCrop, with a centre crop as fallback)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``frames: [T, h, w, 3]`` uint8 -> ``[T, size, size, 3]`` uint8 (antialiased bilinear)."""
    if frames.shape[1:3] == (size, size):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class VideoClipDataset(Dataset):
    """Decodes clips of ``num_frames`` frames resized to ``image_size`` (uint8).

    ``train=True``: random temporal jitter, a random resized crop (``crop_scale``, the same
    box for all frames of a clip) and, only if ``hflip`` (it swaps left and right motion), a
    random horizontal flip. ``train=False``: centred frames, a centre square crop, and
    ``num_clips`` clips spread over the video for test-time averaging.
    Items: ``{"video": [T, S, S, 3]`` (or ``[K, T, S, S, 3]`` when ``num_clips > 1``),
    ``"label": int, "index": int}``.
    """

    def __init__(self, samples: Sequence[VideoSample], class_names: Sequence[str],
                 num_frames: int = 16, image_size: int = 224, train: bool = False,
                 num_clips: int = 1, frame_stride: int | None = None,
                 crop_scale: tuple[float, float] = (0.4, 1.0), hflip: bool = False,
                 seed: int = 0) -> None:
        if num_frames < 1 or num_clips < 1 or image_size < 1:
            raise ValueError(f"num_frames, num_clips, image_size: expected >= 1, got "
                             f"{num_frames}, {num_clips}, {image_size}")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale: expected 0 < min <= max <= 1, got {crop_scale}")
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.num_frames = num_frames
        self.image_size = image_size
        self.train = train
        self.num_clips = num_clips
        self.frame_stride = frame_stride
        self.crop_scale = tuple(crop_scale)
        self.hflip = hflip
        self.seed = seed
        self.epoch = 0
        # The deterministic single clip is the video module's uniform sampler.
        self._uniform = make_sampler("uniform", num_frames=num_frames)

    @classmethod
    def from_source(cls, source: str | os.PathLike, class_names: Sequence[str] | None = None,
                    **kwargs: object) -> VideoClipDataset:
        """Build from an annotation file or a class-folder directory."""
        samples, names = read_annotations(source, class_names)
        return cls(samples, names, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Random choices depend on the epoch: call before each epoch's loader is iterated."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _clips(self, n: int, rng: np.random.Generator, train: bool) -> list[list[int]]:
        T, K = self.num_frames, self.num_clips
        if train:
            offsets = rng.random(T if self.frame_stride is None else 1)
            return [clip_indices(n, T, offsets, self.frame_stride)]
        if K == 1 and self.frame_stride is None:
            return self._uniform(n)
        if self.frame_stride is None:
            return [clip_indices(n, T, np.full(T, (k + 0.5) / K)) for k in range(K)]
        starts = [0.5] if K == 1 else [k / (K - 1) for k in range(K)]
        return [clip_indices(n, T, np.array([s]), self.frame_stride) for s in starts]

    def _spatial(self, frames: torch.Tensor, rng: np.random.Generator,
                 train: bool) -> torch.Tensor:
        _, H, W, _ = frames.shape
        if train:
            top, left, h, w = random_resized_crop_box(H, W, rng, self.crop_scale)
        else:
            side = min(H, W)
            top, left, h, w = (H - side) // 2, (W - side) // 2, side, side
        frames = resize_frames(frames[:, top:top + h, left:left + w], self.image_size)
        if train and self.hflip and rng.random() < 0.5:
            frames = frames.flip(2)
        return frames

    def views(self, index: int, views: Sequence[tuple[int, bool]]) -> list[torch.Tensor]:
        """For each ``(epoch, train)``, the video ``self[index]`` would give at that epoch in
        that mode, all from one decode of the file (what a multi-view token cache needs)."""
        sample = self.samples[index]
        rngs = [np.random.default_rng([self.seed, epoch, index]) for epoch, _ in views]
        with VideoReader(sample.path) as reader:
            n = len(reader)
            plans = [self._clips(n, rng, train) for rng, (_, train) in zip(rngs, views,
                                                                           strict=True)]
            wanted = sorted({i for clips in plans for clip in clips for i in clip})
            frames, _ = reader.get(wanted)
        where = {i: k for k, i in enumerate(wanted)}
        all_frames = torch.from_numpy(frames)
        out = []
        for rng, (_, train), clips in zip(rngs, views, plans, strict=True):
            videos = [self._spatial(all_frames[[where[i] for i in clip]], rng, train)
                      for clip in clips]
            out.append(videos[0] if len(videos) == 1 else torch.stack(videos))
        return out

    def __getitem__(self, index: int) -> dict[str, object]:
        video = self.views(index, [(self.epoch, self.train)])[0]
        return {"video": video, "label": self.samples[index].label, "index": index}


def worker_init_fn(worker_id: int) -> None:
    """One intra-op thread per DataLoader worker: the workers are the parallelism."""
    torch.set_num_threads(1)
