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


def test_a_recorded_backbone_config_beside_the_named_backbone_does_not_hide_an_edit(
        tmp_path: Path, backbone: Path, capsys) -> None:
    """A checkpoint's config names its backbone and records its architecture beside it
    (use_pretrained_backbone): the weights then come from the folder, built as its
    config.json says, which the recorded config did not catch when edited."""
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mkv", frames, fps=5, codec="ffv1")
    (tmp_path / "recorded.json").write_text((backbone / "config.json").read_text())
    run = ["extract", str(video), "--out", str(tmp_path / "o"), "--num-frames", "2",
           "--no-progress", "--backbone-only", "--model", "image_size=32",
           "--model", f"backbone_name={backbone}", "--model", "use_pretrained_backbone=true",
           "--model", f"backbone_config=@{tmp_path / 'recorded.json'}"]
    assert main(run) == 0 and _done(capsys.readouterr().out) == (1, 0)
    assert main(run) == 0 and _done(capsys.readouterr().out) == (0, 1)
    _edit(backbone, layer_norm_eps=0.1)
    assert main(run) == 0 and _done(capsys.readouterr().out) == (1, 0)


def test_fields_that_compute_nothing_from_given_weights_are_not_in_the_key(
        tmp_path: Path, backbone: Path, capsys) -> None:
    """Dropout and initialisation settings (the README: dropout changes no output) redid
    every output when edited."""
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mkv", frames, fps=5, codec="ffv1")
    run = ["extract", str(video), "--out", str(tmp_path / "o"), "--num-frames", "2",
           "--no-progress", "--backbone-only", "--model", "image_size=32",
           "--model", f"backbone_name={backbone}"]
    assert main(run) == 0 and _done(capsys.readouterr().out) == (1, 0)
    _edit(backbone, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
          drop_path_rate=0.2, initializer_range=0.5, layerscale_value=0.1)
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


@pytest.mark.parametrize("task", ["clips", "frames"])
def test_a_cache_made_before_the_record_is_said_to_lack_it(tmp_path: Path, backbone: Path,
                                                            task: str, spool_log) -> None:
    """A named backbone's cache from before the record is made once more: the message said
    it was "made with other settings (backbone_architecture)", which nobody changed."""
    out = tmp_path / "c"
    data = (tiny_video_dataset() / "val.txt" if task == "clips"
            else segmentation_videos((300, 320), (10, 20)) / "test.csv")
    run = ["cache", "--task", task, "--data", str(data), "--out", str(out), "--quiet",
           "--model", "image_size=32", "--model", f"backbone_name={backbone}",
           *(["--num-frames", "4", "--num-workers", "0"] if task == "clips" else ["--fps", "1"])]
    assert main(run) == 0
    meta = json.loads((out / "cache.json").read_text())
    del meta["backbone_architecture"]  # as the earlier version wrote it, and keyed it
    meta["settings_key"] = "the key of the settings without it"
    (out / "cache.json").write_text(json.dumps(meta))
    spool_log.clear()
    assert main(run) == 0
    assert "other settings (backbone_architecture, not recorded by the earlier version that " \
           "made it)" in spool_log.text
