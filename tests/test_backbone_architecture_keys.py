"""A named backbone's outputs are keyed on its architecture as well as its weights: a local
folder's config.json edited without touching the weights (the heads, a norm's eps) gives other
tokens, and `spool extract` and both caches reused the outputs of the old one ("already
done")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_backbone
from train_helpers import segmentation_videos, tiny_video_dataset
from transformers import AutoConfig, AutoModel

from spool.cli import main
from spool.video import write_video

HEADS = ["--model", "num_hidden_layers=1", "--model", "num_attention_heads=2",
         "--model", "num_lookahead_heads=1", "--model", "num_lookback_heads=1",
         "--model", "image_size=32"]


@pytest.fixture
def backbone(tmp_path: Path) -> Path:
    folder = tmp_path / "dino"
    AutoModel.from_config(AutoConfig.for_model(**tiny_backbone())).save_pretrained(folder)
    return folder


def _edit(folder: Path, **fields) -> None:
    """config.json changed, the weights (and their file's size and time) as they were."""
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _done(out: str) -> tuple[int, int]:
    found = re.search(r"(\d+) extracted, (\d+) already done", out)
    assert found, out
    return int(found[1]), int(found[2])


@pytest.mark.parametrize("mode", [[], ["--backbone-only"]])
def test_extract_redoes_outputs_when_the_backbones_config_changes(
        tmp_path: Path, backbone: Path, capsys, mode: list[str]) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mkv", frames, fps=5, codec="ffv1")
    run = ["extract", str(video), "--out", str(tmp_path / "o"), "--num-frames", "2",
           "--no-progress", *HEADS, "--model", f"backbone_name={backbone}", *mode]
    assert main(run) == 0 and _done(capsys.readouterr().out) == (1, 0)
    assert main(run) == 0 and _done(capsys.readouterr().out) == (0, 1)
    _edit(backbone, layer_norm_eps=0.1)  # other tokens from the same weights
    assert main(run) == 0 and _done(capsys.readouterr().out) == (1, 0)
    assert main(run) == 0 and _done(capsys.readouterr().out) == (0, 1)


def test_a_clip_cache_is_made_again_when_the_backbones_config_changes(
        tmp_path: Path, backbone: Path, capsys) -> None:
    out = tmp_path / "c"
    run = ["cache", "--data", str(tiny_video_dataset() / "val.txt"), "--out", str(out),
           "--model", "image_size=32", "--model", f"backbone_name={backbone}",
           "--num-frames", "4", "--num-workers", "0", "--quiet"]
    assert main(run) == 0
    before = np.load(out / "tokens.npy")
    capsys.readouterr()
    assert main(run) == 0 and "already done" in capsys.readouterr().out
    _edit(backbone, layer_norm_eps=0.1)
    assert main(run) == 0 and "already done" not in capsys.readouterr().out
    assert not np.allclose(np.load(out / "tokens.npy"), before, atol=1e-3)
    assert json.loads((out / "cache.json").read_text())["backbone_architecture"][
        "layer_norm_eps"] == 0.1


def test_a_frame_cache_is_made_again_when_the_backbones_config_changes(
        tmp_path: Path, backbone: Path, capsys, spool_log) -> None:
    out = tmp_path / "f"
    data = segmentation_videos((300, 320), (10, 20)) / "test.csv"
    run = ["cache", "--task", "frames", "--data", str(data), "--fps", "1", "--out", str(out),
           "--model", "image_size=32", "--model", f"backbone_name={backbone}"]
    assert main(run) == 0
    capsys.readouterr()
    assert main(run) == 0 and "already done" in capsys.readouterr().out
    _edit(backbone, num_attention_heads=4)  # the same weights' shapes, split otherwise
    assert main(run) == 0
    assert "already done" not in capsys.readouterr().out
    assert "other settings (backbone_architecture)" in spool_log.text  # named
    assert json.loads((out / "cache.json").read_text())["backbone_architecture"][
        "num_attention_heads"] == 4
