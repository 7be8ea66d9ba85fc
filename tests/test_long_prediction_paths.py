"""Whole-video prediction paths beyond Spool's own: the baselines' ``predict_long`` (memory,
guards), the frame classifiers' heads on the device of their weights, and ``--dtype`` in
``spool extract``'s per-frame and frame-prediction modes."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from conftest import DEVICES, tiny_config
from safetensors.torch import load_file

import spool.models.frame_classification as fcm
from spool import Spool
from spool.extract import FeatureExtractor
from spool.extract_inputs import VideoJob
from spool.models.frame_baselines import (
    FrameProbeForFrameClassification,
    MSTCNForFrameClassification,
)
from spool.models.frame_classification import SpoolForFrameClassification
from spool.video import write_video
from spool.video.samplers import StrideSampler, make_sampler

MSTCN = dict(class_names=["a", "b"],
             head_config=dict(num_stages=2, num_layers=2, num_channels=8))


@pytest.fixture
def path(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    return write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")


def test_a_baseline_holds_one_chunk_of_tokens_at_a_time(path, monkeypatch):
    """It kept every chunk's [n, L, D] tokens until the end (about 42 GB for an hour of
    DINOv2-B tokens at 15 fps), averaging them only then."""
    stream, alive = fcm.stream_tokens, []

    def probe(model, reader, indices):
        refs = []
        for tokens, stamps in stream(model, reader, indices):
            refs.append(weakref.ref(tokens))
            yield tokens, stamps
        gc.collect()
        alive.append(sum(r() is not None for r in refs))
    monkeypatch.setattr(fcm, "stream_tokens", probe)
    model = MSTCNForFrameClassification(tiny_config(backbone_chunk_size=4, **MSTCN)).eval()
    out = model.predict_long(path, sampler=StrideSampler(1))
    assert alive == [1] or alive == [0]
    assert out.logits.shape == (40, 2) and out.frame_indices.tolist() == list(range(40))


@pytest.mark.parametrize("kind", [FrameProbeForFrameClassification,
                                  MSTCNForFrameClassification])
def test_a_baselines_long_tokens_and_chunks_are_checked(kind):
    """The baselines' predict_long took NaN tokens (NaN logits), another L, int tokens and a
    chunk_frames of 0 (torch's split error), which their forward and forward_long refuse."""
    fields = MSTCN if kind is MSTCNForFrameClassification else dict(class_names=["a", "b"])
    model = kind(tiny_config(**fields)).eval()
    L, D = model.config.num_spatial_tokens, model.config.hidden_size
    assert model.predict_long(torch.randn(6, L, D)).logits.shape == (6, 2)
    bad = torch.randn(6, L, D)
    bad[2, 0, 0] = float("nan")
    for tokens, message in ((bad, "finite"), (torch.randn(6, L + 3, D), f"L={L}"),
                            (torch.ones(6, L, D, dtype=torch.int64), "floating point")):
        with pytest.raises(ValueError, match=message):
            model.predict_long(tokens)
    for chunk in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"chunk_frames: expected an integer >= 1"):
            model.predict_long(torch.randn(6, L, D), chunk_frames=chunk)


def test_a_baseline_refuses_training_mode_and_several_clips(path):
    model = MSTCNForFrameClassification(tiny_config(**MSTCN))  # built: training mode
    with pytest.raises(ValueError, match="inference only"):  # it ran with dropout
        model.predict_long(path, sampler=StrideSampler(1))
    spool_head = SpoolForFrameClassification(tiny_config(class_names=["a", "b"]))
    with pytest.raises(ValueError, match="^predict_long: inference only"):  # was forward_long
        spool_head.predict_long(path, sampler=StrideSampler(1))
    model.eval()
    with pytest.raises(ValueError, match="one clip per video"):  # it took 8 of 40 frames
        model.predict_long(path, sampler=make_sampler("sliding", clip_len=8, stride=8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", [SpoolForFrameClassification, MSTCNForFrameClassification])
def test_predict_long_runs_its_head_where_its_weights_are(path, device, kind, monkeypatch):
    """forward_long returns CPU tensors; the heads were given them on a GPU model."""
    # cuDNN's TF32 convolutions (MS-TCN's) differ from fp32 by ~5e-4: this checks placement.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fields = MSTCN if kind is MSTCNForFrameClassification else dict(class_names=["a", "b"])
    torch.manual_seed(0)
    model = kind(tiny_config(**fields)).eval()
    expected = model.predict_long(path, sampler=StrideSampler(1)).logits
    got = model.to(device).predict_long(path, sampler=StrideSampler(1)).logits
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["per_frame", "frame_predictions"])
def test_extract_computes_in_the_dtype_it_records(path, tmp_path, mode):
    """--dtype bf16 in these modes ran in fp32 and wrote dtype=bfloat16 in the metadata."""
    torch.manual_seed(0)
    if mode == "per_frame":
        model, key = Spool(tiny_config(num_hidden_layers=2)).eval(), "context"
    else:
        model = SpoolForFrameClassification(tiny_config(class_names=["a", "b"])).eval()
        key = "scores"
    got = {}
    for dtype in (torch.float32, torch.bfloat16):
        out = tmp_path / str(dtype)
        out.mkdir()
        FeatureExtractor(model, make_sampler("fps", target_fps=10), per_frame=True,
                         dtype=dtype).run([VideoJob(path, out / "v.safetensors")],
                                          progress=False)
        got[dtype] = load_file(out / "v.safetensors")[key].float()
    assert not torch.equal(got[torch.float32], got[torch.bfloat16])
    torch.testing.assert_close(got[torch.bfloat16], got[torch.float32], atol=0.1, rtol=0.1)


def test_long_calls_name_a_sampler_that_is_not_one_and_say_the_default_rate(path, spool_log,
                                                                          monkeypatch):
    """``sampler="fps"`` failed deep inside with "'str' object is not callable"; a model that
    records no training rate sampled at 1 fps without a word."""
    from spool import runtime

    model = Spool(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"^sampler: expected a FrameSampler, e\.g\. "):
        model.forward_long(path, sampler="fps")
    monkeypatch.setattr(runtime, "_said", set())
    model.forward_long(path)
    model.forward_long(path)
    assert spool_log.text.count("videos are sampled at 1 fps") == 1
    model.config.sampling = {"name": "stride", "stride": 2}  # trained: nothing to say
    spool_log.clear()
    monkeypatch.setattr(runtime, "_said", set())
    model.forward_long(path)
    assert "1 fps" not in spool_log.text


def test_the_package_names_its_models():
    """``from spool import SpoolForFrameClassification`` was an ImportError."""
    import spool
    import spool.models

    assert set(spool.models.__all__) <= set(dir(spool))
    from spool import SpoolForFrameClassification as Loaded

    assert Loaded is spool.models.SpoolForFrameClassification
