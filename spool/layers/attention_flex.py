"""Flex temporal attention: one compiled ``flex_attention`` call with a cached block mask.

Shape policy: the function is compiled once with dynamic shapes, and the mask's sizes are
captured as tensors (see ``flex_mask_mod``), so a new clip length reuses the compiled code
instead of compiling again. Past dynamo's recompile limit torch would run flex uncompiled, which
builds the full score matrix: a quadratic fallback that must never happen silently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spool.layers.masks import fake_tensors, flex_block_mask

_compiled_flex = None
# torch's Triton flex kernel refuses head_dim < 16 ("NYI: embedding dimension ... must be at
# least 16"; torch 2.11 on an H200). Smaller heads are zero-padded to this on every device, so
# the CPU tests run the same path.
FLEX_MIN_HEAD_DIM = 16


def compiled_flex_attention():
    """The process-wide compiled ``flex_attention`` (compiled on first use)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def _flex_op():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   num_lookback_heads: int, local_frame_range: int, **_: object) -> torch.Tensor:
    """The ``flex`` backend: ``q, k, v: [H, B, F, L, hd]`` -> ``[B, F, L, H, hd]``."""
    H, B, nF, L, hd = q.shape
    block_mask = flex_block_mask(nF, L, local_frame_range, num_lookback_heads, H, q.device)
    q, k, v = (x.transpose(0, 1).flatten(2, 3) for x in (q, k, v))  # [B, H, F*L, hd]
    if hd < FLEX_MIN_HEAD_DIM:
        # Zero columns add nothing to q.k (the scale stays the true head_dim's), and v's zero
        # columns come out as zero columns that are sliced off: the result is exact.
        q, k, v = (F.pad(x, (0, FLEX_MIN_HEAD_DIM - hd)) for x in (q, k, v))
    # Compiled code runs on real memory: a trace on fake tensors records torch's own op.
    flex = _flex_op() if fake_tensors() else compiled_flex_attention()
    out = flex(q, k, v, block_mask=block_mask, scale=hd ** -0.5)
    return out[..., :hd].unflatten(2, (nF, L)).permute(0, 2, 3, 1, 4)
