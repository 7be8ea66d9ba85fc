"""Per-frame labels of videos (temporal action segmentation), aligned by timestamp.

Two annotation forms are read:

- the MS-TCN layout: ``mapping.txt`` (``index name`` lines), ``groundTruth/<video>.txt`` (one
  class name per line, per frame of the video at its own frame rate), split bundles
  (``splits/train.split1.bundle``: ``<video>.txt`` per line) and the videos themselves
  (``videos/<video>.<ext>``);
- a CSV of segments, ``video,start_s,end_s,label`` (seconds from the video's first frame, end
  exclusive).

Sampled frames get labels by their own time: a ground-truth line belongs to the decoded frame
of that number (its pts), a segment to the frames whose timestamps fall inside it. Nothing
assumes a frame rate, so a 29.97 fps video sampled at 5 fps gets each sampled frame's label.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import itertools
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spool.data.classes import read_class_names
from spool.io_utils import read_text_file
from spool.runtime import process_rank, warn_once
from spool.video.formats import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100
CLASSES_NAME = "classes.txt"  # beside a segments CSV: its classes, in their order
# Matroska/WebM store times in whole milliseconds: a frame shown at 155/15 s is 10.333 s, and
# must still fall in a segment that starts at 10.3333 s. Frames are >= 4 ms apart up to 240 fps.
LABEL_TIME_TOLERANCE_S = 5e-4
LABEL_RULES_REVISION = 2  # in a frame cache's settings: labels made by older rules are redone


@dataclass(frozen=True)
class SegmentationSample:
    """A video and its labels: per native frame (``frame_labels [N]`` class indices) or as
    ``segments`` ``(start_s, end_s, class index)``."""

    name: str
    video: str
    frame_labels: np.ndarray | None = None
    segments: tuple[tuple[float, float, int], ...] | None = None

    def disagreement(self, num_frames: int, duration: float) -> str | None:
        """Why these labels cannot describe a video of ``num_frames`` frames lasting
        ``duration`` s, or None: ground truth for many more or fewer frames (annotated at
        another frame rate?), a segment that starts or ends well after the video ends (frame
        numbers written as seconds? another cut of the video?), or segments that leave over a
        tenth of it unlabelled. Labels past the video, or frames past the labels, would be
        dropped without a word."""
        if self.frame_labels is not None:
            n = len(self.frame_labels)
            if abs(n - num_frames) > max(2, 0.02 * num_frames):
                return (f"{self.video}: its ground truth has {n} lines for {num_frames} "
                        "frames (annotated at another frame rate?)")
            return None
        segments = self.segments or ()
        slack = max(0.5, 0.02 * duration)
        late = [s for s, _, _ in segments if s > duration + 0.5]
        if late:
            return (f"{self.video}: a segment starts at {late[0]} s, after the video's end "
                    f"({duration:.2f} s; segments are in seconds)")
        long = [e for _, e, _ in segments if e > duration + slack]
        if long:
            return (f"{self.video}: a segment ends at {long[0]} s, {long[0] - duration:.2f} s "
                    f"after the video's end ({duration:.2f} s)")
        covered = sum(max(0.0, min(e, duration) - s) for s, e, _ in segments)
        if duration > 0 and duration - covered > max(slack, 0.1 * duration):
            return (f"{self.video}: its segments cover {covered:.2f} s of its {duration:.2f} s; "
                    "the frames outside them are unlabelled, left out of the loss and the "
                    "scores (a background class labels them)")
        return None

    def labels_at(self, frame_indices: Sequence[int], timestamps: Sequence[float],
                  start_time: float = 0.0) -> np.ndarray:
        """Class indices ``[T]`` of sampled frames (``IGNORE_INDEX`` where nothing applies):
        a ground-truth line by its frame number, a segment by the frame's time minus
        ``start_time`` (the first frame's timestamp)."""
        if self.frame_labels is not None:
            idx = np.asarray(frame_indices, np.int64)
            out = np.full(len(idx), IGNORE_INDEX, np.int64)
            inside = idx < len(self.frame_labels)
            out[inside] = self.frame_labels[idx[inside]]
            return out
        t = np.asarray(timestamps, np.float64) - start_time
        out = np.full(len(t), IGNORE_INDEX, np.int64)
        for start, end, label in self.segments or ():
            out[(t >= start - LABEL_TIME_TOLERANCE_S) & (t < end - LABEL_TIME_TOLERANCE_S)] = label
        return out


def warn_if_labels_disagree(sample: SegmentationSample, num_frames: int,
                            duration: float) -> None:
    """Log :meth:`SegmentationSample.disagreement` once per video and process."""
    why = sample.disagreement(num_frames, duration)
    if why is not None:
        warn_once(logger, f"labels do not fit the video: {why}",
                  key=("labels do not fit", sample.video), every_rank=True)


def read_mapping(path: str | os.PathLike) -> list[str]:
    """MS-TCN's ``mapping.txt`` (``index name`` lines) -> class names in index order."""
    rows = [line.split() for line in read_text_file(path, "a mapping.txt").splitlines()
            if line.strip()]
    for i, row in enumerate(rows):
        if len(row) != 2 or row[0] != str(i):
            raise ValueError(f"{path}, line {i + 1}: expected '{i} <name>', got "
                             f"{' '.join(row)!r}")
    names = [name for _, name in rows]
    for i, name in enumerate(names):  # else its frames all get the later index
        if names.index(name) != i:
            raise ValueError(f"{path}, lines {names.index(name) + 1} and {i + 1}: the class "
                             f"{name!r} is named twice")
    return names


def read_ground_truth(path: str | os.PathLike, classes: Sequence[str]) -> np.ndarray:
    """An MS-TCN ground-truth file (one class name per frame) -> ``[N]`` class indices."""
    index = {name: i for i, name in enumerate(classes)}
    names = read_text_file(path, "a ground-truth file").split()
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise ValueError(f"{path}: class names {unknown[:5]} are not in the mapping "
                         f"{list(classes)[:10]}")
    return np.array([index[n] for n in names], dtype=np.int64)


def _find_video(folder: Path, stem: str) -> Path:
    for ext in VIDEO_EXTENSIONS:
        for suffix in (ext, ext.upper()):  # as other commands match them: any case
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    raise ValueError(f"{folder}: no video named {stem} with an extension in "
                     f"{VIDEO_EXTENSIONS} for groundTruth/{stem}.txt")


def read_ms_tcn(root: str | os.PathLike, split: str = "train.split1",
                videos_dir: str = "videos") -> tuple[list[SegmentationSample], list[str]]:
    """An MS-TCN layout under ``root``: the videos of ``splits/<split>.bundle`` -> (samples,
    class names from ``mapping.txt``). ``split`` may also be a bundle file's path."""
    root = Path(root)
    classes = read_mapping(root / "mapping.txt")
    bundle = Path(split) if Path(split).is_file() else root / "splits" / f"{split}.bundle"
    if not bundle.is_file():
        raise ValueError(f"split: no bundle {bundle} (expected splits/<split>.bundle under "
                         f"{root})")
    samples = []
    for number, line in enumerate(read_text_file(bundle, "a split bundle").splitlines(), 1):
        entry = line.strip()
        if not entry:
            continue
        stem = Path(entry).stem
        truth = root / "groundTruth" / f"{stem}.txt"
        if not truth.is_file():  # (a bare errno named neither the bundle nor the line)
            raise ValueError(f"{bundle}, line {number}: lists {entry!r}, but there is no "
                             f"ground-truth file {truth}")
        labels = read_ground_truth(truth, classes)
        samples.append(SegmentationSample(stem, str(_find_video(root / videos_dir, stem)),
                                          frame_labels=labels))
    if not samples:
        raise ValueError(f"{bundle}: lists no videos")
    return samples, classes


def csv_videos(table: Path, names: Iterable[str]) -> dict[str, Path]:
    """A CSV's ``video`` entries, each once under the spelling it first had (``a.mp4`` and
    ``./a.mp4`` are one video) -> where each points: relative paths are relative to the CSV."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(os.path.normpath(name), name)
    return {name: Path(name) if Path(name).is_absolute() else table.parent / name
            for name in seen.values()}


def read_segments_csv(path: str | os.PathLike, class_names: Sequence[str] | None = None
                      ) -> tuple[list[SegmentationSample], list[str]]:
    """A ``video,start_s,end_s,label`` CSV, other columns ignored (video paths relative to
    the file) -> (samples, class names: ``class_names``, else a ``classes.txt`` beside the
    file, else the sorted labels). A sample is named by its file's stem; videos whose stems
    collide get a digest of their path added (``clip-1a2b3c4d``)."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(read_text_file(path, "a segments CSV"), newline=""))
    rows = list(reader)
    # Other columns are ignored: spool extract's NAME.segments.csv has a score, say.
    if not rows or not {"video", "start_s", "end_s", "label"} <= set(reader.fieldnames or ()):
        found = ",".join(reader.fieldnames or ()) or "nothing"
        raise ValueError(f"{path}: expected a header 'video,start_s,end_s,label' and rows, "
                         f"found {found!r}{'' if not reader.fieldnames or rows else ' alone'}")
    for lineno, row in enumerate(rows, start=2):
        if None in row or None in row.values():  # csv's marks of extra or missing fields
            raise ValueError(f"{path}, line {lineno}: expected {len(reader.fieldnames)} "
                             f"fields ({','.join(reader.fieldnames)})")
        row["label"] = row["label"].strip()  # "walk" and " walk" (after ", ") are one class
        if not row["label"]:
            raise ValueError(f"{path}, line {lineno}: the label is empty")
    listed = path.parent / CLASSES_NAME
    names = (list(class_names) if class_names is not None else read_class_names(listed)
             if listed.is_file() else sorted({r["label"] for r in rows}))
    if class_names is None and not listed.is_file() and process_rank() == 0:  # a typo: a class
        counts = collections.Counter(r["label"] for r in rows)
        logger.info(f"{path}: classes from its labels (no {CLASSES_NAME} beside it, which "
                    "would refuse any other): "
                    + ", ".join(f"{n} ({counts[n]} segment{'s' * (counts[n] > 1)})"
                                for n in names))
    index = {n: i for i, n in enumerate(names)}
    per_video: dict[str, list[tuple[float, float, int]]] = {}
    where = csv_videos(path, (row["video"] for row in rows))
    spelled = {os.path.normpath(name): name for name in where}
    first_line: dict[str, int] = {}
    for lineno, row in enumerate(rows, start=2):
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
        except ValueError:
            raise ValueError(f"{path}, line {lineno}: start_s/end_s must be numbers, got "
                             f"{row['start_s']!r}, {row['end_s']!r}") from None
        if not 0 <= start < end:
            raise ValueError(f"{path}, line {lineno}: expected 0 <= start_s < end_s, got "
                             f"{start}, {end}")
        if row["label"] not in index:
            whence = (f"from {listed}" if class_names is None else
                      f"a {CLASSES_NAME} beside the training CSV lists every class, one per line")
            raise ValueError(f"{path}, line {lineno}: unknown class {row['label']!r}; the "
                             f"classes are {names[:20]} ({whence})")
        video = spelled[os.path.normpath(row["video"])]  # its first spelling (its digest)
        per_video.setdefault(video, []).append((start, end, index[row["label"]]))
        first_line.setdefault(video, lineno)
    for video, segments in per_video.items():
        segments[:] = sorted(set(segments))  # a row given twice is one segment
        for (s0, e0, _), (s1, e1, _) in itertools.pairwise(segments):
            if s1 < e0 - LABEL_TIME_TOLERANCE_S:  # not times rounded apart
                raise ValueError(f"{path}: the segments {s0}-{e0} s and {s1}-{e1} s of "
                                 f"{video} overlap")
    stems = [Path(video).stem for video in per_video]
    samples = []
    for (video, segments), stem in zip(per_video.items(), stems, strict=True):
        full = where[video]
        if not full.is_file():  # a typo: no run should go on without it (a clips list's way)
            raise ValueError(f"{path}, line {first_line[video]}: video file not found: {full}")
        name = stem
        if stems.count(stem) > 1:  # a/clip.mkv and b/clip.mkv: two videos, two names
            name = f"{stem}-{hashlib.sha1(video.encode()).hexdigest()[:8]}"
        samples.append(SegmentationSample(name, str(full), segments=tuple(sorted(segments))))
    return samples, names


def check_segmentation_source(source: str | os.PathLike | None, argument: str) -> None:
    """``ValueError`` naming ``argument`` and the path when ``source`` does not exist: a
    mistyped MS-TCN root is otherwise taken for a segments CSV (and a split flag given with it
    refused as if it did not apply)."""
    if source is not None and not os.path.exists(source):
        raise ValueError(f"{argument}: {source}: does not exist (expected a segments CSV or an "
                         f"MS-TCN root folder)")


def read_segmentation(source: str | os.PathLike, split: str = "train.split1",
                      class_names: Sequence[str] | None = None
                      ) -> tuple[list[SegmentationSample], list[str]]:
    """A segments CSV, or an MS-TCN root (with ``split``) -> (samples, class names).

    With ``class_names`` (a model's), labels are numbered in that order: an MS-TCN root's
    ``mapping.txt`` may list the same classes in another, and its labels are mapped by name.
    """
    if not Path(source).is_dir():
        return read_segments_csv(source, class_names)
    samples, mapping = read_ms_tcn(source, split)
    if class_names is None or list(class_names) == mapping:
        return samples, mapping
    names = list(class_names)
    unknown = [c for c in mapping if c not in names]
    if unknown:
        raise ValueError(f"{source}: classes {unknown} of its mapping.txt are not among the "
                         f"classes {names}")
    new_index = np.array([names.index(c) for c in mapping], dtype=np.int64)
    return [dataclasses.replace(s, frame_labels=new_index[s.frame_labels])
            for s in samples], names
