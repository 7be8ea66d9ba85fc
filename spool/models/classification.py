"""Video classifiers: Spool with a head on its clip context, and a frame-pooling baseline.

Both take either decoded video ``[B, T, H, W, 3]`` or cached backbone tokens ``[B, T, L, D]``
(``model(tokens=...)``), so a frozen backbone's tokens can be cached once and the rest trained
on the cache. Both are saved as ``config.json`` (which names the class) + ``model.safetensors``;
:func:`load_classifier` reads either back.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spool.config import SpoolConfig
from spool.layers.backbone import FrameEncoder
from spool.models.frame_encoder import config_and_frame_encoder
from spool.models.pretrained import (
    HUB_KWARGS,
    MODEL_CLASSES,
    SpoolPreTrainedModel,
    load_pretrained,
    lookup_architecture,
    peek_architecture,
)
from spool.models.spool import Spool

logger = logging.getLogger(__name__)


class ClassifierOutput(NamedTuple):
    """``logits: [B, C]``; ``loss``: mean cross-entropy when labels were given, else None."""

    logits: torch.Tensor
    loss: torch.Tensor | None


def _num_labels(config: SpoolConfig) -> int:
    if not config.class_names:
        raise ValueError("class_names: a classifier needs the list of class names (config."
                         f"class_names), got {config.class_names!r}")
    return len(config.class_names)


def _check_labels(labels: torch.Tensor, batch: int, num_labels: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels: expected an integer tensor of shape ({batch},), got "
                         f"{type(labels).__name__}")
    if labels.shape != (batch,) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels: expected an integer tensor of shape ({batch},), got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    if batch and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"labels: expected class indices in [0, {num_labels}), got range "
                         f"[{labels.min().item()}, {labels.max().item()}]")


def clip_classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                             label_smoothing: float = 0.0, reduction: str = "mean"
                             ) -> torch.Tensor:
    """The clip classifiers' loss: cross-entropy of ``logits [B, C]`` against ``labels [B]``
    (computed in fp32 whatever the autocast dtype)."""
    return F.cross_entropy(logits.float(), labels.long(), label_smoothing=label_smoothing,
                           reduction=reduction)


class VideoClassifier(SpoolPreTrainedModel):
    """Shared ``forward(video | tokens, labels)`` of the clip classifiers."""

    config: SpoolConfig
    loss_function = staticmethod(clip_classification_loss)

    def logits_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _warn_head_settings(self) -> None:
        """The clip heads have no settings: a ``head_config`` is ignored, and said to be (a
        checkpoint saved with one still loads; ``spool train`` refuses one)."""
        if self.config.head_config:
            logger.warning(f"head_config: {type(self).__name__} takes no head settings; "
                           f"{sorted(self.config.head_config)} are ignored (they are the frame "
                           "classifiers' and baselines')")

    def forward(self, video: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                *, tokens: torch.Tensor | None = None) -> ClassifierOutput:
        """``video: [B, T, H, W, 3]`` or cached ``tokens: [B, T, L, D]`` (exactly one),
        optional ``labels: [B]`` -> :class:`ClassifierOutput` (logits ``[B, C]``, loss)."""
        logits = self.logits_from_tokens(self.tokens_from(video, tokens))
        loss = None
        if labels is not None:
            _check_labels(labels, logits.shape[0], logits.shape[1])
            loss = self.loss_function(logits, labels)
        return ClassifierOutput(logits, loss)

    def forward_tokens(self, tokens: torch.Tensor,
                       labels: torch.Tensor | None = None) -> ClassifierOutput:
        """Cached backbone ``tokens: [B, T, L, D]`` -> :class:`ClassifierOutput`."""
        return self(tokens=tokens, labels=labels)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or [])


class SpoolForVideoClassification(VideoClassifier):
    """Spool + ``dropout -> Linear(2D, C)`` on the clip context ``[B, 2D]``.

    ``SpoolForVideoClassification(config, class_names=[...])``; ``with_backbone=False``
    builds only the temporal part (for training on cached tokens).
    """

    wraps_spool = True

    def __init__(self, config: SpoolConfig | None = None, /, *, with_backbone: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        self.spool = Spool(config, with_backbone=with_backbone, **kwargs)
        self.config = self.spool.config
        self._warn_head_settings()
        self.dropout = nn.Dropout(self.config.classifier_dropout)
        self.classifier = nn.Linear(2 * self.config.hidden_size, _num_labels(self.config))
        nn.init.trunc_normal_(self.classifier.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    @property
    def frame_encoder(self) -> FrameEncoder | None:
        return self.spool.backbone

    def no_weight_decay(self) -> set[str]:
        return {f"spool.{name}" for name in self.spool.no_weight_decay()}

    def logits_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens: [B, T, L, D]`` -> logits ``[B, C]`` (head on the pooled context frames)."""
        context = self.spool.forward_tokens(tokens).context
        return self.classifier(self.dropout(context))


class FramePoolingForVideoClassification(VideoClassifier):
    """Baseline: the same backbone with the temporal stack removed.

    ``logits = Linear(D, C)(dropout(LayerNorm(mean over T and L of the backbone tokens)))``.
    The mean over frames is invariant to their order, so two videos made of the same frames
    in a different order get the same logits. Temporal fields of the config are ignored.
    """

    has_temporal_stack = False

    def __init__(self, config: SpoolConfig | None = None, /, *, with_backbone: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        self.backbone: FrameEncoder | None
        config, self.backbone = config_and_frame_encoder(config, kwargs, with_backbone)
        self.config = config
        self._warn_head_settings()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, _num_labels(config))
        nn.init.trunc_normal_(self.classifier.weight, std=config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def logits_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens: [B, T, L, D]`` -> logits ``[B, C]`` (order-blind mean pooling)."""
        return self.classifier(self.dropout(self.norm(tokens.mean(dim=(1, 2)))))


ARCHITECTURE_ALIASES = {"spool": SpoolForVideoClassification,
                        "frame_pooling": FramePoolingForVideoClassification}


def classifier_class(name: str) -> type[VideoClassifier]:
    """The classifier class for an architecture name (``spool`` / ``frame_pooling`` too)."""
    return lookup_architecture(ARCHITECTURE_ALIASES, name, "video classification")


def load_classifier(directory: str | os.PathLike, **kwargs: Any) -> VideoClassifier:
    """Load a clip classifier written by ``save_pretrained`` (``load_pretrained``, checked)."""
    import spool.models  # noqa: F401  (registers every model class)

    # Checked before building: classifier keywords (with_backbone=) would not fit another class.
    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}  # a private repo, a revision
    held = MODEL_CLASSES.get(peek_architecture(directory, **hub))
    if held is not None and not issubclass(held, VideoClassifier):
        raise ValueError(f"{directory}: holds a {held.__name__}, not a video classifier; "
                         "load it with spool.models.load_pretrained")
    model = load_pretrained(directory, **kwargs)
    if not isinstance(model, VideoClassifier):
        raise ValueError(f"{directory}: holds a {type(model).__name__}, not a video "
                         "classifier; load it with spool.models.load_pretrained")
    return model
