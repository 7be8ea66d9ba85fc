"""SpoolForFrameClassification: per-frame logits, ignore index, padding, cached tokens, I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from spool.models.classification import SpoolForVideoClassification
from spool.models.frame_classification import (
    SpoolForFrameClassification,
    load_frame_classifier,
)

NAMES = ["bg", "left", "right"]


def _model(**overrides) -> SpoolForFrameClassification:
    return SpoolForFrameClassification(tiny_config(**overrides), class_names=NAMES).eval()


def test_logits_per_frame_and_tokens_path() -> None:
    model = _model()
    video = torch.randint(0, 256, (2, 5, 40, 48, 3), dtype=torch.uint8)
    out = model(video)
    assert out.logits.shape == (2, 5, 3) and out.loss is None
    tokens = model.encode_frames(video)
    torch.testing.assert_close(model(tokens=tokens).logits, out.logits)
    torch.testing.assert_close(model.forward_tokens(tokens).logits, out.logits)
    # The head reads the real frames' features, averaged over tokens.
    features = model.spool(video).features[:, 1:-1].mean(dim=2)
    torch.testing.assert_close(out.logits, model.classifier(features))


def test_loss_ignores_minus_100() -> None:
    model = SpoolForFrameClassification(tiny_config(hidden_size=24, num_spatial_tokens=5),
                                        with_backbone=False, class_names=NAMES).eval()
    tokens = torch.randn(2, 6, 5, 24)
    labels = torch.tensor([[0, 1, 2, -100, -100, 1], [-100, 2, 2, 2, 0, 0]])
    out = model(tokens=tokens, labels=labels)
    keep = labels != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[keep], labels[keep]))
    none = model(tokens=tokens, labels=torch.full((2, 6), -100)).loss
    assert none.item() == 0.0
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 3\)"):
        model(tokens=tokens, labels=torch.full((2, 6), 3))
    with pytest.raises(ValueError, match=r"labels: expected an integer tensor of shape \(2, 6\)"):
        model(tokens=tokens, labels=labels[:, :5])


def test_padded_videos_score_as_they_do_alone() -> None:
    model = SpoolForFrameClassification(tiny_config(hidden_size=24, num_spatial_tokens=5),
                                        with_backbone=False, class_names=NAMES).eval()
    long, short = torch.randn(1, 7, 5, 24), torch.randn(1, 4, 5, 24)
    tokens = torch.cat([long, F.pad(short, (0, 0, 0, 0, 0, 3), value=9.0)])
    mask = torch.arange(7) < torch.tensor([[7], [4]])
    labels = torch.tensor([[0, 1, 2, 1, 0, 1, 2], [2, 2, 1, 0, 1, 1, 1]])  # padding labelled
    out = model(tokens=tokens, mask=mask, labels=labels)
    torch.testing.assert_close(out.logits[0], model(tokens=long).logits[0])
    torch.testing.assert_close(out.logits[1, :4], model(tokens=short).logits[0])
    assert (out.logits[1, 4:] == 0).all()
    keep = mask.clone()
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[keep], labels[keep]))
    with pytest.raises(ValueError, match="mask: expected each video's real frames first"):
        model(tokens=tokens, mask=mask.flip(1))


def test_save_and_load(tmp_path: Path) -> None:
    model = _model(classifier_dropout=0.1)
    model.save_pretrained(tmp_path)
    loaded = load_frame_classifier(tmp_path).eval()
    assert loaded.class_names == NAMES
    video = torch.randint(0, 256, (1, 4, 32, 32, 3), dtype=torch.uint8)
    torch.testing.assert_close(loaded(video).logits, model(video).logits)
    light = load_frame_classifier(tmp_path, with_backbone=False).eval()
    tokens = model.encode_frames(video)
    torch.testing.assert_close(light(tokens=tokens).logits, model(video).logits)
    with pytest.raises(ValueError, match="with_backbone=False"):
        light(video)
    other = tmp_path / "clip"
    SpoolForVideoClassification(tiny_config(), class_names=NAMES).save_pretrained(other)
    with pytest.raises(ValueError, match="expected a SpoolForFrameClassification"):
        load_frame_classifier(other)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="class_names"):
        SpoolForFrameClassification(tiny_config())
    model = _model()
    with pytest.raises(ValueError, match="exactly one of video"):
        model()
    with pytest.raises(ValueError, match="mask: expected a bool tensor"):
        model(tokens=torch.randn(1, 3, model.config.num_spatial_tokens, 24),
              mask=torch.ones(1, 3))
