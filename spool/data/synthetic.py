"""Small synthetic video datasets whose labels can only be read from temporal order.

Classes come in time-reversed pairs ("left_to_right" / "right_to_left", "grow" / "shrink", ...):
for every video of one class there is a twin of the other class made of exactly the same frames
in reverse order. A model that pools frames without regard to order sees identical inputs for
the two twins and cannot beat chance; one that uses order can reach 100 %.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spool.video.writer import write_video

__all__ = [
    "DEFAULT_CLASSES",
    "TIME_REVERSED",
    "SyntheticDataset",
    "make_synthetic_dataset",
    "render_synthetic_clip",
]

# forward class -> (its time-reversed twin, what is rendered)
_FORWARD = {
    "left_to_right": ("right_to_left", "move_x"),
    "top_to_bottom": ("bottom_to_top", "move_y"),
    "grow": ("shrink", "grow"),
    "appear": ("disappear", "fade"),
}
TIME_REVERSED = {**{f: r for f, (r, _) in _FORWARD.items()},
                 **{r: f for f, (r, _) in _FORWARD.items()}}
DEFAULT_CLASSES = ("left_to_right", "right_to_left", "grow", "shrink")
_EXT = {"libx264": ".mp4", "ffv1": ".mkv", "libvpx-vp9": ".webm", "mpeg4": ".avi",
        "mjpeg": ".avi", "rawvideo": ".avi"}


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``grid`` [g, g, C] to [size, size, C] (two small matmuls)."""
    g = grid.shape[0]
    pos = np.linspace(0, g - 1, size)
    lo = np.minimum(pos.astype(int), g - 2)
    w = np.zeros((size, g))
    w[np.arange(size), lo] = 1 - (pos - lo)
    w[np.arange(size), lo + 1] = pos - lo
    return np.einsum("ia,abc,jb->ijc", w, grid, w)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient between two random colours plus smooth noise: [size, size, 3] float."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.clip((np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2, 0, 1)[..., None]
    noise = _upsample(rng.normal(0, rng.uniform(10, 35), (6, 6, 3)), size)
    return (1 - t) * c0 + t * c1 + noise


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if kind == "disk":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)


def render_synthetic_clip(forward_class: str, rng: np.random.Generator,
                          num_frames: int = 16, size: int = 64) -> np.ndarray:
    """Frames [T, size, size, 3] uint8 of a forward class ("left_to_right", "grow", ...).

    Shape kind, colour, size, start, speed and background are drawn from ``rng``. The twin
    class is this clip reversed: ``clip[::-1]``.
    """
    if forward_class not in _FORWARD:
        raise ValueError(f"forward_class: expected one of {sorted(_FORWARD)}, "
                         f"got {forward_class!r}")
    motion = _FORWARD[forward_class][1]
    bg = _background(rng, size)
    kind = rng.choice(["square", "disk"])
    colour = rng.uniform(0, 255, 3)
    if np.abs(colour - bg.mean((0, 1))).sum() < 150:  # keep the shape visible
        colour = 255 - colour
    t = np.linspace(0, 1, num_frames)
    r = rng.uniform(0.08, 0.16) * size
    lo, hi = r, size - r
    travel = rng.uniform(0.4, 0.9) * (hi - lo)
    start = rng.uniform(lo, hi - travel)
    cx = np.full(num_frames, rng.uniform(lo, hi))
    cy = np.full(num_frames, rng.uniform(lo, hi))
    radius = np.full(num_frames, r)
    alpha = np.ones(num_frames)
    if motion == "move_x":
        cx = start + travel * t
    elif motion == "move_y":
        cy = start + travel * t
    elif motion == "grow":
        r0, r1 = rng.uniform(0.04, 0.1) * size, rng.uniform(0.25, 0.4) * size
        radius = r0 + (r1 - r0) * t
        cx = np.full(num_frames, rng.uniform(r1, size - r1))
        cy = np.full(num_frames, rng.uniform(r1, size - r1))
    else:  # fade
        alpha = t
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for i in range(num_frames):
        m = _shape_mask(kind, size, cx[i], cy[i], radius[i])[..., None]
        img = np.where(m, alpha[i] * colour + (1 - alpha[i]) * bg, bg)
        frames[i] = np.clip(img, 0, 255).round().astype(np.uint8)
    return frames


