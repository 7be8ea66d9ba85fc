"""`SpoolConfig`: every hyper-parameter of a Spool model, JSON-serialisable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

CONFIG_NAME = "config.json"


def _check(condition: bool, argument: str, expected: str, given: Any) -> None:
    if not condition:
        raise ValueError(f"{argument}: expected {expected}, got {given!r}")


@dataclass
class SpoolConfig:
    """Configuration of a :class:`~spool.models.spool.Spool` model.

    Args:
        num_hidden_layers: number of temporal transformer blocks.
        num_attention_heads: total heads per block (lookback + lookahead).
        num_lookahead_heads: heads whose local window looks forward in time.
        num_lookback_heads: heads whose local window looks backward in time.
        image_size: frames are resized to ``image_size x image_size``.
        local_frame_range: ``w`` of SPEC §3, the frames each frame sees on its side.
        backbone_name: hub id or local directory of an HF vision model.
        backbone_config: an HF config as a dict (with ``model_type``); when given, the
            backbone is built from it with random weights instead of being downloaded.
        freeze_backbone: no gradients into the backbone, which stays in eval mode.
        backbone_chunk_size: frames passed through the backbone at once.
        attn_implementation: ``auto``, ``reference`` (dense mask, tests only), ``blocked``
            or ``flex``.
        attention_chunk_frames: query frames per block in ``blocked`` attention
            (``None``: chosen from ``local_frame_range``).
        gradient_checkpointing: recompute each block in the backward pass to save memory.
        class_names: labels of :class:`~spool.models.classification.SpoolForVideoClassification`.
        classifier_dropout: dropout before the classification head.
        hidden_size, num_spatial_tokens: ``D`` and ``L``, filled in from the backbone.
        image_mean, image_std: the backbone's normalisation, filled in from the backbone.
    """

    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_lookahead_heads: int = 6
    num_lookback_heads: int = 6
    image_size: int = 224
    local_frame_range: int = 16
    backbone_name: str = "facebook/dinov2-base"
    backbone_config: dict | None = None
    freeze_backbone: bool = True
    backbone_chunk_size: int = 32
    attn_implementation: str = "auto"
    attention_chunk_frames: int | None = None
    mlp_ratio: float = 4.0
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    gradient_checkpointing: bool = False
    class_names: list[str] | None = None
    classifier_dropout: float = 0.0
    hidden_size: int | None = None
    num_spatial_tokens: int | None = None
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent argument."""
        for name in ("num_hidden_layers", "num_attention_heads", "num_lookahead_heads",
                     "num_lookback_heads", "local_frame_range"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                   name, "an integer >= 0", value)
        _check(self.num_attention_heads > 0, "num_attention_heads", "at least 1 head",
               self.num_attention_heads)
        heads = self.num_lookback_heads + self.num_lookahead_heads
        _check(heads == self.num_attention_heads,
               "num_lookback_heads + num_lookahead_heads",
               f"== num_attention_heads ({self.num_attention_heads})",
               f"{self.num_lookback_heads} + {self.num_lookahead_heads} = {heads}")
        _check(isinstance(self.image_size, int) and self.image_size > 0, "image_size",
               "a positive integer", self.image_size)
        _check(isinstance(self.backbone_chunk_size, int) and self.backbone_chunk_size > 0,
               "backbone_chunk_size", "a positive integer", self.backbone_chunk_size)
        from spool.layers.attention_backends import select_backend  # the registry's rules

        select_backend(self.attn_implementation, dropout=self.attention_dropout)
        _check(self.attention_chunk_frames is None or (
            isinstance(self.attention_chunk_frames, int) and self.attention_chunk_frames > 0),
            "attention_chunk_frames", "None or a positive integer", self.attention_chunk_frames)
        for name in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
            _check(0.0 <= getattr(self, name) < 1.0, name, "a probability in [0, 1)",
                   getattr(self, name))
        _check(self.mlp_ratio > 0, "mlp_ratio", "> 0", self.mlp_ratio)
        _check(len(self.image_mean) == 3 and len(self.image_std) == 3, "image_mean/image_std",
               "3 values each (RGB)", (self.image_mean, self.image_std))
        if self.hidden_size is not None:
            _check(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                   f"divisible by num_attention_heads ({self.num_attention_heads})",
                   self.hidden_size)
            head_dim = self.hidden_size // self.num_attention_heads
            _check(head_dim % 2 == 0, "hidden_size / num_attention_heads",
                   "an even head dimension (rotary embeddings rotate pairs)", head_dim)
        if self.num_spatial_tokens is not None:
            _check(self.num_spatial_tokens > 0, "num_spatial_tokens", "> 0",
                   self.num_spatial_tokens)

    @property
    def head_dim(self) -> int:
        if self.hidden_size is None:
            raise ValueError("hidden_size: not known yet (it is read from the backbone)")
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def config_hash(self) -> str:
        """Short stable hash of the configuration, for provenance in outputs."""
        return hashlib.sha256(self.to_json_string().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpoolConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            f.write(self.to_json_string() + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SpoolConfig:
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; is {directory} a Spool checkpoint "
                                    "written by save_pretrained?")
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def replace(self, **changes: Any) -> SpoolConfig:
        return dataclasses.replace(self, **changes)
