"""Rotary position embeddings over the frame index."""

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
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self._inv_freq(None), persistent=False)

    def _inv_freq(self, device: torch.device | None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
        steps = torch.arange(0, self.head_dim, 2, dtype=dtype, device=device)
        return 1.0 / (self.theta ** (steps / self.head_dim))

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta:g}"

    def _apply(self, fn, recurse: bool = True):
        # A cast of the model (.half(), .to(bfloat16)) would round the frequencies, and the
        # rounding would stay after casting back (or in what save_pretrained writes): they are
        # recomputed in float32 where the buffer went (in float64 for .double(), whose
        # gradients are checked against float64 finite differences). Only then: a move that
        # changes nothing keeps the tensor, which a CUDA graph captured before may still read.
        super()._apply(fn, recurse)
        exact = self._inv_freq(self.inv_freq.device, _rotation_dtype(self.inv_freq.dtype))
        if exact.is_meta:  # no values to compare (deferred initialisation)
            self.inv_freq = exact
        elif not torch.equal(self.inv_freq, exact):  # also float64's values back to float32
            self.inv_freq = exact
        return self

    def freqs_at(self, positions: torch.Tensor) -> torch.Tensor:
        """Complex rotations ``[F, 1, head_dim / 2]`` for frame ``positions: [F]``, to
        broadcast over ``[..., F, L, hd/2]``."""
        inv_freq = self.inv_freq.to(positions.device)
        angles = torch.outer(positions.to(inv_freq.dtype), inv_freq)
        return torch.polar(torch.ones_like(angles), angles)[:, None, :]

    def cos_sin_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotations of :meth:`freqs_at` as real ``cos, sin``, each ``[F, 1, head_dim / 2]``
        (for :func:`apply_rotary_real`: ONNX has no complex numbers)."""
        inv_freq = self.inv_freq.to(positions.device)
        angles = torch.outer(positions.to(inv_freq.dtype), inv_freq)[:, None, :]
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of ``x: [..., F, L, head_dim]`` by their frame's angles.

    One complex multiply: a single pass over ``x``, which matters on the hot path.
    """
    pairs = torch.view_as_complex(x.to(_rotation_dtype(x.dtype)).unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * freqs).flatten(-2).to(x.dtype)


def apply_rotary_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rotary` in real arithmetic, for exporters that take no complex numbers:
    ``x: [..., F, L, head_dim]`` with ``cos, sin: [F, 1, head_dim / 2]`` from
    :meth:`FrameRotaryEmbedding.cos_sin_at`. The same products and sums as the complex
    multiply, so the same values to round-off; a few more passes over ``x``."""
    pairs = x.to(_rotation_dtype(x.dtype)).unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def _rotation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Rotations run in float32 (half precision would round the angles), float64 in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32
