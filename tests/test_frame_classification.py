"""SpoolForFrameClassification: per-frame logits, ignore index, padding, cached tokens, I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from spool.models.classification import SpoolForVideoClassification
from spool.models.frame_classification import SpoolForFrameClassification
from spool.models.pretrained import load_pretrained

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
    with pytest.raises(ValueError, match=r"shape \(2, 6\), got list"):  # not AttributeError
        model(tokens=tokens, labels=labels.tolist())
    with pytest.raises(ValueError, match=r"mask: expected a bool tensor .*, got list"):
        model(tokens=tokens, mask=[[True] * 6] * 2)


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
    loaded = load_pretrained(tmp_path).eval()
    assert type(loaded) is SpoolForFrameClassification
    assert loaded.class_names == NAMES
    video = torch.randint(0, 256, (1, 4, 32, 32, 3), dtype=torch.uint8)
    torch.testing.assert_close(loaded(video).logits, model(video).logits)
    light = load_pretrained(tmp_path, with_backbone=False).eval()
    tokens = model.encode_frames(video)
    torch.testing.assert_close(light(tokens=tokens).logits, model(video).logits)
    with pytest.raises(ValueError, match="with_backbone=False"):
        light(video)
    other = tmp_path / "clip"
    SpoolForVideoClassification(tiny_config(), class_names=NAMES).save_pretrained(other)
    with pytest.raises(ValueError, match="not a SpoolForFrameClassification"):
        SpoolForFrameClassification.from_pretrained(other)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="class_names"):
        SpoolForFrameClassification(tiny_config())
    model = _model()
    with pytest.raises(ValueError, match="exactly one of video"):
        model()
    with pytest.raises(ValueError, match="mask: expected a bool tensor"):
        model(tokens=torch.randn(1, 3, model.config.num_spatial_tokens, 24),
              mask=torch.ones(1, 3))


@pytest.mark.parametrize("name", ["spool", "linear_probe", "ms_tcn"])
def test_whole_video_prediction_equals_the_plain_forward(tmp_path: Path, name: str) -> None:
    """predict_long (chunked, memory linear in T) gives the forward's logits, from tokens and
    from a video file; every frame classifier saves and loads through load_pretrained."""
    import numpy as np

    from spool.models.frame_baselines import frame_classifier_class
    from spool.video import write_video
    from spool.video.samplers import StrideSampler

    model = frame_classifier_class(name)(tiny_config(num_hidden_layers=2),
                                         class_names=NAMES).eval()
    frames = np.random.default_rng(0).integers(0, 256, (23, 32, 40, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")
    video = model.config.preprocessing()(torch.from_numpy(frames))[None]
    with torch.no_grad():
        tokens = model.encode_frames(video)
        plain = model(tokens=tokens).logits[0]
    torch.testing.assert_close(model.predict_long(tokens[0], chunk_frames=5).logits, plain,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.predict_long(tokens, chunk_frames=5).logits, plain,
                               atol=1e-5, rtol=1e-5)  # [1, T, L, D], as forward_long takes
    with pytest.raises(ValueError, match=r"one video's tokens \[T, L, D\]"):
        model.predict_long(tokens.expand(2, -1, -1, -1))
    from_file = model.predict_long(path, sampler=StrideSampler(1), chunk_frames=7)
    torch.testing.assert_close(from_file.logits, plain, atol=1e-5, rtol=1e-5)
    assert from_file.frame_indices.tolist() == list(range(23))
    assert from_file.class_names == tuple(NAMES)  # was: logits only, names mapped by hand
    assert from_file.labels == [NAMES[i] for i in plain.argmax(-1).tolist()]
    # No sampler: the rate it was trained at (config.sampling), else 1 fps (said).
    assert model.predict_long(path).frame_indices.tolist() == [0, 10, 20]
    model.config.sampling = {"name": "fps", "target_fps": 5.0}
    assert model.predict_long(path).frame_indices.tolist() == list(range(0, 23, 2))
    model.config.sampling = {"name": "stride", "stride": 3}
    assert model.predict_long(path).frame_indices.tolist() == list(range(0, 23, 3))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt").eval()
    assert type(loaded) is type(model)
    torch.testing.assert_close(loaded(tokens=tokens).logits[0], plain)


def test_ms_tcn_is_trained_with_its_own_loss() -> None:
    from spool.models.frame_baselines import MSTCNForFrameClassification
    from spool.models.temporal_conv import ms_tcn_loss

    model = MSTCNForFrameClassification(tiny_config(), class_names=NAMES,
                                        head_config={"num_stages": 2, "num_layers": 3}).eval()
    tokens = torch.randn(1, 9, model.config.num_spatial_tokens, 24)
    labels = torch.randint(0, 3, (1, 9))
    out = model(tokens=tokens, labels=labels)
    stages = model.tcn(tokens.mean(dim=2))
    assert stages.shape[0] == 2
    torch.testing.assert_close(out.loss, ms_tcn_loss(stages, labels))


def test_context_in_head_and_smoothing_loss(tmp_path: Path) -> None:
    """head_config: the head reads [frame feature, pooled context] (Linear(3D, C)), the loss
    adds MS-TCN's smoothing term; both survive save/load and reach predict_long."""
    from spool.models.temporal_conv import ms_tcn_loss

    head = {"context_in_head": True, "smoothing_weight": 0.15}
    model = SpoolForFrameClassification(
        tiny_config(hidden_size=24, num_spatial_tokens=5, head_config=head),
        with_backbone=False, class_names=NAMES).eval()
    assert model.classifier.in_features == 3 * 24
    tokens = torch.randn(2, 6, 5, 24)
    labels = torch.tensor([[0, 1, 2, -100, 1, 1], [2, 2, 2, 2, 0, 0]])
    out = model(tokens=tokens, labels=labels)
    spool_out = model.spool.forward_tokens(tokens)
    frames = spool_out.features[:, 1:-1].mean(dim=2)
    context = spool_out.context[:, None].expand(-1, 6, -1)
    torch.testing.assert_close(out.logits, model.classifier(torch.cat((frames, context), -1)))
    torch.testing.assert_close(out.loss, ms_tcn_loss(out.logits, labels, smoothing_weight=0.15))
    assert out.loss > F.cross_entropy(out.logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(model.predict_long(tokens[0], chunk_frames=4).logits,
                               out.logits[0], atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path, with_backbone=False).eval()
    assert loaded.context_in_head and loaded.smoothing_weight == 0.15
    torch.testing.assert_close(loaded(tokens=tokens).logits, out.logits)
    with pytest.raises(ValueError, match=r"head_config: expected keys among"):
        SpoolForFrameClassification(tiny_config(head_config={"num_stages": 2}),
                                    class_names=NAMES)
    with pytest.raises(ValueError, match="smoothing_weight a number >= 0"):
        SpoolForFrameClassification(tiny_config(head_config={"smoothing_weight": -1}),
                                    class_names=NAMES)


def test_background_classes_must_be_classes():
    from spool import SpoolConfig

    SpoolConfig(class_names=["a", "b"], background_classes=["b"])
    with pytest.raises(ValueError, match="background_classes"):
        SpoolConfig(class_names=["a", "b"], background_classes=["c"])


@pytest.mark.parametrize("name, head, match", [
    ("ms_tcn", {"num_stage": 2}, r"head_config: expected keys among \['num_stages'"),
    ("ms_tcn", {"smoothing_weight": 0.3}, "head_config: expected keys among"),
    ("ms_tcn", {"num_stages": "2"}, "head_config: expected num_stages an integer >= 1, got '2'"),
    ("ms_tcn", {"dropout": 1.5}, r"head_config: expected dropout a number in \[0, 1\)"),
    ("linear_probe", {"refinement_stages": 2}, "head_config: the linear probe takes no"),
])
def test_baselines_check_their_head_config(name: str, head: dict, match: str) -> None:
    """They were TypeErrors from deep inside (MS-TCN) or silently ignored (the probe)."""
    from spool.models.frame_baselines import frame_classifier_class

    with pytest.raises(ValueError, match=match):
        frame_classifier_class(name)(tiny_config(head_config=head), class_names=NAMES)
    frame_classifier_class("ms_tcn")(tiny_config(head_config={"num_stages": 2, "dropout": 0.0}),
                                     class_names=NAMES)  # valid settings still build
