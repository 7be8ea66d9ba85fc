"""Per-frame classification with Spool (temporal action segmentation).

``SpoolForFrameClassification`` puts ``dropout -> Linear(D, C)`` on every real frame's
feature (Spool's output for that frame, averaged over its ``L`` tokens), so each frame is
classified with what the temporal stack gathered around it and, through the context frames,
from the whole video. Like the clip classifiers it takes decoded video or cached tokens.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spool.config import SpoolConfig
from spool.models.classification import CLASSIFIER_NAME
from spool.models.pretrained import PretrainedMixin
from spool.models.spool import Spool
from spool.validation import check_tokens

__all__ = ["FrameClassifierOutput", "SpoolForFrameClassification", "load_frame_classifier"]

IGNORE_INDEX = -100


class FrameClassifierOutput(NamedTuple):
    """``logits: [B, T, C]`` (0 on padded frames); ``loss``: mean cross-entropy over the
    labelled frames when labels were given, else None."""

    logits: torch.Tensor
    loss: torch.Tensor | None


def _lengths(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``mask: [B, T]`` (True = real frame, padding at the end) -> lengths ``[B]``."""
    if mask.shape != shape or mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor of shape {shape} ([B, T], True for "
                         f"real frames), got {mask.dtype} {tuple(mask.shape)}")
    lengths = mask.sum(dim=1)
    prefix = torch.arange(shape[1], device=mask.device) < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError("mask: expected each video's real frames first and its padding at "
                         "the end (True...True False...False per row)")
    return lengths


class SpoolForFrameClassification(PretrainedMixin, nn.Module):
    """Spool + ``dropout -> Linear(D, C)`` on each real frame's token-averaged feature.

    ``SpoolForFrameClassification(config, class_names=[...])``; ``with_backbone=False``
    builds only the temporal part (for training on cached tokens).
    """

    architecture = "SpoolForFrameClassification"

    def __init__(self, config: SpoolConfig | None = None, /, *, with_backbone: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        self.spool = Spool(config, with_backbone=with_backbone, **kwargs)
        self.config = self.spool.config
        if not self.config.class_names:
            raise ValueError("class_names: a frame classifier needs the list of class names "
                             f"(config.class_names), got {self.config.class_names!r}")
        self.dropout = nn.Dropout(self.config.classifier_dropout)
        self.classifier = nn.Linear(self.config.hidden_size, len(self.config.class_names))
        nn.init.trunc_normal_(self.classifier.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or [])

    def config_for_saving(self) -> SpoolConfig:
        return self.spool.config_for_saving()

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, T, H, W, 3]`` -> backbone tokens ``[B, T, L, D]``."""
        return self.spool.encode_frames(video)

    def frame_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens: [B, T, L, D]`` -> per-frame features ``[B, T, D]`` (context frames off,
        mean over the ``L`` tokens of each frame)."""
        return self.spool.forward_tokens(tokens).features[:, 1:-1].mean(dim=2)

    def logits_from_tokens(self, tokens: torch.Tensor,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens: [B, T, L, D]``, optional ``mask: [B, T]`` -> logits ``[B, T, C]``.

        Attention has no padding mask, and the context frames see every frame, so padded
        videos are run at their own lengths (one pass per distinct length) and padding can
        never reach a real frame's logits.
        """
        if mask is None or bool(mask.all()):
            return self.classifier(self.dropout(self.frame_features(tokens)))
        lengths = _lengths(mask, tuple(tokens.shape[:2]))
        logits = tokens.new_zeros(*tokens.shape[:2], len(self.class_names))
        for n in lengths.unique().tolist():
            if n == 0:
                continue
            rows = (lengths == n).nonzero().flatten()
            feats = self.frame_features(tokens[rows, :n])
            logits[rows, :n] = self.classifier(self.dropout(feats)).to(logits.dtype)
        return logits

    def forward(self, video: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                *, tokens: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> FrameClassifierOutput:
        """``video: [B, T, H, W, 3]`` or cached ``tokens: [B, T, L, D]`` (exactly one),
        optional ``labels: [B, T]`` (``-100`` = no label) and ``mask: [B, T]`` (True = real
        frame, padding at the end) -> :class:`FrameClassifierOutput`."""
        if (video is None) == (tokens is None):
            raise ValueError("video/tokens: pass exactly one of video [B, T, H, W, 3] or "
                             "tokens [B, T, L, D]")
        if tokens is None:
            tokens = self.encode_frames(video)
        else:
            check_tokens(tokens, self.config.num_spatial_tokens, self.config.hidden_size)
        B, T = tokens.shape[:2]
        if mask is not None:
            _lengths(mask, (B, T))
        logits = self.logits_from_tokens(tokens, mask)
        loss = None
        if labels is not None:
            loss = self._loss(logits, labels, mask)
        return FrameClassifierOutput(logits, loss)

    def forward_tokens(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None) -> FrameClassifierOutput:
        """Cached backbone ``tokens: [B, T, L, D]`` -> :class:`FrameClassifierOutput`."""
        return self(tokens=tokens, labels=labels, mask=mask)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor,
              mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = logits.shape
        if labels.shape != (B, T) or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels: expected an integer tensor of shape ({B}, {T}), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        labels = labels.long()
        if mask is not None:
            labels = labels.masked_fill(~mask, IGNORE_INDEX)
        labelled = labels != IGNORE_INDEX
        if labelled.any() and (labels[labelled].min() < 0 or labels[labelled].max() >= C):
            raise ValueError(f"labels: expected class indices in [0, {C}) or {IGNORE_INDEX} "
                             f"(no label), got range [{labels[labelled].min().item()}, "
                             f"{labels[labelled].max().item()}]")
        # sum / count rather than mean: a batch without labelled frames gives 0, not NaN.
        total = F.cross_entropy(logits.float().reshape(B * T, C), labels.view(-1),
                                ignore_index=IGNORE_INDEX, reduction="sum")
        return total / labelled.sum().clamp(min=1)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.json`` + ``model.safetensors`` + ``classifier.json`` (architecture)."""
        super().save_pretrained(directory)
        with open(os.path.join(directory, CLASSIFIER_NAME), "w") as f:
            json.dump({"architecture": self.architecture}, f)
            f.write("\n")


def load_frame_classifier(directory: str | os.PathLike,
                          **kwargs: Any) -> SpoolForFrameClassification:
    """Load a :class:`SpoolForFrameClassification` written by ``save_pretrained``."""
    path = os.path.join(directory, CLASSIFIER_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; is {directory} a frame classifier "
                                "checkpoint (written by SpoolForFrameClassification."
                                "save_pretrained)?")
    with open(path) as f:
        architecture = json.load(f).get("architecture")
    if architecture != SpoolForFrameClassification.architecture:
        raise ValueError(f"{directory}: expected a {SpoolForFrameClassification.architecture} "
                         f"checkpoint, got architecture {architecture!r}")
    return SpoolForFrameClassification.from_pretrained(directory, **kwargs)
