"""One preprocessing policy on every path, and extraction outputs keyed on what they depend on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from spool.cli import main
from spool.data.dataset import VideoClipDataset, VideoSample
from spool.extract import FeatureExtractor
from spool.models.classification import SpoolForVideoClassification
from spool.video import write_video
from spool.video.samplers import clip_sampler
from spool.video.transforms import FramePreprocessing


@pytest.fixture(scope="module")
def wide_video(tmp_path_factory):
    """A 16:9 clip whose left and right edges differ from its centre."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, 36, 64, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("wide") / "wide.mkv"
    write_video(path, frames, fps=10, codec="ffv1")
    return path


class _BackboneInputs:
    """Records every ``pixel_values`` batch the HF backbone receives."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seen: list[torch.Tensor] = []
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.seen.append(kwargs["pixel_values"].detach().clone())

    def all(self) -> torch.Tensor:
        return torch.cat(self.seen)


@pytest.mark.parametrize("resize_mode", ["center_crop", "squash", "pad"])
def test_eval_and_extract_give_the_backbone_the_same_input(wide_video, resize_mode):
    """Defect: training/evaluation centre-cropped frames while extraction squashed them."""
    model = SpoolForVideoClassification(tiny_config(resize_mode=resize_mode),
                                        class_names=["a", "b"]).eval()
    probe = _BackboneInputs(model.spool.backbone.model)
    sampler = clip_sampler(4)
    dataset = VideoClipDataset([VideoSample(str(wide_video), 0)], ["a", "b"], sampler,
                               model.config.preprocessing())
    with torch.no_grad():
        model(dataset[0]["video"][None])  # the path of `spool eval` and training
    eval_input = probe.all()
    probe.seen.clear()
    FeatureExtractor(model.spool, sampler).features(wide_video)  # the path of `spool extract`
    extract_input = probe.all()
    assert eval_input.shape == extract_input.shape == (4, 3, 32, 32)
    assert torch.equal(eval_input, extract_input)


def test_preprocessing_modes():
    frames = torch.full((2, 30, 60, 3), 200, dtype=torch.uint8)
    frames[:, :, :15] = 10  # a dark band on the left quarter
    crop = FramePreprocessing(20, "center_crop", crop_pct=1.0)(frames)
    assert crop.shape == (2, 20, 20, 3) and (crop == 200).all()  # the centre square only
    squash = FramePreprocessing(20, "squash")(frames)
    assert (squash[:, :, :4] == 10).all() and (squash[:, :, -4:] == 200).all()
    pad = FramePreprocessing(20, "pad")(frames)
    assert (pad[:, :5] == 0).all() and (pad[:, -5:] == 0).all()  # black bars top and bottom
    assert (pad[:, 6:14, :4] == 10).all() and (pad[:, 6:14, -4:] == 200).all()
    # DINOv2's convention by default: the centred 224/256 of the shorter side.
    box = FramePreprocessing(20).box(256, 512)
    assert (box.height, box.width, box.top, box.left) == (224, 224, 16, 144)
    # Frames already at the model's size are used as they are, on every path.
    floats = torch.rand(1, 20, 20, 3)
    assert torch.equal(FramePreprocessing(20, "center_crop")(floats), floats)


def test_re_extraction_follows_weights_and_dtype(wide_video, tmp_path, capsys):
    """Defect: outputs were keyed on the config hash only, so a retrained checkpoint of the
    same architecture kept the old features."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    model = SpoolForVideoClassification(tiny_config(), class_names=["a", "b"])
    model.save_pretrained(ckpt)

    def extract(*extra):
        capsys.readouterr()
        assert main(["extract", str(wide_video), "--out", str(out), "--checkpoint", str(ckpt),
                     "--num-frames", "4", "--no-progress", *extra]) == 0
        return capsys.readouterr().out

    assert "1 extracted" in extract()
    first = load_file(out / "wide.safetensors")["context"]
    assert "1 already done" in extract()
    with torch.no_grad():  # "retrain": same architecture and config, other weights
        model.spool.temporal.norm.bias.add_(1.0)
    model.save_pretrained(ckpt)
    assert "1 extracted" in extract()
    second = load_file(out / "wide.safetensors")["context"]
    assert not torch.allclose(first, second)
    assert "1 extracted" in extract("--dtype", "bfloat16")  # another compute dtype
    # spool cache's name for it is spool extract's too
    assert "1 already done" in extract("--compute-dtype", "bfloat16")
