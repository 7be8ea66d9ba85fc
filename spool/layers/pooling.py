"""Spatial token pooling: fewer tokens per frame for the temporal stack (``token_pooling``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialTokenPooling(nn.Module):
    """``[N, P + g*g, D] -> [N, P + (g/k)^2, D]``: the ``P`` leading tokens (class and
    registers) kept, the ``g x g`` patch grid average-pooled ``k x k``.

    ``k = 1`` is the identity. At 224 px with a /14 backbone (``g = 16``), ``k = 2`` leaves
    1 + 64 tokens and ``k = 4`` 1 + 16.
    """

    def __init__(self, num_prefix_tokens: int, grid: int, k: int) -> None:
        super().__init__()
        if k < 1 or (grid and grid % k):
            raise ValueError(f"token_pooling: expected a factor >= 1 of the {grid}x{grid} patch "
                             f"grid, got {k}")
        self.num_prefix, self.grid, self.k = num_prefix_tokens, grid, k

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + (self.grid // self.k) ** 2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return tokens
        N, L, D = tokens.shape
        prefix, patches = tokens[:, :self.num_prefix], tokens[:, self.num_prefix:]
        grid = patches.transpose(1, 2).reshape(N, D, self.grid, self.grid)
        pooled = F.avg_pool2d(grid, self.k).flatten(2).transpose(1, 2)
        return torch.cat((prefix, pooled), dim=1)
