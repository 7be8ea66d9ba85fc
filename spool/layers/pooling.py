"""Fewer tokens per frame for the temporal stack: fixed average pooling in the frame encoder
(``token_pooling``) and learned merging in the model (``token_merging``)."""

from __future__ import annotations

import math

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


def split_patch_grid(num_tokens: int, num_prefix_tokens: int | None = None) -> tuple[int, int]:
    """``(P, g)`` with ``num_tokens = P + g*g``: ``P = num_prefix_tokens`` leading tokens (class,
    registers) as the backbone's layout records it, else (None) the largest square patch grid
    that fits after them. 257 -> (1, 16), 261 -> (5, 16), 17 -> (1, 4); a small grid after
    registers needs ``P``: 9 tokens are (0, 3), or (5, 2) with 5 given. A ``ValueError`` names
    a ``P`` that does not leave a square grid."""
    if num_prefix_tokens is None:
        grid = math.isqrt(num_tokens)
        return num_tokens - grid * grid, grid
    patches = num_tokens - num_prefix_tokens
    grid = math.isqrt(max(patches, 0))
    if patches <= 0 or grid * grid != patches:
        raise ValueError(f"num_prefix_tokens: expected a class/register count that leaves a "
                         f"square patch grid of the {num_tokens} tokens per frame "
                         f"(num_spatial_tokens), got {num_prefix_tokens}")
    return num_prefix_tokens, grid


class TokenMerging(nn.Module):
    """Learned ``k x k`` merging of the patch grid (``token_merging``), part of the model:
    ``[..., P + g*g, D] -> [..., P + (g/k)^2, D]``.

    Each cell's ``k*k`` tokens are concatenated (row-major) and projected to ``D`` by a Linear
    initialised to their mean, so the model starts as :class:`SpatialTokenPooling` and can
    learn where in its cell a thing is, which the mean drops. The ``P`` leading tokens are kept:
    ``num_prefix_tokens`` of them (the config's), else as many as :func:`split_patch_grid`
    infers from ``num_tokens``.
    """

    def __init__(self, num_tokens: int, hidden_size: int, k: int,
                 num_prefix_tokens: int | None = None) -> None:
        super().__init__()
        self.num_prefix, self.grid = split_patch_grid(num_tokens, num_prefix_tokens)
        if k < 2 or self.grid % k:
            raise ValueError(f"token_merging: expected a factor >= 2 of the {self.grid}x"
                             f"{self.grid} patch grid of the {num_tokens} tokens per frame, "
                             f"got {k}")
        self.k = k
        self.proj = nn.Linear(k * k * hidden_size, hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d = self.proj.out_features
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(d).repeat(1, self.k * self.k) / self.k ** 2)
            self.proj.bias.zero_()

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + (self.grid // self.k) ** 2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        *lead, L, D = tokens.shape
        x = tokens.reshape(-1, L, D)
        g, k = self.grid // self.k, self.k
        cells = x[:, self.num_prefix:].reshape(-1, g, k, g, k, D).transpose(2, 3)
        merged = self.proj(cells.reshape(-1, g * g, k * k * D))
        return torch.cat((x[:, :self.num_prefix], merged), dim=1).view(*lead, -1, D)
