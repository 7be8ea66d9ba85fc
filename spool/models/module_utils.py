"""What every Spool model offers besides saving and loading, as transformers' models do: its
dtype and device, a parameter count, and switches of how the built model runs."""

from __future__ import annotations

import torch
from torch import nn

from spool.config import SpoolConfig
from spool.layers.attention import TemporalAttention
from spool.layers.attention_backends import select_backend
from spool.layers.transformer import TemporalTransformer


class ModuleUtilsMixin:
    """For an ``nn.Module`` with a :class:`SpoolConfig` ``config``."""

    config: SpoolConfig

    @property
    def dtype(self: nn.Module) -> torch.dtype:
        """The dtype of the first floating-point parameter (float32 if none)."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()),
                    torch.float32)

    @property
    def device(self: nn.Module) -> torch.device:
        """The device of the first parameter (the CPU if none)."""
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    def num_parameters(self: nn.Module, only_trainable: bool = False) -> int:
        """How many parameters (those that take gradients only, with ``only_trainable``)."""
        return sum(p.numel() for p in self.parameters()
                   if p.requires_grad or not only_trainable)

    def set_attn_implementation(self: nn.Module, name: str) -> None:
        """Run temporal attention with backend ``name`` (``auto`` or a registered one) from
        now on; setting ``config.attn_implementation`` alone changes nothing."""
        select_backend(name, dropout=self.config.attention_dropout)  # a clear error first
        self.config.attn_implementation = name
        for module in self.modules():
            if isinstance(module, TemporalAttention):
                module.implementation = name

    def gradient_checkpointing_enable(self: nn.Module, enable: bool = True) -> None:
        """Recompute each temporal layer in the backward pass (less memory, more time)."""
        self.config.gradient_checkpointing = enable
        for module in self.modules():
            if isinstance(module, TemporalTransformer):
                module.gradient_checkpointing = enable

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_enable(False)
