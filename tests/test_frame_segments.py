"""``NAME.segments.csv`` of `spool extract` with a frame classifier: each segment ends at the
next sampled frame's time, the last one sampling step after its frame, but not past the
video's end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from spool.extract import FeatureExtractor
from spool.extract_inputs import plan_jobs
from spool.models.frame_classification import SpoolForFrameClassification
from spool.video import write_video
from spool.video.samplers import FpsSampler, StrideSampler, UniformSampler


@pytest.mark.parametrize("sampler, step", [
    (FpsSampler(0.5), 1.2),  # 1 / fps, 2 s, cut at the 1.2 s video's end
    (FpsSampler(5, max_frames=1), 0.2),
    (StrideSampler(20), 1.2),  # stride / the video's 10 fps, 2 s, cut likewise
    (UniformSampler(1), 0.1),  # one frame of the video
])
def test_one_sampled_frame_gives_a_segment_of_one_step(tmp_path: Path, sampler,
                                                       step: float) -> None:
    """With one frame sampled the step was taken as 0.0: a segment from t to t."""
    frames = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")
    torch.manual_seed(0)
    model = SpoolForFrameClassification(tiny_config(class_names=["a", "b"])).eval()
    FeatureExtractor(model, sampler).run(plan_jobs([video], tmp_path / "out"), progress=False)
    with open(tmp_path / "out" / "v.segments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert float(rows[0]["end_s"]) - float(rows[0]["start_s"]) == pytest.approx(step, abs=1e-4)


def test_the_last_segment_ends_with_the_video(tmp_path: Path) -> None:
    """One step after the last sampled frame overshot the video: 80.0 s for a 79.5 s one."""
    frames = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")  # 1.2 s
    model = SpoolForFrameClassification(tiny_config(class_names=["a", "b"])).eval()
    FeatureExtractor(model, FpsSampler(1)).run(plan_jobs([video], tmp_path / "out"),
                                               progress=False)  # frames at 0 and 1.0 s
    with open(tmp_path / "out" / "v.segments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["end_s"]) == pytest.approx(1.2, abs=1e-4)  # not 1.0 + 1.0


@pytest.mark.parametrize("sampler, end", [
    (FpsSampler(30), 0.4),  # above the 25 fps video's rate: frames 0 and 1 were the first two
    (UniformSampler(16), 0.4),  # more frames than the video's 10
    (FpsSampler(20), 0.37),  # below it: one sampling step (0.05 s) after the last frame's 0.32
])
def test_repeated_frames_do_not_shorten_the_last_segment(tmp_path: Path, sampler,
                                                         end: float) -> None:
    """The step was the first two frames' gap, 0 when they were one frame: the last segment
    ended where it started, or 0.04 s early."""
    frames = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mkv", frames, fps=25, codec="ffv1")  # 0.4 s
    torch.manual_seed(0)
    model = SpoolForFrameClassification(tiny_config(class_names=["a"])).eval()  # one segment
    FeatureExtractor(model, sampler).run(plan_jobs([video], tmp_path / "out"), progress=False)
    with open(tmp_path / "out" / "v.segments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["start_s"], float(r["end_s"])) for r in rows] == [("0.0000", pytest.approx(end))]


def test_copies_of_a_frame_predicted_apart_leave_no_empty_segment() -> None:
    """Sampled above the video's rate, frame 0.1 s comes twice; its first copy predicted "b"
    gave the row 0.1000,0.1000,b (refused by read_segments_csv when read back). The time's
    last copy holds it, and the runs on either side join."""
    from spool.extract_frames import segment_rows

    times = torch.tensor([0.0, 0.1, 0.1, 0.2], dtype=torch.float64)
    ends = torch.tensor([0.1, 0.1, 0.2, 0.3], dtype=torch.float64)
    score = torch.tensor([0.9, 0.5, 0.7, 0.8])
    rows = segment_rows(torch.tensor([0, 1, 0, 0]), score, times, ends, ["a", "b"])
    assert rows == [["0.0000", "0.3000", "a", "0.8000"]]  # (0.9 + 0.7 + 0.8) / 3
    # The last copy's label is the time's; a run that holds only a first copy is gone.
    rows = segment_rows(torch.tensor([0, 0, 1, 1]), score, times, ends, ["a", "b"])
    assert rows == [["0.0000", "0.1000", "a", "0.9000"], ["0.1000", "0.3000", "b", "0.7500"]]
    # A last frame at the video's declared end (its segment cut to nothing) gives no row.
    at_end = torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64)
    rows = segment_rows(torch.tensor([0, 0, 0, 1]), score, times, at_end, ["a", "b"])
    assert rows == [["0.0000", "0.2000", "a", "0.8000"]]


def test_a_copy_predicted_apart_reads_back(tmp_path: Path, monkeypatch) -> None:
    """End to end: frames repeated at 30 fps of a 10 fps video, one copy predicted apart;
    the CSV reads back as a segments CSV and covers the video once."""
    from spool.data.segmentation import read_segments_csv

    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")
    torch.manual_seed(0)
    model = SpoolForFrameClassification(tiny_config(class_names=["a", "b"])).eval()
    real = model.predict_long

    def one_copy_apart(*args, **kwargs):
        out = real(*args, **kwargs)
        logits = torch.zeros_like(out.logits)
        logits[:, 0] = 1.0
        logits[int((out.frame_indices == 2).nonzero()[0]), :] = torch.tensor([0.0, 1.0])
        return out._replace(logits=logits)

    monkeypatch.setattr(model, "predict_long", one_copy_apart)
    FeatureExtractor(model, FpsSampler(30)).run(plan_jobs([video], tmp_path / "out"),
                                                progress=False)
    with open(tmp_path / "out" / "v.segments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["end_s"]) > float(r["start_s"]) for r in rows)
    assert [r["label"] for r in rows] == ["a"]
    with open(tmp_path / "back.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "start_s", "end_s", "label"])
        writer.writerows([str(video), r["start_s"], r["end_s"], r["label"]] for r in rows)
    samples, _ = read_segments_csv(tmp_path / "back.csv", ["a", "b"])
    assert samples[0].segments == ((0.0, 0.6, 0),)
