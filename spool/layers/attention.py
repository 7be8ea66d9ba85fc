"""Bidirectional temporal attention: lookback and lookahead heads in a local frame window.

Three implementations of exactly the same function (SPEC §3), chosen by
``config.attn_implementation``:

- ``reference``: a dense ``[H, F*L, F*L]`` mask; quadratic in ``T``, for tests only.
- ``blocked``: SDPA over frame blocks; memory and time linear in ``T``.
- ``flex``: ``torch.nn.attention.flex_attention`` (compiled) with a cached block mask.

All take ``q, k, v: [B, H, F, L, head_dim]`` (rotary already applied), heads
``0 .. num_lookback_heads - 1`` being the lookback heads, and return the same shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spool.config import SpoolConfig
from spool.layers.masks import band_token_mask, dense_token_mask, flex_block_mask, prefix_token_mask
from spool.layers.rotary import FrameRotaryEmbedding, apply_rotary


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        num_lookback_heads: int, local_frame_range: int,
                        dropout_p: float = 0.0) -> torch.Tensor:
    """Dense masked attention, written out; the ground truth the others are tested against."""
    B, H, nF, L, hd = q.shape
    mask = dense_token_mask(nF, L, local_frame_range, num_lookback_heads, H, q.device)
    scores = q.reshape(B, H, nF * L, hd) @ k.reshape(B, H, nF * L, hd).transpose(-1, -2)
    scores = scores * (1.0 / math.sqrt(hd))
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return (probs @ v.reshape(B, H, nF * L, hd)).view(B, H, nF, L, hd)


def default_chunk_frames(local_frame_range: int) -> int:
    """Query frames per block: a block of ``c`` frames reads ``c + w + 1`` key frames, so
    larger ``c`` copies K/V fewer times and smaller ``c`` wastes fewer masked scores."""
    return max(1, (local_frame_range + 1) // 2)


def _lookback_blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: int,
                      chunk_frames: int, dropout_p: float) -> torch.Tensor:
    """Lookback attention for all heads. Three SDPA calls, each linear in ``T``:
    the start context frame (sees everything), the first ``P <= w`` frames (whose windows
    are cut by the start of the video), and the rest in blocks of ``chunk_frames`` frames.
    """
    B, H, nF, L, hd = q.shape
    sdpa = F.scaled_dot_product_attention
    out_context = sdpa(q[:, :, 0], k.flatten(2, 3), v.flatten(2, 3), dropout_p=dropout_p)
    pieces = [out_context.unsqueeze(2)]

    num_prefix = min(w, nF - 1)
    if num_prefix > 0:
        mask = prefix_token_mask(num_prefix, L, q.device)
        out = sdpa(q[:, :, 1:num_prefix + 1].flatten(2, 3), k[:, :, :num_prefix + 1].flatten(2, 3),
                   v[:, :, :num_prefix + 1].flatten(2, 3), attn_mask=mask, dropout_p=dropout_p)
        pieces.append(out.view(B, H, num_prefix, L, hd))

    first = num_prefix + 1  # first frame whose window lies wholly after the start context
    num_rest = nF - first
    if num_rest > 0:
        c = min(chunk_frames, num_rest)
        num_blocks = math.ceil(num_rest / c)
        pad = num_blocks * c - num_rest
        # Block b holds query frames s .. s+c-1 (s = first + b*c) and reads key frames
        # s-w .. s+c-1 (all >= 1 since first > w) plus the start context frame.
        queries = q[:, :, first:]
        keys, values = k[:, :, first - w:], v[:, :, first - w:]
        if pad:
            queries = F.pad(queries, (0, 0, 0, 0, 0, pad))
            keys = F.pad(keys, (0, 0, 0, 0, 0, pad))
            values = F.pad(values, (0, 0, 0, 0, 0, pad))
        queries = queries.reshape(B, H * num_blocks, c * L, hd)

        def windows(x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            win = x.unfold(2, c + w, c).permute(0, 1, 2, 5, 3, 4)  # [B, H, nb, c+w, L, hd]
            ctx = ctx[:, :, None].expand(B, H, num_blocks, 1, L, hd)
            return torch.cat((ctx, win), dim=3).view(B, H * num_blocks, (1 + c + w) * L, hd)

        mask = None if c == 1 else band_token_mask(c, w, L, q.device)
        out = sdpa(queries, windows(keys, k[:, :, :1]), windows(values, v[:, :, :1]),
                   attn_mask=mask, dropout_p=dropout_p)
        out = out.view(B, H, num_blocks * c, L, hd)
        pieces.append(out[:, :, :num_rest] if pad else out)
    return torch.cat(pieces, dim=2)


def _to_lookback_form(x: torch.Tensor, num_lookback_heads: int) -> torch.Tensor:
    """Reverse time for the lookahead heads: lookahead attention over frames ``0..F-1`` is
    lookback attention over the reversed frames, so one kernel serves both groups."""
    H = x.shape[1]
    if num_lookback_heads == H:
        return x
    if num_lookback_heads == 0:
        return x.flip(2)
    return torch.cat((x[:, :num_lookback_heads], x[:, num_lookback_heads:].flip(2)), dim=1)


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      num_lookback_heads: int, local_frame_range: int,
                      chunk_frames: int | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Linear-cost attention; never builds a ``F*L x F*L`` tensor."""
    if chunk_frames is None:
        chunk_frames = default_chunk_frames(local_frame_range)
    q, k, v = (_to_lookback_form(x, num_lookback_heads) for x in (q, k, v))
    out = _lookback_blocked(q, k, v, local_frame_range, chunk_frames, dropout_p)
    return _to_lookback_form(out, num_lookback_heads)


