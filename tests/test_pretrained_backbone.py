"""A saved model's config names a pretrained backbone: a model built anew from it takes that
backbone's weights, while ``from_pretrained`` (and training from a checkpoint or a token
cache) builds the recorded architecture offline and loads the saved weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone
from transformers import AutoConfig, AutoModel

from spool import Spool, SpoolConfig
from spool.errors import SpoolLoadError
from spool.models.frame_classification import SpoolForFrameClassification

TEMPORAL = dict(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
                num_lookback_heads=1, image_size=32, local_frame_range=2)


def _backbone_dir(path: Path, seed: int = 5, **changes) -> Path:
    """A 'pretrained' tiny DINOv2 folder, as `spool backbone import` or `hf download` give."""
    torch.manual_seed(seed)
    fields = {**tiny_backbone(), **changes}
    AutoModel.from_config(AutoConfig.for_model(**fields)).save_pretrained(path)
    return path


def _backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.frame_encoder.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_built_from_a_saved_config_takes_the_pretrained_backbone(tmp_path):
    """Was: save_pretrained wrote backbone_config, so a classifier built from the loaded
    model's config got a random backbone (max diff 0.1 from DINOv2-S's weights), silently."""
    source = _backbone_dir(tmp_path / "dino")
    pretrained = _backbone_state(Spool(backbone_name=str(source), **TEMPORAL))
    model = Spool(backbone_name=str(source), **TEMPORAL)
    with torch.no_grad():  # the saved model's backbone is its own (fine-tuned, say)
        next(model.frame_encoder.model.parameters()).add_(1.0)
    model.save_pretrained(tmp_path / "ckpt")

    loaded = Spool.from_pretrained(tmp_path / "ckpt")
    assert _same(_backbone_state(loaded), _backbone_state(model))  # the checkpoint's weights
    assert loaded.config.use_pretrained_backbone is True
    for config in (loaded.config, SpoolConfig.from_pretrained(tmp_path / "ckpt")):
        head = SpoolForFrameClassification(config, class_names=["a", "b"])
        assert _same(_backbone_state(head.spool), pretrained)


def test_a_checkpoint_loads_offline_and_a_new_model_says_where_weights_are(tmp_path):
    source = _backbone_dir(tmp_path / "dino")
    model = Spool(backbone_name=str(source), **TEMPORAL).eval()
    model.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(source)  # the checkpoint stands alone: nothing is fetched
    loaded = Spool.from_pretrained(tmp_path / "ckpt")
    video = torch.rand(1, 3, 32, 32, 3)
    torch.testing.assert_close(loaded(video).context, model(video).context, rtol=0, atol=0)
    with pytest.raises(SpoolLoadError, match="use from_pretrained on its directory"):
        Spool(loaded.config)
    random = Spool(loaded.config.replace(use_pretrained_backbone=False))  # as asked
    assert not _same(_backbone_state(random), _backbone_state(loaded))


def test_a_recorded_architecture_that_is_not_the_named_backbone_is_refused(tmp_path):
    source = _backbone_dir(tmp_path / "dino")
    config = SpoolConfig(backbone_name=str(source), use_pretrained_backbone=True,
                         backbone_config=tiny_backbone(hidden_size=32), **TEMPORAL)
    with pytest.raises(ValueError, match=r"not the architecture .*hidden_size.*\[32, 24\]"):
        Spool(config)


@pytest.mark.parametrize("value", [False, 1, "yes"])
def test_use_pretrained_backbone_is_checked(value):
    with pytest.raises(ValueError, match="^use_pretrained_backbone: expected None, true or "):
        SpoolConfig(use_pretrained_backbone=value, **TEMPORAL)


def test_a_user_backbone_config_stays_random_when_saved_and_rebuilt(tmp_path):
    """A backbone given as a config (tests, the demo) has no pretrained weights to take."""
    model = Spool(backbone_config=tiny_backbone(), **TEMPORAL)
    model.save_pretrained(tmp_path / "ckpt")
    config = SpoolConfig.from_pretrained(tmp_path / "ckpt")
    assert config.use_pretrained_backbone is None
    Spool(config)  # built from backbone_config, as before: no hub id is looked up


def test_training_from_a_checkpoint_needs_no_backbone_folder(tmp_path):
    """`spool train --init CKPT` builds from the init's config, which names its backbone:
    the init's own weights follow, so the folder it was made from need not exist."""
    from test_train_init import _build, _config
    from train_helpers import TINY_MODEL, tiny_video_dataset

    from spool.data.dataset import read_annotations

    source = _backbone_dir(tmp_path / "dino", hidden_size=TINY_MODEL["backbone_config"]
                           ["hidden_size"])
    fields = {k: v for k, v in TINY_MODEL.items() if k != "backbone_config"}
    init = Spool(backbone_name=str(source), **fields)
    init.save_pretrained(tmp_path / "init")
    shutil.rmtree(source)
    _, names = read_annotations(tiny_video_dataset() / "train.txt")
    model = _build(_config(tmp_path / "run", init=str(tmp_path / "init"), model={}), names)
    assert _same(_backbone_state(model.spool), _backbone_state(init))


