"""``spool extract`` flags: what each mode saves, and flags that do not apply."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_backbone, tiny_model_args
from safetensors.torch import load_file

from spool.cli import main
from spool.config import SpoolConfig
from spool.models.spool import Spool
from spool.video import VideoReader, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("opts")
    frames = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    path = write_video(root / "v.mp4", frames, fps=10, codec="libx264")
    config = root / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))
    return path, config


def _extract(video, out, config, *extra):
    return main(["extract", str(video), "--out", str(out), *tiny_model_args(config),
                 "--no-progress", *extra])


def test_backbone_only_saves_the_backbone_tokens(video, tmp_path):
    path, config = video
    assert _extract(path, tmp_path / "o", config, "--num-frames", "4", "--backbone-only") == 0
    saved = load_file(tmp_path / "o" / "v.safetensors")
    assert "context" not in saved and saved["features"].shape == (1, 4, 17, 24)
    fields = dict(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
                  num_lookback_heads=1, image_size=32, local_frame_range=2,
                  backbone_config=tiny_backbone())
    torch.manual_seed(0)
    model = Spool(SpoolConfig(**fields)).eval()
    with VideoReader(path) as reader:
        frames, _ = reader.get(saved["frame_indices"][0].tolist())
    with torch.no_grad():
        tokens = model.encode_frames(model.config.preprocessing()(torch.from_numpy(frames))[None])
    torch.testing.assert_close(saved["features"].float(), tokens, atol=2e-3, rtol=2e-3)


def test_no_checkpoint_warning_says_the_layers_are_random(video, tmp_path, capsys):
    path, config = video
    assert _extract(path, tmp_path / "o", config, "--num-frames", "2") == 0
    err = capsys.readouterr().err
    assert "random" in err and "--backbone-only" in err and "still meaningful" not in err


def test_backbone_only_is_refused_with_per_frame(video, tmp_path, capsys):
    path, config = video
    assert _extract(path, tmp_path / "o", config, "--backbone-only", "--per-frame") == 2
    assert "--backbone-only" in capsys.readouterr().err