@dataclass
class SyntheticDataset:
    """Where ``make_synthetic_dataset`` wrote what: (path, label name) pairs per split."""

    root: Path
    classes: list[str]
    train: list[tuple[Path, str]] = field(default_factory=list)
    val: list[tuple[Path, str]] = field(default_factory=list)


def make_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    num_videos_per_class: int,
    classes: Sequence[str] = DEFAULT_CLASSES,
    num_frames: int = 16,
    size: int = 64,
    seed: int = 0,
    codec: str = "libx264",
    fps: float = 8.0,
    val_fraction: float = 0.25,
) -> SyntheticDataset:
    """Write ``num_videos_per_class`` videos per class under ``out_dir``.

    Layout: ``videos/<class>/<class>_<i>.<ext>`` (one folder per class), ``classes.txt`` and
    ``train.txt`` / ``val.txt`` with lines ``videos/<class>/<file> <class>``. Video ``i`` of a
    class and video ``i`` of its time-reversed twin class hold the same frames in opposite
    order and go to the same split. Use ``codec="ffv1"`` for bit-exact (lossless) frames.
    The files are a pure function of the arguments: the same seed gives the same bytes.
    """
    classes = list(classes)
    if num_videos_per_class < 1:
        raise ValueError(f"num_videos_per_class: expected >= 1, got {num_videos_per_class}")
    if num_frames < 2 or size < 16:
        raise ValueError(f"num_frames >= 2 and size >= 16 expected, got {num_frames}, {size}")
    if codec not in _EXT:
        raise ValueError(f"codec: expected one of {sorted(_EXT)}, got {codec!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: expected a value in [0, 1), got {val_fraction}")
    for c in classes:
        if c not in TIME_REVERSED:
            raise ValueError(f"classes: unknown class {c!r}; known: {sorted(TIME_REVERSED)}")
        if TIME_REVERSED[c] not in classes:
            raise ValueError(f"classes: {c!r} needs its time-reversed twin "
                             f"{TIME_REVERSED[c]!r} in the list too")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected no duplicates, got {classes}")

    root = Path(out_dir)
    ds = SyntheticDataset(root=root, classes=classes)
    n_val = round(num_videos_per_class * val_fraction)
    for p, fwd in enumerate(f for f in _FORWARD if f in classes):
        rev = TIME_REVERSED[fwd]
        # Per-pair permutation: which twins are held out; both members go to the same split.
        val_ids = set(np.random.default_rng([seed, p, 1]).permutation(num_videos_per_class)
                      [:n_val].tolist())
        for i in range(num_videos_per_class):
            rng = np.random.default_rng([seed, p, 0, i])
            frames = render_synthetic_clip(fwd, rng, num_frames, size)
            for label, clip in ((fwd, frames), (rev, frames[::-1])):
                rel = Path("videos", label, f"{label}_{i:04d}{_EXT[codec]}")
                # deterministic: the same seed gives the same bytes in every run and process
                _write_unless_same(root / rel, clip, fps=fps, codec=codec)
                (ds.val if i in val_ids else ds.train).append((root / rel, label))
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for split, items in (("train", ds.train), ("val", ds.val)):
        lines = [f"{path.relative_to(root).as_posix()} {label}\n" for path, label in items]
        (root / f"{split}.txt").write_text("".join(lines))
    return ds


def _write_unless_same(path: Path, clip: np.ndarray, **kwargs: Any) -> None:
    """Write the video, but keep a file of the same bytes as it is: its modification time
    then still says it is the video a token cache holds (a rerun re-encoded every video)."""
    new = path.with_name(f".{path.stem}.new{path.suffix}")  # the suffix names the container
    try:
        write_video(new, clip, deterministic=True, **kwargs)
        if path.is_file() and path.read_bytes() == new.read_bytes():
            new.unlink()
        else:
            os.replace(new, path)
    except BaseException:  # no half-written video left where folder scans would find it
        new.unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m spool.data.synthetic OUT_DIR --per-class N``: write a demo dataset."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out_dir")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES))
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--codec", default="libx264", choices=sorted(_EXT))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    ds = make_synthetic_dataset(args.out_dir, args.per_class, args.classes, args.num_frames,
                                args.size, args.seed, args.codec)
    print(f"wrote {len(ds.train)} train and {len(ds.val)} val videos to {ds.root}")


if __name__ == "__main__":
    main()
