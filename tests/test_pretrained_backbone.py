"""A saved model's config names a pretrained backbone: a model built anew from it takes that
backbone's weights, while ``from_pretrained`` (and training from a checkpoint or a token
cache) builds the recorded architecture offline and loads the saved weights."""

from __future__ import annotations

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
