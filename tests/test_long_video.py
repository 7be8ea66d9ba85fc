"""The long-video path: chunked, in place, the same function as the plain forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CUDA_ONLY, DEVICES, LargestOutput, tiny_config

import spool.models.long_video as long_video
from spool import Spool
from spool.layers.streaming import stream_temporal_stack
from spool.video import VideoReader, decode_chunks, write_video
from spool.video.samplers import FpsSampler, StrideSampler

D, L = 24, 5


def _temporal(w: int, lookback: int, heads: int = 4, layers: int = 2) -> Spool:
    config = tiny_config(num_hidden_layers=layers, num_attention_heads=heads,
                         num_lookback_heads=lookback, num_lookahead_heads=heads - lookback,
                         local_frame_range=w, hidden_size=D, num_spatial_tokens=L)
    return Spool(config, with_backbone=False).eval()


@pytest.mark.parametrize("T,w,lookback,chunk", [
    (1, 2, 2, 1), (5, 2, 2, 2), (7, 3, 1, 3), (9, 0, 4, 4), (13, 4, 0, 5), (20, 16, 3, 4),
    (23, 2, 4, 64), (17, 5, 2, 1), (40, 3, 2, 7), (31, 8, 1, 6),
])
@pytest.mark.parametrize("keep_inputs", [False, True])
def test_chunked_forward_equals_plain_forward(T, w, lookback, chunk, keep_inputs, monkeypatch):
    """Several T, w, chunk sizes (T not a multiple of the chunk), head splits with 0 heads of
    either kind; with the layer's inputs kept in the cache too, as where the hidden state
    lives off the compute device (a GPU's model, the video in RAM)."""
    from spool.layers import streaming

    monkeypatch.setattr(streaming, "_keep_inputs", lambda x, device: keep_inputs)
    model = _temporal(w, lookback)
    tokens = torch.randn(1, T, L, D)
    with torch.no_grad():
        plain = model.forward_tokens(tokens)
    out = model.forward_long(tokens[0], chunk_frames=chunk, keep_features=True)
    torch.testing.assert_close(out.features, plain.features[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.context, plain.context[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.frame_features, plain.features[0, 1:-1].mean(1),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,T,tokens", [(torch.bfloat16, 6000, 17),
                                            (torch.float16, 300, 257)])
def test_under_autocast_the_long_pass_is_as_close_as_the_plain_forward(device, dtype, T, tokens):
    """The context frames' attention over every frame is summed over chunks: a float16 sum
    over T * L > 65504 keys overflowed (context off by 0.2 where the plain forward's autocast
    error is 1e-5), and a bfloat16 one drifted with T. Both now accumulate in float32."""
    torch.manual_seed(0)
    config = tiny_config(num_hidden_layers=1, num_attention_heads=2, num_lookback_heads=1,
                         num_lookahead_heads=1, local_frame_range=2, hidden_size=16,
                         num_spatial_tokens=tokens)
    model = Spool(config, with_backbone=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(1, T, tokens, 16)
    with torch.no_grad():
        want = model.forward_tokens(x)
        model.to(device)
        x = x.to(device)
        with torch.autocast(device, dtype=dtype):
            plain = model.forward_tokens(x)
            long = model.forward_long(x[0], keep_features=True)
    for name in ("context", "features"):
        plain_err = (getattr(plain, name)[0].float().cpu() - getattr(want, name)[0]).abs().max()
        long_err = (getattr(long, name).float().cpu() - getattr(want, name)[0]).abs().max()
        assert long_err <= 2 * plain_err + 1e-4, (name, float(long_err), float(plain_err))


def test_video_file_streams_through_backbone_and_stack(tmp_path):
    model = Spool(tiny_config(num_hidden_layers=2, local_frame_range=3)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (45, 40, 56, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")
    out = model.forward_long(path, sampler=StrideSampler(2), chunk_frames=4, keep_features=True)
    assert out.frame_indices.tolist() == list(range(0, 45, 2))
    torch.testing.assert_close(out.timestamps, torch.arange(0, 45, 2, dtype=torch.float64) / 10)
    with torch.no_grad():
        plain = model(torch.from_numpy(frames[::2])[None])
    torch.testing.assert_close(out.features, plain.features[0], atol=1e-5, rtol=1e-5)
    offloaded = model.forward_long(path, sampler=StrideSampler(2), chunk_frames=5,
                                   offload_dir=tmp_path / "scratch")
    torch.testing.assert_close(offloaded.context, plain.context[0], atol=1e-5, rtol=1e-5)


def test_repeated_frames_stay_in_one_decode_chunk(tmp_path):
    """An fps above the video's repeats frames: a run split across chunks made the reader
    seek back for the next chunk's first frame."""
    assert list(decode_chunks([0, 1, 1, 1, 2, 3], 2)) == [slice(0, 4), slice(4, 6)]
    assert list(decode_chunks([0, 1, 2], np.int64(2))) == [slice(0, 2), slice(2, 3)]
    with pytest.raises(ValueError, match="size: expected a positive integer, got True"):
        list(decode_chunks([0, 1], True))
    model = Spool(tiny_config(backbone_chunk_size=4)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mkv", frames, fps=5, codec="ffv1", gop_size=1)  # back: a seek
    with VideoReader(path) as reader:
        indices = FpsSampler(13)(len(reader), fps=5.0)[0]
        assert len(indices) > len(set(indices))
        out = [tokens for tokens, _ in long_video.stream_tokens(model, reader, indices)]
        assert reader.num_seeks == 0
    assert sum(len(t) for t in out) == len(indices)


def test_a_long_still_frame_is_encoded_once_in_chunks_of_the_backbones_size(tmp_path):
    """A run of one repeated frame stayed in one chunk whatever its length (a still frame held
    for minutes, or an fps far above the video's), so the backbone got it whole: 121 frames at
    once with backbone_chunk_size=4. Chunks now hold at most that many distinct frames, each
    encoded once and expanded; the tokens are the plain per-frame encoding's."""
    assert list(decode_chunks([0, *[1] * 100, 2, 3], 2)) == [slice(0, 101), slice(101, 103)]
    model = Spool(tiny_config(backbone_chunk_size=4)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mkv", frames, fps=2, codec="ffv1")
    batches = []
    encoder_forward = model.frame_encoder.forward

    def spy(video, *args, **kwargs):
        batches.append(video.shape[1])
        return encoder_forward(video, *args, **kwargs)

    model.frame_encoder.forward = spy
    with VideoReader(path) as reader:
        indices = FpsSampler(40)(len(reader), fps=2.0)[0]  # each frame 20 times
        parts = list(long_video.stream_tokens(model, reader, indices))
    assert len(indices) == 200 and batches == [4, 4, 2], batches
    tokens = torch.cat([t for t, _ in parts])
    stamps = np.concatenate([s for _, s in parts])
    model.frame_encoder.forward = encoder_forward
    with torch.no_grad():
        plain = model.encode_frames(torch.from_numpy(frames)[None])[0]
    torch.testing.assert_close(tokens, plain[torch.tensor(indices)], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stamps, np.asarray(indices) / 2.0)


def test_no_tensor_beyond_the_hidden_state():
    """In-place chunks: nothing of size [T, L, 4D] or q/k/v for all frames; the hidden state
    [T + 2, L, D] is the largest tensor, while the plain forward's MLP makes [T + 2, L, 4D]."""
    model, T = _temporal(4, 2), 120
    hidden = torch.randn(T + 2, L, D)
    with LargestOutput() as probe:
        stream_temporal_stack(model.temporal, hidden, chunk_frames=8)
    assert probe.largest <= hidden.numel()
    with LargestOutput() as plain, torch.no_grad():
        model.temporal(hidden[None])
    assert plain.largest >= 4 * hidden.numel()


def test_progress_moves_within_each_layer():
    """A layer over a long video takes minutes: progress comes per chunk of frames, not per
    layer, and adds up to every frame through every layer."""
    model, T = _temporal(4, 2, layers=2), 40
    calls = []
    stream_temporal_stack(model.temporal, torch.randn(T + 2, L, D), chunk_frames=8,
                          progress=calls.append)
    assert sum(calls) == 2 * (T + 2)
    assert len(calls) == 2 * 6 and max(calls) == 8  # ceil(42 / 8) chunks per layer


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_hidden_state_in_ram_keeps_gpu_memory_to_a_chunk(device, monkeypatch):
    """With the model on a GPU, a hidden state kept in RAM (``hidden_on_device=False``, or
    by default when it would take over half the device's free memory) visits the device a
    chunk at a time: the CPU's result, device memory far below the hidden state's size."""
    model, T = _temporal(4, 2), 20_000
    tokens = torch.randn(T, L, D)
    want = model.forward_long(tokens, chunk_frames=64)
    gpu = _temporal(4, 2).to(device)
    gpu.load_state_dict(model.state_dict())
    hidden_bytes = (T + 2) * L * D * 4
    # A first call makes the one-off allocations (cuBLAS's workspace, 32 MiB on an H200), which
    # would otherwise count in the first case's peak.
    gpu.forward_long(tokens[:200], chunk_frames=64, hidden_on_device=False)
    peaks = {}
    for case, on_device in (("ram", False), ("device", True), ("auto, little free", None)):
        if on_device is None:  # and nothing cached unused (the device case's state was)
            monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (hidden_bytes, 2**40))
            monkeypatch.setattr(torch.cuda, "memory_reserved", torch.cuda.memory_allocated)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        got = gpu.forward_long(tokens, chunk_frames=64, hidden_on_device=on_device)
        peaks[case] = torch.cuda.max_memory_allocated(device) - base
        torch.testing.assert_close(got.frame_features, want.frame_features, atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(got.context, want.context, atol=1e-4, rtol=1e-4)
    assert peaks["device"] >= hidden_bytes, peaks
    assert peaks["ram"] < hidden_bytes / 8, peaks
    assert peaks["auto, little free"] < hidden_bytes / 8, peaks


def test_memory_pytorch_holds_unused_counts_as_free(monkeypatch):
    """After one long video, its state's blocks stay in PyTorch's cache: the driver counts
    them as taken, so the next video as long was kept in RAM (slower) though it fit."""
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 9 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 1 * gib)
    cuda = torch.device("cuda", 0)
    assert long_video.hidden_fits_on_device(4 * gib, cuda)  # half of 1 + 8 GiB
    assert not long_video.hidden_fits_on_device(5 * gib, cuda)


def test_memory_is_checked_before_any_work(monkeypatch):
    model = _temporal(4, 2)
    monkeypatch.setattr(long_video, "available_memory_bytes", lambda: 10_000)
    with pytest.raises(MemoryError, match=r"needs about 704.1 KiB but 9.8 KiB are available.*"
                                          r"fps.*offload_dir"):
        model.forward_long(torch.randn(500, L, D))


def test_errors_name_the_argument():
    model = _temporal(4, 2)
    with pytest.raises(ValueError, match="tokens: expected D=24"):
        model.forward_long(torch.randn(10, L, 7))
    with pytest.raises(ValueError, match="no backbone"):
        model.forward_long("video.mp4")
    with pytest.raises(ValueError, match=r"one video's tokens \[T, L, D\].*got shape \(2, 5, "):
        model.eval().forward_long(torch.randn(2, 5, L, D))  # torch's expand error before
    for frames in (torch.zeros(3, 32, 32, 3, dtype=torch.uint8), torch.zeros(1, 3, 8, 8, 3)):
        with pytest.raises(ValueError, match=r"looks like decoded frames .*file's path"):
            model.forward_long(frames)  # said: "pass the videos of a batch one by one"
    with pytest.raises(ValueError, match="inference only"):
        model.train().forward_long(torch.randn(3, L, D))
    with pytest.raises(ValueError, match=r"expected a float32 model .*torch.bfloat16.*autocast"):
        model.eval().to(torch.bfloat16).forward_long(torch.randn(3, L, D))  # torch's mixed
    with torch.autocast("cpu", torch.bfloat16):  # dtype error before; this is the way
        assert model.float().forward_long(torch.randn(3, L, D)).frame_features.shape == (3, D)
    for chunk in (0, 2.5, True):  # range()'s errors, or a bool taken as 1
        with pytest.raises(ValueError, match=r"chunk_frames: expected an integer >= 1"):
            model.forward_long(torch.randn(3, L, D), chunk_frames=chunk)


def test_the_float32_check_is_of_the_temporal_part_not_the_backbone():
    """It read the first parameter, the backbone's: a half backbone (tokens are cast) was
    refused, and a bf16 temporal stack under a float32 backbone passed, then failed in torch."""
    model = Spool(tiny_config(num_hidden_layers=1)).eval()
    video = torch.rand(4, 32, 32, 3)
    with torch.no_grad():
        want = model(video[None]).features[0]
    model.backbone.half()
    got = model.forward_long(model.encode_frames(video[None])[0].float(), keep_features=True)
    torch.testing.assert_close(got.features, want, atol=2e-2, rtol=2e-2)
    model.backbone.float()
    model.temporal.bfloat16()
    with pytest.raises(ValueError, match=r"expected a float32 model .*torch.bfloat16.*outside"):
        model.forward_long(torch.randn(3, model.config.num_spatial_tokens,
                                       model.config.hidden_size))


def test_extract_per_frame_writes_the_long_forward(tmp_path):
    from conftest import tiny_backbone, tiny_model_args
    from safetensors import safe_open
    from safetensors.torch import load_file

    from spool.cli import main

    frames = np.random.default_rng(1).integers(0, 256, (60, 36, 48, 3), dtype=np.uint8)
    write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")
    (tmp_path / "bb.json").write_text(__import__("json").dumps(tiny_backbone()))
    args = ["extract", str(tmp_path / "v.mkv"), "--out", str(tmp_path / "out"),
            *tiny_model_args(tmp_path / "bb.json"), "--per-frame", "--fps", "5",
            "--save-features", "--chunk-frames", "7", "--no-progress"]
    assert main(args) == 0
    saved = load_file(tmp_path / "out" / "v.safetensors")
    with safe_open(str(tmp_path / "out" / "v.safetensors"), "pt") as f:
        assert f.metadata()["mode"] == "per_frame"
    assert saved["frame_indices"].tolist() == list(range(0, 60, 2))
    torch.manual_seed(0)  # the untrained temporal stack spool extract builds
    from spool.extract import load_feature_model
    model = load_feature_model(None, dict(
        num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1, num_lookback_heads=1,
        image_size=32, local_frame_range=2, backbone_config=tiny_backbone())).eval()
    with torch.no_grad():
        plain = model(torch.from_numpy(frames[::2])[None])
    torch.testing.assert_close(saved["context"], plain.context[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(saved["frame_features"], plain.features[0, 1:-1].mean(1),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(saved["features"].float(), plain.features[0], atol=2e-3,
                               rtol=2e-3)  # fp16 on disk


def test_sliding_clips_hold_a_window_not_the_video(tmp_path, monkeypatch):
    """Issue 14: --sampler sliding decoded and held every frame of a long video at once."""
    from spool.extract import FeatureExtractor
    from spool.video import make_sampler
    from spool.video.io import VideoReader

    model = Spool(tiny_config(num_hidden_layers=1)).eval()
    frames = np.random.default_rng(2).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")
    requests = []
    original = VideoReader.get

    def recording_get(self, indices=None, *args, **kwargs):
        requests.append(len(indices))
        return original(self, indices, *args, **kwargs)

    monkeypatch.setattr(VideoReader, "get", recording_get)
    sampler = make_sampler("sliding", clip_len=8, stride=4)
    out = FeatureExtractor(model, sampler, batch_size=2).features(path)
    # requests[0] is reader.info() reading frame 0; then each frame once, a batch at a time.
    assert max(requests) <= 2 * 8 and sum(requests[1:]) == 64
    clips = torch.from_numpy(frames)[torch.tensor(sampler(64))]
    with torch.no_grad():
        torch.testing.assert_close(out["context"], model(clips).context, atol=1e-5, rtol=1e-5)


def test_a_cast_does_not_round_the_rotary_frequencies():
    """inv_freq was a float buffer: .half()/.bfloat16() rounded it for good (after .float(),
    and in what save_pretrained wrote), shifting every rotary angle by up to 0.1 rad at
    frame 257."""
    from spool.layers.rotary import FrameRotaryEmbedding

    exact = FrameRotaryEmbedding(64).inv_freq
    for cast in (torch.float16, torch.bfloat16):
        model = _temporal(4, 2)
        rotary = model.temporal.layers[0].attn.rotary
        model.to(cast)
        assert rotary.inv_freq.dtype == torch.float32
        model.float()
        torch.testing.assert_close(rotary.inv_freq, FrameRotaryEmbedding(rotary.head_dim,
                                                                         rotary.theta).inv_freq,
                                   atol=0, rtol=0)
    torch.testing.assert_close(FrameRotaryEmbedding(64).half().float().inv_freq, exact,
                               atol=0, rtol=0)
    rotary = FrameRotaryEmbedding(64)
    kept = rotary.inv_freq
    assert rotary.float().to("cpu").inv_freq is kept  # what a CUDA graph captured may read
