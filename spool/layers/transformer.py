"""Pre-norm temporal transformer blocks and the stack that runs them."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from spool.config import SpoolConfig
from spool.layers.attention import TemporalAttention


class MLP(nn.Module):
    """``Linear(D, I)``, GELU, ``Linear(I, D)`` (SPEC §4: no dropout inside; the block's
    ``drop`` follows it)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TemporalBlock(nn.Module):
    """``x = x + drop(attn(norm1(x)))``; ``x = x + drop(mlp(norm2(x)))`` on ``[B, F, L, D]``."""

    def __init__(self, config: SpoolConfig) -> None:
        super().__init__()
        D = config.hidden_size
        self.norm1 = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.attn = TemporalAttention(config)
        self.norm2 = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.mlp = MLP(D, int(D * config.mlp_ratio))
        self.drop = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class TemporalTransformer(nn.Module):
    """``num_hidden_layers`` blocks and a final LayerNorm: ``[B, F, L, D] -> [B, F, L, D]``."""

    def __init__(self, config: SpoolConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TemporalBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = config.gradient_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.norm(x)