@pytest.mark.parametrize("cls", ["SpoolForFrameClassification", "SpoolForVideoClassification"])
def test_a_spool_checkpoint_loads_under_a_new_head(tmp_path, cls, spool_log):
    """transformers' way with a base model's checkpoint: was 'holds a Spool, not a ...'."""
    import spool.models as models

    task = getattr(models, cls)
    model = Spool(backbone_config=tiny_backbone(), **TEMPORAL)
    model.save_pretrained(tmp_path / "spool")
    with pytest.raises(ValueError, match="needs class_names"):
        task.from_pretrained(tmp_path / "spool")
    loaded = task.from_pretrained(tmp_path / "spool", class_names=["a", "b", "c"])
    assert not loaded.training and loaded.class_names == ["a", "b", "c"]
    assert _same(loaded.spool.state_dict(), model.state_dict())
    assert f"{cls}: its Spool is {tmp_path / 'spool'}'s; classifier newly initialised" \
        in spool_log.text
    legacy = json.loads((tmp_path / "spool" / "config.json").read_text())
    legacy.pop("architectures")  # a Spool saved before configs named their class
    (tmp_path / "spool" / "config.json").write_text(json.dumps(legacy))
    assert _same(task.from_pretrained(tmp_path / "spool", class_names=["a"]).spool.state_dict(),
                 model.state_dict())
    loaded.save_pretrained(tmp_path / "task")  # then a classifier checkpoint of its own
    assert task.from_pretrained(tmp_path / "task").class_names == ["a", "b", "c"]
    temporal = task.from_pretrained(tmp_path / "spool", class_names=["a"], with_backbone=False)
    assert temporal.spool.frame_encoder is None


@pytest.mark.parametrize(("keyword", "advice"), [
    ("torch_dtype", r"\.to\(dtype\)"), ("dtype", "autocast"), ("device_map", r"\.to\(device\)"),
    ("num_labels", "class_names"), ("ignore_mismatched_sizes", "under a new head")])
def test_transformers_keywords_are_named_with_what_to_do(tmp_path, keyword, advice):
    Spool(backbone_config=tiny_backbone(), **TEMPORAL).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"{keyword!r}: a keyword of transformers, not "
                                         f"Spool's: .*{advice}"):
        Spool.from_pretrained(tmp_path, **{keyword: 2})
    config = SpoolConfig(backbone_config=tiny_backbone(), **TEMPORAL)
    with pytest.raises(ValueError, match="'config': the config goes first, positionally"):
        Spool(config=config)


def test_class_names_that_rename_a_classifiers_classes_are_said(tmp_path, spool_log):
    """from_pretrained(ckpt, class_names=[...]) of as many classes renamed them silently."""
    model = SpoolForFrameClassification(backbone_config=tiny_backbone(), class_names=["a", "b"],
                                        **TEMPORAL)
    model.save_pretrained(tmp_path)
    assert SpoolForFrameClassification.from_pretrained(tmp_path, class_names=["a", "b"])
    assert "rename" not in spool_log.text
    renamed = SpoolForFrameClassification.from_pretrained(tmp_path, class_names=["b", "a"])
    assert renamed.class_names == ["b", "a"]
    assert f"{tmp_path}: class_names ['b', 'a'] rename the classes it was trained on, " \
           "['a', 'b'], in order" in spool_log.text


def test_fields_that_change_a_saved_network_are_said(tmp_path, spool_log):
    """`spool eval --model local_frame_range=1` on a checkpoint ran another network than the
    one trained, without a word; fields of how it runs change nothing and say nothing."""
    model = SpoolForFrameClassification(backbone_config=tiny_backbone(), class_names=["a", "b"],
                                        **TEMPORAL)
    model.save_pretrained(tmp_path)
    frames = torch.rand(1, 4, 32, 32, 3)
    again = SpoolForFrameClassification.from_pretrained(tmp_path, attn_implementation="dense",
                                                        backbone_chunk_size=1)
    torch.testing.assert_close(again(frames).logits, model.eval()(frames).logits)
    assert "another network" not in spool_log.text
    narrow = SpoolForFrameClassification.from_pretrained(tmp_path, local_frame_range=1)
    assert f"{tmp_path}: loaded with local_frame_range {model.config.local_frame_range!r} -> 1: "\
           "another network than the one saved" in spool_log.text
    assert not torch.allclose(narrow(frames).logits, again(frames).logits)


