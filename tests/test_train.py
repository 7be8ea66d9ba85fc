"""Trainer: cached tokens == frozen backbone, exact resume, outputs, schedule, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import (
    TEMPORAL_FIELDS,
    TINY_MODEL,
    final_weights,
    read_epochs,
    read_steps,
    tiny_video_dataset,
    train_config_dict,
)

from spool.data.cache import build_cache
from spool.data.dataset import VideoClipDataset, read_annotations
from spool.models.classification import SpoolForVideoClassification, load_classifier
from spool.train.builders import epoch_batches, warmup_cosine
from spool.train.config import TrainConfig
from spool.train.trainer import train
from spool.video.samplers import clip_sampler


def _config(out: Path, **changes) -> TrainConfig:
    root = tiny_video_dataset()
    base = dict(out_dir=str(out), train_data=str(root / "train.txt"),
                val_data=str(root / "val.txt"),
                model=dict(TINY_MODEL), num_frames=4, epochs=2, batch_size=4, lr=3e-3,
                warmup_epochs=0.5, num_workers=0, tensorboard=False, quiet=True, seed=3)
    if "train_cache" in changes:  # its clips were sampled when it was made
        del base["num_frames"]
    base.update(changes)
    return TrainConfig(**base)


def test_cached_tokens_train_like_the_frozen_backbone(tmp_path: Path) -> None:
    root = tiny_video_dataset()
    video_cfg = _config(tmp_path / "video", augment=False)
    train(video_cfg)

    # The cache is made with the backbone the video run starts from (same seed, same config).
    samples, names = read_annotations(root / "train.txt")
    torch.manual_seed(video_cfg.seed)
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    clips = clip_sampler(4)
    build_cache(model, VideoClipDataset(samples, names, clips, model.config.preprocessing()),
                tmp_path / "cache", batch_size=5)
    val_samples, _ = read_annotations(root / "val.txt", names)
    build_cache(model, VideoClipDataset(val_samples, names, clips,
                                        model.config.preprocessing()), tmp_path / "val_cache")
    temporal = {k: TINY_MODEL[k] for k in TEMPORAL_FIELDS}
    cache_cfg = _config(tmp_path / "cached", train_data=None, val_data=None,
                        train_cache=str(tmp_path / "cache"),
                        val_cache=str(tmp_path / "val_cache"), model=temporal)
    train(cache_cfg)

    video_steps, cached_steps = read_steps(tmp_path / "video"), read_steps(tmp_path / "cached")
    assert len(video_steps) == 8
    assert [s for s, _ in video_steps] == [s for s, _ in cached_steps]
    torch.testing.assert_close([loss for _, loss in cached_steps],
                               [loss for _, loss in video_steps], rtol=1e-5, atol=1e-6)
    a, b = final_weights(tmp_path / "video"), final_weights(tmp_path / "cached")
    assert a.keys() == b.keys()  # the cached run's model carries the cache's backbone
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    va, vb = read_epochs(tmp_path / "video")[-1], read_epochs(tmp_path / "cached")[-1]
    assert float(va["val_top1"]) == float(vb["val_top1"])


def test_val_cache_with_other_normalisation_is_refused(tmp_path: Path) -> None:
    """Same weights (the digests agree), other image_mean: the two caches hold tokens of
    differently normalised frames, so validating on one while training on the other is
    refused, naming the field."""
    root = tiny_video_dataset()
    samples, names = read_annotations(root / "train.txt")
    for name, mean in (("a", None), ("b", (0.5, 0.5, 0.5))):
        torch.manual_seed(0)
        extra = {} if mean is None else {"image_mean": mean}
        model = SpoolForVideoClassification(**TINY_MODEL, **extra, class_names=names)
        build_cache(model, VideoClipDataset(samples[:2], names, clip_sampler(4),
                                            model.config.preprocessing()), tmp_path / name)
    temporal = {k: TINY_MODEL[k] for k in TEMPORAL_FIELDS}
    cfg = _config(tmp_path / "run", train_data=None, val_data=None, model=temporal,
                  train_cache=str(tmp_path / "a"), val_cache=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="made with other image_mean than"):
        train(cfg)


def test_val_videos_are_sampled_like_the_cached_training_clips(tmp_path: Path) -> None:
    """--train-cache with --val-data: the validation clips have the cache's frame count (4,
    set when the cache was made), not the default 16 of a run on videos."""
    from spool.train.builders import build_datasets, model_config

    root = tiny_video_dataset()
    samples, names = read_annotations(root / "train.txt")
    torch.manual_seed(0)
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    build_cache(model, VideoClipDataset(samples[:2], names, clip_sampler(4),
                                        model.config.preprocessing()), tmp_path / "cache")
    temporal = {k: TINY_MODEL[k] for k in TEMPORAL_FIELDS}
    cfg = _config(tmp_path / "run", train_data=None, model=temporal, num_frames=16,
                  train_cache=str(tmp_path / "cache"))
    _, val, _ = build_datasets(cfg, model_config(cfg))
    assert val.sampler.to_dict() == {"name": "uniform", "num_frames": 4}


def test_resume_is_exact(tmp_path: Path) -> None:
    # Dropout, augmentation and a mid-epoch interruption: everything that could diverge.
    model = {**TINY_MODEL, "hidden_dropout": 0.2, "classifier_dropout": 0.3}
    full = _config(tmp_path / "full", model=model, save_every=3, num_workers=1)
    train(full)
    part = _config(tmp_path / "part", model=model, save_every=3, num_workers=1,
                   stop_after_steps=5)
    train(part)
    assert read_steps(tmp_path / "part")[-1][0] == 5
    assert not (tmp_path / "part" / "model").exists()
    # A crash after the checkpoint at step 3 loses steps 4-5; their rows are rewritten.
    ckpts = sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir())
    assert ckpts == ["step_00000003", "step_00000005"]
    # Resumed with a stop at or before its step: nothing trains (step 6 was trained).
    train(_config(tmp_path / "part", model=model, save_every=3, num_workers=1,
                  stop_after_steps=4, resume="auto"))
    assert read_steps(tmp_path / "part")[-1][0] == 5
    assert sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir()) == ckpts
    resumed = _config(tmp_path / "part", model=model, save_every=3, num_workers=1,
                      resume=str(tmp_path / "part" / "checkpoints" / "step_00000003"))
    train(resumed)
    assert read_steps(tmp_path / "part") == read_steps(tmp_path / "full")  # bit for bit
    assert read_epochs(tmp_path / "part") == [
        {**r, "epoch_seconds": p["epoch_seconds"]}
        for r, p in zip(read_epochs(tmp_path / "full"), read_epochs(tmp_path / "part"),
                        strict=True)]
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "part")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_outputs_checkpoints_and_model(tmp_path: Path) -> None:
    cfg = _config(tmp_path, save_every=2, keep_checkpoints=2, tensorboard=True, num_clips=2)
    history = train(cfg)
    assert [row["epoch"] for row in history] == [1, 2]
    for name in ("steps.csv", "metrics.csv", "curves.png", "results.json",
                 "train_config.json"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tb").iterdir())
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step_00000006", "step_00000008"]  # pruned to the newest two
    files = {p.name for p in (tmp_path / "checkpoints" / ckpts[-1]).iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.safetensors", "rng.safetensors",
            "trainer_state.json"} <= files
    assert not any(name.endswith((".pt", ".pth", ".bin", ".pkl")) for name in files)
    model = load_classifier(tmp_path / "model")
    assert model.class_names == read_annotations(tiny_video_dataset() / "train.txt")[1]
    assert model.config.sampling == {"name": "uniform", "num_frames": 4}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 8 and 0 <= results["final"]["val_top1"] <= 1


def test_frame_pooling_architecture_trains(tmp_path: Path) -> None:
    history = train(_config(tmp_path, architecture="frame_pooling", epochs=1))
    assert len(history) == 1
    assert type(load_classifier(tmp_path / "model")).__name__ == \
        "FramePoolingForVideoClassification"


def test_epoch_batches_shard_a_global_batch() -> None:
    one = epoch_batches(23, 6, world=1, rank=0, seed=4, epoch=2)
    two = [epoch_batches(23, 3, world=2, rank=r, seed=4, epoch=2) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 3
    for k, batch in enumerate(one):
        assert sorted(batch) == sorted(two[0][k] + two[1][k])
    assert epoch_batches(23, 6, 1, 0, 4, 3) != one  # reshuffled every epoch


def test_warmup_cosine_schedule() -> None:
    f = warmup_cosine(4, 20, 0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.1)
    assert f(12) == pytest.approx(0.55)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="train_data/train_cache"):
        TrainConfig()
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(train_data="x.txt", batch_size=0)
    with pytest.raises(ValueError, match=r"model: unknown SpoolConfig field\(s\) \['num_layers'\]"):
        TrainConfig(train_data="x.txt", model={"num_layers": 2})
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"train": "x.txt", "learning_rate": 1})


@pytest.mark.parametrize("flag", ["--num-frames", "--frame-stride"])
def test_clip_flags_are_refused_with_a_token_cache(tmp_path: Path, capsys, flag: str) -> None:
    from spool.cli import main

    assert main(["train", "--train-cache", str(tmp_path / "cache"), flag, "8",
                 "--out-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    name = flag[2:].replace("-", "_")
    assert f"spool train: error: {name} ({flag}): applies to --train-data" in err
    assert not (tmp_path / "run").exists()
    # Given in a config file or to TrainConfig, it was ignored without a word.
    with pytest.raises(ValueError, match=f"{name} .*applies to --train-data"):
        TrainConfig.from_dict({"train_cache": str(tmp_path / "cache"), name: 8})
    # A train_config.json an earlier version saved with it still resumes.
    TrainConfig.from_dict({"train_cache": str(tmp_path / "cache"), name: 8, "resume": "auto"})


def test_a_diverged_loss_stops_the_run_at_its_step(tmp_path: Path, monkeypatch) -> None:
    """A NaN loss is not turned into 0.0 and a skipped step, nor trained on: the run stops
    at that step, saying so, with no row for it in steps.csv."""
    from spool.errors import TrainingDivergedError
    from spool.train.tasks import ClipTask

    loss = ClipTask.loss
    monkeypatch.setattr(ClipTask, "loss", lambda self, *a: (lambda out: (
        out[0] * float("nan"), *out[1:]))(loss(self, *a)))
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="^step 1: the loss is nan"):
        train(TrainConfig(**train_config_dict(run, epochs=1)))
    assert read_steps(run) == []


def test_warmup_cosine_stays_at_its_floor_after_the_last_step() -> None:
    """Past ``total_steps`` (a resume that runs longer than the schedule it saved) the factor
    stays at ``min_ratio``: the cosine must not climb back up; no warm-up: 1 at step 0."""
    f = warmup_cosine(4, 20, 0.1)
    for step in (20, 21, 30, 36, 100):
        assert f(step) == pytest.approx(0.1)
    g = warmup_cosine(0, 10, 0.0)
    assert g(0) == 1.0 and g(5) == pytest.approx(0.5) and g(15) == pytest.approx(0.0)
