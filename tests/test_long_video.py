"""The long-video path: chunked, in place, the same function as the plain forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

import spool.models.long_video as long_video
from spool import Spool
from spool.layers.streaming import stream_temporal_stack
from spool.video import write_video
from spool.video.samplers import StrideSampler

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
def test_chunked_forward_equals_plain_forward(T, w, lookback, chunk):
    """Several T, w, chunk sizes (T not a multiple of the chunk), head splits with 0 heads of
    either kind."""
    model = _temporal(w, lookback)
    tokens = torch.randn(1, T, L, D)
    with torch.no_grad():
        plain = model.forward_tokens(tokens)
    out = model.forward_long(tokens[0], chunk_frames=chunk, keep_features=True)
    torch.testing.assert_close(out.features, plain.features[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.context, plain.context[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.frame_features, plain.features[0, 1:-1].mean(1),
                               atol=1e-5, rtol=1e-5)


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


class _LargestOutput(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_beyond_the_hidden_state():
    """In-place chunks: nothing of size [T, L, 4D] or q/k/v for all frames; the hidden state
    [T + 2, L, D] is the largest tensor, while the plain forward's MLP makes [T + 2, L, 4D]."""
    model, T = _temporal(4, 2), 120
    hidden = torch.randn(T + 2, L, D)
    with _LargestOutput() as probe:
        stream_temporal_stack(model.temporal, hidden, chunk_frames=8)
    assert probe.largest <= hidden.numel()
    with _LargestOutput() as plain, torch.no_grad():
        model.temporal(hidden[None])
    assert plain.largest >= 4 * hidden.numel()


def test_memory_is_checked_before_any_work(monkeypatch):
    model = _temporal(4, 2)
    monkeypatch.setattr(long_video, "available_memory_bytes", lambda: 10_000)
    with pytest.raises(MemoryError, match=r"needs about .* GiB.*fps.*offload_dir"):
        model.forward_long(torch.randn(500, L, D))


def test_errors_name_the_argument():
    model = _temporal(4, 2)
    with pytest.raises(ValueError, match="tokens: expected D=24"):
        model.forward_long(torch.randn(10, L, 7))
    with pytest.raises(ValueError, match="no backbone"):
        model.forward_long("video.mp4")
    with pytest.raises(ValueError, match="inference only"):
        model.train().forward_long(torch.randn(3, L, D))
