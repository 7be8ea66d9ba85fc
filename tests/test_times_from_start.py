"""Times written for people (``NAME.segments.csv`` of `spool extract`, ``time_s`` of `spool
eval`'s predictions) count from the video's first frame, as the labels of a segments CSV do,
not from the file's pts: they differ by the video's start time (here 1.5 s, as an MPEG-TS
file or an MP4 with an edit list may have)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from train_helpers import TINY_MODEL

from spool.cli import main
from spool.data.segmentation import read_segments_csv
from spool.extract import FeatureExtractor
from spool.extract_inputs import plan_jobs
from spool.models.frame_classification import SpoolForFrameClassification
from spool.video import write_video
from spool.video.io import probe_video
from spool.video.samplers import FpsSampler

START = 1.5


@pytest.fixture
def late_video(tmp_path: Path) -> Path:
    """24 frames at 10 fps whose first frame is shown at 1.5 s, and its labels (a, then b)."""
    frames = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1",
                        timestamps=[START + i / 10 for i in range(24)])
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\nv.mkv,0,1.2,a\n"
                                         "v.mkv,1.2,2.4,b\n")
    return video


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_segments_csv_reads_back_as_the_labels_it_predicted(tmp_path: Path, late_video):
    assert probe_video(late_video).start_time == pytest.approx(START)
    torch.manual_seed(3)
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=["a", "b"]).eval()
    FeatureExtractor(model, FpsSampler(5)).run(plan_jobs([late_video], tmp_path / "out"),
                                               progress=False)
    rows = _rows(tmp_path / "out" / "v.segments.csv")
    assert float(rows[0]["start_s"]) == pytest.approx(0.0, abs=1e-4)  # was 1.5
    assert float(rows[-1]["end_s"]) == pytest.approx(2.4, abs=1e-4)  # the video's end
    with safe_open(str(tmp_path / "out" / "v.safetensors"), framework="pt") as f:
        labels, indices, stamps = (f.get_tensor(k) for k in
                                   ("labels", "frame_indices", "timestamps"))
    assert float(stamps[0]) == pytest.approx(START)  # the tensors keep the pts
    with open(tmp_path / "back.csv", "w", newline="") as f:
        table = csv.writer(f)
        table.writerow(["video", "start_s", "end_s", "label"])
        table.writerows([str(late_video), r["start_s"], r["end_s"], r["label"]] for r in rows)
    (sample,), _ = read_segments_csv(tmp_path / "back.csv", ["a", "b"])
    back = sample.labels_at(indices.numpy(), stamps.numpy(), START)
    assert back.tolist() == labels.tolist()


def test_eval_time_s_counts_from_the_first_frame(tmp_path: Path, late_video, capsys):
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=["a", "b"])
    model.config.sampling = {"name": "fps", "target_fps": 5.0}
    model.save_pretrained(tmp_path / "model")
    data, cache = tmp_path / "labels.csv", tmp_path / "cache"
    assert main(["cache", "--task", "frames", "--data", str(data), "--fps", "5", "--out",
                 str(cache), "--init", str(tmp_path / "model"), "--quiet"]) == 0

    def times(source: str, where: Path) -> list[str]:
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        assert main(["eval", "--checkpoint", str(tmp_path / "model"), source, str(where),
                     "--out", str(out)]) == 0
        return [r["time_s"] for r in _rows(out / "predictions" / "v.csv")]

    expected = [f"{i / 5:.4f}" for i in range(12)]
    assert times("--data", data) == expected
    assert times("--cache", cache) == expected
    # A cache written before it kept the start time: read from the video instead.
    file = cache / "videos" / "v.safetensors"
    with safe_open(str(file), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    del tensors["start_time"]
    save_file(tensors, str(file), metadata=metadata)
    assert times("--cache", cache) == expected
    late_video.rename(late_video.with_suffix(".gone"))  # and where that can't be read
    capsys.readouterr()
    assert times("--cache", cache) == [""] * 12
    assert "the frame cache predates start times" in capsys.readouterr().err


def test_validation_on_an_older_cache_does_not_probe_the_videos(tmp_path: Path, late_video,
                                                                monkeypatch):
    """Training's validation (keep=False writes no times) probed each video of a cache that
    predates start times, at every evaluation, and warned about times it never writes."""
    from spool.data.frame_cache import FrameTokenDataset
    from spool.train import segmentation_eval as se

    model = SpoolForFrameClassification(**TINY_MODEL, class_names=["a", "b"])
    model.config.sampling = {"name": "fps", "target_fps": 5.0}
    model.save_pretrained(tmp_path / "model")
    cache = tmp_path / "cache"
    assert main(["cache", "--task", "frames", "--data", str(tmp_path / "labels.csv"), "--fps",
                 "5", "--out", str(cache), "--init", str(tmp_path / "model"), "--quiet"]) == 0
    file = cache / "videos" / "v.safetensors"
    with safe_open(str(file), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    del tensors["start_time"]
    save_file(tensors, str(file), metadata=metadata)
    probes = []
    monkeypatch.setattr(se, "probe_video", lambda path: probes.append(path) or probe_video(path))
    se.evaluate_segmentation(model, FrameTokenDataset(cache), keep=False)
    assert probes == []
    result = se.evaluate_segmentation(model, FrameTokenDataset(cache), keep=True)
    assert len(probes) == 1 and result.videos["v"].times[0] == pytest.approx(0.0)


def test_eval_labels_frames_on_the_videos_clock_and_predicts_the_most_likely_class(
        tmp_path: Path, late_video) -> None:
    """`spool eval` on video files: a frame shown at pts 1.5 + t is labelled with the CSV's
    label at t (6 frames of a, then 6 of b at 5 fps), and each frame's prediction is the
    class of highest probability, with that probability as its score."""
    from spool.train.segmentation_eval import evaluate_segmentation

    torch.manual_seed(3)
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=["a", "b"]).eval()
    samples, _ = read_segments_csv(tmp_path / "labels.csv", ["a", "b"])
    sampler = FpsSampler(5)
    result = evaluate_segmentation(model, samples, sampler=sampler, keep=True)
    (video,) = result.videos.values()
    assert video.target.tolist() == [0] * 6 + [1] * 6
    probs = model.predict_long(late_video, sampler=sampler).logits.softmax(-1)
    assert video.pred.tolist() == probs.argmax(-1).tolist()
    np.testing.assert_allclose(video.score, probs.amax(-1).numpy(), rtol=1e-6)
    accuracy = 100 * np.mean(video.pred == video.target)
    assert result.scores["accuracy"] == pytest.approx(accuracy)
