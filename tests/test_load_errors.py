"""Files that cannot be read (invalid JSON, damaged safetensors) are errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from train_helpers import train_config_dict

from spool.cli import main
from spool.errors import SpoolLoadError
from spool.layers.backbone import read_backbone_preprocessing
from spool.models import load_pretrained
from spool.models.classification import SpoolForVideoClassification
from spool.train.cli import add_train_arguments, config_from_args
from spool.train.config import TrainConfig


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    SpoolForVideoClassification(tiny_config(class_names=["a", "b"])).save_pretrained(out)
    return out


def _copy(saved: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    copy.mkdir()
    for f in saved.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    return copy


@pytest.mark.parametrize("name,content,match", [
    ("config.json", "{\"num_hidden_layers\": ", "config.json: not valid JSON"),
    ("config.json", "[1, 2]", "config.json: expected a JSON object"),
    ("config.json", "{\"image_mean\": \"abc\"}", "config.json: image_mean: expected"),
    ("config.json", b"\xff\xfe{}", "config.json: not valid JSON"),
    ("model.safetensors", b"\x00" * 8, "model.safetensors: not a readable safetensors file"),
    ("classifier.json", "{", "classifier.json: not valid JSON"),
])
def test_damaged_model_files_are_named(saved: Path, tmp_path: Path, name: str, content,
                                       match: str) -> None:
    copy = _copy(saved, tmp_path)
    if name == "classifier.json":  # a legacy checkpoint: its class in classifier.json
        config = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps({**config, "architectures": None}))
    path = copy / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(SpoolLoadError, match=match):
        load_pretrained(copy)


def test_damaged_preprocessor_config_is_named(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text("{\"image_mean\": [0.5,")
    with pytest.raises(SpoolLoadError, match="preprocessor_config.json: not valid JSON"):
        read_backbone_preprocessing(str(tmp_path))


@pytest.mark.parametrize("content,error,match", [
    ("{\"lr\": 0.1,", SpoolLoadError, "run.json: not valid JSON"),
    ("[\"lr\", 0.1]", SpoolLoadError, "run.json: expected a JSON object"),
    ("{\"train_data\": \"t.txt\", \"lr\": \"fast\"}", ValueError, "run.json: lr: expected"),
])
def test_damaged_train_config_is_named(tmp_path: Path, capsys, content: str, error,
                                       match: str) -> None:
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(error, match=match):
        TrainConfig.from_json(tmp_path / "run.json")
    assert main(["train", "--config", str(tmp_path / "run.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.json" in err


def test_flags_complete_a_partial_config_file(tmp_path: Path) -> None:
    import argparse

    fields = train_config_dict(tmp_path / "run")
    del fields["train_data"]
    (tmp_path / "hparams.json").write_text(json.dumps(fields))
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--config", str(tmp_path / "hparams.json"), "--train-data", "t.txt",
                              "--model", "num_hidden_layers=2"])
    cfg = config_from_args(args)
    assert cfg.train_data == "t.txt" and cfg.lr == fields["lr"]
    assert cfg.model == {**fields["model"], "num_hidden_layers": 2}


def test_eval_of_a_frame_encoder_says_what_it_holds(tmp_path: Path, capsys) -> None:
    """A cache's backbone/ given to `spool eval --checkpoint`: one line and exit 2, not the
    TypeError of a classifier keyword (with_backbone) the frame encoder does not take."""
    from spool.models.frame_encoder import FrameEncoderModel

    FrameEncoderModel(tiny_config()).save_pretrained(tmp_path / "backbone")
    (tmp_path / "val.txt").write_text("x.mp4 a\n")
    for flag in ("--data", "--cache"):
        assert main(["eval", "--checkpoint", str(tmp_path / "backbone"), flag,
                     str(tmp_path / "val.txt")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [f"spool eval: error: {tmp_path / 'backbone'}: holds a "
                                    "FrameEncoderModel, not a video classifier; load it with "
                                    "spool.models.load_pretrained"]
    with pytest.raises(ValueError, match=r"holds a FrameEncoderModel: unknown SpoolConfig "
                                         r"field\(s\) \['with_backbone'\]"):
        load_pretrained(tmp_path / "backbone", with_backbone=False)


def test_a_mistyped_ms_tcn_root_is_named_as_missing(tmp_path: Path, capsys) -> None:
    """A data path that does not exist, given with a split (an MS-TCN root meant): the error
    said the split flag "applies to an MS-TCN root", as if the path were a segments CSV."""
    from spool.models.frame_classification import SpoolForFrameClassification

    typo = tmp_path / "breakfst"
    missing = f"{typo}: does not exist (expected a segments CSV or an MS-TCN root folder)"
    SpoolForFrameClassification(tiny_config(), class_names=["a", "b"]).save_pretrained(
        tmp_path / "frames")
    backbone = tmp_path / "backbone.json"
    backbone.write_text(json.dumps(tiny_config().backbone_config))
    runs = {  # command -> the argument named
        ("train", "--task", "frames", "--train-data", str(typo), "--train-split", "s2",
         "--out-dir", str(tmp_path / "run")): "train_data (--train-data)",
        ("train", "--task", "frames", "--train-data", str(tmp_path / "t.csv"), "--val-data",
         str(typo), "--val-split", "s2", "--out-dir", str(tmp_path / "run")):
            "val_data (--val-data)",
        ("eval", "--checkpoint", str(tmp_path / "frames"), "--data", str(typo), "--split",
         "s2"): "data (--data)",
        ("eval", "--checkpoint", str(tmp_path / "frames"), "--data", str(typo)): "data (--data)",
        # Before the backbone is loaded (the default one would need the hub).
        ("cache", "--task", "frames", "--data", str(typo), "--split", "s2", "--out",
         str(tmp_path / "c")): "data (--data)",
        ("cache", "--task", "frames", "--data", str(typo), "--out", str(tmp_path / "c"),
         "--model", f"backbone_config=@{backbone}"): "data (--data)",
        # Without a split flag: read as a segments CSV before, "[Errno 2] No such file".
        ("train", "--task", "frames", "--train-data", str(typo), "--out-dir",
         str(tmp_path / "run2")): "train_data (--train-data)",
    }
    for argv, named in runs.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [f"spool {argv[0]}: error: {named}: {missing}"], argv
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("clip,expected", [
    ({"num_frames": 4, "frame_stride": 2}, {"name": "clip", "num_frames": 4, "frame_stride": 2}),
    ({"num_frames": 6}, {"name": "uniform", "num_frames": 6}),
    (None, None),
])
def test_a_legacy_checkpoint_keeps_its_clip_sampling(saved: Path, tmp_path: Path, clip,
                                                     expected) -> None:
    """classifier.json recorded how the model was trained; it was not read, so evaluation
    and extraction fell back to 16 frames without a word."""
    copy = _copy(saved, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "architectures": None,
                                                  "sampling": None}))
    legacy = {"architecture": "SpoolForVideoClassification"}
    (copy / "classifier.json").write_text(json.dumps(legacy | ({"clip": clip} if clip else {})))
    sampling = load_pretrained(copy).config.sampling
    if expected is None:
        assert sampling is None
    else:
        assert {k: sampling[k] for k in expected} == expected


def test_a_checkpoint_saved_without_its_backbone_says_so(tmp_path):
    """A model loaded with with_backbone=False keeps its backbone_config, so its checkpoint
    looked whole and loading it listed 'missing tensors backbone.model...' without a word of
    what to do."""
    from spool import Spool
    from spool.errors import CheckpointMismatchError

    Spool(tiny_config()).save_pretrained(tmp_path / "full")
    Spool.from_pretrained(tmp_path / "full", with_backbone=False).save_pretrained(tmp_path / "t")
    with pytest.raises(CheckpointMismatchError, match="holds no backbone weights .* load it "
                                                      "with with_backbone=False"):
        Spool.from_pretrained(tmp_path / "t")
    assert Spool.from_pretrained(tmp_path / "t", with_backbone=False).backbone is None


def test_fields_that_build_another_network_are_named(tmp_path) -> None:
    """A saved model loaded with config fields that change its network (spool train --init
    DIR --model num_hidden_layers=2) listed missing tensors, not the field behind them."""
    from conftest import tiny_config
    from safetensors.torch import load_file, save_file

    from spool import Spool
    from spool.errors import CheckpointMismatchError

    Spool(tiny_config(num_hidden_layers=1)).save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointMismatchError,
                       match=r"missing tensors .*; the fields given \(num_hidden_layers 1 -> 2\)"):
        Spool.from_pretrained(tmp_path / "m", num_hidden_layers=2, attn_implementation="dense")
    assert Spool.from_pretrained(tmp_path / "m", attn_implementation="dense")  # not the network
    # A checkpoint damaged otherwise: the fields given are not blamed.
    weights = load_file(tmp_path / "m" / "model.safetensors")
    del weights["temporal.norm.weight"]
    save_file(weights, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as raised:
        Spool.from_pretrained(tmp_path / "m", local_frame_range=4,
                              image_mean=(0.485, 0.456, 0.406))
    assert "missing tensors ['temporal.norm.weight']" in str(raised.value)
    assert "fields given" not in str(raised.value)


def test_weights_of_another_kind_of_dtype_are_refused(tmp_path) -> None:
    """Integer or boolean tensors in a float slot loaded cast without a word (outputs off by
    up to 4.5), and float8 ones gave torch's `isfinite not implemented` instead of an error
    naming the file; floats of another precision still load."""
    from safetensors.torch import load_file, save_file

    from spool import Spool
    from spool.errors import CheckpointMismatchError

    Spool(tiny_config()).save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    weights = load_file(path)
    for dtype in (torch.int32, torch.bool):
        save_file({**weights, "temporal.norm.weight":
                   weights["temporal.norm.weight"].to(dtype)}, path)
        with pytest.raises(CheckpointMismatchError, match=r"'temporal.norm.weight' is "
                           rf"{str(dtype)[6:]} in the checkpoint but float32 in the model"):
            Spool.from_pretrained(tmp_path / "m")
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(half, path)
    assert Spool.from_pretrained(tmp_path / "m").temporal.norm.weight.dtype == torch.float32
    save_file({**weights, "temporal.norm.weight":
               weights["temporal.norm.weight"].to(torch.float8_e4m3fn)}, path)
    assert Spool.from_pretrained(tmp_path / "m")  # finite; cast as load_state_dict does
    nan = weights["temporal.norm.weight"].clone()
    nan[0] = float("nan")
    save_file({**weights, "temporal.norm.weight": nan.to(torch.float8_e4m3fn)}, path)
    with pytest.raises(SpoolLoadError, match="holds NaN or infinite values"):
        Spool.from_pretrained(tmp_path / "m")
