"""The frames task end to end: cache, train, evaluate, extract predictions."""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import (
    TEMPORAL_FIELDS,
    TINY_BACKBONE,
    TINY_MODEL,
    read_steps,
    segmentation_videos,
)

from spool.cli import main
from spool.data.frame_cache import build_frame_cache
from spool.data.segmentation import read_segments_csv
from spool.models.frame_classification import SpoolForFrameClassification
from spool.train.config import TrainConfig
from spool.train.trainer import train
from spool.video.samplers import FpsSampler


def segmentation_data() -> Path:
    """4 + 2 lossless 32x32 videos of 320-360 frames at 15 fps (made once)."""
    return segmentation_videos((320, 360), (15, 30))


def _config(out: Path, **changes) -> TrainConfig:
    root = segmentation_data()
    base = dict(task="frames", out_dir=str(out), train_data=str(root / "train.csv"),
                val_data=str(root / "test.csv"), fps=15.0, crop_frames=64,
                model=dict(TINY_MODEL), epochs=2, batch_size=2, lr=3e-3, warmup_epochs=0.5,
                num_workers=0, tensorboard=False, quiet=True, seed=3)
    base.update(changes)
    return TrainConfig(**base)


def test_cached_tokens_train_like_the_video_frames(tmp_path: Path) -> None:
    root = segmentation_data()
    video_cfg = _config(tmp_path / "video")
    train(video_cfg)

    # The cache is made with the backbone the video run starts from (same seed and config).
    samples, names = read_segments_csv(root / "train.csv")
    test_samples, _ = read_segments_csv(root / "test.csv", names)
    torch.manual_seed(video_cfg.seed)
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
    for split, items in (("train", samples), ("val", test_samples)):
        build_frame_cache(model, items, names, tmp_path / f"cache_{split}", FpsSampler(15.0),
                          dtype="float32")
    temporal = {k: TINY_MODEL[k] for k in TEMPORAL_FIELDS}
    cached_cfg = _config(tmp_path / "cached", train_data=None, val_data=None,
                         train_cache=str(tmp_path / "cache_train"),
                         val_cache=str(tmp_path / "cache_val"), model=temporal)
    train(cached_cfg)
    video_steps, cached_steps = read_steps(tmp_path / "video"), read_steps(tmp_path / "cached")
    assert len(video_steps) == 4 and [s for s, _ in video_steps] == [s for s, _ in cached_steps]
    torch.testing.assert_close([loss for _, loss in cached_steps],
                               [loss for _, loss in video_steps], rtol=1e-5, atol=1e-6)
    with open(tmp_path / "video" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"train_acc", "val_acc", "val_edit", "val_f1@50"} <= set(rows[-1])
    assert 0 <= float(rows[-1]["val_f1@50"]) <= 100

    # The cached run's model scores on the cache; the same weights with another normalisation
    # (outside the weights' digest) would be scored on tokens they never see: refused.
    from spool.models.pretrained import load_pretrained
    from spool.train.segmentation_eval import evaluate_frame_checkpoint

    model_dir = tmp_path / "cached" / "model"
    scores = evaluate_frame_checkpoint(model_dir, cache=str(tmp_path / "cache_val"))
    assert scores["videos"] == 2
    # One unit in a row, and the same as spool eval's: val_acc was a fraction beside edit and
    # F1 in percent (and spool eval's accuracy in percent).
    with open(tmp_path / "cached" / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert float(last["val_acc"]) == pytest.approx(scores["accuracy"])
    assert float(last["val_edit"]) == pytest.approx(scores["edit"])
    for kwargs, message in (({"fps": 1.0}, "fps: a frame cache was sampled when it was made"),
                            ({"split": "x"}, "split: applies to an MS-TCN root")):
        with pytest.raises(ValueError, match=message):  # ignored before: the same scores
            evaluate_frame_checkpoint(model_dir, cache=str(tmp_path / "cache_val"), **kwargs)
    load_pretrained(model_dir, image_std=(0.2, 0.2, 0.2)).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="made with other image_std than"):
        evaluate_frame_checkpoint(tmp_path / "other", cache=str(tmp_path / "cache_val"))


