"""Synthetic long videos for temporal action segmentation, whose labels need time.

Every video (2,400-3,000 frames at 15 fps by default, small frames) is a sequence of segments:

- ``left_to_right`` / ``right_to_left``: a shape crossing the frame (leaving on one side,
  coming back on the other, about once a second); ``grow`` / ``shrink``: a shape swelling
  from small to large over the segment, or the reverse. The two classes of a pair are the
  same frames in opposite order, so no single frame tells them apart: only motion does.
- ``cue_a`` / ``cue_b``: a red or a blue flash (5-7 s) near the start of the video.
- ``after_a`` / ``after_b``: from ``min_cue_distance`` frames after the last cue frame on,
  delayed segments (static grey stripes, 4-8 s) alternate with motions. They look the same
  whichever the cue was; their label says which cue came first. A model that sees less than
  ``min_cue_distance`` frames around a frame (one MS-TCN stage sees +-1,023) cannot know it.
- ``background``: empty scene (lead-in and short gaps); index 0, MS-TCN's ``bg_class``.

Frames are rendered as uint8 arrays and written with :func:`spool.video.write_video`
(``ffv1``: lossless, and bit-exact muxing, so a dataset is a pure function of its seed down
to the bytes), with annotations in the MS-TCN layout and as CSV segment lists.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spool.data.segmentation import read_ground_truth
from spool.video.writer import write_video

__all__ = [
    "MOTIONS",
    "SEGMENT_CLASSES",
    "SegmentVideo",
    "SegmentationDataset",
    "make_segmentation_dataset",
    "render_motion",
    "render_segmentation_video",
]

SEGMENT_CLASSES = ("background", "left_to_right", "right_to_left", "grow", "shrink",
                   "cue_a", "cue_b", "after_a", "after_b")
MOTIONS = ("left_to_right", "right_to_left", "grow", "shrink")
_CUE_COLOURS = {"a": (230.0, 30.0, 30.0), "b": (30.0, 60.0, 230.0)}
# 5-7 s at 15 fps: short beside a 2-minute video, yet long enough to be found. A model learns
# to fetch it from 1,600 frames away in ~600 steps at 90 frames, ~2,800 at 30-45 (research/).
_CUE_FRAMES = (80, 110)
_DELAYED_FRAMES = (60, 120)
_EXT = {"ffv1": ".mkv", "libx264": ".mp4", "mjpeg": ".avi", "rawvideo": ".avi"}


@dataclass
class SegmentVideo:
    """``frames: [T, S, S, 3]`` uint8, ``labels: [T]`` class indices into
    :data:`SEGMENT_CLASSES`, ``segments``: ``(label, start, end)`` frame ranges (end
    exclusive) covering the video, and which ``cue`` it holds."""

    frames: np.ndarray
    labels: np.ndarray
    segments: list[tuple[str, int, int]]
    cue: str


def _smooth(rng: np.random.Generator, size: int, grid: int = 4) -> np.ndarray:
    """Smooth random field ``[size, size, 3]``: a ``grid x grid`` lattice, bilinearly
    interpolated (hat-function weights ``[size, grid]`` on each axis)."""
    at = np.linspace(0, grid - 1, size)
    w = np.maximum(0.0, 1.0 - np.abs(at[:, None] - np.arange(grid)[None, :]))
    return np.einsum("ia,abc,jb->ijc", w, rng.normal(0.0, 1.0, (grid, grid, 3)), w)


def _scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A video's backdrop ``[S, S, 3]`` (float): dark, with a faint smooth texture. Dark and
    plain on purpose: what a frame shows (empty, a shape, a flash, stripes) should be plain
    to any frame encoder; only the order of frames is meant to be hard."""
    return np.clip(rng.uniform(15, 60, 3) + 4 * _smooth(rng, size), 0, 255)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A bright colour: every channel >= 100, one of them >= 220."""
    colour = rng.uniform(100, 255, 3)
    colour[rng.integers(3)] = rng.uniform(220, 255)
    return colour


def _coverage(kind: str, size: int, cx: np.ndarray, cy: np.ndarray,
              r: np.ndarray) -> np.ndarray:
    """Anti-aliased shapes ``[n, S, S]`` in [0, 1]; centres and radii ``[n]`` in pixels."""
    centre = np.arange(size) + 0.5
    dx = centre[None, None, :] - cx[:, None, None]
    dy = centre[None, :, None] - cy[:, None, None]
    dist = np.hypot(dx, dy) if kind == "disk" else np.maximum(np.abs(dx), np.abs(dy))
    return np.clip(r[:, None, None] - dist + 0.5, 0.0, 1.0)


def render_motion(kind: str, num_frames: int, size: int, rng: np.random.Generator,
                  backdrop: np.ndarray) -> np.ndarray:
    """Frames ``[n, S, S, 3]`` (float) of one motion segment over ``backdrop [S, S, 3]``.

    Shape, colour, speed and place come from ``rng``, which is used identically for both
    classes of a pair: ``right_to_left`` is ``left_to_right`` reversed, ``shrink`` is
    ``grow`` reversed.
    """
    if kind not in MOTIONS:
        raise ValueError(f"kind: expected one of {MOTIONS}, got {kind!r}")
    shape = str(rng.choice(["disk", "square"]))
    colour = _colour(rng)
    scale = size / 32
    if kind in ("left_to_right", "right_to_left"):
        r = rng.uniform(0.12, 0.2) * size
        speed = rng.uniform(1.5, 2.5) * scale  # pixels per frame: a crossing takes ~1 s
        loop = size + 2 * r  # out on one side, back in on the other
        cx = (rng.uniform(0, loop) + speed * np.arange(num_frames)) % loop - r
        cy = np.full(num_frames, rng.uniform(r, size - r))
        radius = np.full(num_frames, r)
    else:
        # One slow swell over the whole segment. (A sawtooth of 1-2 s swells was tried: at
        # every reset a short window sees the shape shrink, and Spool flickered there.)
        lo, hi = rng.uniform(0.1, 0.14) * size, rng.uniform(0.35, 0.45) * size  # lo: visible
        radius = lo + (hi - lo) * np.linspace(0.0, 1.0, num_frames)
        cx = np.full(num_frames, rng.uniform(hi, size - hi))
        cy = np.full(num_frames, rng.uniform(hi, size - hi))
    cover = _coverage(shape, size, cx, cy, radius)[..., None]
    frames = cover * colour + (1 - cover) * backdrop
    return frames[::-1] if kind in ("right_to_left", "shrink") else frames


def _render_stripes(num_frames: int, size: int, backdrop: np.ndarray) -> np.ndarray:
    """Static vertical grey stripes over the backdrop: the delayed segment's look, the same
    pattern in every video (a look that varied from video to video would leave the model
    nothing consistent to ask the cue from)."""
    on = (np.arange(size) * 4 // size) % 2 == 0  # four stripes
    frame = np.where(on[None, :, None], 0.3 * backdrop + 0.7 * 180.0, backdrop)
    return np.broadcast_to(frame, (num_frames, size, size, 3))


def _timeline(rng: np.random.Generator, num_frames: int, cue: str, min_cue_distance: int,
              segment_frames: tuple[int, int]) -> list[tuple[str, int, int]]:
    """Segments ``(label, start, end)``: background lead-in, cue, motions (``segment_frames``
    long) for at least ``min_cue_distance`` frames, then delayed segments and motions of
    ``_DELAYED_FRAMES`` in turn to the end."""
    seg_min, seg_max = segment_frames
    lead, cue_len = int(rng.integers(15, 46)), int(rng.integers(_CUE_FRAMES[0],
                                                                 _CUE_FRAMES[1] + 1))
    cue_end = lead + cue_len
    first_delayed = cue_end + min_cue_distance + int(rng.integers(0, 61))
    segments = [("background", 0, lead), (f"cue_{cue}", lead, cue_end)]
    previous = None

    def motion(start: int, end: int) -> None:
        nonlocal previous
        gap = int(rng.integers(8, 31)) if rng.random() < 0.35 and end - start >= 60 else 0
        if gap:
            segments.append(("background", start, start + gap))
        choices = [m for m in MOTIONS if gap or m != previous]  # runs must not merge
        previous = str(rng.choice(choices))
        segments.append((previous, start + gap, end))

    start = cue_end
    while start < first_delayed:
        remaining = first_delayed - start
        n = remaining if remaining <= seg_max else int(
            rng.integers(seg_min, min(seg_max, remaining - seg_min) + 1))
        motion(start, start + n)
        start += n
    delayed = True
    while start < num_frames:
        # Motions here are as short as delayed segments: more of them turn on the cue.
        n = int(rng.integers(_DELAYED_FRAMES[0], _DELAYED_FRAMES[1] + 1))
        if num_frames - (start + n) < _DELAYED_FRAMES[0]:  # no stub at the end
            n = num_frames - start
        if delayed:
            segments.append((f"after_{cue}", start, start + n))
            previous = None
        else:
            motion(start, start + n)
        start += n
        delayed = not delayed
    return segments


def check_video_settings(num_frames: int, size: int, min_cue_distance: int,
                         segment_frames: tuple[int, int]) -> None:
    """``ValueError`` naming a setting no video can be rendered with."""
    if size < 16:
        raise ValueError(f"size: expected >= 16 pixels, got {size}")
    seg_min, seg_max = segment_frames
    if not 1 <= 2 * seg_min <= seg_max:
        raise ValueError(f"segment_frames: expected (min, max) with 1 <= 2 * min <= max, got "
                         f"{segment_frames}")
    # Longest lead-in and cue, the distance and its jitter, one delayed segment.
    shortest = 45 + _CUE_FRAMES[1] + min_cue_distance + 60 + _DELAYED_FRAMES[0]
    if min_cue_distance < seg_min:
        raise ValueError(f"min_cue_distance: expected at least segment_frames[0] ({seg_min}), "
                         f"got {min_cue_distance}")
    if num_frames < shortest:
        raise ValueError(f"num_frames: expected >= {shortest} for min_cue_distance="
                         f"{min_cue_distance}, got {num_frames}")


def render_segmentation_video(rng: np.random.Generator, num_frames: int, cue: str,
                              size: int = 32, min_cue_distance: int = 1600,
                              segment_frames: tuple[int, int] = (150, 300)) -> SegmentVideo:
    """One video of ``num_frames`` frames whose delayed segment follows ``cue`` (``"a"`` or
    ``"b"``): a :class:`SegmentVideo` with ``frames [T, S, S, 3]`` uint8, ``labels [T]`` and
    ``segments`` as ``(label, start, end)`` frame ranges (not a segments CSV's ``start_s,
    end_s, label``). Nothing but the cue and the two labels depends on ``cue``."""
    if cue not in _CUE_COLOURS:
        raise ValueError(f"cue: expected 'a' or 'b', got {cue!r}")
    check_video_settings(num_frames, size, min_cue_distance, segment_frames)
    segments = _timeline(rng, num_frames, cue, min_cue_distance, segment_frames)
    backdrop = _scene(rng, size)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    labels = np.empty(num_frames, np.int64)
    for label, start, end in segments:
        n = end - start
        if label in MOTIONS:
            image = render_motion(label, n, size, rng, backdrop)
        elif label.startswith("cue_"):
            image = np.broadcast_to(0.25 * backdrop + 0.75 * np.array(_CUE_COLOURS[cue]),
                                    (n, size, size, 3))
        elif label.startswith("after_"):
            image = _render_stripes(n, size, backdrop)
        else:
            image = np.broadcast_to(backdrop, (n, size, size, 3))
        frames[start:end] = np.clip(image, 0, 255).round().astype(np.uint8)
        labels[start:end] = SEGMENT_CLASSES.index(label)
    return SegmentVideo(frames, labels, segments, cue)


@dataclass
class SegmentationDataset:
    """What :func:`make_segmentation_dataset` wrote: video names per split (files
    ``videos/<name><ext>``, labels ``groundTruth/<name>.txt``)."""

    root: Path
    fps: float
    classes: list[str] = field(default_factory=lambda: list(SEGMENT_CLASSES))
    train: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    video_ext: str = ".mkv"

    def video_path(self, name: str) -> Path:
        return self.root / "videos" / f"{name}{self.video_ext}"

    def labels(self, name: str) -> np.ndarray:
        """``[T]`` class indices of a video, read from its ground-truth file."""
        return read_ground_truth(self.root / "groundTruth" / f"{name}.txt", self.classes)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_segmentation_dataset(
    out_dir: str | os.PathLike, num_train: int, num_test: int, *,
    frames: tuple[int, int] = (2400, 3000), size: int = 32, fps: float = 15.0,
    min_cue_distance: int = 1600, segment_frames: tuple[int, int] = (150, 300),
    twins: bool = True, seed: int = 0, codec: str = "ffv1",
) -> SegmentationDataset:
    """Write ``num_train`` + ``num_test`` videos of ``frames`` = (min, max) frames.

    Layout (MS-TCN's, plus videos and CSVs): ``videos/<split>_<iiii><ext>`` (``.mkv`` for
    the default ffv1, the codec's container otherwise),
    ``groundTruth/<name>.txt`` (one class name per frame), ``mapping.txt`` (``index name``),
    ``splits/{train,test}.split1.bundle`` (``<name>.txt`` per line, as MS-TCN's loaders
    expect), and ``{train,test}.csv`` with ``video,start_s,end_s,label`` segment rows (video
    path relative to ``out_dir``, ends exclusive). Cues alternate a, b, a, ... in each split.

    ``twins``: videos ``2k`` and ``2k + 1`` of a split are the same video but for the cue (and
    so for the delayed segment's label). Then nothing but the cue can tell a model which
    label the delayed segment has: memorising the rest of a training video does not help.
    """
    if codec not in _EXT:
        raise ValueError(f"codec: expected one of {sorted(_EXT)}, got {codec!r}")
    if num_train < 0 or num_test < 0 or num_train + num_test == 0:
        raise ValueError(f"num_train/num_test: expected >= 0 and not both 0, got "
                         f"{num_train}, {num_test}")
    if not 0 < frames[0] <= frames[1]:
        raise ValueError(f"frames: expected (min, max) with 0 < min <= max, got {frames}")
    check_video_settings(frames[0], size, min_cue_distance, segment_frames)  # before writing
    root = Path(out_dir)
    ds = SegmentationDataset(root=root, fps=float(fps), video_ext=_EXT[codec])
    _write(root / "mapping.txt", "".join(f"{i} {c}\n" for i, c in enumerate(SEGMENT_CLASSES)))
    for split_id, (split, count) in enumerate((("train", num_train), ("test", num_test))):
        rows = io.StringIO()
        table = csv.writer(rows, lineterminator="\n")
        table.writerow(["video", "start_s", "end_s", "label"])
        names = getattr(ds, split)
        for i in range(count):
            rng = np.random.default_rng([seed, split_id, i // 2 if twins else i])
            length = int(rng.integers(frames[0], frames[1] + 1))
            video = render_segmentation_video(rng, length, "ab"[i % 2], size,
                                              min_cue_distance, segment_frames)
            name = f"{split}_{i:04d}"
            names.append(name)
            # bitexact: no random file id or date in the container, so bytes follow the seed.
            write_video(ds.video_path(name), video.frames, fps=fps, codec=codec,
                        container_options={"fflags": "+bitexact"})
            _write(root / "groundTruth" / f"{name}.txt",
                   "".join(f"{SEGMENT_CLASSES[k]}\n" for k in video.labels))
            for label, start, end in video.segments:
                table.writerow([ds.video_path(name).relative_to(root).as_posix(),
                                f"{start / fps:.4f}", f"{end / fps:.4f}", label])
        _write(root / "splits" / f"{split}.split1.bundle", "".join(f"{n}.txt\n" for n in names))
        _write(root / f"{split}.csv", rows.getvalue())
    return ds


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m spool.data.synthetic_segments OUT_DIR --train N --test M``."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=int, default=40)
    ap.add_argument("--test", type=int, default=12)
    ap.add_argument("--frames", type=int, nargs=2, default=(2400, 3000), metavar=("MIN", "MAX"))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--min-cue-distance", type=int, default=1600)
    ap.add_argument("--no-twins", dest="twins", action="store_false",
                    help="every video its own (no pairs that differ only in the cue)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        ds = make_segmentation_dataset(args.out_dir, args.train, args.test,
                                       frames=tuple(args.frames), size=args.size, fps=args.fps,
                                       min_cue_distance=args.min_cue_distance,
                                       twins=args.twins, seed=args.seed)
    except ValueError as err:  # settings no video can be made with: one line, not a traceback
        ap.error(str(err))
    print(f"wrote {len(ds.train)} train and {len(ds.test)} test videos to {ds.root}")


if __name__ == "__main__":
    main()
