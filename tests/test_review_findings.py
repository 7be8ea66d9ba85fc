"""Defects found in review, one test each (cache keys, interrupted outputs, sampling).

Each test states what is expected and why; a test of a defect not fixed yet is marked
``xfail(strict=True)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from spool.data.frame_cache import FrameTokenDataset, build_frame_cache
from spool.data.segmentation import SegmentationSample, read_segments_csv
from spool.models.frame_encoder import FrameEncoderModel
from spool.video import write_video
from spool.video.samplers import FpsSampler


class Killed(BaseException):
    """Stands for the process dying at this point (not an ``Exception``: nothing handles it)."""


def _video(path: Path, seed: int, n: int = 12) -> Path:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return write_video(path, frames, fps=10, codec="ffv1")


@pytest.fixture(scope="module")
def encoder() -> FrameEncoderModel:
    torch.manual_seed(0)
    return FrameEncoderModel(tiny_config()).eval()


# --- 1. cache invalidation ---------------------------------------------------------------------

def test_frame_cache_redoes_a_video_whose_labels_changed(tmp_path, encoder):
    """A frame cache stores each video's labels beside its tokens, so the labels are part of
    what the cached file depends on: after the annotations are corrected, re-running
    ``build_frame_cache`` into the same folder must store the new labels (module docstring:
    "Videos already cached with the same settings are kept" -- the labels are not the same).
    The per-video key held sampler, dtype, weights and frame-encoder fields, not the labels,
    so the stale labels were kept and training used them."""
    video = _video(tmp_path / "clip.mkv", 0)
    out = tmp_path / "cache"
    before = SegmentationSample("clip", str(video), segments=((0.0, 2.0, 0),))
    build_frame_cache(encoder, [before], ["a", "b"], out, FpsSampler(10), dtype="float32")
    fixed = SegmentationSample("clip", str(video), segments=((0.0, 2.0, 1),))
    build_frame_cache(encoder, [fixed], ["a", "b"], out, FpsSampler(10), dtype="float32")
    assert FrameTokenDataset(out)[0]["labels"].tolist() == [1] * 12


def test_frame_cache_keeps_videos_with_the_same_file_name_apart(tmp_path, encoder):
    """A segments CSV may name ``a/clip.mkv`` and ``b/clip.mkv`` (e.g. one folder per camera
    or per subject): two different videos. Both were named ``clip`` (the file stem), so the
    second found the first's ``videos/clip.safetensors`` "already cached" and the cache served
    video a's tokens and labels for video b. Each cached item must be its own video's."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _video(tmp_path / "a" / "clip.mkv", 1)
    _video(tmp_path / "b" / "clip.mkv", 2, n=8)
    (tmp_path / "s.csv").write_text("video,start_s,end_s,label\na/clip.mkv,0,2,x\n"
                                    "b/clip.mkv,0,2,y\n")
    samples, names = read_segments_csv(tmp_path / "s.csv")
    out = build_frame_cache(encoder, samples, names, tmp_path / "cache", FpsSampler(10),
                            dtype="float32")
    data = FrameTokenDataset(out)
    assert [len(data[i]["labels"]) for i in range(2)] == [12, 8]
    assert data[0]["labels"].tolist() == [0] * 12 and data[1]["labels"].tolist() == [1] * 8
