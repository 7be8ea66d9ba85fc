"""SpoolForVideoClassification and the frame-pooling baseline: shapes, loss, save/load, order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from spool.models.classification import (
    FramePoolingForVideoClassification,
    SpoolForVideoClassification,
    classifier_class,
    load_classifier,
)

NAMES = ["a", "b", "c"]


@pytest.mark.parametrize("cls", [SpoolForVideoClassification, FramePoolingForVideoClassification])
def test_logits_loss_and_tokens_path(cls) -> None:
    model = cls(tiny_config(), class_names=NAMES).eval()
    video = torch.randint(0, 256, (2, 3, 40, 48, 3), dtype=torch.uint8)
    labels = torch.tensor([0, 2])
    out = model(video, labels)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    tokens = model.encode_frames(video)
    torch.testing.assert_close(model(tokens=tokens).logits, out.logits)
    torch.testing.assert_close(model.forward_tokens(tokens).logits, out.logits)
    assert model(video).loss is None


@pytest.mark.parametrize("cls", [SpoolForVideoClassification, FramePoolingForVideoClassification])
def test_save_and_load(tmp_path: Path, cls) -> None:
    model = cls(tiny_config(classifier_dropout=0.1), class_names=NAMES).eval()
    model.config.sampling = {"name": "uniform", "num_frames": 3}
    model.save_pretrained(tmp_path)
    loaded = load_classifier(tmp_path).eval()
    assert type(loaded) is cls and loaded.class_names == NAMES
    assert loaded.config.sampling == model.config.sampling
    video = torch.randint(0, 256, (1, 3, 32, 32, 3), dtype=torch.uint8)
    torch.testing.assert_close(loaded(video).logits, model(video).logits)
    light = cls.from_pretrained(tmp_path, with_backbone=False).eval()
    tokens = model.encode_frames(video)
    torch.testing.assert_close(light(tokens=tokens).logits, model(video).logits)
    with pytest.raises(ValueError, match="with_backbone=False"):
        light(video)


def test_frame_pooling_ignores_order_and_spool_does_not() -> None:
    tokens = torch.randn(2, 5, 17, 24)
    reverse = tokens.flip(1)
    pool = FramePoolingForVideoClassification(tiny_config(hidden_size=24, num_spatial_tokens=17),
                                              with_backbone=False, class_names=NAMES).eval()
    torch.testing.assert_close(pool(tokens=reverse).logits, pool(tokens=tokens).logits)
    spool = SpoolForVideoClassification(tiny_config(hidden_size=24, num_spatial_tokens=17),
                                        with_backbone=False, class_names=NAMES).eval()
    with torch.no_grad():  # a head that reads the context frames' features one to one
        spool.classifier.weight.normal_()
    assert not torch.allclose(spool(tokens=reverse).logits, spool(tokens=tokens).logits)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="class_names"):
        SpoolForVideoClassification(tiny_config())
    model = SpoolForVideoClassification(tiny_config(), class_names=NAMES)
    video = torch.randint(0, 256, (2, 3, 32, 32, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="exactly one of video"):
        model()
    with pytest.raises(ValueError, match="labels"):
        model(video, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="tokens: expected D="):
        model(tokens=torch.randn(1, 3, model.config.num_spatial_tokens, 7))
    with pytest.raises(ValueError, match="architecture"):
        classifier_class("resnet")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_classifier(Path("/nonexistent"))
