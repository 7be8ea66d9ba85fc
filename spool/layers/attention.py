"""Temporal attention module: fused QKV, rotary over frames, a backend from the registry."""

from __future__ import annotations

import torch
from torch import nn

from spool.config import SpoolConfig
from spool.layers.attention_backends import select_backend
from spool.layers.rotary import FrameRotaryEmbedding, apply_rotary, apply_rotary_real


class TemporalAttention(nn.Module):
    """Fused-QKV multi-head attention over ``[B, F, L, D]`` with the mask of ``masks.py``."""

    def __init__(self, config: SpoolConfig) -> None:
        super().__init__()
        D = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_lookback_heads = config.num_lookback_heads
        self.head_dim = config.head_dim
        self.local_frame_range = config.local_frame_range
        self.implementation = config.attn_implementation
        self.chunk_frames = config.attention_chunk_frames
        self.dropout = config.attention_dropout
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.rotary = FrameRotaryEmbedding(self.head_dim, config.rope_theta)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads} (lookback {self.num_lookback_heads}), "
                f"head_dim={self.head_dim}, local_frame_range={self.local_frame_range}, "
                f"implementation={self.implementation!r}")

    def project_qkv(self, x: torch.Tensor, positions: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x: [B, F, L, D]`` at frame ``positions: [F]`` -> heads-first ``q, k, v``, each
        ``[H, B, F, L, head_dim]`` and contiguous, rotary applied to ``q`` and ``k``."""
        B, nF, L, _ = x.shape
        qkv = self.qkv(x).view(B, nF, L, 3, self.num_heads, self.head_dim)
        # One copy to heads first, after which every head group is a contiguous batch.
        q, k, v = qkv.permute(3, 4, 0, 1, 2, 5).contiguous().unbind(0)
        if torch.onnx.is_in_onnx_export():  # ONNX has no complex numbers (aten::polar)
            cos, sin = self.rotary.cos_sin_at(positions)
            return apply_rotary_real(q, cos, sin), apply_rotary_real(k, cos, sin), v
        freqs = self.rotary.freqs_at(positions)
        return apply_rotary(q, freqs), apply_rotary(k, freqs), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, F, L, D] -> [B, F, L, D]``."""
        B, nF, L, D = x.shape
        q, k, v = self.project_qkv(x, torch.arange(nF, device=x.device))
        dropout_p = self.dropout if self.training else 0.0
        backend = select_backend(self.implementation, x.device,
                                 backward=torch.is_grad_enabled() and x.requires_grad,
                                 dropout=dropout_p, dtype=q.dtype, shape=(B, nF, L),
                                 tracing=torch.jit.is_tracing())
        out = backend.function(q, k, v, num_lookback_heads=self.num_lookback_heads,
                               local_frame_range=self.local_frame_range,
                               chunk_frames=self.chunk_frames, dropout_p=dropout_p)
        return self.proj(out.reshape(B, nF, L, D))
