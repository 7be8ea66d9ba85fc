"""The frame encoder equals a direct call of the HF model; loading errors are clear."""

import json

import pytest
import torch
from conftest import tiny_backbone, tiny_config
from transformers import AutoConfig, AutoModel

from spool import Spool
from spool.layers.backbone import FrameEncoder


def test_tokens_equal_direct_hf_call():
    config = tiny_config(backbone_chunk_size=3)
    encoder = FrameEncoder(config)
    video = torch.randint(0, 256, (2, 4, 45, 61, 3), dtype=torch.uint8)
    tokens = encoder(video)
    pixels = encoder.preprocess(video.reshape(8, 45, 61, 3))
    assert pixels.shape == (8, 3, 32, 32)
    with torch.no_grad():
        direct = encoder.model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(tokens, direct.view(2, 4, *direct.shape[1:]), atol=0, rtol=0)


def test_preprocess_uses_backbone_normalisation():
    encoder = FrameEncoder(tiny_config(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 1.0]))
    white = torch.full((1, 32, 32, 3), 255, dtype=torch.uint8)
    pixels = encoder.preprocess(white)
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_registers_backbone_token_count():
    backbone = tiny_backbone(num_register_tokens=4)
    backbone["model_type"] = "dinov2_with_registers"
    model = Spool(tiny_config(backbone_config=backbone))
    assert model.config.num_spatial_tokens == 1 + 4 + 16
    out = model(torch.rand(1, 2, 32, 32, 3))
    assert out.features.shape == (1, 4, 21, 24)


def test_loads_local_hf_directory_with_its_normalisation(tmp_path):
    hf_config = AutoConfig.for_model(**tiny_backbone())
    AutoModel.from_config(hf_config).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}))
    model = Spool(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
                  num_lookback_heads=1, image_size=32, backbone_name=str(tmp_path))
    assert model.config.image_mean == [0.1, 0.2, 0.3]
    # Values the user set win, as an explicit crop_pct does (they were replaced silently).
    mine = Spool(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
                 num_lookback_heads=1, image_size=32, backbone_name=str(tmp_path),
                 image_mean=[0.5, 0.5, 0.5])
    assert mine.config.image_mean == [0.5, 0.5, 0.5] and mine.config.image_std == [0.4, 0.5, 0.6]
    direct = AutoModel.from_pretrained(tmp_path)
    for (name, a), b in zip(model.backbone.model.state_dict().items(),
                            direct.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_missing_weights_error_names_the_id_and_the_fix(tmp_path):
    with pytest.raises(OSError, match=r"facebook/dinov2-base.*local-dir.*backbone_name=DIR"):
        Spool(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
              num_lookback_heads=1, backbone_name="facebook/dinov2-base")
    with pytest.raises(OSError, match="local directory"):
        Spool(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
              num_lookback_heads=1, backbone_name=str(tmp_path))


def test_a_missing_relative_backbone_folder_is_named(tmp_path, monkeypatch):
    """The README's backbone_name="models/dinov2-small" from another directory read as a hub
    id only: the advice was to download it from the hub."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match=f"no folder {tmp_path}/models/dinov2-small \\(relative "
                                      "to the current directory\\)"):
        Spool(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
              num_lookback_heads=1, backbone_name="models/dinov2-small")


def test_backbone_chunking_does_not_change_tokens():
    a = FrameEncoder(tiny_config(backbone_chunk_size=1))
    b = FrameEncoder(tiny_config(backbone_chunk_size=100))
    b.load_state_dict(a.state_dict())
    video = torch.rand(2, 3, 32, 32, 3)
    torch.testing.assert_close(a(video), b(video))


@pytest.mark.parametrize("overrides, match", [
    ({"backbone_config": {**tiny_backbone(), "image_size": "32"}}, "backbone_config: "),
    ({"image_size": 4}, "image_size: expected at least the backbone's patch size 8, got 4"),
])
def test_bad_backbone_settings_are_value_errors(overrides, match) -> None:
    """They were a huggingface_hub validation error (not a ValueError: the CLI printed its
    traceback) and torch's "Kernel size can't be greater than actual input size"."""
    with pytest.raises(ValueError, match=match):
        Spool(tiny_config(**overrides))


def test_token_merging_keeps_the_backbones_class_and_register_tokens() -> None:
    """1 class + 4 registers + a 2x2 grid = 9 tokens, which the count alone reads as a 3x3 grid:
    this was refused (a k of the 3x3 grid merged the class and register tokens with the
    patches). The config records the backbone's 5 (num_prefix_tokens), and merging keeps them."""
    registers = {**tiny_backbone(), "model_type": "dinov2_with_registers", "num_register_tokens": 4}
    small = Spool(tiny_config(backbone_config=registers, image_size=16, token_merging=2))
    assert small.config.num_prefix_tokens == 5
    assert (small.token_merging.num_prefix, small.token_merging.grid) == (5, 2)
    assert small(torch.rand(1, 2, 16, 16, 3)).features.shape == (1, 4, 6, 24)
    merging = Spool(tiny_config(backbone_config=registers, image_size=32, token_merging=2))
    assert (merging.token_merging.num_prefix, merging.token_merging.grid) == (5, 4)


@pytest.mark.parametrize("processor,expected", [
    # CLIP's bare ints: resized to 224 and cropped to 224, i.e. nothing cut (was 0.875).
    ({"do_center_crop": True, "size": 224, "crop_size": 224}, {"crop_pct": 1.0}),
    ({"do_center_crop": True, "size": {"shortest_edge": 256},  # DINOv2's
      "crop_size": {"height": 224, "width": 224}}, {"crop_pct": 0.875}),
])
def test_the_backbones_crop_is_read_in_every_form(tmp_path, processor, expected):
    hf_config = AutoConfig.for_model(**tiny_backbone())
    AutoModel.from_config(hf_config).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    fields = dict(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
                  num_lookback_heads=1, image_size=32, backbone_name=str(tmp_path))
    config = Spool(**fields).config
    assert {k: getattr(config, k) for k in expected} == expected


def test_pixels_get_gradients_through_a_frozen_backbone():
    """Saliency maps: with the default frozen backbone, video.grad stayed None without a word
    (the backbone ran without autograd); frozen weights in timm or transformers still pass
    gradients to pixels that ask for them."""
    frozen = Spool(tiny_config()).eval()
    unfrozen = Spool(tiny_config(freeze_backbone=False)).eval()
    unfrozen.load_state_dict(frozen.state_dict())
    grads = []
    for model in (frozen, unfrozen):
        video = torch.rand(1, 3, 32, 32, 3, generator=torch.Generator().manual_seed(0))
        video.requires_grad_()
        model(video).context.sum().backward()
        grads.append(video.grad)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])
    assert all(p.grad is None for p in frozen.backbone.parameters())
