"""The temporal attention mask (what every attention backend computes), in the forms each
implementation needs.

Frames of the extended sequence are ``0 .. F-1`` with ``F = T + 2``; ``w`` is
``local_frame_range``. Lookback heads: ``i == 0 or j == 0 or i - w <= j <= i``. Lookahead
heads mirror that around the end context frame ``F - 1``.
"""

from __future__ import annotations

from functools import lru_cache

import torch


def frame_mask(num_frames: int, local_frame_range: int, lookahead: bool,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Frame-level ``allowed(i, j)`` as a bool ``[F, F]`` tensor (small: frames, not tokens)."""
    i = torch.arange(num_frames, device=device)[:, None]
    j = torch.arange(num_frames, device=device)[None, :]
    w = window_within(num_frames, local_frame_range)
    if lookahead:
        last = num_frames - 1
        return (i == last) | (j == last) | ((j >= i) & (j <= i + w))
    return (i == 0) | (j == 0) | ((j <= i) & (j >= i - w))


def window_within(num_frames: int, local_frame_range: int) -> int:
    """``local_frame_range`` capped at ``num_frames``: the same mask, and ``i + w`` fits in
    int64 whatever the window (``sys.maxsize`` for "all frames" overflowed there). A traced
    frame count (a 0-d tensor under ``torch.jit.trace``, as the ONNX exporter runs it) stays
    traced: ``min`` would freeze the comparison at the example's length."""
    if isinstance(num_frames, torch.Tensor):
        return num_frames.clamp(max=local_frame_range)
    return min(local_frame_range, num_frames)


def dense_token_mask(num_frames: int, num_tokens: int, local_frame_range: int,
                     num_lookback_heads: int, num_heads: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Reference only: bool ``[H, F*L, F*L]``, quadratic in ``T``."""
    back = frame_mask(num_frames, local_frame_range, lookahead=False, device=device)
    ahead = frame_mask(num_frames, local_frame_range, lookahead=True, device=device)
    is_back = (torch.arange(num_heads, device=device) < num_lookback_heads)[:, None, None]
    per_head = torch.where(is_back, back, ahead)
    return per_head.repeat_interleave(num_tokens, 1).repeat_interleave(num_tokens, 2)


def head_groups(num_heads: int, num_lookback_heads: int) -> list[tuple[bool, slice]]:
    """``(lookahead, heads)`` of each head group that has heads: lookback heads first."""
    groups = ((False, slice(0, num_lookback_heads)),
              (True, slice(num_lookback_heads, num_heads)))
    return [(lookahead, heads) for lookahead, heads in groups if heads.stop > heads.start]


def _capturing() -> bool:
    # Dynamo cannot trace the capture query (a graph break at every attention call); a
    # compiled region does not capture masks by address anyway.
    return (not torch.compiler.is_compiling() and torch.cuda.is_initialized()
            and torch.cuda.is_current_stream_capturing())


def fake_tensors() -> bool:
    """Whether tensors are fake here (``torch.export``, ``FakeTensorMode``, the ONNX exporter).
    Not asked while dynamo traces (it cannot trace the query; its masks are real)."""
    return not torch.compiler.is_dynamo_compiling() and torch._guards.detect_fake_mode() is not None


def cached_mask(fn=None, *, maxsize: int = 64):
    """lru_cache that always stores normal tensors: a mask first built under
    ``torch.inference_mode`` would otherwise be unusable in a later training step, and one
    built on fake tensors (an export's trace) would give every later model wrong outputs.

    A mask used while a CUDA graph is captured is kept for good: the graph holds only its
    address, and an evicted mask's memory would be reused under the graph's replays.
    """
    if fn is None:
        return lambda f: cached_mask(f, maxsize=maxsize)
    cached = lru_cache(maxsize=maxsize)(fn)
    pinned: dict[tuple, torch.Tensor] = {}

    def wrapper(*args):
        if fake_tensors() or torch.jit.is_tracing():  # traced sizes: a mask for one trace
            return fn(*args)
        if args in pinned:
            return pinned[args]
        with torch.inference_mode(False):
            mask = cached(*args)
        if _capturing():
            pinned[args] = mask
        return mask

    wrapper.cache_clear = cached.cache_clear
    wrapper.cache_info = cached.cache_info
    wrapper.__doc__ = fn.__doc__
    return wrapper


def frames_to_tokens(allowed: torch.Tensor, num_tokens: int, lookahead: bool,
                     dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Frame-level mask -> token-level; lookahead mirrors frame order (not token order).

    A floating ``dtype`` gives the additive form (0 allowed, -inf not), which SDPA would
    otherwise build from a bool mask on every call.
    """
    if lookahead:
        allowed = allowed.flip(0, 1)
    allowed = allowed.repeat_interleave(num_tokens, 0).repeat_interleave(num_tokens, 1)
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf"))


def flex_mask_mod(num_frames: int, num_tokens: int, local_frame_range: int,
                  num_lookback_heads: int, device: torch.device | str = "cpu"):
    """``mask_mod(b, h, q_idx, kv_idx)`` for ``flex_attention`` over flattened tokens.

    The sizes are captured as tensors, not Python ints: a compiled flex function guards on
    captured ints, so every new frame count would compile again.
    """
    last, w, L, num_lookback_heads = (torch.tensor(x, device=device) for x in (
        num_frames - 1, window_within(num_frames, local_frame_range), num_tokens,
        num_lookback_heads))

    def mask_mod(b, h, q_idx, kv_idx):
        i = q_idx // L
        j = kv_idx // L
        back = (i == 0) | (j == 0) | ((j <= i) & (j >= i - w))
        ahead = (i == last) | (j == last) | ((j >= i) & (j <= i + w))
        return torch.where(h < num_lookback_heads, back, ahead)

    return mask_mod


def _block_frame_ranges(num_frames: int, num_tokens: int, block_size: int, device
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = num_frames * num_tokens
    starts = torch.arange(0, n, block_size, device=device)
    ends = torch.clamp(starts + block_size, max=n) - 1
    ragged = (starts + block_size) > n
    return starts // num_tokens, ends // num_tokens, ragged


@cached_mask
def flex_block_mask(num_frames: int, num_tokens: int, local_frame_range: int,
                    num_lookback_heads: int, num_heads: int, device: torch.device,
                    block_size: int = 128):
    """A ``BlockMask`` built from block-level frame intervals, never from a dense token mask.

    Cached per ``(F, L, w, head split, device)``. A block pair is skipped when no frame pair
    in it is allowed, marked full when every pair is, and partial (``mask_mod`` decides)
    otherwise.
    """
    from torch.nn.attention.flex_attention import BlockMask

    w, last = window_within(num_frames, local_frame_range), num_frames - 1
    a0, a1, q_ragged = _block_frame_ranges(num_frames, num_tokens, block_size, device)
    b0, b1, k_ragged = _block_frame_ranges(num_frames, num_tokens, block_size, device)
    a0, a1, q_ragged = a0[:, None], a1[:, None], q_ragged[:, None]
    b0, b1, k_ragged = b0[None, :], b1[None, :], k_ragged[None, :]
    # Some i in [a0, a1], j in [b0, b1] with 0 <= i - j <= w (lookback) exists iff the
    # range of i - j, [a0 - b1, a1 - b0], meets [0, w].
    band_any_back = (a1 - b0 >= 0) & (a0 - b1 <= w)
    band_all_back = (a0 - b1 >= 0) & (a1 - b0 <= w)
    any_back = (a0 == 0) | (b0 == 0) | band_any_back
    all_back = (a1 == 0) | (b1 == 0) | band_all_back
    band_any_ahead = (b1 - a0 >= 0) & (b0 - a1 <= w)
    band_all_ahead = (b0 - a1 >= 0) & (b1 - a0 <= w)
    any_ahead = (a1 == last) | (b1 == last) | band_any_ahead
    all_ahead = (a0 == last) | (b0 == last) | band_all_ahead
    ragged = q_ragged | k_ragged
    all_back = all_back & ~ragged
    all_ahead = all_ahead & ~ragged

    is_back = (torch.arange(num_heads, device=device) < num_lookback_heads)[:, None, None]
    any_ = torch.where(is_back, any_back, any_ahead)[None]
    full = torch.where(is_back, all_back, all_ahead)[None]
    partial = any_ & ~full

    def to_indices(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = sel.sum(-1, dtype=torch.int32)
        order = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return counts, order

    kv_num, kv_idx = to_indices(partial)
    full_num, full_idx = to_indices(full)
    n = num_frames * num_tokens
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
        mask_mod=flex_mask_mod(num_frames, num_tokens, w, num_lookback_heads, device),
        seq_lengths=(n, n))
