"""A video that cannot be read does not end training or evaluation: it is reported once,
skipped, and counted; an error that still escapes a DataLoader worker prints as one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from train_helpers import TINY_MODEL, tiny_video_dataset, train_config_dict

from spool.cli import main, one_line
from spool.data.dataset import read_annotations
from spool.models.classification import SpoolForVideoClassification
from spool.video import VideoReader, write_video


def _list_with_a_bad_video(tmp_path: Path, split: str) -> tuple[Path, Path]:
    root = tiny_video_dataset()
    bad = tmp_path / "text.mp4"
    bad.write_text("not a video\n")
    lines = (root / f"{split}.txt").read_text().replace("videos/", f"{root}/videos/")
    listed = tmp_path / f"{split}.txt"
    listed.write_text(lines.splitlines()[0] + f"\n{bad} grow\n" + lines.split("\n", 1)[1])
    (tmp_path / "classes.txt").write_text((root / "classes.txt").read_text())
    return listed, bad


@pytest.mark.parametrize("thread_type", ["AUTO", "FRAME"])
def test_truncated_file_gives_the_same_frames_whatever_the_threads(tmp_path: Path,
                                                                   thread_type: str) -> None:
    """Frame threads dropped the frames in flight when a packet of the cut-off tail failed,
    frames slice threads return: training (SLICE) and extraction (AUTO) saw different sets."""
    base = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    src = write_video(tmp_path / "src.mp4", [np.roll(base, 3 * i, axis=1) for i in range(150)],
                      gop_size=8, max_b_frames=3, container_options={"movflags": "+faststart"})
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.3)])  # an interrupted download
    with VideoReader(cut, thread_type="SLICE") as reader:
        want, _ = reader.get(None)
    with VideoReader(src) as reader:
        np.testing.assert_array_equal(want, reader.get(range(len(want)))[0])
    with VideoReader(cut, thread_type=thread_type) as reader:
        np.testing.assert_array_equal(reader.get(None)[0], want)
    with VideoReader(cut, thread_type=thread_type) as reader:
        np.testing.assert_array_equal(reader.get([len(want) - 1])[0], want[-1:])


def test_eval_skips_and_counts_an_unreadable_video(tmp_path: Path, capsys) -> None:
    data, bad = _list_with_a_bad_video(tmp_path, "val")
    _, names = read_annotations(data)
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "uniform", "num_frames": 4}
    model.save_pretrained(tmp_path / "model")
    assert main(["eval", "--checkpoint", str(tmp_path / "model"), "--data", str(data),
                 "--num-workers", "2", "--batch-size", "4", "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0  # (no bar: stderr holds the skip alone)
    printed = capsys.readouterr()
    assert "videos: 8 (1 unreadable, skipped)" in printed.out
    assert printed.err.startswith(f"skipping {bad}: VideoDecodeError: ")
    assert len(printed.err.splitlines()) == 1
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["count"] == 8 and report["skipped"] == 1
    assert report["skipped_videos"][0][:2] == [str(bad), "VideoDecodeError"]


def test_training_takes_the_next_video_and_reports_it_once(tmp_path: Path, spool_log) -> None:
    from spool.train import TrainConfig, train

    data, bad = _list_with_a_bad_video(tmp_path, "train")
    cfg = TrainConfig(**train_config_dict(tmp_path / "run", train_data=str(data), val_data=None,
                                          epochs=3, batch_size=4))
    rows = train(cfg)
    assert len(rows) == 3  # 17 samples: 4 batches of 4 per epoch, the bad one replaced
    warnings = [r.message for r in spool_log.records if r.levelno == logging.WARNING]
    skipped = [w for w in warnings if w.startswith(f"skipping {bad}")]
    assert len(skipped) == 1, warnings


def test_an_error_from_a_dataloader_worker_is_one_line() -> None:
    from torch._utils import ExceptionWrapper

    from spool.video import VideoDecodeError

    try:
        raise VideoDecodeError("/data/x.mp4: cannot open as a video file: Invalid data")
    except VideoDecodeError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(VideoDecodeError) as caught:
        wrapped.reraise()
    assert "Traceback" in str(caught.value)
    assert one_line(caught.value) == "/data/x.mp4: cannot open as a video file: Invalid data"
    assert one_line(ValueError("plain: message")) == "plain: message"
