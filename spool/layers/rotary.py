"""Rotary position embeddings over the frame index (SPEC §3)."""

from __future__ import annotations

import torch
from torch import nn


class FrameRotaryEmbedding(nn.Module):
    """Rotary embedding whose position is the frame index (context frames at 0 and T+1).

    Every token of a frame shares that frame's position, so after rotation the query-key
    product depends on the frame distance ``i - j`` only; spatial position comes from the
    backbone.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, num_frames: int, device: torch.device, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: ``[F, 1, head_dim]``, to broadcast over ``[B, H, F, L, head_dim]``."""
        positions = torch.arange(num_frames, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.to(device))
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x: [B, H, F, L, head_dim]`` by its frame position."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin
