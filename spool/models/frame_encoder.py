"""The frame encoder on its own: what a token cache records and what ``spool cache`` runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from spool.config import SpoolConfig
from spool.io_utils import atomic_save_safetensors, remove_stale_temporaries_in
from spool.layers.backbone import FrameEncoder, build_frame_encoder
from spool.models.pretrained import WEIGHTS_NAME, SpoolPreTrainedModel
from spool.validation import check_video


def config_and_frame_encoder(config: SpoolConfig | None, overrides: dict[str, Any],
                             with_backbone: bool) -> tuple[SpoolConfig, FrameEncoder | None]:
    """A model's config (``config`` with ``overrides``, or built from them) completed from its
    frame encoder, and that encoder; ``with_backbone=False`` builds none, and then the config
    must already say ``hidden_size`` and ``num_spatial_tokens`` (they describe the tokens the
    model will be given)."""
    if config is not None and not isinstance(config, SpoolConfig):
        raise TypeError(f"config: expected a SpoolConfig or None (or keyword arguments), got "
                        f"{type(config).__name__}")
    if not isinstance(with_backbone, bool):
        raise TypeError(f"with_backbone: expected True or False, got {with_backbone!r}")
    config = SpoolConfig.from_dict(overrides) if config is None else config.replace(**overrides)
    if with_backbone:
        encoder, config = build_frame_encoder(config)
        return config, encoder
    if config.hidden_size is None or config.num_spatial_tokens is None:
        raise ValueError("with_backbone=False: config.hidden_size and config.num_spatial_tokens "
                         "must be set (they describe the cached tokens), got "
                         f"{config.hidden_size} and {config.num_spatial_tokens}")
    return config, None


class FrameEncoderModel(SpoolPreTrainedModel):
    """A backbone and its preprocessing, saveable: ``video [B, T, H, W, 3]`` -> tokens
    ``[B, T, L, D]``.

    Only the frame-encoder fields of the config matter (``SpoolConfig.FRAME_ENCODER_FIELDS``);
    it is saved with ``num_hidden_layers=0``. Its state dict uses the same ``backbone.`` keys as
    :class:`~spool.models.spool.Spool`, so its weights drop into any Spool model.
    """

    init_keywords = ()
    # What an encoder drops from a model's config: no temporal layers, no classes (and so
    # none of them background).
    DROPPED: ClassVar[dict[str, Any]] = {"num_hidden_layers": 0, "class_names": None,
                                         "background_classes": None}

    def __init__(self, config: SpoolConfig | None = None, /, **kwargs: Any) -> None:
        super().__init__()
        kwargs = {**kwargs, **self.DROPPED}
        self.config, self.backbone = config_and_frame_encoder(config, kwargs, True)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, T, H, W, 3]`` (uint8 or float in [0, 1]) -> tokens ``[B, T, L, D]``."""
        check_video(video)
        return self.backbone(video)

    encode_frames = forward


def save_frame_encoder(model: SpoolPreTrainedModel, directory: str | os.PathLike) -> None:
    """Write ``model``'s frame encoder as a :class:`FrameEncoderModel` checkpoint (without
    building one): its config's frame-encoder fields and its ``backbone.`` weights."""
    encoder = model.frame_encoder
    if encoder is None:
        raise ValueError("model: has no frame encoder (built with with_backbone=False?)")
    model.check_config_as_built(SpoolConfig.FRAME_ENCODER_FIELDS)  # the rest is not written
    config = model.config_for_saving(check=False).replace(
        architectures=[FrameEncoderModel.__name__], **FrameEncoderModel.DROPPED)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries_in(directory)  # a killed save's
    state = {f"backbone.{k}": v for k, v in encoder.state_dict().items()}
    atomic_save_safetensors(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    config.save_pretrained(directory)
