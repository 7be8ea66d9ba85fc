"""Spool's default preprocessing against HF's DINOv2 image processor (shortest edge 256,
centre crop 224)."""

import pytest
import torch
import torch.nn.functional as F

from spool.video.transforms import FramePreprocessing

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _smooth_frame(height, width):
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3, height // 40 + 2, width // 40 + 2, generator=g)
    x = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8)


def test_center_crop_box_follows_the_processor_arithmetic():
    """Defect: the box was the exact centre, while the processor crops from
    ``(455 - 224) // 2`` of a 256x455 resize: 1.7 source pixels off on a 1080p frame."""
    box = FramePreprocessing(224).box(1080, 1920)
    assert (box.top, box.left, box.height, box.width) == (68, 485, 945, 945)
    box = FramePreprocessing(224).box(480, 854)  # resized to 256x455, crop left 115
    assert (box.left, box.width) == (round(115 * 854 / 455), round(224 * 854 / 455))
    box = FramePreprocessing(20).box(256, 512)  # whole resized pixels: unchanged
    assert (box.height, box.width, box.top, box.left) == (224, 224, 16, 144)


@pytest.mark.parametrize("height,width,tol", [(480, 854, 0.012), (1080, 1920, 0.035),
                                              (1920, 1080, 0.035), (16, 16, 0.01),
                                              (33, 17, 0.01), (100, 1, 0.06)])
def test_center_crop_matches_dinov2_processor(height, width, tol):
    transformers = pytest.importorskip("transformers")
    proc = transformers.BitImageProcessor(
        size={"shortest_edge": 256}, resample=3, crop_size={"height": 224, "width": 224},
        image_mean=MEAN.flatten().tolist(), image_std=STD.flatten().tolist())
    frame = _smooth_frame(height, width)
    ref = proc(frame.numpy(), return_tensors="pt",
               input_data_format="channels_last")["pixel_values"][0]
    out = (FramePreprocessing(224)(frame[None])[0].permute(2, 0, 1).float() / 255 - MEAN) / STD
    assert (out - ref).abs().mean() < tol  # interpolation noise (bilinear vs bicubic)


def test_preprocessing_record_names_its_revision():
    """Extraction outputs and token caches key on ``asdict(preprocessing)``: without a
    revision, those made with the old centre crop were reused as if current."""
    import dataclasses

    assert dataclasses.asdict(FramePreprocessing(224))["revision"] == 2
    with pytest.raises(ValueError, match="revision"):
        FramePreprocessing(224, revision=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_frames_are_resized(dtype):
    """check_frames takes any float, but the antialiased resize has no half kernel on the
    CPU: NotImplementedError."""
    frames = torch.rand(2, 48, 64, 3)
    pre = FramePreprocessing(32, "center_crop", 0.875)
    out = pre(frames.to(dtype))
    assert out.dtype == dtype and out.shape == (2, 32, 32, 3)
    torch.testing.assert_close(out.float(), pre(frames), atol=1e-2, rtol=0)