def test_a_checkpoint_of_a_diverged_run_is_refused(tmp_path):
    """Before spool train stopped at a non-finite loss, a run at a too high learning rate saved
    NaN weights, and eval and extract used them (every output NaN)."""
    from safetensors.torch import load_file, save_file

    SpoolForFrameClassification(backbone_config=tiny_backbone(), class_names=["a", "b"],
                                **TEMPORAL).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    name = next(k for k in sorted(state) if k.startswith("spool.temporal"))
    state[name][0] = float("nan")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(SpoolLoadError, match=f"tensor '{name}' holds NaN or infinite values"):
        SpoolForFrameClassification.from_pretrained(tmp_path)


def _named_clip_cache(tmp_path: Path) -> tuple[Path, Path]:
    """A token cache made by a classifier on a named backbone folder (then removed)."""
    from train_helpers import TINY_MODEL, tiny_video_dataset

    from spool.data.cache import build_cache
    from spool.data.dataset import VideoClipDataset, read_annotations
    from spool.models.classification import SpoolForVideoClassification
    from spool.video.samplers import clip_sampler

    source = _backbone_dir(tmp_path / "dino")
    fields = {k: v for k, v in TINY_MODEL.items() if k != "backbone_config"}
    samples, names = read_annotations(tiny_video_dataset() / "train.txt")
    model = SpoolForVideoClassification(backbone_name=str(source), class_names=names, **fields)
    build_cache(model, VideoClipDataset(samples[:2], names, clip_sampler(4),
                                        model.config.preprocessing()), tmp_path / "cache")
    return source, tmp_path / "cache"


def test_a_caches_backbone_runs_offline_and_its_runs_name_their_backbone(tmp_path, capsys):
    """Review: `spool extract --checkpoint CACHE/backbone --backbone-only` tried to load the
    named folder again (gone: an error); a model trained on the cache saved
    use_pretrained_backbone null, so one built from its config got a random backbone."""
    from test_train_init import _config
    from train_helpers import tiny_video_dataset

    from spool.cli import main
    from spool.train.builders import model_config

    source, cache = _named_clip_cache(tmp_path)
    pretrained = _backbone_state(Spool(backbone_name=str(source), **TEMPORAL))
    shutil.rmtree(source)
    video = next(tiny_video_dataset().rglob("*.mkv"))
    assert main(["extract", str(video), "--out", str(tmp_path / "o"), "--checkpoint",
                 str(cache / "backbone"), "--backbone-only", "--no-progress"]) == 0, \
        capsys.readouterr().err
    config = model_config(_config(tmp_path / "run", train_data=None, train_cache=str(cache),
                                  model={}))
    assert config.use_pretrained_backbone is True and config.backbone_name == str(source)
    _backbone_dir(source)  # the folder back: a model built anew from the config takes it
    assert _same(_backbone_state(Spool(config)), pretrained)


def test_a_new_head_takes_none_of_the_old_heads_settings(tmp_path):
    """Review: a frame classifier's Spool (saved alone) kept its background class and head
    settings under the new head: a ValueError for classes without 'bg'. (architectures=
    given too was a TypeError.)"""
    old = SpoolForFrameClassification(backbone_config=tiny_backbone(), class_names=["bg", "a"],
                                      background_classes=["bg"],
                                      head_config={"context_in_head": True}, **TEMPORAL)
    old.spool.save_pretrained(tmp_path)
    new = SpoolForFrameClassification.from_pretrained(tmp_path, class_names=["sit", "stand"],
                                                      architectures=["ignored"])
    assert new.config.background_classes is None and new.config.head_config is None


def test_predicting_from_tokens_says_nothing_about_a_sampling_rate(spool_log, monkeypatch):
    """Review: predict_long(tokens) said 'videos are sampled at 1 fps' (nothing is decoded)."""
    from spool import runtime

    monkeypatch.setattr(runtime, "_said", set())
    model = SpoolForFrameClassification(backbone_config=tiny_backbone(), class_names=["a", "b"],
                                        **TEMPORAL).eval()
    model.predict_long(torch.randn(5, model.config.num_spatial_tokens, 24))
    assert "1 fps" not in spool_log.text


def test_frozen_can_still_be_set():
    """Review: FrameEncoder.frozen became a read-only property (an AttributeError)."""
    encoder = Spool(backbone_config=tiny_backbone(), **TEMPORAL).backbone
    encoder.frozen = False
    assert all(p.requires_grad for p in encoder.model.parameters()) and not encoder.frozen
    encoder.frozen = True
    assert encoder.frozen and not encoder.model.training
