"""Learned token merging before the temporal stack (``token_merging``, off by default)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone, tiny_config
from train_helpers import TEMPORAL_FIELDS, TINY_MODEL, tiny_video_dataset

from spool import Spool, SpoolConfig
from spool.data.cache import build_cache, cache_backbone_config
from spool.data.dataset import VideoClipDataset, read_annotations
from spool.layers.pooling import SpatialTokenPooling, TokenMerging, split_patch_grid
from spool.models.classification import SpoolForVideoClassification, load_classifier
from spool.models.frame_encoder import FrameEncoderModel
from spool.train.builders import parameter_groups
from spool.train.config import TrainConfig
from spool.train.trainer import train
from spool.video.samplers import clip_sampler


def _perturb(module: TokenMerging) -> None:
    with torch.no_grad():
        module.proj.weight.add_(0.1 * torch.randn_like(module.proj.weight))
        module.proj.bias.normal_(std=0.1)


def test_merging_starts_as_pooling_and_keeps_the_backbone_tokens():
    pooled = Spool(tiny_config(token_pooling=2)).eval()  # 32 px, patch 8: 1 + 4 x 4 tokens
    merged = Spool(tiny_config(token_merging=2)).eval()
    missing, unexpected = merged.load_state_dict(pooled.state_dict(), strict=False)
    assert sorted(missing) == ["token_merging.proj.bias", "token_merging.proj.weight"]
    assert not unexpected
    video = torch.rand(2, 3, 32, 32, 3)
    assert merged.encode_frames(video).shape == (2, 3, 17, 24)  # the cache keeps every token
    assert merged.config.num_spatial_tokens == 17 and merged.num_temporal_tokens == 5
    a, b = pooled(video), merged(video)
    assert b.features.shape == (2, 5, 5, 24)
    torch.testing.assert_close(b.features, a.features, rtol=1e-5, atol=1e-5)


def test_merging_sees_where_in_its_cell_a_token_is():
    merge, pool = TokenMerging(17, 8, 2), SpatialTokenPooling(1, 4, 2)
    _perturb(merge)
    left, right = torch.zeros(1, 17, 8), torch.zeros(1, 17, 8)
    left[0, 1], right[0, 2] = 1.0, 1.0  # patches (0, 0) and (0, 1): the same 2 x 2 cell
    torch.testing.assert_close(pool(left), pool(right))
    out_left, out_right = merge(left), merge(right)
    assert out_left.shape == (1, 5, 8)
    assert not torch.allclose(out_left[0, 1], out_right[0, 1])
    torch.testing.assert_close(out_left[0, 2:], out_right[0, 2:])  # other cells: bias only
    torch.testing.assert_close(out_left[0, 0], left[0, 0])  # the class token is kept


def test_merging_counts_registers_and_refuses_a_bad_factor():
    assert split_patch_grid(257) == (1, 16) and split_patch_grid(261) == (5, 16)
    backbone = dict(tiny_backbone(), model_type="dinov2_with_registers", num_register_tokens=4)
    model = Spool(tiny_config(backbone_config=backbone, token_merging=4)).eval()
    assert model.config.num_spatial_tokens == 21 and model.num_temporal_tokens == 6
    assert model(torch.rand(1, 2, 32, 32, 3)).features.shape == (1, 4, 6, 24)
    with pytest.raises(ValueError, match="token_merging: expected a factor >= 2 of the 4x4"):
        Spool(tiny_config(token_merging=3))
    with pytest.raises(ValueError, match="token_merging"):
        tiny_config(token_merging=0)


def test_merging_cached_tokens_keeps_the_recorded_class_and_register_tokens(tmp_path: Path):
    """1 class + 4 registers + a 2x2 grid = 9 tokens, which the count alone reads as a 3x3 grid:
    on cached tokens (no backbone) the class and register tokens were merged with the patches
    (k = 3 took all 9 into one token; k = 2 was refused). The frame encoder's saved config (what
    a token cache holds) records the 5 of them, and the merge keeps them."""
    registers = {**tiny_backbone(), "model_type": "dinov2_with_registers", "num_register_tokens": 4}
    FrameEncoderModel(tiny_config(backbone_config=registers, image_size=16)).save_pretrained(
        tmp_path / "backbone")
    cached = SpoolConfig.from_pretrained(tmp_path / "backbone")
    assert (cached.num_spatial_tokens, cached.num_prefix_tokens) == (9, 5)
    temporal = {k: getattr(tiny_config(), k) for k in TEMPORAL_FIELDS}
    model = Spool(cached.replace(**temporal, token_merging=2), with_backbone=False).eval()
    assert model.num_temporal_tokens == 6
    tokens = torch.randn(1, 2, 9, 24)
    merged = model.merge_tokens(tokens)
    torch.testing.assert_close(merged[..., :5, :], tokens[..., :5, :])  # passed through
    torch.testing.assert_close(merged[..., 5, :], tokens[..., 5:, :].mean(-2))  # the 2x2 grid
    assert model.forward_tokens(tokens).features.shape == (1, 4, 6, 24)
    with pytest.raises(ValueError, match="factor >= 2 of the 2x2 patch grid"):
        Spool(cached.replace(**temporal, token_merging=3), with_backbone=False)


def test_a_prefix_the_token_count_contradicts_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="num_prefix_tokens: expected"):
        tiny_config(hidden_size=24, num_spatial_tokens=9, num_prefix_tokens=4)
    config = tiny_config(hidden_size=24, num_spatial_tokens=9, num_prefix_tokens=5)
    config.save_pretrained(tmp_path)
    assert SpoolConfig.from_pretrained(tmp_path) == config
    old = {k: v for k, v in config.to_dict().items() if k != "num_prefix_tokens"}
    assert SpoolConfig.from_dict(old).num_prefix_tokens is None  # inferred from the count


def test_forward_long_merges_like_forward_tokens():
    model = Spool(tiny_config(token_merging=2, num_hidden_layers=2)).eval()
    _perturb(model.token_merging)
    tokens = torch.randn(11, 17, 24)
    with torch.no_grad():
        dense = model.forward_tokens(tokens[None])
    long = model.forward_long(tokens, chunk_frames=4, keep_features=True)
    torch.testing.assert_close(long.features, dense.features[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(long.context, dense.context[0], rtol=1e-4, atol=1e-4)


def test_merging_trains_on_a_full_token_cache_and_round_trips(tmp_path: Path):
    root = tiny_video_dataset()
    samples, names = read_annotations(root / "train.txt")
    encoder = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    build_cache(encoder, VideoClipDataset(samples, names, clip_sampler(4),
                                          encoder.config.preprocessing()), tmp_path / "cache")
    model = {**{k: TINY_MODEL[k] for k in TEMPORAL_FIELDS}, "token_merging": 2}
    train(TrainConfig(out_dir=str(tmp_path / "run"), train_cache=str(tmp_path / "cache"),
                      model=model, epochs=1, batch_size=4, lr=3e-3,
                      num_workers=0, tensorboard=False, quiet=True, seed=3))
    trained = load_classifier(tmp_path / "run" / "model").eval()
    merging = trained.spool.token_merging
    assert merging is not None and trained.config.token_merging == 2
    assert cache_backbone_config(tmp_path / "cache").num_prefix_tokens == 1  # the cache's record
    assert trained.config.num_prefix_tokens == 1
    assert not torch.allclose(merging.proj.weight, TokenMerging(17, 24, 2).proj.weight)
    groups = parameter_groups(trained, 0.1)
    assert any(p is merging.proj.weight for p in groups[1]["params"])  # no decay on it
    video = torch.rand(1, 4, 32, 32, 3)
    with torch.no_grad():
        before = trained(video).logits
    trained.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        after = load_classifier(tmp_path / "again").eval()(video).logits
    torch.testing.assert_close(after, before)


def test_recording_the_layout_redoes_no_cache_and_no_output(tmp_path: Path):
    """Caches and extracted outputs made before ``num_prefix_tokens`` was recorded (None)
    stay valid: the field says how tokens are laid out, not what they are."""
    root = tiny_video_dataset()
    samples, names = read_annotations(root / "train.txt")
    encoder = SpoolForVideoClassification(**TINY_MODEL, class_names=names)
    assert encoder.config.num_prefix_tokens == 1
    old = SpoolConfig.from_dict({**encoder.config.to_dict(), "num_prefix_tokens": None})
    assert old.outputs_hash() == encoder.config.outputs_hash()
    merged = encoder.config.replace(token_merging=2)
    assert merged.outputs_hash() != merged.replace(num_prefix_tokens=None).outputs_hash()
    dataset = VideoClipDataset(samples, names, clip_sampler(4), encoder.config.preprocessing())
    build_cache(encoder, dataset, tmp_path / "cache")
    keyed = json.loads((tmp_path / "cache" / "cache.json").read_text())  # the key's input
    assert "num_prefix_tokens" not in keyed["frame_encoder"]
    assert keyed["frame_encoder"]["num_spatial_tokens"] == 17
