"""SpoolForFrameClassification's refinement stages (head_config["refinement_stages"])."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from spool.models.frame_classification import SpoolForFrameClassification
from spool.models.pretrained import load_pretrained
from spool.models.temporal_conv import ms_tcn_loss

NAMES = ["bg", "left", "right"]
HEAD = {"context_in_head": True, "smoothing_weight": 0.15, "refinement_stages": 2,
        "refinement_layers": 1, "refinement_window": 3, "refinement_context": True}


def _model(head: dict = HEAD) -> SpoolForFrameClassification:
    return SpoolForFrameClassification(
        tiny_config(hidden_size=24, num_spatial_tokens=5, head_config=head),
        with_backbone=False, class_names=NAMES).eval()


def test_each_stage_reads_the_softmax_of_the_one_before(tmp_path: Path) -> None:
    model = _model()
    assert len(model.refinements) == 2
    stage = model.refinements[0].spool.config
    assert (stage.num_hidden_layers, stage.local_frame_range, stage.num_spatial_tokens) == (1, 3, 1)
    # refinement_context: each stage's head also reads its own stack's pooled context.
    assert model.refinements[0].classifier.in_features == 3 * 24
    plain = _model({"context_in_head": True, "refinement_stages": 1})
    assert plain.refinements[0].classifier.in_features == 24
    with pytest.raises(ValueError, match="expected refinement_context true or false"):
        _model({"refinement_context": 1})
    tokens = torch.randn(2, 7, 5, 24)
    labels = torch.tensor([[0, 1, 1, -100, 2, 2, 0], [2, 2, 2, 1, 1, 0, 0]])
    out = model(tokens=tokens, labels=labels)
    spool_out = model.spool.forward_tokens(tokens)
    frames = spool_out.features[:, 1:-1].mean(dim=2)
    context = spool_out.context[:, None].expand(-1, 7, -1)
    first = model.classifier(torch.cat((frames, context), -1))
    second = model.refinements[0](first)
    third = model.refinements[1](second)
    # It reads probabilities: logits shifted by a constant (same softmax) give the same output,
    # and another distribution does not.
    with torch.no_grad():
        torch.testing.assert_close(model.refinements[0](first + 3.0), second)
        assert not torch.allclose(model.refinements[0](2 * first), second)
    torch.testing.assert_close(out.logits, third)
    # Every stage is trained, with MS-TCN's loss at the model's smoothing weight.
    torch.testing.assert_close(out.loss, ms_tcn_loss(torch.stack((first, second, third)),
                                                     labels, smoothing_weight=0.15))
    torch.testing.assert_close(model.predict_long(tokens[1], chunk_frames=3).logits,
                               out.logits[1], atol=1e-5, rtol=1e-5)
    assert "refinements.1.spool.context_frames.start" in model.no_weight_decay()
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path, with_backbone=False).eval()
    torch.testing.assert_close(loaded(tokens=tokens).logits, out.logits)


def test_padded_videos_train_every_stage_at_their_own_length() -> None:
    model = _model()
    tokens = torch.randn(2, 6, 5, 24)
    labels = torch.tensor([[0, 1, 1, 2, 2, 0], [2, 2, 1, 0, 0, 0]])
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = model(tokens=tokens, labels=labels, mask=mask)
    alone = model(tokens=tokens[1:, :4])
    torch.testing.assert_close(out.logits[1, :4], alone.logits[0])
    assert (out.logits[1, 4:] == 0).all()
    long_stages = model.frame_logits(tokens[:1])[1]
    short_stages = torch.nn.functional.pad(model.frame_logits(tokens[1:, :4])[1], (0, 0, 0, 2))
    expected = ms_tcn_loss(torch.cat((long_stages, short_stages), dim=1),
                           labels.masked_fill(~mask, -100), mask, smoothing_weight=0.15)
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("key", ["refinement_stages", "refinement_layers", "refinement_window"])
def test_refinement_settings_are_checked(key: str) -> None:
    with pytest.raises(ValueError, match=f"expected {key} an integer >= 0"):
        _model({key: -1})
    with pytest.raises(ValueError, match=f"expected {key} an integer >= 0"):
        _model({key: 1.5})
