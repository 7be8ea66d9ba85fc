"""A video file cut short (a partial download) is reported and left out by both token caches,
as `spool extract` reports it: they had cached it as a shorter video, without a word."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from train_helpers import TINY_BACKBONE, tiny_video_dataset

from spool.cli import main
from spool.video import write_video

MODEL = ["--model", "image_size=32", "--model", "backbone_config=" + json.dumps(TINY_BACKBONE)]


def _whole_and_cut(folder: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    write_video(folder / "whole.mkv", frames, fps=10, codec="ffv1")  # 4 s
    data = (folder / "whole.mkv").read_bytes()
    (folder / "cut.mkv").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("task", ["frames", "clips"])
def test_a_cut_video_is_a_failure_of_the_cache(tmp_path: Path, task: str, capsys) -> None:
    _whole_and_cut(tmp_path)
    if task == "frames":
        (tmp_path / "segs.csv").write_text(
            "video,start_s,end_s,label\nwhole.mkv,0,2,a\nwhole.mkv,2,4,b\n"
            "cut.mkv,0,2,a\ncut.mkv,2,4,b\n")
        args = ["cache", "--task", "frames", "--data", str(tmp_path / "segs.csv"), "--fps", "2"]
    else:
        shutil.copy(tiny_video_dataset() / "classes.txt", tmp_path / "classes.txt")
        label = (tmp_path / "classes.txt").read_text().split()[0]
        (tmp_path / "list.txt").write_text(f"whole.mkv {label}\ncut.mkv {label}\n")
        args = ["cache", "--data", str(tmp_path / "list.txt"), "--num-frames", "4",
                "--num-workers", "0"]
    assert main([*args, "--out", str(tmp_path / "c"), *MODEL, "--quiet"]) == 1
    failures = (tmp_path / "c" / "failures.csv").read_text()
    assert "cut.mkv" in failures and "whole.mkv" not in failures
    assert "truncated: the container declares 4.00 s but frames end at" in failures


def test_a_cut_video_is_left_out_of_frame_training_and_evaluation(tmp_path: Path) -> None:
    """The per-frame paths on video files: the training set and the evaluation take it for
    unreadable (reported, skipped) instead of a shorter video."""
    from conftest import tiny_config

    from spool.data.frame_cache import VideoFrameDataset
    from spool.data.segmentation import read_segments_csv
    from spool.models.frame_classification import SpoolForFrameClassification
    from spool.train.segmentation_eval import evaluate_segmentation
    from spool.video.samplers import FpsSampler

    _whole_and_cut(tmp_path)
    (tmp_path / "segs.csv").write_text("video,start_s,end_s,label\nwhole.mkv,0,2,a\n"
                                       "whole.mkv,2,4,b\ncut.mkv,0,2,a\ncut.mkv,2,4,b\n")
    samples, names = read_segments_csv(tmp_path / "segs.csv")
    model = SpoolForFrameClassification(tiny_config(class_names=names)).eval()
    data = VideoFrameDataset(samples, names, FpsSampler(2), model.config.preprocessing())
    cut = [i for i, s in enumerate(samples) if s.video.endswith("cut.mkv")][0]
    item = data[cut]
    assert item.get("unreadable") and "truncated" in item["skipped"][0].message
    result = evaluate_segmentation(model, samples, sampler=FpsSampler(2))
    assert [Path(s.path).name for s in result.skipped] == ["cut.mkv"]
    assert "truncated" in result.skipped[0].message
