"""What `spool extract`'s outputs are keyed on: the backbone-only tokens on the frame encoder
alone, and a local backbone by its folder, however its path is spelled."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_backbone, tiny_model_args
from transformers import AutoConfig, AutoModel

from spool.cli import main
from spool.cli_args import parse_overrides
from spool.config import SpoolConfig
from spool.video import write_video


@pytest.fixture
def video(tmp_path: Path) -> Path:
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    return write_video(tmp_path / "v.mkv", frames, fps=5, codec="ffv1")


def _done(capsys) -> tuple[int, int]:
    found = re.search(r"(\d+) extracted, (\d+) already done", capsys.readouterr().out)
    assert found
    return int(found[1]), int(found[2])


def test_backbone_only_tokens_are_kept_when_only_the_temporal_settings_change(
        tmp_path: Path, video: Path, capsys) -> None:
    (tmp_path / "bb.json").write_text(json.dumps(tiny_backbone()))
    base = ["extract", str(video), "--out", str(tmp_path / "o"), "--backbone-only",
            "--num-frames", "2", "--no-progress", *tiny_model_args(tmp_path / "bb.json")]
    assert main(base) == 0 and _done(capsys) == (1, 0)
    # The temporal stack takes no part: the tokens were extracted again.
    assert main([*base, "--model", "local_frame_range=3"]) == 0 and _done(capsys) == (0, 1)
    assert main([*base, "--model", "num_hidden_layers=2"]) == 0 and _done(capsys) == (0, 1)
    # The frame encoder's settings do change them.
    assert main([*base, "--model", "image_size=40"]) == 0 and _done(capsys) == (1, 0)


def test_a_local_backbone_is_one_backbone_however_its_path_is_spelled(
        tmp_path: Path, video: Path, capsys, monkeypatch) -> None:
    folder = tmp_path / "dino"
    AutoModel.from_config(AutoConfig.for_model(**tiny_backbone())).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    spellings = [str(folder), "./dino", f"{folder}/", "dino"]
    assert {parse_overrides([f"backbone_name={name}"])["backbone_name"]
            for name in spellings} == {str(folder.resolve())}
    fields = ["--model", "num_hidden_layers=1", "--model", "num_attention_heads=2",
              "--model", "num_lookahead_heads=1", "--model", "num_lookback_heads=1",
              "--model", "image_size=32"]
    for k, name in enumerate(spellings):  # each was a new key: every output extracted again
        assert main(["extract", str(video), "--out", str(tmp_path / "o"), "--num-frames", "2",
                     "--no-progress", *fields, "--model", f"backbone_name={name}"]) == 0
        assert _done(capsys) == ((1, 0) if k == 0 else (0, 1))



def test_a_checkpoint_naming_its_backbone_by_a_relative_path_keys_alike_from_anywhere(
        tmp_path: Path, video: Path, capsys, monkeypatch) -> None:
    """A checkpoint's config keeps backbone_name as trained ("dino"); its weights are its
    own. Resolving that name in each working directory redid every output elsewhere."""
    from spool.models.spool import Spool

    folder = tmp_path / "dino"
    AutoModel.from_config(AutoConfig.for_model(**tiny_backbone())).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    model = Spool(SpoolConfig(backbone_name="dino", num_hidden_layers=1, num_attention_heads=2,
                              num_lookahead_heads=1, num_lookback_heads=1, image_size=32))
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "elsewhere").mkdir()
    for k, cwd in enumerate((tmp_path, tmp_path / "elsewhere", tmp_path)):
        monkeypatch.chdir(cwd)
        assert main(["extract", str(video), "--out", str(tmp_path / "o"), "--num-frames", "2",
                     "--checkpoint", str(tmp_path / "ckpt"), "--no-progress"]) == 0
        assert _done(capsys) == ((1, 0) if k == 0 else (0, 1))


def test_a_caches_backbone_folder_serves_backbone_only(tmp_path: Path, video: Path,
                                                         capsys) -> None:
    """`--checkpoint cache/train/backbone --backbone-only` was refused ("has no Spool
    features"), though the backbone is all that --backbone-only runs. Its tokens are the
    Spool checkpoint's the cache was made with: the same output, already done."""
    from conftest import tiny_config
    from safetensors.torch import load_file

    from spool.models.frame_encoder import save_frame_encoder
    from spool.models.spool import Spool

    model = Spool(tiny_config())
    model.save_pretrained(tmp_path / "spool")
    save_frame_encoder(model, tmp_path / "backbone")
    base = ["extract", str(video), "--out", str(tmp_path / "o"), "--backbone-only",
            "--num-frames", "2", "--no-progress"]
    assert main([*base, "--checkpoint", str(tmp_path / "spool")]) == 0
    assert _done(capsys) == (1, 0)
    assert main([*base, "--checkpoint", str(tmp_path / "backbone")]) == 0
    assert _done(capsys) == (0, 1)
    assert main([*base, "--out", str(tmp_path / "o2"), "--checkpoint",
                 str(tmp_path / "backbone")]) == 0
    a, b = (load_file(tmp_path / out / "v.safetensors") for out in ("o", "o2"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    without = [a for a in base if a != "--backbone-only"]
    assert main([*without, "--checkpoint", str(tmp_path / "backbone")]) == 2  # needs it


def test_a_frame_encoder_that_does_not_fit_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Keys that do not load would leave a random backbone running: refused."""
    import torch
    from conftest import tiny_config

    from spool.extract import load_feature_model
    from spool.models import pretrained
    from spool.models.frame_encoder import FrameEncoderModel, save_frame_encoder
    from spool.models.spool import Spool

    save_frame_encoder(Spool(tiny_config()), tmp_path / "backbone")
    encoder = pretrained.load_pretrained(tmp_path / "backbone")
    assert isinstance(encoder, FrameEncoderModel)
    state = {**encoder.state_dict(), "backbone.extra": torch.zeros(1)}
    encoder.state_dict = lambda: state
    monkeypatch.setattr(pretrained, "load_pretrained", lambda path, **kwargs: encoder)
    with pytest.raises(ValueError, match="does not fit a Spool backbone"):
        load_feature_model(str(tmp_path / "backbone"), backbone_only=True)


def test_a_model_cast_to_half_precision_is_keyed_apart(tmp_path: Path, video: Path) -> None:
    """FeatureExtractor recorded only the compute dtype, and the weights' digest hashes bf16
    values as float32: a bf16 copy of a model whose weights bf16 holds exactly reused the
    float32 model's output (and its own were labelled float32)."""
    import torch
    from conftest import tiny_config
    from safetensors import safe_open

    from spool.extract import FeatureExtractor, VideoJob
    from spool.models.spool import Spool
    from spool.video.samplers import make_sampler

    model = Spool(tiny_config()).eval()
    with torch.no_grad():  # values bf16 holds exactly: the digest cannot tell the two apart
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    out = tmp_path / "o" / "v.safetensors"

    def run(m: Spool) -> tuple[int, dict[str, str]]:
        done = FeatureExtractor(m, make_sampler("uniform", num_frames=2)).run(
            [VideoJob(video, out)], progress=False).done
        with safe_open(str(out), framework="pt") as f:
            return done, f.metadata()

    done, plain = run(model)
    assert done == 1 and "weights_dtype" not in plain
    model.temporal.to(torch.bfloat16)  # the stack alone (tokens are cast to its dtype)
    done, mixed = run(model)
    assert done == 1 and mixed["weights_dtype"] == "bfloat16,float32"
    done, half = run(model.to(torch.bfloat16))
    assert done == 1 and half["weights_dtype"] == "bfloat16"
    assert half["weights_digest"] == plain["weights_digest"]
