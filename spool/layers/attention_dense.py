"""Dense temporal attention: one SDPA call per head group over all frames, with a cached mask.

Quadratic in ``T`` (the mask and the scores cover every token pair), so ``auto`` never picks it
(SPEC §3: only a backend asked for by name may build such a mask); for short clips it launches
far fewer kernels than ``blocked``, and on a GPU a user may name it for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spool.layers.masks import cached_mask, frame_mask, frames_to_tokens, head_groups

# Additive masks above this many bytes are built per call rather than cached (5,000 tokens in
# fp32, about where dense stopped paying on an H200), and at most 8 are kept: training on clips
# of many lengths would otherwise hoard device memory.
CACHED_MASK_BYTES = 5000 * 5000 * 4


@cached_mask(maxsize=8)
def _cached_additive_mask(num_frames: int, num_tokens: int, local_frame_range: int,
                          lookahead: bool, dtype: torch.dtype, device: torch.device
                          ) -> torch.Tensor:
    return _additive_mask(num_frames, num_tokens, local_frame_range, lookahead, dtype, device)


def _additive_mask(num_frames, num_tokens, local_frame_range, lookahead, dtype, device):
    # frames_to_tokens mirrors the lookahead mask, so build it from the lookback frame mask.
    allowed = frame_mask(num_frames, local_frame_range, lookahead=False, device=device)
    return frames_to_tokens(allowed, num_tokens, lookahead, dtype=dtype)


def dense_token_bias(num_frames: int, num_tokens: int, local_frame_range: int,
                     lookahead: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive ``[F*L, F*L]`` mask (0 allowed, -inf not) of one head group."""
    n = num_frames * num_tokens
    args = (num_frames, num_tokens, local_frame_range, lookahead, dtype, torch.device(device))
    if n * n * torch.finfo(dtype).bits // 8 <= CACHED_MASK_BYTES:
        return _cached_additive_mask(*args)
    return _additive_mask(*args)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    num_lookback_heads: int, local_frame_range: int,
                    dropout_p: float = 0.0, **_: object) -> torch.Tensor:
    """The ``dense`` backend: ``q, k, v: [H, B, F, L, hd]`` -> ``[B, F, L, H, hd]``."""
    H, B, nF, L, hd = q.shape
    results = []  # (heads, [B, Hg, F*L, hd])
    for lookahead, heads in head_groups(H, num_lookback_heads):
        bias = dense_token_bias(nF, L, local_frame_range, lookahead, q.dtype, q.device)
        x = [t[heads].flatten(2, 3).transpose(0, 1) for t in (q, k, v)]  # [B, Hg, F*L, hd]
        results.append((heads, F.scaled_dot_product_attention(*x, attn_mask=bias,
                                                              dropout_p=dropout_p)))
    if torch.jit.is_tracing():  # the ONNX exporter's trace loses copies into a view
        joined = torch.cat([result for _, result in results], dim=1)  # [B, H, F*L, hd]
        return joined.unflatten(2, (nF, L)).permute(0, 2, 3, 1, 4)
    out = q.new_empty(B, nF, L, H, hd)
    out_heads_first = out.permute(3, 0, 1, 2, 4)  # [H, B, F, L, hd], a view of ``out``
    for heads, result in results:
        out_heads_first[heads].copy_(result.transpose(0, 1).unflatten(2, (nF, L)))
    return out
