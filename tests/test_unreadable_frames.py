"""The frames task, like the clip task: a video that cannot be read is reported on one line
and skipped. `spool cache --task frames` lists it and exits 1, training on videos takes the
next readable video in its place, evaluation leaves it out of the metrics and counts it."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from train_helpers import TINY_BACKBONE, TINY_MODEL, read_steps, segmentation_videos

from spool.cli import main
from spool.data.frame_cache import FrameTokenDataset
from spool.data.segmentation import read_segments_csv
from spool.models.frame_classification import SpoolForFrameClassification
from spool.train.config import TrainConfig
from spool.train.trainer import train


def _segments() -> Path:
    """4 + 2 lossless 32x32 videos of 300-320 frames at 15 fps (made once); sampled at 5."""
    return segmentation_videos((300, 320), (10, 20))


def _csv_with_a_bad_video(folder: Path, split: str) -> tuple[Path, Path]:
    """``split``'s segments CSV with a text file named .mkv listed after its first video."""
    root = _segments()
    folder.mkdir(parents=True, exist_ok=True)
    bad = folder / "text.mkv"
    bad.write_text("not a video\n")
    with open(root / f"{split}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["video"] = str(root / row["video"])
    first = [r for r in rows if r["video"] == rows[0]["video"]]
    bad_row = {"video": str(bad), "start_s": "0", "end_s": "2", "label": rows[0]["label"]}
    listed = folder / f"{split}.csv"
    with open(listed, "w", newline="") as f:
        table = csv.DictWriter(f, ["video", "start_s", "end_s", "label"])
        table.writeheader()
        table.writerows([*first, bad_row, *rows[len(first):]])
    return listed, bad


def test_cache_frames_lists_the_bad_video_and_exits_1(tmp_path: Path, capsys) -> None:
    data, bad = _csv_with_a_bad_video(tmp_path, "train")
    out = tmp_path / "cache"
    argv = ["cache", "--task", "frames", "--data", str(data), "--fps", "5", "--out", str(out),
            "--model", "image_size=32", "--model",
            "backbone_config=" + json.dumps(TINY_BACKBONE), "--dtype", "float32", "--quiet"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    failed = [line for line in captured.err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {bad}: VideoDecodeError: ")
    assert "cached every frame at 5 fps of 4 videos" in captured.out
    assert (f"1 of 5 videos could not be read and are not in the cache; listed in "
            f"{out / 'failures.csv'}") in captured.err
    assert "Traceback" not in captured.err
    meta = json.loads((out / "cache.json").read_text())
    assert len(meta["videos"]) == 4 and str(bad) not in [v["video"] for v in meta["videos"]]
    assert [f[:2] for f in meta["failures"]] == [[str(bad), "VideoDecodeError"]]
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "error", "message"] and rows[1][:2] == [str(bad),
                                                                       "VideoDecodeError"]
    assert len(FrameTokenDataset(out)) == 4  # the cache trains as it is
    assert main(argv) == 1  # the readable videos are kept; the bad one is tried again


def test_training_on_frames_takes_the_next_video_and_evaluation_skips(tmp_path: Path,
                                                                      spool_log) -> None:
    train_data, bad_train = _csv_with_a_bad_video(tmp_path / "train", "train")
    val_data, bad_val = _csv_with_a_bad_video(tmp_path / "val", "test")

    def run(out: Path) -> list[dict]:
        return train(TrainConfig(
            task="frames", out_dir=str(out), train_data=str(train_data),
            val_data=str(val_data), fps=5.0, crop_frames=32, model=dict(TINY_MODEL),
            epochs=2, batch_size=5, lr=3e-3, warmup_epochs=0.5, num_workers=0,
            tensorboard=False, quiet=True, seed=3))

    rows = run(tmp_path / "run")
    assert len(rows) == 2 and len(read_steps(tmp_path / "run")) == 2  # one batch of 5
    assert all(0 <= row["val_f1@50"] <= 100 for row in rows)
    warnings = [r.message for r in spool_log.records if r.levelno == logging.WARNING]
    assert sum(w.startswith(f"skipping {bad_train}: VideoDecodeError") for w in warnings) == 1
    assert sum(w.startswith(f"skipping {bad_val}: VideoDecodeError") for w in warnings) == 2
    rows_again = run(tmp_path / "again")  # which video stands in depends only on the files
    assert read_steps(tmp_path / "again") == read_steps(tmp_path / "run")
    assert rows_again[-1]["val_acc"] == rows[-1]["val_acc"]


def test_eval_of_a_frame_classifier_skips_and_counts_the_bad_video(tmp_path: Path,
                                                                   capsys) -> None:
    data, bad = _csv_with_a_bad_video(tmp_path, "test")
    _, names = read_segments_csv(_segments() / "train.csv")
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "fps", "target_fps": 5.0}
    model.save_pretrained(tmp_path / "model")
    stale = tmp_path / "ev" / "predictions" / f"{bad.stem}.csv"  # an earlier run's, readable
    stale.parent.mkdir(parents=True)
    stale.write_text("frame_index,time_s,label,prediction,score\n")
    mine = stale.with_name("my_notes.csv")  # a user's file: not listed, kept
    mine.write_text("notes\n")
    (tmp_path / "ev" / "metrics.json").write_text(json.dumps({"predicted": [bad.stem]}))
    capsys.readouterr()  # what making the model said (the classes of its training CSV)
    assert main(["eval", "--checkpoint", str(tmp_path / "model"), "--data", str(data),
                 "--out", str(tmp_path / "ev")]) == 0
    assert not stale.exists() and mine.exists()  # it would read as this run's
    printed = capsys.readouterr()
    assert printed.out.startswith("videos: 2 (1 unreadable, skipped)   frame accuracy: ")
    lines = [line.replace("\x1b[A", "").strip()
             for line in printed.err.replace("\r", "\n").splitlines()]
    said = [line for line in lines if line and "%|" not in line]  # beside the progress bars
    assert len(said) == 1 and said[0].startswith(f"skipping {bad}: VideoDecodeError: "), lines
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["videos"] == 2 and report["skipped"] == 1
    assert report["skipped_videos"][0][:2] == [str(bad), "VideoDecodeError"]
    assert len(list((tmp_path / "ev" / "predictions").glob("test_*.csv"))) == 2


def test_a_report_with_nothing_scored_keeps_the_earlier_predictions(tmp_path: Path) -> None:
    """It records what it skipped, keeps an earlier run's predictions (and their list, for
    the next run that scores), and trusts no odd list from a hand-edited metrics.json."""
    from spool.data.dataset import SkippedVideo
    from spool.metrics.segmentation import SegmentationMetrics
    from spool.train.segmentation_eval import (
        SegmentationResult,
        _predicted,
        write_segmentation_report,
    )

    out = tmp_path / "ev"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "v1.csv").write_text("kept\n")
    (out / "metrics.json").write_text(json.dumps({"predicted": ["v1"]}))
    result = SegmentationResult(SegmentationMetrics(), skipped=[
        SkippedVideo(0, "bad.mp4", "VideoDecodeError", "damaged")], num_skipped=1)
    write_segmentation_report(result, ["a", "b"], out, "model")
    report = json.loads((out / "metrics.json").read_text())
    assert report["skipped"] == 1 and report["predicted"] == ["v1"]
    assert (out / "predictions" / "v1.csv").exists()
    for odd in (5, "ab", ["../x", "a/b", "c\0d", "", ".."]):
        (out / "metrics.json").write_text(json.dumps({"predicted": odd}))
        assert _predicted(out / "metrics.json") == []


