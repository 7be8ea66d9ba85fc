"""Per-frame baselines for temporal action segmentation: MS-TCN and a linear probe.

MS-TCN (Farha & Gall, CVPR 2019) at the field's standard size: stages of 10 dilated residual
1-D convolutions (kernel 3, dilation 1, 2, ..., 512, 64 channels), each stage opened and closed
by a 1x1 convolution; stage ``s + 1`` refines the softmax of stage ``s``. One stage sees
``+-(2**10 - 1) = +-1023`` frames. The linear probe has no temporal model at all: it shows
what a single frame's features say.

Both take per-frame features ``[B, T, D]`` and a padding mask ``[B, T]`` (True = real frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LinearProbe", "MultiStageTCN", "SingleStageTCN", "ms_tcn_loss"]

IGNORE_INDEX = -100


def _check_inputs(features: torch.Tensor, mask: torch.Tensor | None,
                  input_dim: int) -> torch.Tensor:
    """Validate ``features: [B, T, D]`` and ``mask: [B, T]``; returns the mask (all True if
    none was given) as a float ``[B, 1, T]`` for channels-first convolutions."""
    if features.ndim != 3 or features.shape[-1] != input_dim or 0 in features.shape[:2]:
        raise ValueError(f"features: expected [B, T, {input_dim}] with B, T >= 1, got shape "
                         f"{tuple(features.shape)}")
    if mask is None:
        return features.new_ones(features.shape[0], 1, features.shape[1])
    if mask.shape != features.shape[:2]:
        raise ValueError(f"mask: expected shape {tuple(features.shape[:2])} ([B, T], True for "
                         f"real frames), got {tuple(mask.shape)}")
    return mask.to(features.dtype)[:, None]


class DilatedResidualLayer(nn.Module):
    """``x + dropout(conv1x1(relu(dilated_conv(x))))``, zeroed on padding: ``[B, C, T]``."""

    def __init__(self, channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv_dilated = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv_1x1 = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.conv_1x1(F.relu(self.conv_dilated(x)))
        return (x + self.dropout(out)) * mask


class SingleStageTCN(nn.Module):
    """1x1 conv in, ``num_layers`` dilated residual layers, 1x1 conv out: ``[B, D_in, T]`` ->
    logits ``[B, C, T]`` (channels first, as the convolutions want them)."""

    def __init__(self, input_dim: int, num_classes: int, num_layers: int = 10,
                 num_channels: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(input_dim, num_channels, 1)
        self.layers = nn.ModuleList(DilatedResidualLayer(num_channels, 2**i, dropout)
                                    for i in range(num_layers))
        self.conv_out = nn.Conv1d(num_channels, num_classes, 1)

    @property
    def receptive_field(self) -> int:
        """Frames seen on each side of a frame: ``2**num_layers - 1``."""
        return 2 ** len(self.layers) - 1

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Masking after the input conv too (MS-TCN does not) keeps its bias on padded frames
        # out of the real frames' receptive field: a padded video scores as it does alone.
        out = self.conv_in(x) * mask
        for layer in self.layers:
            out = layer(out, mask)
        return self.conv_out(out) * mask


class MultiStageTCN(nn.Module):
    """MS-TCN: ``features [B, T, D]``, ``mask [B, T]`` -> per-stage logits ``[S, B, T, C]``.

    Stage 1 reads the features; every later stage reads the softmax of the one before.
    The last stage's logits are the prediction.
    """

    HEAD_KEYS = ("num_stages", "num_layers", "num_channels", "dropout")

    @classmethod
    def from_head_config(cls, input_dim: int, num_classes: int,
                         head_config: dict | None) -> MultiStageTCN:
        """Built from ``SpoolConfig.head_config``: its keys among :attr:`HEAD_KEYS` and their
        values checked, a ``ValueError`` naming the key otherwise."""
        head = dict(head_config or {})
        unknown = sorted(set(head) - set(cls.HEAD_KEYS))
        if unknown:
            raise ValueError(f"head_config: expected keys among {list(cls.HEAD_KEYS)} for "
                             f"MS-TCN, got {unknown}")
        for key, value in head.items():
            ok = (isinstance(value, (int, float)) and 0 <= value < 1 if key == "dropout" else
                  isinstance(value, int) and not isinstance(value, bool))
            if not ok:
                what = "a number in [0, 1)" if key == "dropout" else "an integer >= 1"
                raise ValueError(f"head_config: expected {key} {what}, got {value!r}")
        return cls(input_dim, num_classes, **head)

    def __init__(self, input_dim: int, num_classes: int, num_stages: int = 4,
                 num_layers: int = 10, num_channels: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        for name, value in (("input_dim", input_dim), ("num_classes", num_classes),
                            ("num_stages", num_stages), ("num_layers", num_layers),
                            ("num_channels", num_channels)):
            if value < 1:
                raise ValueError(f"{name}: expected >= 1, got {value}")
        self.input_dim = input_dim
        self.stages = nn.ModuleList(
            SingleStageTCN(input_dim if s == 0 else num_classes, num_classes, num_layers,
                           num_channels, dropout) for s in range(num_stages))

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = _check_inputs(features, mask, self.input_dim)
        out = self.stages[0](features.transpose(1, 2), m)
        outputs = [out]
        for stage in self.stages[1:]:
            out = stage(out.softmax(dim=1) * m, m)
            outputs.append(out)
        return torch.stack(outputs).transpose(2, 3)  # [S, B, C, T] -> [S, B, T, C]


class LinearProbe(nn.Module):
    """``Linear(dropout(LayerNorm(features)))`` frame by frame: ``[B, T, D]`` -> ``[B, T, C]``.

    No temporal model: each frame is classified from its own features alone.
    """

    def __init__(self, input_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.norm = nn.LayerNorm(input_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = _check_inputs(features, mask, self.input_dim)
        return self.classifier(self.dropout(self.norm(features))) * m.transpose(1, 2)


def ms_tcn_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                smoothing_weight: float = 0.15, tau: float = 4.0) -> torch.Tensor:
    """MS-TCN's loss, summed over stages: cross-entropy (labels ``-100`` ignored) plus
    ``smoothing_weight`` times the truncated MSE between consecutive frames' log-probabilities.

    ``logits: [S, B, T, C]`` (or ``[B, T, C]``, one stage), ``labels: [B, T]``, ``mask: [B, T]``
    (True = real frame; padded frames are also left out of the smoothing term). The squared
    differences are clamped at ``tau**2`` and the earlier frame is detached, as in MS-TCN; their
    mean runs over the real frame pairs and classes (MS-TCN's over all of them, which is the
    same without padding).
    """
    if logits.ndim == 3:
        logits = logits[None]
    if logits.ndim != 4 or labels.shape != logits.shape[1:3]:
        raise ValueError(f"logits/labels: expected [S, B, T, C] and [B, T], got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    S, B, T, C = logits.shape
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=logits.device)
    elif mask.shape != (B, T):
        raise ValueError(f"mask: expected shape {(B, T)}, got {tuple(mask.shape)}")
    labels = labels.long().masked_fill(~mask.bool(), IGNORE_INDEX)
    labelled = (labels != IGNORE_INDEX).sum().clamp(min=1)
    logits = logits.float()
    # sum / count rather than mean: a batch with no labelled frame gives 0, not NaN.
    ce = F.cross_entropy(logits.reshape(S * B * T, C), labels.repeat(S, 1).view(-1),
                         ignore_index=IGNORE_INDEX, reduction="sum") / labelled
    loss = ce
    if smoothing_weight and T > 1:
        logp = logits.log_softmax(dim=-1)
        sq = (logp[:, :, 1:] - logp[:, :, :-1].detach()).pow(2).clamp(max=tau * tau)
        pairs = (mask[:, 1:] & mask[:, :-1]).to(sq.dtype)[None, :, :, None]
        per_stage = (sq * pairs).sum(dim=(1, 2, 3)) / (pairs.sum() * C).clamp(min=1)
        loss = loss + smoothing_weight * per_stage.sum()
    return loss
