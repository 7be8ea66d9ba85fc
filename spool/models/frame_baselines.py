"""The baselines of per-frame classification, and the registry of frame classifiers.

- :class:`FrameProbeForFrameClassification`: a linear probe on each frame's backbone tokens
  (averaged): no temporal model.
- :class:`MSTCNForFrameClassification`: MS-TCN at the field's standard size on the same
  per-frame features.
"""

from __future__ import annotations

from typing import Any

import torch

from spool.config import SpoolConfig
from spool.models.frame_classification import FrameClassifier, SpoolForFrameClassification
from spool.models.pretrained import lookup_architecture
from spool.models.temporal_conv import LinearProbe, MultiStageTCN


class FrameProbeForFrameClassification(FrameClassifier):
    """Baseline: a linear probe on each frame's backbone tokens (averaged); no temporal model,
    so a frame is classified from what it shows alone."""

    has_temporal_stack = False

    def __init__(self, config: SpoolConfig | None = None, /, *, with_backbone: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        self._build(config, {"num_hidden_layers": 0, **kwargs}, with_backbone)
        if self.config.head_config:
            raise ValueError(f"head_config: the linear probe takes no settings, got "
                             f"{sorted(self.config.head_config)}")
        self.probe = LinearProbe(self.config.hidden_size, len(self.class_names),
                                 self.config.classifier_dropout)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.probe(features)

    def frame_logits(self, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.head(tokens.mean(dim=2)), None


class MSTCNForFrameClassification(FrameClassifier):
    """Baseline: MS-TCN (4 stages x 10 dilated residual layers, 64 channels, dropout 0.5 by
    default; ``config.head_config`` may set ``num_stages``, ``num_layers``, ``num_channels``,
    ``dropout``) on each frame's backbone tokens (averaged), trained with MS-TCN's loss."""

    has_temporal_stack = False

    def __init__(self, config: SpoolConfig | None = None, /, *, with_backbone: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        self._build(config, {"num_hidden_layers": 0, **kwargs}, with_backbone)
        self.tcn = MultiStageTCN.from_head_config(self.config.hidden_size,
                                                  len(self.class_names), self.config.head_config)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.tcn(features)[-1]

    def frame_logits(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stages = self.tcn(tokens.mean(dim=2))
        return stages[-1], stages


FRAME_ARCHITECTURES: dict[str, type[FrameClassifier]] = {
    "spool": SpoolForFrameClassification, "linear_probe": FrameProbeForFrameClassification,
    "ms_tcn": MSTCNForFrameClassification}


def frame_classifier_class(name: str) -> type[FrameClassifier]:
    """The frame classifier for an architecture name (``spool``, ``linear_probe``,
    ``ms_tcn``, or a class name)."""
    return lookup_architecture(FRAME_ARCHITECTURES, name, "frame classification")
