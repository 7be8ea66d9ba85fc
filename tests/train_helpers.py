"""Shared tiny fixtures for the training tests: a lossless synthetic dataset, tiny configs."""

from __future__ import annotations

import csv
import functools
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from spool.data.synthetic import make_synthetic_dataset
from spool.data.synthetic_segments import make_segmentation_dataset

TINY_BACKBONE = dict(model_type="dinov2", hidden_size=24, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=48, patch_size=8, image_size=32)
TINY_MODEL = dict(num_hidden_layers=1, num_attention_heads=4, num_lookback_heads=2,
                  num_lookahead_heads=2, local_frame_range=2, image_size=32,
                  backbone_config=TINY_BACKBONE)
TEMPORAL_FIELDS = ("num_hidden_layers", "num_attention_heads", "num_lookback_heads",
                   "num_lookahead_heads", "local_frame_range")


@functools.cache
def segmentation_videos(frames: tuple[int, int], segment_frames: tuple[int, int]) -> Path:
    """4 + 2 lossless 32x32 segmentation videos of ``frames`` (min, max) frames at 15 fps,
    segments of ``segment_frames`` frames (made once per setting)."""
    root = Path(tempfile.mkdtemp(prefix="spool-test-seg-"))
    make_segmentation_dataset(root, 4, 2, frames=frames, size=32, fps=15.0,
                              min_cue_distance=20, segment_frames=segment_frames, seed=2)
    return root


@functools.cache
def tiny_video_dataset() -> Path:
    """16 train + 8 val lossless 8-frame 32x32 videos of 4 time-reversal classes (made once)."""
    root = Path(tempfile.mkdtemp(prefix="spool-test-data-"))
    make_synthetic_dataset(root, num_videos_per_class=6, num_frames=8, size=32, codec="ffv1",
                           val_fraction=1 / 3, seed=1)
    return root


def read_steps(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "steps.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def read_epochs(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def train_config_dict(out: Path, **changes) -> dict:
    """The fields of a tiny, quick training run on :func:`tiny_video_dataset` into ``out``
    (8 steps: 2 epochs of 4 batches of 4)."""
    root = tiny_video_dataset()
    base = dict(out_dir=str(out), train_data=str(root / "train.txt"),
                val_data=str(root / "val.txt"), model=dict(TINY_MODEL), num_frames=4,
                epochs=2, batch_size=4, lr=3e-3, warmup_epochs=0.5, num_workers=0,
                tensorboard=False, quiet=True, seed=3)
    base.update(changes)
    return base