def test_baselines_train_and_spool_eval_and_extract(tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    from spool.train import segmentation_eval

    root = segmentation_data()
    for arch in ("ms_tcn", "linear_probe"):
        train(_config(tmp_path / arch, architecture=arch, epochs=1))
    run = tmp_path / "spool"
    train(_config(run, epochs=1, background=["background"]))
    ribbons = []  # their x axis: seconds at the training rate, not the sampled frames' count
    plot = segmentation_eval.plot_ribbons
    monkeypatch.setattr(segmentation_eval, "plot_ribbons",
                        lambda *a, **k: (ribbons.append(k.get("fps")), plot(*a, **k)))
    # The background classes of training go with the model: eval scores as validation did.
    assert main(["eval", "--checkpoint", str(run / "model"), "--data",
                 str(root / "test.csv"), "--out", str(tmp_path / "ev")]) == 0
    assert ribbons == [json.loads((run / "model" / "config.json").read_text())[
        "sampling"]["target_fps"]]
    printed = capsys.readouterr().out
    assert "frame accuracy" in printed and "F1@50" in printed
    assert "(background: background)" in printed
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["videos"] == 2 and 0 <= report["f1@50"] <= 100
    assert report["background"] == ["background"]
    with open(run / "metrics.csv", newline="") as f:
        val = list(csv.DictReader(f))[-1]
    for key in ("edit", "f1@10", "f1@25", "f1@50"):
        assert report[key] == pytest.approx(float(val[f"val_{key}"]), abs=1e-4), key
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "model"), "--data",  # the flag alone: none
                 str(root / "test.csv"), "--background", "--out", str(tmp_path / "ev0")]) == 0
    err = capsys.readouterr().err  # was silent until the results: bars of videos and frames
    assert "eval" in err and "2/2 [" in err and "encode" in err
    assert json.loads((tmp_path / "ev0" / "metrics.json").read_text())["background"] == []
    assert main(["eval", "--checkpoint", str(run / "model"), "--data",  # a clip flag: refused
                 str(root / "test.csv"), "--num-frames", "8"]) == 2
    assert "--num-frames: applies to clip classifiers" in capsys.readouterr().err
    for extra, message in ((["--split", "x"], "split: applies to an MS-TCN root"),
                           (["--batch-size", "1"], "--batch-size: applies to clip"),
                           (["--num-workers", "7"], "--num-workers: applies to clip")):
        assert main(["eval", "--checkpoint", str(run / "model"), "--data",
                     str(root / "test.csv"), *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert (tmp_path / "ev" / "ribbons.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "ev" / "predictions").glob("*.csv"))) == 2

    video = root / "videos" / "test_0000.mkv"
    assert main(["extract", str(video), "--out", str(tmp_path / "pred"), "--checkpoint",
                 str(run / "model"), "--per-frame", "--fps", "15", "--no-progress"]) == 0
    saved = load_file(tmp_path / "pred" / "test_0000.safetensors")
    with safe_open(str(tmp_path / "pred" / "test_0000.safetensors"), "pt") as f:
        names = json.loads(f.metadata()["class_names"])
    T = saved["labels"].shape[0]
    assert saved["scores"].shape == (T, len(names)) and saved["timestamps"].shape == (T,)
    torch.testing.assert_close(saved["scores"].sum(-1), torch.ones(T))
    with open(tmp_path / "pred" / "test_0000.segments.csv", newline="") as f:
        segments = list(csv.DictReader(f))
    assert segments and float(segments[0]["start_s"]) == 0.0
    assert all(float(a["end_s"]) == float(b["start_s"])
               for a, b in zip(segments, segments[1:], strict=False))


def test_a_signal_during_validation_stops_it_at_the_next_video(tmp_path: Path, monkeypatch,
                                                               spool_log) -> None:
    """As a clip validation: the run stops at the epoch's last step without validating its
    other videos (it validated them all, then stopped), and the epoch's row waits for the
    resume's validation. The checkpoint is saved, and the stop said, once (stop_on_failure
    took the validation's TrainingInterrupted for a failure, and stopped again)."""
    import os
    import signal

    from spool.train import segmentation_eval
    from spool.train.signals import TrainingInterrupted

    probed = []
    probe = segmentation_eval.probe_video

    def signalled(path):
        probed.append(path)
        os.kill(os.getpid(), signal.SIGTERM)
        return probe(path)

    monkeypatch.setattr(segmentation_eval, "probe_video", signalled)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 2;"):
        train(_config(tmp_path / "run"))
    assert len(probed) == 1  # of the 2 validation videos
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000002" /
                        "trainer_state.json").read_text())
    assert (state["epoch"], state["history"]) == (0, [])
    assert spool_log.text.count("interrupted at step 2;") == 1


class DiskFull(OSError):
    """The offloaded hidden state's disk filling up."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


@pytest.mark.parametrize("error", [MemoryError, torch.cuda.OutOfMemoryError, DiskFull])
@pytest.mark.parametrize("source", ["videos", "cache"])
def test_a_video_too_long_for_memory_is_skipped_in_evaluation(tmp_path: Path, monkeypatch,
                                                               source: str, error) -> None:
    """One video whose hidden state would not fit ended `spool eval` (exit 2, no metrics for
    any video); it is skipped and counted as an unreadable one is, from a cache too. So is a
    video that runs the GPU out of memory (a RuntimeError, not a MemoryError), and one whose
    offloaded state fills the disk (it ended an evaluation of a cache)."""
    from spool.data.frame_cache import FrameTokenDataset
    from spool.models import long_video
    from spool.train.segmentation_eval import evaluate_segmentation

    samples, names = read_segments_csv(segmentation_data() / "test.csv")
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names).eval()
    data = samples
    if source == "cache":
        build_frame_cache(model, samples, names, tmp_path / "c", FpsSampler(15.0),
                          dtype="float32")
        data = FrameTokenDataset(tmp_path / "c")
    calls = []

    def first_does_not_fit(needed, what):
        calls.append(what)
        if len(calls) == 1:
            raise error(f"{what} needs about 9.0 GiB but 1.0 GiB are available")

    monkeypatch.setattr(long_video, "check_memory", first_does_not_fit)
    result = evaluate_segmentation(model, data, sampler=FpsSampler(15.0))
    assert result.num_skipped == 1 and len(calls) == 2
    assert [s.error for s in result.skipped] == [error.__name__]
    assert list(result.videos) == [samples[1].name]


def test_eval_keeps_a_frame_classifiers_hidden_state_on_disk(tmp_path: Path, capsys) -> None:
    """A video too long for memory was skipped with advice for `spool extract` only: `spool
    eval` takes --offload-dir (and --chunk-frames), with the same scores."""
    root = segmentation_data()
    _, names = read_segments_csv(root / "test.csv")
    model_dir = tmp_path / "model"
    SpoolForFrameClassification(**TINY_MODEL, class_names=names).save_pretrained(model_dir)
    base = ["eval", "--checkpoint", str(model_dir), "--data", str(root / "test.csv"),
            "--fps", "15", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--offload-dir", str(tmp_path / "off"),
                 "--chunk-frames", "8"]) == 0
    metrics = [json.loads((tmp_path / out / "metrics.json").read_text()) for out in "ab"]
    assert metrics[0] == pytest.approx(metrics[1])
    assert (tmp_path / "off").is_dir()  # the hidden state's (unlinked) file was made there
    capsys.readouterr()
    assert main([*base, "--offload-dir", str(root / "test.csv")]) == 2
    assert "--offload-dir: " in capsys.readouterr().err


def test_eval_at_another_rate_than_training_is_noted(tmp_path: Path, capsys) -> None:
    """--fps other than the training rate is a fair study of videos, but was silent (a cache
    made at another rate is refused)."""
    root = segmentation_data()
    _, names = read_segments_csv(root / "test.csv")
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
    model.config.sampling = {"name": "fps", "target_fps": 5.0}
    model.save_pretrained(tmp_path / "model")
    base = ["eval", "--checkpoint", str(tmp_path / "model"), "--data", str(root / "test.csv"),
            "--device", "cpu"]
    capsys.readouterr()
    assert main([*base, "--fps", "15"]) == 0
    assert "note: --fps 15: " in capsys.readouterr().err
    assert main([*base, "--fps", "5"]) == 0
    assert "note: --fps" not in capsys.readouterr().err


def test_resuming_on_a_cache_made_again_is_refused_or_noted(tmp_path: Path, spool_log) -> None:
    """The cache at the same path made again with another backbone: the resume loaded the
    checkpoint's backbone over it and trained on the new one's tokens, and the model could not
    be scored on its own cache. Made again at another rate: the run went on without a word."""
    import logging

    from spool.train.trainer import Trainer

    root = segmentation_data()
    samples, names = read_segments_csv(root / "train.csv")

    def cache(seed: int, fps: float) -> None:
        torch.manual_seed(seed)
        model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
        build_frame_cache(model, samples, names, tmp_path / "cache", FpsSampler(fps),
                          dtype="float32")

    temporal = {k: TINY_MODEL[k] for k in TEMPORAL_FIELDS}
    cfg = dict(train_data=None, val_data=None, train_cache=str(tmp_path / "cache"),
               model=temporal, epochs=3)
    cache(0, 5.0)
    train(_config(tmp_path / "run", stop_after_steps=2, **cfg))
    cache(1, 5.0)
    with pytest.raises(ValueError, match=r"train_cache: .* was made by another backbone than "
                                         r"the one of .*step_00000002"):
        Trainer(_config(tmp_path / "run", resume="auto", **cfg))
    cache(0, 3.0)
    spool_log.set_level(logging.INFO)
    Trainer(_config(tmp_path / "run", resume="auto", quiet=False, **cfg)).close()
    assert "note: resuming with model.sampling {" in spool_log.text
    assert "'target_fps': 5.0" in spool_log.text and "'target_fps': 3.0" in spool_log.text


def test_baselines_train_on_a_cache_without_head_settings(tmp_path: Path) -> None:
    """They have no attention: 'hidden_size: expected divisible by num_attention_heads (12),
    got 20' refused them on a cache of a 20-wide backbone until heads were given."""
    from spool.models.frame_baselines import FrameProbeForFrameClassification

    samples, names = read_segments_csv(segmentation_data() / "train.csv")
    backbone = dict(image_size=32, backbone_config={**TINY_BACKBONE, "hidden_size": 20})
    model = FrameProbeForFrameClassification(**backbone, class_names=names)
    build_frame_cache(model, samples[:2], names, tmp_path / "cache", FpsSampler(5.0),
                      dtype="float32")
    for arch in ("ms_tcn", "linear_probe"):
        train(_config(tmp_path / arch, architecture=arch, epochs=1, train_data=None,
                      val_data=None, train_cache=str(tmp_path / "cache"), model={}))
        assert (tmp_path / arch / "model" / "config.json").is_file()


def test_a_resumed_frames_run_keeps_one_unit_in_its_rows(tmp_path: Path) -> None:
    """Frame accuracy went from fractions to percent (as edit and F1): a run saved before
    would have gone on with its old rows in fractions and its new ones in percent, in
    metrics.csv and curves.png. Its rows are restored in percent, and metrics.csv is
    rewritten from them."""
    from spool.train.metrics import rewrite_csv
    from spool.train.tasks import METRICS_REVISION, TASKS

    old = {"history": [{"epoch": 1, "train_loss": 0.9, "train_acc": 0.25, "val_acc": 0.5,
                        "val_edit": 40.0, "val_f1@10": 30.0}]}
    rows = TASKS["frames"].restore_history(old)
    assert rows == [{"epoch": 1, "train_loss": 0.9, "train_acc": 25.0, "val_acc": 50.0,
                     "val_edit": 40.0, "val_f1@10": 30.0}]
    new = {"history": rows, "metrics_revision": METRICS_REVISION}
    assert TASKS["frames"].restore_history(new) == rows
    clip_rows = [{"epoch": 1, "train_top1": 0.5}]
    assert TASKS["clips"].restore_history({"history": clip_rows}) == clip_rows
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_acc\n1,0.25\n2,0.5\n")
    rewrite_csv(path, ("epoch", "train_loss", "train_acc"), rows=rows)
    with open(path, newline="") as f:
        assert list(csv.DictReader(f)) == [{"epoch": "1", "train_loss": "0.9",
                                            "train_acc": "25.0"}]
