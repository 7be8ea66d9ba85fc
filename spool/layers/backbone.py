"""Frame encoder: a Hugging Face vision model (DINOv2 by default) applied to every frame."""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel

from spool.config import SpoolConfig


def load_backbone(name: str, config_dict: dict | None = None) -> nn.Module:
    """Build the HF model from ``config_dict`` (random weights) or load ``name`` (hub id or
    local directory) with ``from_pretrained``; a clear ``OSError`` when weights are missing."""
    if config_dict is not None:
        config_dict = dict(config_dict)
        model_type = config_dict.pop("model_type", None)
        if model_type is None:
            raise ValueError("backbone_config: expected a dict with a 'model_type' key "
                             f"(e.g. 'dinov2'), got keys {sorted(config_dict)}")
        return AutoModel.from_config(AutoConfig.for_model(model_type, **config_dict))
    try:
        return AutoModel.from_pretrained(name)
    except (OSError, ValueError) as err:
        where = ("a local directory without loadable weights" if os.path.isdir(name)
                 else "the Hugging Face cache and the hub (offline or not found)")
        raise OSError(
            f"backbone_name={name!r}: could not load backbone weights from {where}. "
            f"Download them where there is network (`hf download {name} --local-dir DIR`) and "
            "pass backbone_name=DIR, or pass backbone_config={'model_type': ..., ...} for a "
            f"randomly initialised backbone. Cause: {err}") from err


def read_image_normalisation(name: str) -> tuple[list[float], list[float]] | None:
    """The backbone's own mean/std from a local ``preprocessor_config.json``, if there is one."""
    path = os.path.join(name, "preprocessor_config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    if "image_mean" in data and "image_std" in data:
        return list(data["image_mean"]), list(data["image_std"])
    return None


class FrameEncoder(nn.Module):
    """Turns ``video: [B, T, H, W, 3]`` into backbone tokens ``[B, T, L, D]``.

    Frames are resized to ``image_size`` and normalised with the backbone's mean/std here,
    and go through the backbone ``backbone_chunk_size`` frames at a time so memory stays
    bounded for long videos. Frozen by default: no gradients, always in eval mode.
    """

    def __init__(self, config: SpoolConfig) -> None:
        super().__init__()
        self.model = load_backbone(config.backbone_name, config.backbone_config)
        self.image_size = config.image_size
        self.chunk_size = config.backbone_chunk_size
        self.frozen = config.freeze_backbone
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1),
                             persistent=False)
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True) -> FrameEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames: [N, H, W, 3]`` uint8 or float in [0, 1] -> pixels ``[N, 3, S, S]``."""
        pixels = frames.permute(0, 3, 1, 2).to(self.mean.dtype)
        if frames.dtype == torch.uint8:
            pixels = pixels / 255.0
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size),
                                   mode="bilinear", antialias=True, align_corners=False)
        return (pixels - self.mean) / self.std

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels: [N, 3, S, S]`` -> every token of each frame ``[N, L, D]``."""
        dtype = next(self.model.parameters()).dtype
        return self.model(pixel_values=pixels.to(dtype)).last_hidden_state

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, T, H, W, 3]`` -> tokens ``[B, T, L, D]``."""
        B, T = video.shape[:2]
        frames = video.reshape(B * T, *video.shape[2:])
        chunks = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            for start in range(0, B * T, self.chunk_size):
                pixels = self.preprocess(frames[start:start + self.chunk_size].to(self.mean.device))
                chunks.append(self.encode_pixels(pixels))
        tokens = torch.cat(chunks, dim=0)
        return tokens.view(B, T, *tokens.shape[1:])

    @torch.no_grad()
    def count_tokens(self) -> int:
        """``L``: tokens per frame at ``image_size`` (class, registers and patches)."""
        was_training = self.model.training
        self.model.eval()
        dummy = torch.zeros(1, 3, self.image_size, self.image_size, device=self.mean.device)
        num = self.encode_pixels(dummy).shape[1]
        self.model.train(was_training)
        return num


def build_frame_encoder(config: SpoolConfig) -> tuple[FrameEncoder, SpoolConfig]:
    """The frame encoder for ``config``, and ``config`` completed from the backbone: its own
    normalisation (from a local ``preprocessor_config.json``), ``hidden_size`` and
    ``num_spatial_tokens``."""
    if config.backbone_config is None:
        norm = read_image_normalisation(config.backbone_name)
        if norm is not None:
            config = config.replace(image_mean=norm[0], image_std=norm[1])
    encoder = FrameEncoder(config)
    return encoder, config.replace(hidden_size=encoder.hidden_size,
                                   num_spatial_tokens=encoder.count_tokens())
