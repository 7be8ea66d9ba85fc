"""The temporal stack over a long video, chunk by chunk, with memory linear in its length.

The same function as ``TemporalTransformer.forward`` (inference only), computed layer by
layer over chunks of frames: each chunk's queries read the keys and values of their own window
(kept in a rolling cache, so every frame is projected once per layer) plus the context frames,
and the context frames' global attention over every frame is accumulated chunk by chunk with an
online softmax (running max and sum), which is exact. The hidden state ``[T + 2, L, D]`` is the
one large tensor: each layer updates it in place, since a chunk's frames are read for the last
time (into the cache) before the chunk is written. Nothing of size ``[T, L, 4D]`` or q/k/v for
all frames ever exists. The hidden state may live elsewhere than the compute (in RAM or a
memory-mapped file while the model is on a GPU): each chunk is copied to the model's device
and back, so device memory holds a chunk's workspace, not the video.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spool.layers.attention_blocked import blocked_plan, default_chunk_frames, run_plan
from spool.layers.transformer import TemporalBlock, TemporalTransformer


class _GlobalRow:
    """Attention of one context frame's queries over every frame, accumulated over chunks in
    float32 whatever the compute dtype: under autocast a float16 sum over every frame's keys
    overflows (T * L terms up to 1), and a bfloat16 one drops the late chunks' share."""

    def __init__(self, q: torch.Tensor) -> None:  # q: [G, L, hd]
        self.q = q.float() * q.shape[-1] ** -0.5
        self.max = self.q.new_full(q.shape[:2], float("-inf"))
        self.sum = self.q.new_zeros(q.shape[:2])
        self.acc = torch.zeros_like(self.q)

    def add(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Fold in keys and values ``[G, n, L, hd]`` of ``n`` more frames."""
        if self.q.shape[0] == 0:
            return
        with torch.autocast(k.device.type, enabled=False):
            k, v = k.flatten(1, 2).float(), v.flatten(1, 2).float()
            scores = self.q @ k.transpose(-1, -2)  # [G, L, n * L]
            new_max = torch.maximum(self.max, scores.amax(-1))
            p = torch.exp(scores - new_max[..., None])
            rescale = torch.exp(self.max - new_max)
            self.sum = self.sum * rescale + p.sum(-1)
            self.acc = self.acc * rescale[..., None] + p @ v
        self.max = new_max

    def result(self) -> torch.Tensor:
        return self.acc / self.sum[..., None]


def _keep_inputs(x: torch.Tensor, device: torch.device) -> bool:
    """Whether the cache keeps the frames' inputs: only where the hidden state lives off the
    compute device (each frame then crosses to it once per layer, not twice)."""
    return x.device != device


class _QKVCache:
    """q, k, v ``[H, n, L, hd]`` of frames ``[lo, hi)``, each frame projected once per layer
    (in order, from frame 0), and where :func:`_keep_inputs` the frames' inputs on the
    compute device, which the residual reads again. ``on_new`` sees the keys and values of
    every frame once."""

    def __init__(self, block: TemporalBlock, x: torch.Tensor, device: torch.device,
                 on_new: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        self.block, self.x, self.device, self.on_new = block, x, device, on_new
        self.keep_inputs = _keep_inputs(x, device)
        self.lo = self.hi = 0
        self.cached: list[torch.Tensor] | None = None  # (inputs [1, n, L, D],) q, k, v

    def frames(self, f0: int, f1: int) -> list[torch.Tensor]:
        """q, k, v of frames ``[f0, f1)``, ``[H, f1 - f0, L, hd]`` each."""
        return [t[:, f0 - self.lo:f1 - self.lo] for t in self._span(f0, f1)[-3:]]

    def inputs(self, f0: int, f1: int) -> torch.Tensor | None:
        """The layer's input ``[f1 - f0, L, D]`` of frames ``[f0, f1)`` on the device, if
        kept."""
        if not self.keep_inputs:
            return None
        return self._span(f0, f1)[0][0, f0 - self.lo:f1 - self.lo]

    def _span(self, f0: int, f1: int) -> list[torch.Tensor]:
        self.compute_to(f1)
        if f0 < self.lo:
            raise AssertionError(f"frames {f0}..{self.lo} were dropped from the cache")
        return self.cached

    def compute_to(self, f1: int) -> None:
        """Project every frame before ``f1`` not yet projected."""
        if f1 > self.hi:
            inputs = self.x[self.hi:f1].to(self.device)
            positions = torch.arange(self.hi, f1, device=self.device)
            qkv = [t[:, 0] for t in
                   self.block.attn.project_qkv(self.block.norm1(inputs)[None], positions)]
            self.on_new(qkv[1], qkv[2])
            new = [inputs[None], *qkv] if self.keep_inputs else qkv  # frames along dim 1
            self.cached = new if self.cached is None else [
                torch.cat(pair, 1) for pair in zip(self.cached, new, strict=True)]
            self.hi = f1

    def drop_before(self, frame: int) -> None:
        if self.cached is not None and frame > self.lo:
            self.cached = [t[:, frame - self.lo:] for t in self.cached]
            self.lo = frame


def _project(block: TemporalBlock, x: torch.Tensor, frame: int, device: torch.device
             ) -> list[torch.Tensor]:
    """q, k, v ``[H, 1, L, hd]`` of one frame at its position, on ``device``."""
    h = block.norm1(x[frame:frame + 1].to(device))[None]
    positions = torch.tensor([frame], device=device)
    return [t[:, 0] for t in block.attn.project_qkv(h, positions)]


def _finish(block: TemporalBlock, x: torch.Tensor, attn_out: torch.Tensor,
            x_on_device: torch.Tensor | None = None) -> torch.Tensor:
    """Residual, output projection and MLP of frames ``x: [n, L, D]`` (where the hidden state
    lives; ``x_on_device``: the same on the compute device, if there already) given their
    attention output ``[n, L, H, hd]`` (on the compute device); the result is where ``x`` is."""
    n, L, D = x.shape
    if x_on_device is None:
        x_on_device = x.to(attn_out.device)
    y = x_on_device + block.attn.proj(attn_out.reshape(n, L, D))
    return (y + block.mlp(block.norm2(y))).to(x.device)


def _stream_layer(block: TemporalBlock, x: torch.Tensor, chunk: int, device: torch.device,
                  progress: Callable[[int], None] | None = None) -> None:
    """One block over ``x: [F, L, D]`` in place, ``chunk`` query frames at a time, computed on
    ``device``; ``progress`` is called with the number of query frames after each chunk."""
    attn = block.attn
    nF, L, _ = x.shape
    H, Hb, w = attn.num_heads, attn.num_lookback_heads, attn.local_frame_range
    c = attn.chunk_frames or default_chunk_frames(w)
    last = nF - 1
    ctx_first = _project(block, x, 0, device)
    ctx_last = _project(block, x, last, device)
    back = _GlobalRow(ctx_first[0][:Hb, 0])  # frame 0 in the lookback heads
    ahead = _GlobalRow(ctx_last[0][Hb:, 0])  # frame F-1 in the lookahead heads

    def fold(k: torch.Tensor, v: torch.Tensor) -> None:
        back.add(k[:Hb], v[:Hb])
        ahead.add(k[Hb:], v[Hb:])

    cache = _QKVCache(block, x, device, fold)
    like = dict(dtype=x.dtype, device=device)
    first_out = torch.zeros(1, L, H, attn.head_dim, **like)  # the context frames' attention
    last_out = torch.zeros(1, L, H, attn.head_dim, **like)
    for a in range(0, nF, chunk):
        b = min(a + chunk, nF)
        out = torch.empty(b - a, L, H, attn.head_dim, **like)
        qs = max(a, 1)  # lookback queries [qs, b): frame 0's are global
        if Hb and qs < b:
            lo = max(1, qs - w)
            q, k, v = cache.frames(lo, b)
            local = [torch.cat((ctx[:Hb], t[:Hb]), 1)
                     for ctx, t in zip(ctx_first, (q, k, v), strict=True)]
            start = 1 + qs - lo
            result = torch.empty(Hb, 1, local[0].shape[1], L, attn.head_dim, **like)
            run_plan(blocked_plan(local[0].shape[1], w, c, start), *local, result, False)
            out[qs - a:, :, :Hb] = result[:, 0, start:].permute(1, 2, 0, 3)
        qe = min(b, last)  # lookahead queries [a, qe): frame F-1's are global
        if H - Hb and a < qe:
            hi = min(last, qe + w)
            q, k, v = cache.frames(a, hi)
            local = [torch.cat((t[Hb:], ctx[Hb:]), 1)
                     for ctx, t in zip(ctx_last, (q, k, v), strict=True)]
            n_local = local[0].shape[1]
            result = torch.empty(H - Hb, 1, n_local, L, attn.head_dim, **like)
            run_plan(blocked_plan(n_local, w, c, n_local - (qe - a)), *local, result, True)
            out[:qe - a, :, Hb:] = result[:, 0, :qe - a].permute(1, 2, 0, 3)
        if a == 0:
            first_out[0, :, Hb:] = out[0, :, Hb:]
        if b == nF:
            last_out[0, :, :Hb] = out[-1, :, :Hb]
        f0, f1 = max(a, 1), min(b, last)
        if f0 < f1:
            x[f0:f1] = _finish(block, x[f0:f1], out[f0 - a:f1 - a], cache.inputs(f0, f1))
        cache.drop_before(max(0, b - w))  # what the next chunk's windows still read
        if progress is not None:
            progress(b - a)
    cache.compute_to(nF)  # the global rows need every frame's keys
    first_out[0, :, :Hb] = back.result().transpose(0, 1)
    last_out[0, :, Hb:] = ahead.result().transpose(0, 1)
    x[0:1] = _finish(block, x[0:1], first_out)  # the loop never writes frames 0 and F-1
    x[last:nF] = _finish(block, x[last:nF], last_out)


def check_chunk_frames(chunk_frames: int) -> None:
    """``chunk_frames`` of the long-video paths: an integer >= 1 (a bool is not one)."""
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames: expected an integer >= 1, got {chunk_frames!r}")


@torch.no_grad()
def stream_temporal_stack(stack: TemporalTransformer, hidden: torch.Tensor,
                          chunk_frames: int = 32,
                          progress: Callable[[int], None] | None = None, *,
                          start_layer: int = 0,
                          before_layer: Callable[[int, torch.Tensor], torch.Tensor] | None = None
                          ) -> torch.Tensor:
    """``stack(hidden[None])[0]`` computed in place on ``hidden: [T + 2, L, D]`` (context
    frames included), ``chunk_frames`` frames at a time; returns the result. The stack computes
    on its weights' device; ``hidden`` may be elsewhere (RAM while they are on a GPU), and
    then only a chunk's workspace is ever on the device. ``progress`` is called with the
    number of frames (of ``T + 2``) after each chunk of each layer: ``T + 2`` per layer, so a
    bar moves within a layer of a long video. ``start_layer``: ``hidden`` is the state after
    that many layers (a pass taken up again). ``before_layer(i, x)``, called before layer
    ``i`` (the number of layers: before the final norm) with the state so far, returns where
    that layer computes (in place): ``x`` or a copy of it, which the result is then in."""
    if stack.training:
        raise ValueError("stream_temporal_stack: inference only; call model.eval() first")
    check_chunk_frames(chunk_frames)
    device = stack.norm.weight.device
    for i, block in enumerate(stack.layers):
        if i < start_layer:
            continue
        if before_layer is not None:
            hidden = before_layer(i, hidden)
        _stream_layer(block, hidden, chunk_frames, device, progress)
    if before_layer is not None:
        hidden = before_layer(len(stack.layers), hidden)
    for f0 in range(0, hidden.shape[0], chunk_frames):
        chunk = hidden[f0:f0 + chunk_frames]
        hidden[f0:f0 + chunk_frames] = stack.norm(chunk.to(device)).to(hidden.device)
    return hidden
