"""Labelled video datasets: annotation files or class folders, clip decoding and augmentation.

Annotation files follow the VideoMAE / PySlowFast convention, one ``path label`` per line;
labels are integers or class names; relative paths are relative to the file's folder. A
directory with one sub-folder per class works too. Every random choice (which frames, which
crop, whether to flip) is drawn from ``(seed, epoch, index)``, so a sample is the same whatever
the worker, the rank or the point a run was resumed from.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from spool.data.classes import read_class_names
from spool.io_utils import read_text_file
from spool.runtime import EVERY_RANK
from spool.video.completeness import check_reader_complete
from spool.video.formats import VIDEO_EXTENSIONS, is_video_name
from spool.video.index import UNREADABLE
from spool.video.io import VideoReader
from spool.video.samplers import FrameSampler
from spool.video.transforms import FramePreprocessing, RandomResizedCrop

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoSample:
    """One labelled video: an absolute path and a class index."""

    path: str
    label: int


def read_annotation_file(path: str | os.PathLike, class_names: Sequence[str] | None = None,
                         root: str | os.PathLike | None = None,
                         check_files: bool = True) -> tuple[list[VideoSample], list[str]]:
    """Parse ``path label`` lines -> (samples, class names).

    Class names come from ``class_names``, else a ``classes.txt`` beside the file, else the
    sorted label names (integer labels: ``"0" .. "max"``). Blank lines and lines starting with
    ``#`` are skipped; a byte-order mark is ignored. A malformed line, an unknown class, a
    negative or out-of-range index, a missing video or one video under two labels raises
    ``ValueError`` naming the file and the line number; a video listed twice with one label
    is a warning (a sample per line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    base = Path(root) if root is not None else path.parent
    # The file's labels refer to its own classes.txt (indices too), given class names or not.
    own = (read_class_names(path.parent / "classes.txt")
           if (path.parent / "classes.txt").is_file() else None)
    if class_names is None:
        class_names = own
    rows: list[tuple[int, str, str]] = []
    # utf-8-sig: a byte-order mark (Windows editors) would otherwise end up in line 1's path.
    for lineno, raw in enumerate(read_text_file(path, "an annotation file").splitlines(),
                                 start=1):
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
    labelled_by = list(own) if own is not None else names
    own_index = {name: i for i, name in enumerate(labelled_by)}
    samples, repeated = [], []
    listed: dict[str, tuple[int, int]] = {}  # video -> (first line, label)
    for lineno, rel, label in rows:
        if label in own_index:
            target = own_index[label]
        elif label.lstrip("-").isdigit():
            target = int(label)
            if not 0 <= target < len(labelled_by):
                raise ValueError(f"{path}, line {lineno}: label {target} is out of range for "
                                 f"{len(labelled_by)} classes")
        else:
            raise ValueError(f"{path}, line {lineno}: unknown class {label!r}; known classes: "
                             f"{labelled_by[:20]}")
        if labelled_by != names:  # from the file's classes to the given ones, by name
            if labelled_by[target] not in index:
                raise ValueError(f"{path}, line {lineno}: class {labelled_by[target]!r} (of "
                                 f"{path.parent / 'classes.txt'}) is not among the classes "
                                 f"given: {names[:20]}")
            target = index[labelled_by[target]]
        video = Path(rel) if Path(rel).is_absolute() else base / rel
        if check_files and not video.is_file():
            raise ValueError(f"{path}, line {lineno}: video file not found: {video}")
        first = listed.setdefault(os.path.realpath(video), (lineno, target))  # any spelling
        if first[1] != target:  # one video, two labels: training would pull both ways
            raise ValueError(f"{path}, lines {first[0]} and {lineno}: {rel} is labelled "
                             f"{names[first[1]]!r} and {names[target]!r}; one label per video")
        if first[0] != lineno:
            repeated.append((first[0], lineno, rel))
        samples.append(VideoSample(str(video), target))
    if repeated:  # kept (some lists weight videos so), but a concatenation's leftovers too
        first, again, rel = repeated[0]
        logger.warning(f"{path}: {len(repeated)} line(s) list a video listed before (lines "
                       f"{first} and {again}: {rel}); each line is one sample, so such a "
                       "video counts as often as it is listed")
    return samples, names


def scan_class_folders(root: str | os.PathLike, class_names: Sequence[str] | None = None
                       ) -> tuple[list[VideoSample], list[str]]:
    """``root/<class>/<video>`` -> (samples, class names); classes are the sorted folders.
    Hidden folders and files (a name starting with ".") are left out."""
    root = Path(root)
    entries = sorted(root.iterdir())
    folders = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
    names = list(class_names) if class_names is not None else folders
    lists = [p.name for p in entries if p.suffix in (".txt", ".csv", ".lst")
             and p.name not in ("classes.txt", "mapping.txt")]
    if class_names is None and len(folders) < 2 and lists:  # a dataset's root: one "class"
        raise ValueError(f"{root}: {len(folders)} class folder(s) {folders} beside annotation "
                         f"files; did you mean {root / lists[0]}? (a folder of classes holds "
                         "a folder per class)")
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise ValueError(f"{root}: folders {unknown} are not among the classes {names}")
    samples = []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        for f in sorted(folder.rglob("*")):
            # Hidden names are skipped, as glob does: macOS's ._NAME.mp4, temporaries.
            hidden = any(part.startswith(".") for part in f.relative_to(folder).parts)
            if f.is_file() and is_video_name(f) and not hidden:
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


class VideoClipDataset(Dataset):
    """Decoded clips of labelled videos, at the model's input size (uint8).

    ``sampler`` (from :mod:`spool.video.samplers`) chooses the frames and ``preprocessing``
    brings them to ``S x S``: the same objects serve evaluation, caching and extraction.
    With an ``augmentation`` hook (e.g. :class:`~spool.video.transforms.RandomResizedCrop`)
    items are augmented: the sampler draws a randomly placed clip and the hook replaces the
    preprocessing. Items: ``{"video": [T, S, S, 3]`` (``[K, T, S, S, 3]`` when the sampler
    gives ``K > 1`` clips), ``"label": int, "index": int}``.
    """

    def __init__(self, samples: Sequence[VideoSample], class_names: Sequence[str],
                 sampler: FrameSampler, preprocessing: FramePreprocessing,
                 augmentation: RandomResizedCrop | None = None, seed: int = 0,
                 substitute: bool = False) -> None:
        self.samples = list(samples)
        self.substitute = substitute
        self.class_names = list(class_names)
        self.sampler = sampler
        self.preprocessing = preprocessing
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    @classmethod
    def from_source(cls, source: str | os.PathLike, class_names: Sequence[str] | None = None,
                    **kwargs: object) -> VideoClipDataset:
        """Build from an annotation file or a class-folder directory."""
        samples, names = read_annotations(source, class_names)
        return cls(samples, names, **kwargs)

    @property
    def num_frames(self) -> int | None:
        """Frames per clip; None for a sampler of the whole video (fps, stride, sliding)."""
        return getattr(self.sampler, "num_frames", None)

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def settings(self) -> dict[str, object]:
        """What the items depend on (recorded with a token cache)."""
        return {"sampler": self.sampler.to_dict(),
                "preprocessing": dataclasses.asdict(self.preprocessing),
                "augmentation": (None if self.augmentation is None
                                 else dataclasses.asdict(self.augmentation)),
                "seed": self.seed}

    def set_epoch(self, epoch: int) -> None:
        """Random choices depend on the epoch: call before each epoch's loader is iterated."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def views(self, index: int, views: Sequence[tuple[int, bool]]) -> list[torch.Tensor]:
        """For each ``(epoch, augmented)``, the video ``self[index]`` would give at that epoch
        with or without augmentation, all from one decode of the file (what a multi-view token
        cache needs). Random choices are drawn from ``(seed, epoch, index)``."""
        if any(aug for _, aug in views) and self.augmentation is None:
            raise ValueError("views: augmented views need an augmentation hook")
        rngs = [np.random.default_rng([self.seed, epoch, index]) for epoch, _ in views]
        # A clip is a few frames far apart, read by seeking: after each seek a frame-threaded
        # decoder refills its pipeline, which made these reads 2-4x slower than with slice
        # threads (bench/decode_threads.py); sequential reads keep FFmpeg's AUTO.
        path = self.samples[index].path
        with VideoReader(path, thread_type="SLICE") as reader:
            # A file cut short is unreadable here as in spool extract, not a shorter video.
            check_reader_complete(Path(path), reader, reader.info())
            n = len(reader)
            fps = reader.info().fps if self.sampler.needs_fps else None
            times = reader.frame_times() if self.sampler.needs_fps else None
            plans = [self.sampler(n, fps, rng if aug else None, times)
                     for rng, (_, aug) in zip(rngs, views, strict=True)]
            wanted = sorted({i for clips in plans for clip in clips for i in clip})
            frames, _ = reader.get(wanted)
        where = {i: k for k, i in enumerate(wanted)}
        all_frames = torch.from_numpy(frames)
        out = []
        for rng, (_, aug), clips in zip(rngs, views, plans, strict=True):
            videos = []
            for clip in clips:
                frames = all_frames[[where[i] for i in clip]]
                videos.append(self.augmentation(frames, self.image_size, rng) if aug
                              else self.preprocessing(frames))
            out.append(videos[0] if len(videos) == 1 else torch.stack(videos))
        return out

    def __getitem__(self, index: int) -> dict[str, object]:
        """The item, or for a video that cannot be read an :func:`unreadable_item`; with
        ``substitute`` (training) the next readable video's item instead (see
        :func:`first_readable`). Batch with :func:`collate_readable`."""
        return first_readable(index, len(self), self.substitute, self._item,
                              lambda i: self.samples[i].path)

    def _item(self, i: int) -> dict[str, object]:
        video = self.views(i, [(self.epoch, self.augmentation is not None)])[0]
        return {"video": video, "label": self.samples[i].label}


class SkippedVideo(NamedTuple):
    """A video that could not be read: its sample index, path and error."""

    index: int
    path: str
    error: str
    message: str


def skipped_video(index: int, path: str, err: BaseException) -> SkippedVideo:
    return SkippedVideo(index, path, type(err).__name__, str(err).replace("\n", " "))


def report_skipped(skipped: Sequence[SkippedVideo], seen: set[str]) -> None:
    """Log each video of ``skipped`` not in ``seen`` (then added): once per run, not per
    epoch."""
    for entry in skipped:
        if entry.path not in seen:
            seen.add(entry.path)
            logger.warning(f"skipping {entry.path}: {entry.error}: {entry.message}",
                           extra=EVERY_RANK)


def first_readable(index: int, count: int, substitute: bool,
                   load: Callable[[int], dict[str, object]],
                   path: Callable[[int], str]) -> dict[str, object]:
    """``load(index)`` with ``"index"``, or for a video that cannot be read an
    :func:`unreadable_item`; with ``substitute`` (training) ``load`` of the next readable video
    instead, ``"skipped"`` naming those passed over: batches keep their size, so ranks stay in
    step, and which video stands in depends only on the files. ``count``: the videos;
    ``path(i)``: video ``i``'s file."""
    skipped: list[SkippedVideo] = []
    for k in range(count if substitute else 1):
        i = (index + k) % count
        try:
            item = {**load(i), "index": index}
        except UNREADABLE as err:
            skipped.append(skipped_video(i, path(i), err))
            continue
        return {**item, "skipped": skipped} if skipped else item
    if substitute:
        raise ValueError(f"none of the {count} videos could be read; the first: "
                         f"{skipped[0].path}: {skipped[0].message}")
    return unreadable_item(index, skipped)