def test_eval_on_a_frame_cache_writes_each_frames_index_and_time(tmp_path: Path) -> None:
    """predictions/<video>.csv from --cache had empty frame_index and time_s columns, though
    the cache holds both: they now read as from the videos (--data)."""
    data = _segments() / "test.csv"
    _, names = read_segments_csv(_segments() / "train.csv")
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "fps", "target_fps": 5.0}
    model.save_pretrained(tmp_path / "model")
    assert main(["cache", "--task", "frames", "--data", str(data), "--fps", "5", "--out",
                 str(tmp_path / "cache"), "--init", str(tmp_path / "model"), "--quiet"]) == 0
    for source in ("--cache", "--data"):
        where = tmp_path / "cache" if source == "--cache" else data
        assert main(["eval", "--checkpoint", str(tmp_path / "model"), source, str(where),
                     "--out", str(tmp_path / source.strip("-"))]) == 0
    files = sorted((tmp_path / "data" / "predictions").glob("*.csv"))
    assert len(files) == 2
    for path in files:
        with open(path, newline="") as f:
            from_data = list(csv.DictReader(f))
        with open(tmp_path / "cache" / "predictions" / path.name, newline="") as f:
            from_cache = list(csv.DictReader(f))
        assert all(row["frame_index"] and row["time_s"] for row in from_cache)
        assert ([(r["frame_index"], r["time_s"], r["label"]) for r in from_cache]
                == [(r["frame_index"], r["time_s"], r["label"]) for r in from_data])


