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

import torch
import torch.nn.functional as F
from torch import nn

from spool.config import SpoolConfig
from spool.layers.masks import band_token_mask, dense_token_mask, flex_block_mask, prefix_token_mask
from spool.layers.rotary import FrameRotaryEmbedding, apply_rotary


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        num_lookback_heads: int, local_frame_range: int,
                        dropout_p: float = 0.0) -> torch.Tensor:
    """Dense masked attention: one SDPA call over all ``F*L`` tokens with the explicit
    ``[H, F*L, F*L]`` mask. Quadratic in ``T``; the ground truth the others are tested
    against, and what the original dense approach costs."""
    B, H, nF, L, hd = q.shape
    mask = dense_token_mask(nF, L, local_frame_range, num_lookback_heads, H, q.device)
    out = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3),
                                         attn_mask=mask, dropout_p=dropout_p)
    return out.view(B, H, nF, L, hd)


def default_chunk_frames(local_frame_range: int) -> int:
    """Query frames per block: a block of ``c`` frames reads ``c + w + 1`` key frames, so
    larger ``c`` copies K/V fewer times and smaller ``c`` wastes fewer masked scores
    (measured flat for c in 3..6 at w=16, and best at c=2 for w=4)."""
    return max(1, min((local_frame_range + 1) // 2, 4))


def _direction_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                         w: int, chunk_frames: int, lookahead: bool, dropout_p: float) -> None:
    """One head group, all in one direction; writes ``out: [Hg, B, F, L, hd]`` in place.

    ``q, k, v: [Hg, B, F, L, hd]``. Written for lookback; lookahead is its mirror image in
    time (``frames(a, b)`` maps a lookback frame range onto memory). Four SDPA calls, each
    linear in ``T``: the context frame (sees everything), the ``P <= w`` frames whose windows
    are cut by the context frame, full blocks of ``c`` frames, and the last ``r < c`` frames.
    """
    Hg, B, nF, L, hd = q.shape
    N = Hg * B
    q, k, v = (x.view(N, nF, L, hd) for x in (q, k, v))

    def frames(a: int, b: int) -> slice:
        return slice(nF - b, nF - a) if lookahead else slice(a, b)

    def store(sl: slice, result: torch.Tensor) -> None:
        out[:, :, sl] = result.view(Hg, B, -1, L, hd)

    def sdpa(query, key, value, mask=None):
        if query.ndim == 3:  # the CPU flash kernel takes 4-D inputs only
            query, key, value = query[None], key[None], value[None]
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                              dropout_p=dropout_p)

    def with_context(window: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return torch.cat((window, ctx) if lookahead else (ctx, window), dim=-3)

    ctx = nF - 1 if lookahead else 0
    store(slice(ctx, ctx + 1), sdpa(q[:, ctx], k.flatten(1, 2), v.flatten(1, 2)))

    num_prefix = min(w, nF - 1)
    if num_prefix:
        sl, keys = frames(1, num_prefix + 1), frames(0, num_prefix + 1)
        mask = prefix_token_mask(num_prefix, L, lookahead, q.device, q.dtype)
        store(sl, sdpa(q[:, sl].flatten(1, 2), k[:, keys].flatten(1, 2),
                       v[:, keys].flatten(1, 2), mask))

    first = num_prefix + 1  # first frame whose window lies wholly inside the real frames
    num_rest = nF - first
    if num_rest <= 0:
        return
    c = min(chunk_frames, num_rest)
    num_blocks, num_tail = divmod(num_rest, c)
    end = first + num_blocks * c
    sl, keys = frames(first, end), frames(first - w, end)
    ctx_k, ctx_v = k[:, ctx:ctx + 1, None], v[:, ctx:ctx + 1, None]

    def windows(x: torch.Tensor, ctx_x: torch.Tensor) -> torch.Tensor:
        # Overlapping windows of c + w frames every c frames: [N, nb, c + w, L, hd].
        win = x[:, keys].unfold(1, c + w, c).permute(0, 1, 4, 2, 3)
        ctx_x = ctx_x.expand(N, num_blocks, 1, L, hd)
        return with_context(win, ctx_x).view(N, num_blocks, (1 + c + w) * L, hd)

    mask = None if c == 1 else band_token_mask(c, w, L, lookahead, q.device, q.dtype)
    result = sdpa(q[:, sl].reshape(N, num_blocks, c * L, hd), windows(k, ctx_k),
                  windows(v, ctx_v), mask)
    store(sl, result)
    if num_tail:
        sl, keys = frames(end, nF), frames(end - w, nF)
        mask = band_token_mask(num_tail, w, L, lookahead, q.device, q.dtype)
        tail_k = with_context(k[:, keys], k[:, ctx:ctx + 1]).flatten(1, 2)
        tail_v = with_context(v[:, keys], v[:, ctx:ctx + 1]).flatten(1, 2)
        store(sl, sdpa(q[:, sl].flatten(1, 2), tail_k, tail_v, mask))


def blocked_attention_heads_first(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  num_lookback_heads: int, local_frame_range: int,
                                  chunk_frames: int | None = None, dropout_p: float = 0.0
                                  ) -> torch.Tensor:
    """``q, k, v: [H, B, F, L, hd]`` (contiguous) -> ``[B, F, L, H, hd]``.

    Heads-first inputs make each head group a contiguous ``[Hg * B, ...]`` batch; the output
    is written straight into the layout the output projection reads.
    """
    H, B, nF, L, hd = q.shape
    c = chunk_frames or default_chunk_frames(local_frame_range)
    out = q.new_empty(B, nF, L, H, hd)
    out_heads_first = out.permute(3, 0, 1, 2, 4)
    for lookahead, heads in ((False, slice(0, num_lookback_heads)),
                             (True, slice(num_lookback_heads, H))):
        if heads.stop > heads.start:
            _direction_attention(q[heads], k[heads], v[heads], out_heads_first[heads],
                                 local_frame_range, c, lookahead, dropout_p)
    return out


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      num_lookback_heads: int, local_frame_range: int,
                      chunk_frames: int | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Linear-cost attention on ``[B, H, F, L, hd]``; never builds a ``F*L x F*L`` tensor."""
    q, k, v = (x.transpose(0, 1).contiguous() for x in (q, k, v))
    out = blocked_attention_heads_first(q, k, v, num_lookback_heads, local_frame_range,
                                        chunk_frames, dropout_p)
    return out.permute(0, 3, 1, 2, 4)


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
        # Heads first, [3, H, B, F, L, hd]: one copy, after which every head group is a
        # contiguous batch for SDPA.
        q, k, v = qkv.permute(3, 4, 0, 1, 2, 5).contiguous().unbind(0)
        freqs = self.rotary.freqs(nF, x.device)
        q, k = apply_rotary(q, freqs), apply_rotary(k, freqs)
        dropout_p = self.dropout if self.training else 0.0
        impl = resolve_implementation(self.implementation, x.device)
        if impl == "blocked":
            out = blocked_attention_heads_first(q, k, v, self.num_lookback_heads,
                                                self.local_frame_range, self.chunk_frames,
                                                dropout_p)
            return self.proj(out.view(B, nF, L, D))
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # [B, H, F, L, hd]
        if impl == "reference":
            out = reference_attention(q, k, v, self.num_lookback_heads, self.local_frame_range,
                                      dropout_p)
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
