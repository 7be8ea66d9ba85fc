"""Every bad configuration and input of SPEC §2 is a ValueError naming the argument."""

import pytest
import torch
from conftest import tiny_config

from spool import Spool, SpoolConfig


@pytest.mark.parametrize("overrides,match", [
    (dict(num_lookahead_heads=3, num_lookback_heads=2),
     r"num_lookback_heads \+ num_lookahead_heads.*4"),
    (dict(local_frame_range=-1), "local_frame_range"),
    (dict(num_attention_heads=0, num_lookahead_heads=0, num_lookback_heads=0),
     "num_attention_heads"),
    (dict(image_size=0), "image_size"),
    (dict(attn_implementation="fast"), "attn_implementation"),
    (dict(hidden_dropout=1.5), "hidden_dropout"),
    (dict(backbone_chunk_size=0), "backbone_chunk_size"),
    (dict(num_hidden_layers=-2), "num_hidden_layers"),
])
def test_bad_configuration(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_hidden_size_not_divisible_by_heads():
    # tiny backbone: D = 24, 5 heads do not divide it
    match = r"hidden_size.*divisible by num_attention_heads \(5\).*24"
    with pytest.raises(ValueError, match=match):
        Spool(tiny_config(num_attention_heads=5, num_lookahead_heads=2, num_lookback_heads=3))


def test_odd_head_dim_rejected():
    with pytest.raises(ValueError, match="even head dimension"):
        SpoolConfig(num_attention_heads=8, num_lookback_heads=4, num_lookahead_heads=4,
                    hidden_size=24)


def test_unknown_config_key():
    with pytest.raises(ValueError, match="unknown SpoolConfig field.*num_layers"):
        SpoolConfig.from_dict({"num_layers": 3})


def test_a_misspelt_keyword_is_a_value_error_that_says_what_it_looks_like():
    """SPEC §2: invalid configuration is a ValueError. Spool(..., num_hidden_layer=2) was a
    TypeError from the dataclass's constructor, naming neither the fields nor the near one."""
    for call in (lambda: Spool(num_hidden_layer=2), lambda: Spool(tiny_config(), foo=1),
                 lambda: tiny_config().replace(local_frame_rang=3)):
        with pytest.raises(ValueError, match=r"unknown SpoolConfig field") as caught:
            call()
        assert "known fields: [" in str(caught.value)
    with pytest.raises(ValueError, match="'num_hidden_layer': did you mean "
                                         "'num_hidden_layers'"):
        Spool(num_hidden_layer=2)


@pytest.mark.parametrize("video,match", [
    (torch.rand(3, 32, 32, 3), r"video: expected a 5-D tensor.*got 4-D"),
    (torch.rand(1, 2, 32, 32, 4), r"video: expected 3 \(RGB\) channels.*C=4"),
    (torch.rand(1, 0, 32, 32, 3), r"video: expected B, T, H, W >= 1.*T is the number of frames"),
    (torch.full((1, 2, 32, 32, 3), float("nan")), "video: expected finite values"),
    (torch.full((1, 2, 32, 32, 3), float("inf")), "video: expected finite values"),
    (torch.rand(1, 2, 32, 32, 3) * 255, r"video: expected floating point values in \[0, 1\]"),
    (torch.zeros(1, 2, 32, 32, 3, dtype=torch.int64), "video: expected dtype uint8"),
    # float8 has no isfinite: torch's NotImplementedError, not this error
    (torch.zeros(1, 2, 32, 32, 3).to(torch.float8_e4m3fn),
     r"video: expected dtype uint8 .* got torch.float8_e4m3fn"),
    # [B, C, T, H, W] (torchvision's video layout): the way to channels last is said
    (torch.rand(1, 3, 2, 32, 32), r"C=32 .*channels first\? video.permute\(0, 2, 3, 4, 1\)"),
    (torch.rand(1, 3, 32, 32, 4), r"C=4 \(shape \(1, 3, 32, 32, 4\)\)$"),  # RGBA: no permute
    ([[1, 2]], "video: expected a torch.Tensor"),
])
def test_bad_video(tiny_model, video, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(video)


@pytest.mark.parametrize("shape,match", [
    ((1, 2, 17), "tokens: expected a 4-D tensor"),
    ((1, 2, 17, 25), r"tokens: expected D=24.*got D=25"),
    ((1, 2, 16, 24), r"tokens: expected L=17.*got L=16"),
    ((1, 0, 17, 24), "tokens: expected B, T >= 1"),
])
def test_bad_tokens(tiny_model, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_model.forward_tokens(torch.zeros(shape))


def test_non_finite_tokens(tiny_model):
    tokens = torch.zeros(1, 2, 17, 24)
    tokens[0, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="tokens: expected finite values"):
        tiny_model.forward_tokens(tokens)
    # float8 tokens are cast as any others (e4m3 has no isfinite: torch's error, before)
    for dtype in (torch.float8_e5m2, torch.float8_e4m3fn):
        tokens = torch.randn(1, 2, 17, 24).to(dtype)
        torch.testing.assert_close(tiny_model.forward_tokens(tokens).context,
                                   tiny_model.forward_tokens(tokens.float()).context)
        tokens[0, 1, 3, 4] = float("nan")
        with pytest.raises(ValueError, match="tokens: expected finite values"):
            tiny_model.forward_tokens(tokens)


def test_model_without_backbone_needs_sizes_and_rejects_video():
    with pytest.raises(ValueError, match="with_backbone=False.*hidden_size"):
        Spool(tiny_config(), with_backbone=False)
    model = Spool(tiny_config(hidden_size=24, num_spatial_tokens=17), with_backbone=False)
    with pytest.raises(ValueError, match="forward_tokens"):
        model(torch.rand(1, 2, 32, 32, 3))


def test_a_plain_hf_backbone_directory_is_not_taken_for_a_checkpoint(tmp_path):
    """Issue 14: --checkpoint pointed at a DINOv2 directory listed 20 unknown config keys."""
    from conftest import tiny_backbone
    from transformers import AutoConfig, AutoModel

    from spool.errors import SpoolLoadError
    from spool.models import load_pretrained

    AutoModel.from_config(AutoConfig.for_model(**tiny_backbone())).save_pretrained(tmp_path)
    with pytest.raises(SpoolLoadError, match=r"a Hugging Face dinov2 model, not a Spool "
                                             r"checkpoint; use it as a backbone: --model "
                                             r"backbone_name="):
        load_pretrained(tmp_path)


def test_a_hidden_size_or_image_size_the_backbone_overrides_is_said(spool_log):
    """hidden_size=32 on a 24-wide backbone was overwritten without a word (a user who set it
    to narrow the temporal stack got the backbone's width), and image_size=36 with patch 8
    dropped the frame's last 4 pixel rows and columns. Said, not refused: a saved config
    holds the old backbone's width when a backbone is swapped, and old checkpoints must load."""
    import logging

    spool_log.set_level(logging.WARNING, logger="spool")
    width = Spool(tiny_config()).config.hidden_size
    assert spool_log.records == []
    assert Spool(tiny_config(hidden_size=32)).config.hidden_size == width
    assert Spool(tiny_config(image_size=36)).config.num_spatial_tokens == 17  # as 32 gives
    said = [r.getMessage() for r in spool_log.records]
    assert said == [
        f"hidden_size 32 is not the backbone's width: the temporal stack takes the width of "
        f"its backbone (backbone_config), {width}",
        "image_size 36 is not a multiple of the backbone's patch size 8: its last 4 pixel rows "
        "and columns are dropped (32 gives the same tokens, 40 one more patch a side)"]


def test_the_config_class_itself_names_a_misspelt_field():
    """SpoolConfig(num_hidden_layer=2) stayed a TypeError after Spool(...) learnt to say it;
    from_pretrained's keywords name the near field or constructor keyword too."""
    with pytest.raises(ValueError, match="'num_hidden_layer': did you mean "
                                         "'num_hidden_layers'"):
        SpoolConfig(num_hidden_layer=2)
    with pytest.raises(ValueError, match="'with_backbon': did you mean 'with_backbone'"):
        from spool.models.pretrained import check_known_fields

        check_known_fields(["with_backbon"], "x", also=("with_backbone",))


@pytest.mark.parametrize("frames,match", [
    (torch.rand(2, 40, 40, 3).to(torch.float8_e4m3fn),
     r"frames: expected uint8 or floating point \(float16, .*\), got torch.float8_e4m3fn"),
    (torch.zeros(2, 40, 40, 3, dtype=torch.int16), "frames: expected uint8 or floating point"),
    (torch.zeros(2, 40, 40), r"frames: expected a tensor \[T, H, W, 3\], got \(2, 40, 40\)"),
])
def test_preprocessing_refuses_frames_it_cannot_resize(frames, match):
    """float8 frames gave torch's `compute_index_ranges_weights not implemented`."""
    with pytest.raises(ValueError, match=match):
        tiny_config().preprocessing()(frames)
