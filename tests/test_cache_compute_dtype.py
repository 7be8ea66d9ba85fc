"""`spool cache --compute-dtype`: the backbone runs under autocast in that dtype (as `spool
extract --dtype` does), the cache records it, and tokens of another compute dtype are made
again, while caches made before the flag existed (float32) are reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from train_helpers import TINY_BACKBONE, segmentation_videos, tiny_video_dataset

from spool.cli import main
from spool.models.frame_encoder import FrameEncoderModel

MODEL = ["--model", "image_size=32", "--model", "backbone_config=" + json.dumps(TINY_BACKBONE)]


def _clips(out: Path, *flags: str) -> list[str]:
    return ["cache", "--data", str(tiny_video_dataset() / "val.txt"), "--out", str(out), *MODEL,
            "--num-frames", "4", "--num-workers", "0", "--quiet", *flags]


def _frames(out: Path, *flags: str) -> list[str]:
    data = segmentation_videos((300, 320), (10, 20)) / "test.csv"
    return ["cache", "--task", "frames", "--data", str(data), "--fps", "1", "--out", str(out),
            *MODEL, "--quiet", *flags]


def _frame_tokens(out: Path) -> torch.Tensor:
    meta = json.loads((out / "cache.json").read_text())
    with safe_open(str(out / "videos" / f"{meta['videos'][0]['name']}.safetensors"), "pt") as f:
        return f.get_tensor("tokens")


def _encoder(out: Path) -> FrameEncoderModel:
    return FrameEncoderModel.from_pretrained(out / "backbone").eval()


def test_clip_tokens_are_the_backbone_under_autocast(tmp_path: Path, capsys) -> None:
    """The stored tokens are the frame encoder's output under bf16 autocast (not float32's),
    and cache.json says so."""
    from spool.data.cached_tokens import CachedTokenDataset
    from spool.data.dataset import VideoClipDataset, read_annotations
    from spool.video.samplers import clip_sampler

    assert main(_clips(tmp_path / "f32")) == 0
    assert main(_clips(tmp_path / "bf16", "--compute-dtype", "bfloat16")) == 0
    meta = json.loads((tmp_path / "bf16" / "cache.json").read_text())
    assert meta["compute_dtype"] == "bfloat16"
    assert "compute_dtype" not in json.loads((tmp_path / "f32" / "cache.json").read_text())
    encoder = _encoder(tmp_path / "bf16")
    samples, names = read_annotations(tiny_video_dataset() / "val.txt")
    video = VideoClipDataset(samples, names, clip_sampler(4, None),
                             encoder.config.preprocessing())[0]["video"]
    with torch.no_grad():
        plain = encoder(video[None]).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = encoder(video[None]).float()
    f32, bf16 = (CachedTokenDataset(tmp_path / d)[0]["tokens"] for d in ("f32", "bf16"))
    torch.testing.assert_close(f32, plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bf16, autocast[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(bf16, f32, rtol=1e-4, atol=1e-4)


def test_another_compute_dtype_makes_the_clip_cache_again(tmp_path: Path, capsys) -> None:
    out = tmp_path / "c"
    assert main(_clips(out)) == 0
    f32 = np.load(out / "tokens.npy")
    capsys.readouterr()
    assert main(_clips(out, "--compute-dtype", "float32")) == 0  # auto on the CPU: float32
    assert "already done" in capsys.readouterr().out
    assert main(_clips(out, "--compute-dtype", "bfloat16")) == 0
    assert "already done" not in capsys.readouterr().out
    assert not np.array_equal(np.load(out / "tokens.npy"), f32)
    assert main(_clips(out, "--compute-dtype", "bfloat16")) == 0
    assert "already done" in capsys.readouterr().out
    assert main(_clips(out)) == 0  # back to float32: the first tokens again
    assert np.array_equal(np.load(out / "tokens.npy"), f32)


def test_a_partial_cache_of_another_compute_dtype_names_it(tmp_path: Path, spool_log,
                                                           monkeypatch) -> None:
    """A run killed in float32, then resumed in bfloat16: started over, and the message
    names the setting that changed."""
    import logging

    from test_cache import Killed, _decoded

    spool_log.set_level(logging.INFO, logger="spool")
    out = tmp_path / "c"
    with monkeypatch.context() as m:
        _decoded(m, die_at=5)
        with pytest.raises(Killed):
            main(_clips(out, "--batch-size", "2"))
    assert main(_clips(out, "--compute-dtype", "bfloat16")) == 0
    assert "made with other settings (compute_dtype)" in spool_log.text


def test_frame_cache_tokens_follow_the_compute_dtype(tmp_path: Path, capsys) -> None:
    out = tmp_path / "c"
    assert main(_frames(out, "--dtype", "float32")) == 0
    f32 = _frame_tokens(out)
    assert "compute_dtype" not in json.loads((out / "cache.json").read_text())
    assert main(_frames(out, "--dtype", "float32", "--compute-dtype", "bfloat16")) == 0
    assert json.loads((out / "cache.json").read_text())["compute_dtype"] == "bfloat16"
    bf16 = _frame_tokens(out)
    assert "already done" not in capsys.readouterr().out
    torch.testing.assert_close(bf16, f32, rtol=0.05, atol=0.05)  # the same frames, in bf16
    assert not torch.allclose(bf16, f32, rtol=1e-4, atol=1e-4)
    assert main(_frames(out, "--dtype", "float32", "--compute-dtype", "bfloat16")) == 0
    assert "already done" in capsys.readouterr().out
    assert main(_frames(out, "--dtype", "float32")) == 0
    assert torch.equal(_frame_tokens(out), f32)


def test_an_unknown_compute_dtype_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(_clips(tmp_path / "c", "--compute-dtype", "int8"))
    assert "--compute-dtype: invalid choice: 'int8'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_cache_killed_before_its_cache_json_then_other_settings(tmp_path: Path, spool_log,
                                                                  monkeypatch) -> None:
    """Killed between the move of its tokens and cache.json, then run with another compute
    dtype: the message said the partial cache "could not be read"; it was made with other
    settings, and says which."""
    import logging

    from spool.data import cache

    spool_log.set_level(logging.INFO, logger="spool")
    out = tmp_path / "c"

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(cache, "save_frame_encoder", killed)
        with pytest.raises(Killed):
            main(_clips(out))
    assert main(_clips(out, "--compute-dtype", "bfloat16")) == 0
    assert "(8 of 8 videos done) was made with other settings (compute_dtype)" in spool_log.text
    assert "could not be read" not in spool_log.text


def test_back_to_float32_names_the_compute_dtype(tmp_path: Path, capsys) -> None:
    """float32 records no compute_dtype (older caches' keys hold): a cache made in bfloat16,
    made again in float32, was said to be "made with other settings (an earlier version)"."""
    out = tmp_path / "c"
    assert main(_clips(out, "--compute-dtype", "bfloat16")) == 0
    capsys.readouterr()
    assert main([a for a in _clips(out) if a != "--quiet"]) == 0
    said = capsys.readouterr()
    assert "the cache there was made with other settings (compute_dtype)" in said.out + said.err


def test_training_on_caches_of_two_compute_dtypes_warns(tmp_path: Path, capsys) -> None:
    from train_helpers import TINY_MODEL

    from spool.train.config import TrainConfig
    from spool.train.trainer import train

    assert main(_clips(tmp_path / "f32")) == 0
    assert main(_clips(tmp_path / "bf16", "--compute-dtype", "bfloat16")) == 0
    fields = dict(out_dir=str(tmp_path / "run"), train_cache=str(tmp_path / "f32"),
                  model={k: v for k, v in TINY_MODEL.items() if k not in (
                      "image_size", "backbone_config")},
                  epochs=1, batch_size=4, warmup_epochs=0, num_workers=0, tensorboard=False,
                  quiet=True)
    capsys.readouterr()
    train(TrainConfig(**fields, val_cache=str(tmp_path / "f32")))
    assert "compute-dtype" not in capsys.readouterr().err
    train(TrainConfig(**dict(fields, out_dir=str(tmp_path / "run2")),
                      val_cache=str(tmp_path / "bf16")))
    assert (f"val_cache: {tmp_path / 'bf16'} was made in bfloat16, train_cache "
            f"{tmp_path / 'f32'} in float32 (spool cache --compute-dtype)"
            ) in capsys.readouterr().err
