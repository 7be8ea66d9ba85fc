"""Reference temporal attention: one SDPA call with the explicit dense mask (tests only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spool.layers.masks import dense_token_mask


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        num_lookback_heads: int, local_frame_range: int,
                        dropout_p: float = 0.0, **_: object) -> torch.Tensor:
    """The ``reference`` backend: ``q, k, v: [H, B, F, L, hd]`` -> ``[B, F, L, H, hd]``.

    Builds the ``[H, F*L, F*L]`` mask, so it is quadratic in ``T``: the ground truth the other
    backends are tested against, and what the original dense approach costs.
    """
    H, B, nF, L, hd = q.shape
    mask = dense_token_mask(nF, L, local_frame_range, num_lookback_heads, H, q.device)
    q, k, v = (x.transpose(0, 1).flatten(2, 3) for x in (q, k, v))  # [B, H, F*L, hd]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out.view(B, H, nF, L, hd).permute(0, 2, 3, 1, 4)
