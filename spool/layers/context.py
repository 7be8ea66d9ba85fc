"""Context frames: learnable start/end frames at the sequence boundaries, and their pooling."""

from __future__ import annotations

import torch
from torch import nn


class ContextFrames(nn.Module):
    """Two learnable frames ``[L, D]`` (truncated normal, std 0.02), shared over the batch."""

    def __init__(self, num_tokens: int, hidden_size: int, std: float = 0.02) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.empty(num_tokens, hidden_size))
        self.end = nn.Parameter(torch.empty(num_tokens, hidden_size))
        nn.init.trunc_normal_(self.start, std=std, a=-2 * std, b=2 * std)
        nn.init.trunc_normal_(self.end, std=std, a=-2 * std, b=2 * std)

    def extra_repr(self) -> str:
        return f"start and end frames of {tuple(self.start.shape)} tokens"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens: [B, T, L, D]`` -> ``[B, T + 2, L, D]`` (frame 0 start, T+1 end)."""
        B = tokens.shape[0]
        start = self.start.to(tokens.dtype).expand(B, 1, *self.start.shape)
        end = self.end.to(tokens.dtype).expand(B, 1, *self.end.shape)
        return torch.cat((start, tokens, end), dim=1)


def pool_context(features: torch.Tensor) -> torch.Tensor:
    """``features: [B, T + 2, L, D]`` -> clip representation ``[B, 2D]``:
    the spatial means of the start and end context frames, concatenated."""
    return torch.cat((features[:, 0].mean(dim=1), features[:, -1].mean(dim=1)), dim=-1)
