"""Per-frame classification (temporal action segmentation): the interface, and Spool's.

Every frame classifier takes decoded video ``[B, T, H, W, 3]`` or cached backbone tokens
``[B, T, L, D]``, optional ``labels [B, T]`` (``-100``: no label) and a padding ``mask [B, T]``,
and returns per-frame logits ``[B, T, C]`` and a loss. ``predict_long`` runs a whole video (a
file or its tokens) in one pass. Saved and loaded like every Spool model (``load_pretrained``).

- :class:`SpoolForFrameClassification`: ``dropout -> Linear(D, C)`` on each real frame's Spool
  feature (averaged over its tokens), so a frame is classified with what the temporal stack
  gathered around it and, through the context frames, from the whole video.
  ``config.head_config`` may set ``context_in_head`` (the head also reads the pooled context
  ``[2D]``: ``Linear(3D, C)``), ``smoothing_weight`` (MS-TCN's truncated-MSE smoothing term
  added to the cross-entropy, as the MS-TCN baseline is trained) and ``refinement_stages``
  (MS-TCN's multi-stage refinement with Spool stages: :class:`SpoolRefinementStage`).

The baselines (a linear probe, MS-TCN) are in :mod:`spool.models.frame_baselines`.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from spool.config import SpoolConfig
from spool.layers.backbone import FrameEncoder
from spool.models.frame_encoder import config_and_frame_encoder
from spool.models.long_video import (
    check_long_call,
    default_sampler,
    one_video_tokens,
    stream_tokens,
    whole_video_indices,
)
from spool.models.long_video_state import ResumableHiddenState
from spool.models.pretrained import SpoolPreTrainedModel
from spool.models.spool import Spool
from spool.models.temporal_conv import ms_tcn_loss
from spool.video.io import VideoReader
from spool.video.samplers import FrameSampler

IGNORE_INDEX = -100


class FrameClassifierOutput(NamedTuple):
    """``logits: [B, T, C]`` (0 on padded frames); ``loss``: when labels were given."""

    logits: torch.Tensor
    loss: torch.Tensor | None


class LongPrediction(NamedTuple):
    """A whole video's ``logits [T, C]``, for a file its ``frame_indices`` and ``timestamps
    [T]`` (seconds), the model's ``class_names`` (``C``) and the per-frame features
    ``frame_features [T, D]`` its head reads (beside the pooled context with
    ``context_in_head``): a Spool's, or a baseline's backbone tokens averaged."""

    logits: torch.Tensor
    frame_indices: torch.Tensor | None
    timestamps: torch.Tensor | None
    class_names: tuple[str, ...] = ()
    frame_features: torch.Tensor | None = None

    @property
    def labels(self) -> list[str]:
        """The predicted class of each frame, by name (``T``)."""
        return [self.class_names[i] for i in self.logits.argmax(-1).tolist()]


def frame_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled frames (``-100`` ignored; 0, not NaN, when no
    frame is labelled). ``logits [B, T, C]``, ``labels [B, T]``."""
    B, T, C = logits.shape
    total = F.cross_entropy(logits.float().reshape(B * T, C), labels.reshape(-1).long(),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def _check_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``mask [B, T]`` (True: a real frame, padding at the end) -> lengths ``[B]``."""
    if not isinstance(mask, torch.Tensor) or mask.shape != shape or mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor of shape {shape} ([B, T], True for "
                         f"real frames), got {_described(mask)}")
    lengths = mask.sum(dim=1)
    if not torch.equal(torch.arange(shape[1], device=mask.device) < lengths[:, None], mask):
        raise ValueError("mask: expected each video's real frames first and its padding at "
                         "the end (True...True False...False per row)")
    return lengths


def _check_labels(labels: torch.Tensor, shape: tuple[int, int], num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.shape != shape or \
            labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels: expected an integer tensor of shape {shape}, got "
                         f"{_described(labels)}")
    labelled = labels[labels != IGNORE_INDEX]
    if labelled.numel() and (labelled.min() < 0 or labelled.max() >= num_classes):
        raise ValueError(f"labels: expected class indices in [0, {num_classes}) or "
                         f"{IGNORE_INDEX} (no label), got range [{labelled.min().item()}, "
                         f"{labelled.max().item()}]")


def _described(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__


class FrameClassifier(SpoolPreTrainedModel):
    """Shared ``forward`` / ``predict_long`` of the frame classifiers."""

    config: SpoolConfig
    backbone: FrameEncoder | None

    def _build(self, config: SpoolConfig | None, kwargs: dict[str, Any],
               with_backbone: bool) -> None:
        self.config, self.backbone = config_and_frame_encoder(config, kwargs, with_backbone)
        if not self.config.class_names:
            raise ValueError("class_names: a frame classifier needs the list of class names "
                             f"(config.class_names), got {self.config.class_names!r}")

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or [])

    def frame_logits(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``tokens [B, T, L, D]`` (no padding) -> logits ``[B, T, C]`` and, for models
        trained on several outputs (MS-TCN's stages), all of them for the loss."""
        raise NotImplementedError

    def loss_function(self, logits: torch.Tensor, labels: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """``labels`` are ``-100`` on padding already; ``mask`` marks the real frames."""
        return frame_classification_loss(logits, labels)

    def forward(self, video: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                *, tokens: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> FrameClassifierOutput:
        """``video [B, T, H, W, 3]`` or ``tokens [B, T, L, D]`` (exactly one), optional
        ``labels [B, T]`` and ``mask [B, T]`` -> :class:`FrameClassifierOutput`.

        Attention has no padding mask and the context frames see every frame, so padded
        videos run at their own lengths (one pass per distinct length): padding never reaches
        a real frame's logits.
        """
        tokens = self.tokens_from(video, tokens)
        B, T = tokens.shape[:2]
        lengths = None if mask is None else _check_mask(mask, (B, T))
        if lengths is None or bool((lengths == T).all()):
            logits, extra = self.frame_logits(tokens)
        else:
            logits, extra = tokens.new_zeros(B, T, len(self.class_names)), None
            for n in lengths.unique().tolist():
                if n:
                    rows = (lengths == n).nonzero().flatten()
                    last, stages = self.frame_logits(tokens[rows, :n])
                    logits[rows, :n] = last.to(logits.dtype)
                    if stages is not None:  # every stage's logits, zero on padding
                        if extra is None:
                            extra = logits.new_zeros(stages.shape[0], *logits.shape)
                        extra[:, rows, :n] = stages.to(extra.dtype)
        loss = None
        if labels is not None:
            _check_labels(labels, (B, T), len(self.class_names))
            if mask is not None:
                labels = labels.long().masked_fill(~mask, IGNORE_INDEX)
            loss = (self.loss_function(logits, labels, mask) if extra is None
                    else self.stages_loss(extra, labels, mask))
        return FrameClassifierOutput(logits, loss)

    def stages_loss(self, stages: torch.Tensor, labels: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of a multi-stage model, ``stages [S, B, T, C]``: MS-TCN's."""
        return ms_tcn_loss(stages, labels, mask)

    def forward_tokens(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None) -> FrameClassifierOutput:
        """``tokens [B, T, L, D]``, optional ``labels [B, T]`` and ``mask [B, T]`` -> logits
        ``[B, T, C]`` (and the loss with labels): :meth:`forward` on backbone tokens."""
        return self(tokens=tokens, labels=labels, mask=mask)

    def _long_features(self, tokens: torch.Tensor | None, video: str | None,
                       sampler: FrameSampler | None, chunk_frames: int, progress: bool = False
                       ) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]:
        """Per-frame backbone features ``[T, D]`` (tokens averaged), chunk by chunk."""
        if tokens is not None:
            tokens = one_video_tokens(tokens, self.config)
            return torch.cat([c.float().mean(1) for c in tokens.split(chunk_frames)]), None, None
        with VideoReader(video) as reader:
            indices = whole_video_indices(reader, sampler, "predict_long")
            features, stamps = [], []
            with tqdm(total=len(indices), unit="frame", desc="encode", disable=not progress,
                      leave=False) as bar:
                for t, s in stream_tokens(self, reader, indices):  # a chunk's tokens at a time
                    features.append(t.float().mean(1).cpu())
                    stamps.append(s)
                    bar.update(len(t))
        return torch.cat(features), np.asarray(indices), np.concatenate(stamps)

    @torch.no_grad()
    def predict_long(self, video: str | os.PathLike | torch.Tensor, *,
                     sampler: FrameSampler | None = None, chunk_frames: int = 32,
                     offload_dir: str | os.PathLike | None = None,
                     resume: ResumableHiddenState | None = None,
                     progress: bool = False) -> LongPrediction:
        """Logits of every frame of a whole video (a file, decoded with ``sampler``, by
        default at the training rate, ``config.sampling``, else 1 fps; or its tokens
        ``[T, L, D]``) in one pass, memory linear in its length; ``progress``: bars.
        ``offload_dir``, ``resume``: where a temporal stack keeps its hidden state
        (:meth:`Spool.forward_long`); the baselines keep one feature per frame in RAM."""
        check_long_call(self, "predict_long", chunk_frames)
        tokens = video if isinstance(video, torch.Tensor) else None
        if tokens is None:  # (a default for files only: its note says how they are sampled)
            sampler = sampler or default_sampler(self.config)
        features, indices, stamps = self._long_features(
            tokens, None if tokens is not None else os.fspath(video), sampler, chunk_frames,
            progress)
        device = next(self.parameters()).device  # the features come back on the CPU
        logits = self.head(features[None].to(device))[0].cpu()
        return LongPrediction(logits,
                              None if indices is None else torch.from_numpy(indices),
                              None if stamps is None else torch.from_numpy(stamps),
                              tuple(self.class_names), features)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Per-frame backbone features ``[B, T, D]`` -> logits ``[B, T, C]`` (the baselines)."""
        raise NotImplementedError


def beside_context(frames: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``frames [B, T, D]``, ``context [B, 2D]`` -> ``[B, T, 3D]``: the context beside every
    frame (what a head with ``context_in_head`` reads)."""
    return torch.cat((frames, context[:, None].expand(-1, frames.shape[1], -1)), dim=-1)


class SpoolRefinementStage(nn.Module):
    """A refinement stage of MS-TCN's kind built from Spool: the previous stage's class
    probabilities ``[B, T, C]`` -> ``Linear(C, D)`` -> one token per frame through a Spool
    temporal stack (its own context frames, window and layers) -> ``Linear(D, C)`` (on the
    frame's feature and the stack's pooled context, ``Linear(3D, C)``, with
    ``context_in_head``: meant to keep a label that depends on a far cue, as in the first
    stage).

    It sees only what the stage before predicted, so it learns what a labelling looks like
    (segments last; a blip of another class inside one is usually wrong) rather than
    re-reading the frames: MS-TCN's remedy for over-segmentation.
    """

    def __init__(self, config: SpoolConfig, num_classes: int,
                 context_in_head: bool = False) -> None:
        super().__init__()
        D = config.hidden_size
        self.context_in_head = context_in_head
        self.embed = nn.Linear(num_classes, D)
        self.spool = Spool(config, with_backbone=False)
        self.classifier = nn.Linear((3 if context_in_head else 1) * D, num_classes)
        for layer in (self.embed, self.classifier):
            nn.init.trunc_normal_(layer.weight, std=config.initializer_range)
            nn.init.zeros_(layer.bias)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """The previous stage's ``logits [B, T, C]`` -> refined logits ``[B, T, C]``."""
        tokens = self.embed(logits.softmax(dim=-1))[:, :, None]
        out = self.spool.forward_tokens(tokens)
        features = out.features[:, 1:-1, 0]
        if self.context_in_head:
            features = beside_context(features, out.context)
        return self.classifier(features)


class SpoolForFrameClassification(FrameClassifier):
    """Spool + ``dropout -> Linear(D, C)`` on each real frame's token-averaged feature
    (``Linear(3D, C)`` on it and the pooled context with ``head_config["context_in_head"]``).

    The context in the head: a frame reads the context frames through attention anyway, but
    only after two diluted hops (the context's attention over all frames, then the frame's
    over its window); with the pooled context beside each frame's feature, a label that
    depends on a cue 1,600 frames back was learnt in ~200 steps, and not in 2,400 without
    it (branch ``segment``, ``research/segmentation_benchmark.py``, on the synthetic
    segmentation data).

    ``head_config["refinement_stages"]`` (default 0): that many :class:`SpoolRefinementStage`
    after the head, each reading the softmax of the stage before, with
    ``refinement_layers`` blocks (default: ``num_hidden_layers``) and window
    ``refinement_window`` (default: ``local_frame_range``), whose heads also read their
    stack's pooled context with ``refinement_context`` (default false); the last stage's
    logits are the prediction, and every stage is trained with the loss (summed, as MS-TCN's
    stages are).
    """

    HEAD_KEYS = ("context_in_head", "smoothing_weight", "refinement_stages",
                 "refinement_layers", "refinement_window", "refinement_context")
    wraps_spool = True

    def __init__(self, config: SpoolConfig | None = None, /, *, with_backbone: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        self.spool = Spool(config, with_backbone=with_backbone, **kwargs)
        self.config = self.spool.config
        if not self.config.class_names:
            raise ValueError("class_names: a frame classifier needs the list of class names "
                             f"(config.class_names), got {self.config.class_names!r}")
        head = dict(self.config.head_config or {})
        unknown = sorted(set(head) - set(self.HEAD_KEYS))
        if unknown:
            raise ValueError(f"head_config: expected keys among {list(self.HEAD_KEYS)} for "
                             f"SpoolForFrameClassification, got {unknown}")
        self.context_in_head = head.get("context_in_head", False)
        self.smoothing_weight = head.get("smoothing_weight", 0.0)
        if not isinstance(self.context_in_head, bool):
            raise ValueError(f"head_config: expected context_in_head true or false, got "
                             f"{self.context_in_head!r}")
        if not isinstance(self.smoothing_weight, (int, float)) or self.smoothing_weight < 0:
            raise ValueError(f"head_config: expected smoothing_weight a number >= 0, got "
                             f"{self.smoothing_weight!r}")
        width = (3 if self.context_in_head else 1) * self.config.hidden_size
        self.dropout = nn.Dropout(self.config.classifier_dropout)
        self.classifier = nn.Linear(width, len(self.config.class_names))
        nn.init.trunc_normal_(self.classifier.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)
        refinement = {"refinement_stages": 0,
                      "refinement_layers": self.config.num_hidden_layers,
                      "refinement_window": self.config.local_frame_range}
        for name in refinement:
            value = refinement[name] = head.get(name, refinement[name])
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"head_config: expected {name} an integer >= 0, got {value!r}")
        context = head.get("refinement_context", False)
        if not isinstance(context, bool):
            raise ValueError(f"head_config: expected refinement_context true or false, got "
                             f"{context!r}")
        stage_config = self.config.replace(
            num_spatial_tokens=1, num_prefix_tokens=None, token_merging=1, head_config=None,
            num_hidden_layers=refinement["refinement_layers"],
            local_frame_range=refinement["refinement_window"])
        self.refinements = nn.ModuleList(
            SpoolRefinementStage(stage_config, len(self.config.class_names), context)
            for _ in range(refinement["refinement_stages"]))

    @property
    def frame_encoder(self) -> FrameEncoder | None:
        return self.spool.backbone

    def no_weight_decay(self) -> set[str]:
        return {f"{prefix}spool.{name}" for prefix in
                ["", *(f"refinements.{i}." for i in range(len(self.refinements)))]
                for name in self.spool.no_weight_decay()}

    def _head_input(self, frames: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``frames [B, T, D]``, ``context [B, 2D]`` -> what the head reads per frame."""
        return beside_context(frames, context) if self.context_in_head else frames

    def frame_logits(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.spool.forward_tokens(tokens)
        features = self._head_input(out.features[:, 1:-1].mean(dim=2), out.context)
        logits = self.classifier(self.dropout(features))
        if not self.refinements:
            return logits, None
        stages = [logits]
        for stage in self.refinements:
            stages.append(stage(stages[-1]))
        return stages[-1], torch.stack(stages)

    def loss_function(self, logits: torch.Tensor, labels: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.smoothing_weight:
            return frame_classification_loss(logits, labels)
        return ms_tcn_loss(logits, labels, mask, smoothing_weight=self.smoothing_weight)

    def stages_loss(self, stages: torch.Tensor, labels: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        return ms_tcn_loss(stages, labels, mask, smoothing_weight=self.smoothing_weight)

    @torch.no_grad()
    def predict_long(self, video: str | os.PathLike | torch.Tensor, *,
                     sampler: FrameSampler | None = None, chunk_frames: int = 32,
                     offload_dir: str | os.PathLike | None = None,
                     resume: ResumableHiddenState | None = None,
                     progress: bool = False) -> LongPrediction:
        check_long_call(self, "predict_long", chunk_frames)  # (not named forward_long's)
        if not isinstance(video, torch.Tensor):  # (a default for files only, as above)
            sampler = sampler or default_sampler(self.config)
        out = self.spool.forward_long(video, sampler=sampler,
                                      chunk_frames=chunk_frames, offload_dir=offload_dir,
                                      resume=resume, progress=progress)
        device = self.classifier.weight.device  # forward_long's outputs are on the CPU
        features = self._head_input(out.frame_features[None].to(device),
                                    out.context[None].to(device))
        logits = self.classifier(features)
        for stage in self.refinements:  # one token per frame: the whole video at once
            logits = stage(logits)
        return LongPrediction(logits[0].cpu(), out.frame_indices, out.timestamps,
                              tuple(self.class_names), out.frame_features)
