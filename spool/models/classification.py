"""Video classifiers: Spool with a head on its clip context, and a frame-pooling baseline.

Both take either decoded video ``[B, T, H, W, 3]`` or cached backbone tokens ``[B, T, L, D]``
(``model(tokens=...)``), so a frozen backbone's tokens can be cached once and the rest trained
on the cache. Both are saved as ``config.json`` + ``model.safetensors`` + ``classifier.json``
(which class to rebuild); :func:`load_classifier` reads any of them back.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spool.config import SpoolConfig
from spool.layers.backbone import FrameEncoder, build_frame_encoder
from spool.models.pretrained import PretrainedMixin
from spool.models.spool import Spool
from spool.validation import check_tokens, check_video

CLASSIFIER_NAME = "classifier.json"


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
    if labels.shape != (batch,) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels: expected an integer tensor of shape ({batch},), got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    if batch and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"labels: expected class indices in [0, {num_labels}), got range "
                         f"[{labels.min().item()}, {labels.max().item()}]")


class _ClassifierBase(PretrainedMixin, nn.Module):
    """Shared ``forward(video | tokens, labels)`` and saving with an architecture marker."""

    config: SpoolConfig
    architecture: str = ""
    # How clips were sampled in training (num_frames, frame_stride): eval's defaults.
    clip_settings: dict[str, Any] = {}

    def logits_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, video: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                *, tokens: torch.Tensor | None = None) -> ClassifierOutput:
        """``video: [B, T, H, W, 3]`` or cached ``tokens: [B, T, L, D]`` (exactly one),
        optional ``labels: [B]`` -> :class:`ClassifierOutput` (logits ``[B, C]``, loss)."""
        if (video is None) == (tokens is None):
            raise ValueError("video/tokens: pass exactly one of video [B, T, H, W, 3] or "
                             "tokens [B, T, L, D]")
        if tokens is None:
            tokens = self.encode_frames(video)
        else:
            check_tokens(tokens, self.config.num_spatial_tokens, self.config.hidden_size)
        logits = self.logits_from_tokens(tokens)
        loss = None
        if labels is not None:
            _check_labels(labels, logits.shape[0], logits.shape[1])
            loss = F.cross_entropy(logits.float(), labels.long())
        return ClassifierOutput(logits, loss)

    def forward_tokens(self, tokens: torch.Tensor,
                       labels: torch.Tensor | None = None) -> ClassifierOutput:
        """Cached backbone ``tokens: [B, T, L, D]`` -> :class:`ClassifierOutput`."""
        return self(tokens=tokens, labels=labels)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or [])

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        super().save_pretrained(directory)
        with open(os.path.join(directory, CLASSIFIER_NAME), "w") as f:
            json.dump({"architecture": self.architecture, "clip": self.clip_settings}, f)
            f.write("\n")


class SpoolForVideoClassification(_ClassifierBase):
    """Spool + ``dropout -> Linear(2D, C)`` on the clip context ``[B, 2D]``.

    ``SpoolForVideoClassification(config, class_names=[...])``; ``with_backbone=False``
    builds only the temporal part (for training on cached tokens).
    """

    architecture = "SpoolForVideoClassification"

    def __init__(self, config: SpoolConfig | None = None, /, *, with_backbone: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        self.spool = Spool(config, with_backbone=with_backbone, **kwargs)
        self.config = self.spool.config
        self.dropout = nn.Dropout(self.config.classifier_dropout)
        self.classifier = nn.Linear(2 * self.config.hidden_size, _num_labels(self.config))
        nn.init.trunc_normal_(self.classifier.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def config_for_saving(self) -> SpoolConfig:
        return self.spool.config_for_saving()

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, T, H, W, 3]`` -> backbone tokens ``[B, T, L, D]``."""
        return self.spool.encode_frames(video)

    def logits_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens: [B, T, L, D]`` -> logits ``[B, C]`` (head on the pooled context frames)."""
        context = self.spool.forward_tokens(tokens).context
        return self.classifier(self.dropout(context))


class FramePoolingForVideoClassification(_ClassifierBase):
    """Baseline: the same backbone with the temporal stack removed.

    ``logits = Linear(D, C)(dropout(LayerNorm(mean over T and L of the backbone tokens)))``.
    The mean over frames is invariant to their order, so two videos made of the same frames
    in a different order get the same logits. Temporal fields of the config are ignored.
    """

    architecture = "FramePoolingForVideoClassification"

    def __init__(self, config: SpoolConfig | None = None, /, *, with_backbone: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        config = SpoolConfig(**kwargs) if config is None else config.replace(**kwargs)
        self.backbone: FrameEncoder | None = None
        if with_backbone:
            self.backbone, config = build_frame_encoder(config)
        elif config.hidden_size is None or config.num_spatial_tokens is None:
            raise ValueError("with_backbone=False: config.hidden_size and "
                             "config.num_spatial_tokens must be set, got "
                             f"{config.hidden_size} and {config.num_spatial_tokens}")
        self.config = config
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, _num_labels(config))
        nn.init.trunc_normal_(self.classifier.weight, std=config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def config_for_saving(self) -> SpoolConfig:
        if self.backbone is not None and self.config.backbone_config is None:
            return self.config.replace(backbone_config=self.backbone.model.config.to_dict())
        return self.config

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, T, H, W, 3]`` -> backbone tokens ``[B, T, L, D]``."""
        if self.backbone is None:
            raise ValueError("video: this model was built with with_backbone=False; pass "
                             "cached backbone tokens instead (tokens=...)")
        check_video(video)
        return self.backbone(video)

    def logits_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens: [B, T, L, D]`` -> logits ``[B, C]`` (order-blind mean pooling)."""
        return self.classifier(self.dropout(self.norm(tokens.mean(dim=(1, 2)))))


ARCHITECTURES: dict[str, type[_ClassifierBase]] = {
    cls.architecture: cls
    for cls in (SpoolForVideoClassification, FramePoolingForVideoClassification)
}


def classifier_class(name: str) -> type[_ClassifierBase]:
    """The classifier class for an architecture name (``spool`` / ``frame_pooling`` too)."""
    aliases = {"spool": SpoolForVideoClassification.architecture,
               "frame_pooling": FramePoolingForVideoClassification.architecture}
    name = aliases.get(name, name)
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture: expected one of {sorted(aliases)} or "
                         f"{sorted(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


def load_classifier(directory: str | os.PathLike, **kwargs: Any) -> _ClassifierBase:
    """Load any classifier written by ``save_pretrained`` (reads ``classifier.json``)."""
    path = os.path.join(directory, CLASSIFIER_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; is {directory} a classifier checkpoint "
                                "(written by SpoolForVideoClassification.save_pretrained)?")
    with open(path) as f:
        meta = json.load(f)
    model = classifier_class(meta.get("architecture", "")).from_pretrained(directory, **kwargs)
    model.clip_settings = dict(meta.get("clip") or {})
    return model