def test_a_report_stopped_half_way_leaves_no_file_a_later_run_cannot_remove(
        tmp_path: Path, monkeypatch) -> None:
    """A rerun into the same folder, stopped after metrics.json was written, left the earlier
    run's predictions/<video>.csv for good: the list in metrics.json no longer named them."""
    import numpy as np
    import pytest

    from spool.metrics.segmentation import SegmentationMetrics
    from spool.train import segmentation_eval
    from spool.train.segmentation_eval import (
        SegmentationResult,
        VideoPrediction,
        write_segmentation_report,
    )

    def result(*names: str) -> SegmentationResult:
        one = VideoPrediction(np.zeros(3, np.int64), np.zeros(3, np.int64), np.ones(3))
        return SegmentationResult(SegmentationMetrics(), videos=dict.fromkeys(names, one))

    out = tmp_path / "ev"
    write_segmentation_report(result("test_0", "test_1"), ["a", "b"], out, "model")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segmentation_eval, "plot_ribbons", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_segmentation_report(result("train_0"), ["a", "b"], out, "model")
    assert "accuracy" not in json.loads((out / "metrics.json").read_text())  # no scores yet
    monkeypatch.undo()
    write_segmentation_report(result("val_0"), ["a", "b"], out, "model")
    assert sorted(p.stem for p in (out / "predictions").glob("*.csv")) == ["val_0"]
    assert json.loads((out / "metrics.json").read_text())["predicted"] == ["val_0"]


def test_eval_says_which_videos_had_no_labelled_frame(tmp_path: Path, capsys) -> None:
    """A video whose segments all lie after its end was predicted (its predictions/ CSV
    written) but left out of the scores without a word: "videos: 1" for 2 videos given."""
    root = _segments()
    rows = (root / "test.csv").read_text().splitlines()
    second = rows[-1].split(",")[0]
    late = [",".join([second, "1000.0", "1010.0", r.split(",")[3]])
            for r in rows[1:] if r.startswith(second + ",")][:1]
    data = tmp_path / "test.csv"
    data.write_text("\n".join([rows[0], *[r.replace("videos/", f"{root}/videos/", 1)
                                          for r in rows[1:] if not r.startswith(second + ",")],
                               *[r.replace("videos/", f"{root}/videos/", 1) for r in late]])
                    + "\n")
    _, names = read_segments_csv(root / "train.csv")
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "fps", "target_fps": 5.0}
    model.save_pretrained(tmp_path / "model")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "model"), "--data", str(data),
                 "--out", str(tmp_path / "ev")]) == 0
    assert capsys.readouterr().out.startswith(
        "videos: 1 (1 more without a labelled frame, not scored)   frame accuracy: ")
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["videos"] == 1 and report["unlabelled"] == 1
    assert len(list((tmp_path / "ev" / "predictions").glob("test_*.csv"))) == 2