def unreadable_item(index: int, skipped: list[SkippedVideo]) -> dict[str, object]:
    """What a dataset gives for a video it could not read (dropped by the collate)."""
    return {"index": index, "skipped": skipped, "unreadable": True}


def collate_readable(items: list[dict[str, object]]) -> dict[str, object]:
    """``default_collate`` of the readable items; ``"skipped"``: the :class:`SkippedVideo` of
    every item (a batch may have no readable item: then it holds only ``"skipped"``)."""
    readable, skipped = split_readable(items)
    batch = default_collate(readable) if readable else {}
    batch["skipped"] = skipped
    return batch


def split_readable(items: list[dict[str, object]]
                   ) -> tuple[list[dict[str, object]], list[SkippedVideo]]:
    """(the readable items, the :class:`SkippedVideo` of every item): what a collate needs."""
    skipped = [entry for item in items for entry in item.pop("skipped", ())]
    readable = [item for item in items if not item.pop("unreadable", False)]
    return readable, skipped


def worker_context(num_workers: int) -> str | None:
    """The multiprocessing start method of Spool's DataLoader workers: ``forkserver`` on
    Linux. Forking a process that runs other threads (tqdm's monitor, torch.compile's, a
    loader's feeder) can leave a lock held forever in the child, which then hangs."""
    if num_workers == 0 or sys.platform != "linux":
        return None
    global _preloaded
    if not _preloaded:  # the server imports these once; each worker is forked from it
        multiprocessing.set_forkserver_preload(["torch", "spool.data.dataset",
                                                "spool.data.cache"])
        _preloaded = True
    return "forkserver"


_preloaded = False


def worker_init_fn(worker_id: int) -> None:
    """One intra-op thread per DataLoader worker: the workers are the parallelism.

    Workers ignore Ctrl-C, which the terminal sends to every process of the job: the main
    process decides when to stop (a training run first saves a checkpoint), and a worker
    that died of it would fail the batch being loaded. Workers end with the main process:
    DataLoader shuts them down, or, when it was killed, a thread that waits on it does
    (torch's own watchdog watches the forkserver, their parent, which outlived a killed main
    process for good, with the workers). A scheduler's SIGTERM to the whole job ends them (a
    training run then stops at its last whole step: :func:`~spool.train.signals.until_stopped`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    main = multiprocessing.parent_process()  # the process that started it, not the forkserver
    if main is not None:
        threading.Thread(target=_exit_with, args=(main.sentinel,), daemon=True,
                         name="spool-main-watch").start()


def _exit_with(sentinel: int) -> None:
    """End this worker once the process that started it is gone (its pipe closes)."""
    multiprocessing.connection.wait([sentinel])
    os._exit(1)
