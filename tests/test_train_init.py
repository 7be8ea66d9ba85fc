"""``--init`` with and without a token cache; validation caches of another backbone or
sampling; flags that do not apply to a run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from train_helpers import TEMPORAL_FIELDS, TINY_MODEL, tiny_video_dataset, train_config_dict

from spool.data.cache import build_cache
from spool.data.dataset import VideoClipDataset, read_annotations
from spool.models.classification import SpoolForVideoClassification
from spool.models.frame_baselines import MSTCNForFrameClassification
from spool.models.frame_classification import SpoolForFrameClassification
from spool.train.builders import build_datasets, model_config
from spool.train.config import TrainConfig
from spool.train.tasks import TASKS
from spool.video.samplers import clip_sampler

TEMPORAL = {k: TINY_MODEL[k] for k in TEMPORAL_FIELDS}
FRAME_NAMES = ["background", "a", "b"]


def _config(out: Path, **changes) -> TrainConfig:
    root = tiny_video_dataset()
    base = dict(out_dir=str(out), train_data=str(root / "train.txt"), model=dict(TINY_MODEL),
                num_frames=4, epochs=1, batch_size=4, num_workers=0, tensorboard=False,
                quiet=True, seed=3)
    if changes.get("train_cache") is not None:  # its clips were sampled when it was made
        del base["num_frames"]
    base.update(changes)
    return TrainConfig(**base)


def _clip_cache(out: Path, seed: int = 0, frames: int = 4, split: str = "train"
                ) -> tuple[SpoolForVideoClassification, list[str]]:
    """A token cache of 2 videos made by a tiny classifier seeded ``seed`` (returned)."""
    samples, names = read_annotations(tiny_video_dataset() / f"{split}.txt")
    torch.manual_seed(seed)
    model = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    build_cache(model, VideoClipDataset(samples[:2], names, clip_sampler(frames),
                                        model.config.preprocessing()), out)
    return model, names


def _build(cfg: TrainConfig, names: list[str]) -> torch.nn.Module:
    return TASKS[cfg.task].model(cfg, model_config(cfg), names)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_run_starts_from_a_spool_checkpoint_and_says_so(tmp_path: Path) -> None:
    made, names = _clip_cache(tmp_path / "cache")
    made.spool.save_pretrained(tmp_path / "spool")
    cfg = _config(tmp_path / "run", train_data=None, train_cache=str(tmp_path / "cache"),
                  init=str(tmp_path / "spool"), model={}, quiet=False)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("spool.train.builders")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        model = _build(cfg, names)
    finally:
        log.removeHandler(handler)
    # The init's temporal layers (and config) on the cache's backbone.
    assert _same(model.spool.state_dict(), made.spool.state_dict())
    assert any("init: the Spool of" in m and "temporal layers" in m for m in seen)


def test_cache_run_refuses_an_init_trained_on_another_backbone(tmp_path: Path) -> None:
    _, names = _clip_cache(tmp_path / "cache", seed=0)
    torch.manual_seed(1)
    SpoolForVideoClassification(**TINY_MODEL, class_names=names).save_pretrained(tmp_path / "c")
    cfg = _config(tmp_path / "run", train_data=None, train_cache=str(tmp_path / "cache"),
                  init=str(tmp_path / "c"), model=TEMPORAL)
    with pytest.raises(ValueError, match="trained on another backbone than the one that made"):
        _build(cfg, names)


def test_a_frame_classifier_is_continued_with_its_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    init = SpoolForFrameClassification(**TINY_MODEL, class_names=FRAME_NAMES,
                                       head_config={"refinement_stages": 1})
    init.save_pretrained(tmp_path / "f")
    cfg = _config(tmp_path / "run", task="frames", train_data="x.csv", num_frames=16,
                  init=str(tmp_path / "f"), model={})
    assert _same(_build(cfg, FRAME_NAMES).state_dict(), init.state_dict())


def test_an_ms_tcn_is_continued(tmp_path: Path) -> None:
    torch.manual_seed(0)
    init = MSTCNForFrameClassification(**TINY_MODEL, class_names=FRAME_NAMES,
                                       head_config={"num_stages": 2, "num_layers": 3})
    init.save_pretrained(tmp_path / "m")
    cfg = _config(tmp_path / "run", task="frames", train_data="x.csv", num_frames=16,
                  architecture="ms_tcn", init=str(tmp_path / "m"), model={})
    assert _same(_build(cfg, FRAME_NAMES).state_dict(), init.state_dict())


def test_frame_models_as_init_of_a_clip_run(tmp_path: Path) -> None:
    """A segmenter's Spool starts a clip classifier (its background classes and head do not
    come along); an MS-TCN, which has no Spool, is a clear error."""
    torch.manual_seed(0)
    seg = SpoolForFrameClassification(**TINY_MODEL, class_names=FRAME_NAMES,
                                      background_classes=["background"],
                                      head_config={"refinement_stages": 1})
    seg.save_pretrained(tmp_path / "f")
    names = ["x", "y"]
    model = _build(_config(tmp_path / "run", init=str(tmp_path / "f"), model={}), names)
    assert _same(model.spool.state_dict(), seg.spool.state_dict())
    assert model.class_names == names
    MSTCNForFrameClassification(**TINY_MODEL, class_names=FRAME_NAMES).save_pretrained(
        tmp_path / "m")
    with pytest.raises(ValueError, match="holds a MSTCNForFrameClassification for classes"):
        _build(_config(tmp_path / "run", init=str(tmp_path / "m"), model={}), names)


def test_video_run_refuses_a_val_cache_of_another_backbone(tmp_path: Path) -> None:
    _, names = _clip_cache(tmp_path / "val", seed=0, split="val")
    cfg = _config(tmp_path / "run", val_cache=str(tmp_path / "val"))  # the run's seed is 3
    with pytest.raises(ValueError, match="val_cache: .* made by another backbone"):
        _build(cfg, names)


def test_a_run_fine_tuning_its_backbone_refuses_a_val_cache(tmp_path: Path) -> None:
    """The cache holds the tokens of the backbone as it was: its validation would score a
    model that the run never saves (the same backbone, seed 3, so only this refuses it)."""
    _, names = _clip_cache(tmp_path / "val", seed=3, split="val")
    for frozen in (True, False):
        cfg = _config(tmp_path / "run", val_cache=str(tmp_path / "val"),
                      model={**TINY_MODEL, "freeze_backbone": frozen})
        if frozen:
            _build(cfg, names)
        else:
            with pytest.raises(ValueError, match=r"val_cache: .*fine-tunes it.*--val-data"):
                _build(cfg, names)


def test_val_and_eval_caches_of_other_sampling_are_refused(tmp_path: Path) -> None:
    from spool.train.evaluate import evaluate_checkpoint

    made, _ = _clip_cache(tmp_path / "c4")
    _clip_cache(tmp_path / "c8", frames=8)  # same backbone, 8 frames a clip
    cfg = _config(tmp_path / "run", train_data=None, train_cache=str(tmp_path / "c4"),
                  val_cache=str(tmp_path / "c8"), model=TEMPORAL)
    with pytest.raises(ValueError, match="val_cache: .* sampled as .*num_frames': 8"):
        build_datasets(cfg, model_config(cfg))
    made.config.sampling = {"name": "uniform", "num_frames": 4}
    made.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="cache: .* sampled as .*num_frames': 8.*"
                                         "num_frames': 4"):
        evaluate_checkpoint(tmp_path / "model", cache=str(tmp_path / "c8"), device="cpu")


@pytest.mark.parametrize("flags, named", [
    (["--hflip", "--no-augment"], "hflip (--hflip)"),
    (["--train-cache", "C", "--hflip"], "hflip (--hflip)"),
    (["--train-cache", "C", "--num-clips", "3"], "num_clips (--num-clips)"),
    (["--fps", "3"], "fps (--fps): applies to the frames task only"),
    (["--background", "grow"], "background (--background)"),
    (["--task", "frames", "--num-clips", "3"], "num_clips (--num-clips): applies to the clips"),
    # Ignored before: the cache's sampling and views were used, without a word.
    (["--train-cache", "C", "--crop-scale", "0.1", "0.2"],
     "crop_scale (--crop-scale): does not apply to --train-cache"),
    (["--task", "frames", "--train-cache", "C", "--fps", "1"],
     "fps (--fps): does not apply to --train-cache"),
    # Its default value too: accepted, train_config.json recorded 15 fps for any cache.
    (["--task", "frames", "--train-cache", "C", "--fps", "15"],
     "fps (--fps): does not apply to --train-cache"),
    (["--task", "frames", "--train-cache", "C", "--train-split", "s9"],
     "train_split (--train-split): does not apply to --train-cache"),
    (["--task", "frames", "--no-augment", "--crop-frames", "64"],
     "crop_frames (--crop-frames): random crops are augmentation"),
    (["--task", "frames", "--val-split", "s9"],
     "val_split (--val-split): applies to an MS-TCN root given as --val-data"),
])
def test_flags_that_do_not_apply_are_refused(tmp_path: Path, capsys, flags, named) -> None:
    from spool.cli import main

    data = ["--train-data", "t.txt"] if "--train-cache" not in flags else []
    assert main(["train", *data, *flags, "--out-dir", str(tmp_path / "run")]) == 2
    assert f"spool train: error: {named}" in capsys.readouterr().err
    # A config file's defaults are not refused.
    TrainConfig(task="frames", train_data="x.csv", num_clips=1, hflip=False, num_frames=16)


def test_freeze_backbone_false_is_refused_with_a_cache(tmp_path: Path) -> None:
    _clip_cache(tmp_path / "cache")
    cfg = _config(tmp_path / "run", train_data=None, train_cache=str(tmp_path / "cache"),
                  model={**TEMPORAL, "freeze_backbone": False})
    with pytest.raises(ValueError, match="freeze_backbone=false does not apply"):
        model_config(cfg)


def test_cache_run_takes_backbone_fields_equal_to_the_caches(tmp_path: Path) -> None:
    """--model naming a frame-encoder field of the cache with its value (and a chunk size,
    which does not change the tokens) crashed: "got multiple values for keyword argument"."""
    _clip_cache(tmp_path / "cache")
    same = {"image_size": 32, "backbone_config": TINY_MODEL["backbone_config"]}
    cfg = _config(tmp_path / "run", train_data=None, train_cache=str(tmp_path / "cache"),
                  model={**TEMPORAL, **same, "backbone_chunk_size": 8})
    config = model_config(cfg)
    assert config.image_size == 32 and config.backbone_chunk_size == 8
    assert config.num_hidden_layers == TEMPORAL["num_hidden_layers"]
    cfg = _config(tmp_path / "run", train_data=None, train_cache=str(tmp_path / "cache"),
                  model={**TEMPORAL, "image_size": 64})
    with pytest.raises(ValueError, match=r"\['image_size'\] differ from the backbone"):
        model_config(cfg)


def test_frames_validate_on_a_cache_or_videos_whatever_the_training_input(tmp_path: Path
                                                                         ) -> None:
    """--train-data with --val-cache and --train-cache with --val-data both validate; a
    frame cache at another rate than training is refused, in training and in eval."""
    from test_train_frames import segmentation_data

    from spool.data.frame_cache import build_frame_cache
    from spool.data.segmentation import read_segments_csv
    from spool.train.segmentation_eval import evaluate_frame_checkpoint
    from spool.video.samplers import FpsSampler

    root = segmentation_data()
    samples, names = read_segments_csv(root / "test.csv")
    torch.manual_seed(3)  # the backbone a run with seed 3 starts from
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
    for fps in (5.0, 15.0):
        build_frame_cache(model, samples[:1], names, tmp_path / f"v{fps:g}", FpsSampler(fps),
                          dtype="float32")
    task = TASKS["frames"]
    videos = dict(task="frames", num_frames=16, train_data=str(root / "train.csv"),
                  model=dict(TINY_MODEL))
    cfg = _config(tmp_path / "run", **videos, val_cache=str(tmp_path / "v15"))
    train, val, names = task.build(cfg, model_config(cfg))
    assert val is not None and len(val) == 1
    task.model(cfg, model_config(cfg), names)  # the same backbone: accepted
    cfg = _config(tmp_path / "run", **videos, val_cache=str(tmp_path / "v5"))
    with pytest.raises(ValueError, match="val_cache: .* sampled as .*5.0.*15.0"):
        task.build(cfg, model_config(cfg))
    cfg = _config(tmp_path / "run", task="frames", num_frames=16, model=TEMPORAL, train_data=None,
                  train_cache=str(tmp_path / "v15"), val_data=str(root / "test.csv"))
    assert task.build(cfg, model_config(cfg))[1]
    model.config.sampling = {"name": "fps", "target_fps": 15.0}
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="cache: .* sampled as .*5.0.*15.0"):
        evaluate_frame_checkpoint(tmp_path / "model", cache=str(tmp_path / "v5"), device="cpu")


def test_an_init_that_is_neither_a_folder_nor_a_hub_id_says_both(tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    """init = "runs/a" (a typo of runs/a1) reads as a hub id, and the error spoke of the hub
    alone ("no local directory of that name", on two lines); it names the folders looked in
    and the hub, and a real hub id still loads (the hub faked: tests never use the network)."""
    import huggingface_hub

    from spool.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a1").mkdir(parents=True)
    (tmp_path / "cfg").mkdir()
    fields = {**train_config_dict(tmp_path / "run"), "init": "runs/a"}
    (tmp_path / "cfg" / "run.json").write_text(json.dumps(fields))
    hub_off = "not a hub id the hub could provide (hub access is off: HF_HUB_OFFLINE)"
    here = f"no folder {tmp_path / 'runs' / 'a'} (relative to the current directory)"
    for argv, folders in (
            (["--config", "cfg/run.json", "--init", "runs/a"], here),
            (["--config", "cfg/run.json"],  # the file's folder first, as read_config_file does
             f"no folder {tmp_path / 'cfg' / 'runs' / 'a'} (relative to the config file's "
             f"folder) or {tmp_path / 'runs' / 'a'} (relative to the current directory)")):
        assert main(["train", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"spool train: error: init (--init): 'runs/a': {folders}, and "
                              f"{hub_off}"), err
    # With the hub on, one that cannot be reached (or has no such id): said so.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(name: str, **kwargs) -> str:
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    assert main(["train", "--config", "cfg/run.json", "--init", "runs/a"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{here}, and not a hub id the hub could provide (offline or not found)" in err
    assert "Cause: OSError: Name or service not known" in err
    # A hub id the hub provides is loaded as before.
    SpoolForVideoClassification(**TINY_MODEL, class_names=["a", "b"]).spool.save_pretrained(
        tmp_path / "snapshot")
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda name, **kwargs: str(tmp_path / "snapshot"))
    assert main(["train", "--config", "cfg/run.json", "--init", "someorg/spool-k400",
                 "--stop-after-steps", "1"]) == 0


@pytest.mark.parametrize("name,value", [("label_smoothing", 0.1), ("eval_batch_size", 3)])
def test_clip_only_settings_are_refused_for_frames(name, value):
    """They were read by the clips task only, so a frames run ignored them silently."""
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ValueError, match=rf"{name} \({flag}\): applies to the clips task only"):
        TrainConfig(task="frames", train_data="x.csv", **{name: value})
    TrainConfig(task="clips", train_data="x.csv", **{name: value})


def test_a_caches_frame_encoder_as_init_is_named_as_such(tmp_path: Path) -> None:
    """`spool train --init CACHE/backbone` said "unknown SpoolConfig field(s)
    ['with_backbone']; did you mean 'freeze_backbone'?", a keyword of Spool's own."""
    from spool.models.frame_encoder import FrameEncoderModel
    from spool.train.trainer import Trainer

    FrameEncoderModel(**{k: v for k, v in TINY_MODEL.items()
                         if k not in TEMPORAL_FIELDS}).save_pretrained(tmp_path / "backbone")
    config = TrainConfig(**train_config_dict(tmp_path / "run", init=str(tmp_path / "backbone")))
    with pytest.raises(ValueError, match=r"^init: .* holds a frame encoder \(a token cache's "
                                         r"backbone\), not a model to start from"):
        Trainer(config)