_compiled_flex = None


def flex_temporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            num_lookback_heads: int, local_frame_range: int) -> torch.Tensor:
    """All heads in one compiled ``flex_attention`` call with a cached block mask."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    B, H, nF, L, hd = q.shape
    block_mask = flex_block_mask(nF, L, local_frame_range, num_lookback_heads, H, q.device)
    out = _compiled_flex(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3), block_mask=block_mask)
    return out.view(B, H, nF, L, hd)


def resolve_implementation(name: str, device: torch.device) -> str:
    """``auto`` picks what measured fastest on the device (docs/benchmarks.md)."""
    if name != "auto":
        return name
    return "flex" if device.type == "cuda" else "blocked"


class TemporalAttention(nn.Module):
    """Fused-QKV multi-head attention over ``[B, F, L, D]`` with the SPEC §3 mask."""

    def __init__(self, config: SpoolConfig) -> None:
        super().__init__()
        D = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_lookback_heads = config.num_lookback_heads
        self.head_dim = config.head_dim
        self.local_frame_range = config.local_frame_range
        self.implementation = config.attn_implementation
        self.chunk_frames = config.attention_chunk_frames
        self.dropout = config.attention_dropout
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.rotary = FrameRotaryEmbedding(self.head_dim, config.rope_theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, F, L, D] -> [B, F, L, D]``."""
        B, nF, L, D = x.shape
        qkv = self.qkv(x).view(B, nF, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each [B, H, F, L, hd]
        cos, sin = self.rotary.cos_sin(nF, x.device, x.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        v = v.contiguous()
        dropout_p = self.dropout if self.training else 0.0
        impl = resolve_implementation(self.implementation, x.device)
        if impl == "reference":
            out = reference_attention(q, k, v, self.num_lookback_heads, self.local_frame_range,
                                      dropout_p)
        elif impl == "blocked":
            out = blocked_attention(q, k, v, self.num_lookback_heads, self.local_frame_range,
                                    self.chunk_frames, dropout_p)
        else:
            if x.device.type == "cpu" and torch.is_grad_enabled() and x.requires_grad:
                raise ValueError("attn_implementation='flex': torch has no flex_attention "
                                 "backward on CPU; use 'blocked' (or 'auto') to train on CPU")
            if dropout_p:
                raise ValueError("attention_dropout: flex attention supports 0.0 only, "
                                 f"got {dropout_p}; use attn_implementation='blocked'")
            out = flex_temporal_attention(q, k, v, self.num_lookback_heads,
                                          self.local_frame_range)
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(B, nF, L, D))
