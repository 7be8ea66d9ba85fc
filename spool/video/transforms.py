"""Bringing frames to the model's square input: one preprocessing policy, one augmentation hook.

Every path that feeds a model (training, evaluation, caching, extraction, long videos) turns
decoded frames ``[T, H, W, 3]`` into ``[T, S, S, 3]`` with :class:`FramePreprocessing`, so the
same video gives the same backbone input wherever it comes from; frames already ``S x S`` are
used as they are, on every path. A transform picks a box in the
frame and resizes it (antialiased bilinear); uint8 frames stay uint8 (rounded), as an image
processor's resize does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spool.validation import FLOATS

RESIZE_MODES = ("center_crop", "squash", "pad")
PREPROCESSING_REVISION = 2


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def check_frames(frames: torch.Tensor) -> None:
    """``frames: [T, H, W, 3]``, uint8 or floating point, with T, H, W >= 1."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames)
        raise ValueError(f"frames: expected a tensor [T, H, W, 3], got {shape}")
    if 0 in frames.shape:
        raise ValueError(f"frames: expected T, H, W >= 1, got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8 and frames.dtype not in FLOATS:
        raise ValueError(f"frames: expected uint8 or floating point (float16, bfloat16, "
                         f"float32, float64), got {frames.dtype}")


@dataclass(frozen=True)
class Box:
    """A rectangle of a frame, in pixels."""

    top: int
    left: int
    height: int
    width: int


def center_crop_box(height: int, width: int, crop_pct: float, size: int | None = None) -> Box:
    """The centred square of side ``crop_pct * min(height, width)`` (DINOv2's processor:
    resize the shorter side to ``S / crop_pct``, then centre-crop ``S``).

    With ``size`` (``S``), the box is the one that processor's arithmetic gives, mapped back to
    the frame: its long side is truncated to whole pixels and its crop starts at
    ``(resized - S) // 2``, so its square sits up to half a resized pixel off centre (about 2
    pixels of a 1080p frame), and this box follows it to within half a pixel."""
    short = min(height, width)
    edge = size / crop_pct if size is not None else 0.5  # the processor's shortest_edge
    if abs(edge - round(edge)) > 1e-6:  # no processor with whole-pixel sizes: centred exactly
        side = max(1, min(short, round(short * crop_pct)))
        return Box((height - side) // 2, (width - side) // 2, side, side)
    edge = max(size, round(edge))
    resized = [edge, edge]
    if height != width:  # the long side, truncated as the processor's resize does
        i = 0 if height > width else 1
        resized[i] = max(size, int(edge * max(height, width) / short))
    (rh, rw) = resized
    h = max(1, min(height, round(size * height / rh)))
    w = max(1, min(width, round(size * width / rw)))
    top = min(height - h, round((rh - size) // 2 * height / rh))
    left = min(width - w, round((rw - size) // 2 * width / rw))
    return Box(top, left, h, w)


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> Box:
    """A box covering ``scale`` of the area at aspect ``ratio`` (torchvision's
    RandomResizedCrop, with a centred square as fallback)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return Box(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)),
                       h, w)
    return center_crop_box(height, width, 1.0)


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[T, h, w, 3]`` -> ``[T, height, width, 3]``, same dtype (uint8 rounded)."""
    if frames.shape[1:3] == (height, width):
        return frames
    x = frames.permute(0, 3, 1, 2)
    # uint8, and half precision (no antialiased resize kernel for it on the CPU), in fp32.
    x = x.float() if frames.dtype in (torch.uint8, torch.float16, torch.bfloat16) else x
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True,
                      align_corners=False)
    if frames.dtype == torch.uint8:
        x = x.round().clamp(0, 255).to(torch.uint8)
    else:
        x = x.clamp(0, 1).to(frames.dtype)
    return x.permute(0, 2, 3, 1).contiguous()


def resize_box(frames: torch.Tensor, box: Box, size: int, pad: bool = False) -> torch.Tensor:
    """``frames [T, H, W, 3]`` (uint8 or float) cropped to ``box`` -> ``[T, size, size, 3]``.

    ``pad``: keep the box's aspect ratio (longer side ``size``) and centre it on black.
    """
    crop = frames[:, box.top:box.top + box.height, box.left:box.left + box.width]
    if not pad:
        return _resize(crop, size, size)
    scale = size / max(box.height, box.width)
    h, w = max(1, round(box.height * scale)), max(1, round(box.width * scale))
    out = frames.new_zeros(frames.shape[0], size, size, 3)
    top, left = (size - h) // 2, (size - w) // 2
    out[:, top:top + h, left:left + w] = _resize(crop, h, w)
    return out


@dataclass(frozen=True)
class FramePreprocessing:
    """The policy that brings frames to ``image_size x image_size``.

    ``resize_mode``: ``center_crop`` (the centred square of ``crop_pct`` of the shorter side,
    as DINOv2's image processor does), ``squash`` (the whole frame, aspect ratio changed) or
    ``pad`` (the whole frame, longer side fitted, centred on black). ``revision``: which
    version of these rules; the token caches and extraction outputs key on this object's
    fields, so a change of rules (2: the centre crop follows the processor's arithmetic)
    rebuilds them instead of reusing tokens made the old way.
    """

    image_size: int
    resize_mode: str = "center_crop"
    crop_pct: float = 0.875
    revision: int = PREPROCESSING_REVISION

    def __post_init__(self) -> None:
        if not _is_int(self.image_size) or self.image_size < 1:
            raise ValueError(f"image_size: expected a positive integer, got {self.image_size!r}")
        if not isinstance(self.resize_mode, str) or self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode: expected one of {RESIZE_MODES}, got "
                             f"{self.resize_mode!r}")
        if not _is_number(self.crop_pct) or not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct: expected a fraction in (0, 1], got {self.crop_pct!r}")
        if self.revision != PREPROCESSING_REVISION:
            raise ValueError(f"revision: this version of spool has the rules of revision "
                             f"{PREPROCESSING_REVISION}, got {self.revision!r}")

    def box(self, height: int, width: int) -> Box:
        if self.resize_mode == "center_crop":
            return center_crop_box(height, width, self.crop_pct, self.image_size)
        return Box(0, 0, height, width)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames: [T, H, W, 3]`` uint8 or float in [0, 1] -> ``[T, S, S, 3]``, same dtype.

        Frames already ``S x S`` are returned as they are: the model's own entry points take
        such frames as preprocessed, and every path must agree with them."""
        check_frames(frames)
        if frames.shape[1:3] == (self.image_size, self.image_size):
            return frames
        box = self.box(frames.shape[1], frames.shape[2])
        return resize_box(frames, box, self.image_size, pad=self.resize_mode == "pad")


@dataclass(frozen=True)
class RandomResizedCrop:
    """Training augmentation: one random box (and, with ``hflip``, one coin flip) for every
    frame of a clip. Flips are off by default: they turn left-to-right motion into
    right-to-left."""

    crop_scale: tuple[float, float] = (0.4, 1.0)
    hflip: bool = False

    def __post_init__(self) -> None:
        scale = self.crop_scale
        if (not isinstance(scale, (tuple, list)) or len(scale) != 2
                or not all(_is_number(v) for v in scale) or not 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"crop_scale: expected (min, max) with 0 < min <= max <= 1, got "
                             f"{scale!r}")
        if not isinstance(self.hflip, bool):
            raise ValueError(f"hflip: expected true or false, got {self.hflip!r}")

    def __call__(self, frames: torch.Tensor, size: int, rng: np.random.Generator
                 ) -> torch.Tensor:
        """``frames: [T, H, W, 3]`` -> ``[T, size, size, 3]``, drawing from ``rng``."""
        check_frames(frames)
        if not _is_int(size) or size < 1:
            raise ValueError(f"size: expected a positive integer, got {size!r}")
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: expected a numpy.random.Generator, got {rng!r}")
        box = random_resized_crop_box(frames.shape[1], frames.shape[2], rng,
                                      tuple(self.crop_scale))
        frames = resize_box(frames, box, size)
        if self.hflip and rng.random() < 0.5:
            frames = frames.flip(2)
        return frames
