"""Spatial token pooling for the temporal stack (``token_pooling``, off by default)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_backbone, tiny_config

from spool import Spool


def test_pooling_averages_the_patch_grid_and_keeps_the_class_token():
    plain = Spool(tiny_config()).eval()  # 32 px, patch 8: class token + 4 x 4 patches
    pooled = Spool(tiny_config(token_pooling=2)).eval()
    pooled.backbone.load_state_dict(plain.backbone.state_dict())
    video = torch.rand(2, 3, 32, 32, 3)
    full, small = plain.encode_frames(video), pooled.encode_frames(video)
    assert full.shape == (2, 3, 17, 24) and small.shape == (2, 3, 5, 24)
    torch.testing.assert_close(small[:, :, 0], full[:, :, 0])
    grid = full[:, :, 1:].reshape(6, 4, 4, 24).permute(0, 3, 1, 2)
    expected = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2).reshape(2, 3, 4, 24)
    torch.testing.assert_close(small[:, :, 1:], expected)
    out = pooled(video)  # features come out at the pooled resolution
    assert out.features.shape == (2, 5, 5, 24) and pooled.config.num_spatial_tokens == 5


@pytest.mark.parametrize("k,tokens", [(1, 257), (2, 65), (4, 17)])
def test_token_counts_at_224_for_a_patch_14_backbone(k, tokens):
    backbone = tiny_backbone(hidden_size=24, patch_size=14, image_size=224)
    model = Spool(tiny_config(image_size=224, backbone_config=backbone, token_pooling=k))
    assert model.config.num_spatial_tokens == tokens


def test_register_tokens_are_kept():
    backbone = dict(tiny_backbone(), model_type="dinov2_with_registers", num_register_tokens=4)
    model = Spool(tiny_config(backbone_config=backbone, token_pooling=4)).eval()
    assert model.config.num_spatial_tokens == 1 + 4 + 1  # class, registers, one pooled patch


def test_pooling_factor_must_divide_the_grid():
    with pytest.raises(ValueError, match="token_pooling: expected a factor .* 4x4 patch grid"):
        Spool(tiny_config(token_pooling=3))
    with pytest.raises(ValueError, match="token_pooling"):
        tiny_config(token_pooling=0)
