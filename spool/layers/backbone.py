"""Frame encoder: a Hugging Face vision model (DINOv2 by default) applied to every frame."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from spool.config import DEFAULT_CROP_PCT, SpoolConfig, backbone_identity
from spool.errors import SpoolLoadError
from spool.io_utils import looks_like_path
from spool.layers.pooling import SpatialTokenPooling

_DEFAULTS = SpoolConfig()  # what a config holds where the user set nothing
logger = logging.getLogger(__name__)
_WEIGHTS_FOLLOW = contextvars.ContextVar("spool_backbone_weights_follow", default=False)
# What a recorded architecture and the named backbone it records must agree on.
_ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "patch_size", "num_register_tokens")
# Fields every transformers config has (names, dtype, output switches, the library's
# version): none of them changes the tokens a backbone computes.
_GENERIC_CONFIG_KEYS = frozenset(PretrainedConfig().to_dict()) - {"model_type"}
# Nor do these: weights are drawn, or dropped, by them; features of other stages are asked.
_NOT_COMPUTED = frozenset({"initializer_range", "initializer_factor", "layerscale_value",
                           "drop_path_rate", "stage_names", "out_features", "out_indices"})


@contextlib.contextmanager
def backbone_weights_follow() -> Iterator[None]:
    """Models built inside take their backbone from ``backbone_config`` with random weights,
    even where the config asks for ``backbone_name``'s pretrained ones: their weights are
    loaded next (a checkpoint's, a token cache's frame encoder), so nothing is fetched."""
    token = _WEIGHTS_FOLLOW.set(True)
    try:
        yield
    finally:
        _WEIGHTS_FOLLOW.reset(token)


def build_backbone(config: SpoolConfig) -> nn.Module:
    """The HF model of ``config``, as :func:`load_backbone` builds it, except that a
    ``backbone_config`` recorded beside a named backbone (``use_pretrained_backbone``) takes
    that backbone's pretrained weights unless weights follow (:func:`backbone_weights_follow`);
    refused when the two architectures differ."""
    recorded = config.backbone_config is not None and bool(config.use_pretrained_backbone)
    if not recorded or _WEIGHTS_FOLLOW.get():
        return load_backbone(config.backbone_name, config.backbone_config)
    try:
        model = load_backbone(config.backbone_name)
    except SpoolLoadError as err:
        raise SpoolLoadError(
            f"{err} (This config names a pretrained backbone beside its recorded "
            "backbone_config: to load a checkpoint's own weights use from_pretrained on its "
            "directory; use_pretrained_backbone=False builds the recorded architecture with "
            "random weights.)") from err
    found = model.config.to_dict()
    differ = {k: [config.backbone_config[k], found.get(k)] for k in _ARCHITECTURE_KEYS
              if k in config.backbone_config and config.backbone_config[k] != found.get(k)}
    if differ:
        raise ValueError(f"backbone_name={config.backbone_name!r}: not the architecture its "
                         f"backbone_config records (recorded, found: {differ}); name the "
                         "backbone it was saved with, or drop backbone_config")
    return model


def load_backbone(name: str, config_dict: dict | None = None) -> nn.Module:
    """Build the HF model from ``config_dict`` (random weights) or load ``name`` (hub id or
    local directory) with ``from_pretrained``; a :class:`SpoolLoadError` when weights are
    missing, with a hint that fits what ``name`` is."""
    if config_dict is not None:
        config_dict = dict(config_dict)
        model_type = config_dict.pop("model_type", None)
        if model_type is None:
            raise ValueError("backbone_config: expected a dict with a 'model_type' key "
                             f"(e.g. 'dinov2'), got keys {sorted(config_dict)}")
        try:
            return AutoModel.from_config(AutoConfig.for_model(model_type, **config_dict))
        except (TypeError, StrictDataclassError) as err:  # a field of the wrong type
            raise ValueError(f"backbone_config: {err}") from err
    if os.path.isdir(name):
        where, fix = ("a local directory without loadable weights",
                      "Point backbone_name at a directory holding config.json and "
                      "model.safetensors (e.g. from `spool backbone import` or `hf download`)")
    elif looks_like_path(name):
        where, fix = ("a local path that does not exist",
                      "Check the path, or give a hub id such as facebook/dinov2-base")
    else:  # models/dinov2-small: a hub id, or a folder typed from another directory
        where, fix = (f"the Hugging Face cache and the hub (offline or not found); there is no "
                      f"folder {os.path.abspath(name)} (relative to the current directory)",
                      f"Download the weights where there is network (`hf download {name} "
                      "--local-dir DIR`) and pass backbone_name=DIR, or run `spool backbone "
                      "import dinov2-small --out DIR` for DINOv2-S offline")
    try:
        return AutoModel.from_pretrained(name)
    except (TypeError, StrictDataclassError) as err:  # its config.json has a bad field
        raise ValueError(f"backbone_name={name!r}: its config.json does not load: {err}") from err
    except (OSError, ValueError) as err:
        raise SpoolLoadError(
            f"backbone_name={name!r}: could not load backbone weights from {where}. {fix}; or "
            "pass backbone_config={'model_type': ..., ...} for a randomly initialised "
            f"backbone. Cause: {' '.join(str(err).split())}") from err  # one line


def read_backbone_preprocessing(name: str) -> dict[str, object]:
    """The backbone's own normalisation and crop from a local ``preprocessor_config.json``:
    ``image_mean``, ``image_std`` and ``crop_pct`` (crop size / shortest edge), where given;
    ``resize_mode="squash"`` where it resizes to a height and width without a centre crop
    (ViT's, SigLIP's processors)."""
    path = os.path.join(name, "preprocessor_config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise SpoolLoadError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise SpoolLoadError(f"{path}: expected a JSON object of image processor settings")
    found: dict[str, object] = {}
    if "image_mean" in data and "image_std" in data:
        found.update(image_mean=list(data["image_mean"]), image_std=list(data["image_std"]))
    # Sizes come as {"shortest_edge": n}, {"height": h, "width": w} or a bare int (older
    # processors, CLIP's): the shortest edge, or a square.
    size, crop = data.get("size"), data.get("crop_size")
    edge = size if isinstance(size, int) else (
        size.get("shortest_edge") if isinstance(size, dict) else None)
    side = crop if isinstance(crop, int) else (
        crop.get("height") if isinstance(crop, dict) else None)
    if data.get("do_center_crop") and edge and side and side <= edge:
        found["crop_pct"] = side / edge
    elif (not data.get("do_center_crop") and data.get("do_resize", True)
          and isinstance(size, dict) and {"height", "width"} <= size.keys()):
        found["resize_mode"] = "squash"
    return found


class FrameEncoder(nn.Module):
    """Turns ``video: [B, T, H, W, 3]`` into backbone tokens ``[B, T, L, D]``.

    Frames not yet at ``image_size x image_size`` are brought there by the config's
    preprocessing policy (frames at that size are taken as already preprocessed, which is what
    every Spool pipeline hands over), then normalised with the backbone's mean/std, and go
    through the backbone ``backbone_chunk_size`` frames at a time so memory stays bounded.
    Frozen by default (``freeze_backbone``): no gradients, always in eval mode, until its
    parameters are set to require gradients.
    """

    def __init__(self, config: SpoolConfig) -> None:
        super().__init__()
        self.model = build_backbone(config)
        patch = getattr(self.model.config, "patch_size", None)
        if isinstance(patch, int) and config.image_size < patch:
            raise ValueError(f"image_size: expected at least the backbone's patch size "
                             f"{patch}, got {config.image_size}")
        if isinstance(patch, int) and config.image_size % patch:
            # Said, not refused: a checkpoint saved with such a size must still load.
            lower = config.image_size - config.image_size % patch  # the patch conv drops the rest
            logger.warning(f"image_size {config.image_size} is not a multiple of the "
                           f"backbone's patch size {patch}: its last {config.image_size % patch} "
                           f"pixel rows and columns are dropped ({lower} gives the same tokens, "
                           f"{lower + patch} one more patch a side)")
        self.preprocessing = config.preprocessing()
        self.image_size = config.image_size
        self.chunk_size = config.backbone_chunk_size
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1),
                             persistent=False)
        if config.freeze_backbone:
            self.model.requires_grad_(False)
            self.model.eval()

        self.pooling = self._token_pooling(config.token_pooling)

    def _token_pooling(self, k: int) -> SpatialTokenPooling:
        """Pooling of the patch grid; the tokens before it (class, registers) are kept."""
        total = self._count_backbone_tokens()
        patch = getattr(self.model.config, "patch_size", None)
        grid = self.image_size // patch if patch else 0
        # (class/register tokens, patch grid side) of the tokens it returns, where known
        self.patch_layout = ((total - grid * grid, grid // k)
                             if grid and total >= grid * grid and grid % k == 0 else None)
        if k > 1 and (not grid or total - grid * grid < 0):
            raise ValueError(f"token_pooling: the backbone's {total} tokens per frame are not "
                             "a class/register prefix plus a square patch grid, so they cannot "
                             f"be pooled {k}x{k}")
        if k == 1:
            return SpatialTokenPooling(total, 0, 1)  # every token is kept
        return SpatialTokenPooling(total - grid * grid, grid, k)

    @property
    def frozen(self) -> bool:
        """No backbone parameter trains: it runs without gradients, in eval mode. Read from
        the parameters, so ``requires_grad_(True)`` after building unfreezes it."""
        return not any(p.requires_grad for p in self.model.parameters())

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self.model.requires_grad_(not value)
        self._follow_frozen()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True) -> FrameEncoder:
        super().train(mode)
        self._follow_frozen()
        return self

    def _follow_frozen(self) -> bool:
        """Keep the backbone in eval mode while frozen (whatever ``train()`` said), and in
        the encoder's mode once unfrozen; returns whether it is frozen."""
        frozen = self.frozen
        if self.model.training != (self.training and not frozen):
            self.model.train(self.training and not frozen)
        return frozen

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames: [N, H, W, 3]`` uint8 or float in [0, 1] -> pixels ``[N, 3, S, S]``."""
        frames = self.preprocessing(frames)  # a no-op for frames already at image_size
        pixels = frames.permute(0, 3, 1, 2).to(self.mean.dtype)
        if frames.dtype == torch.uint8:
            pixels = pixels / 255.0
        return (pixels - self.mean) / self.std

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels: [N, 3, S, S]`` -> the tokens of each frame ``[N, L, D]`` (every token
        the backbone returns, or fewer with ``token_pooling``)."""
        dtype = next(self.model.parameters()).dtype
        tokens = self.model(pixel_values=pixels.to(dtype)).last_hidden_state
        mask_token = getattr(getattr(self.model, "embeddings", None), "mask_token", None)
        if torch.is_grad_enabled() and isinstance(mask_token, nn.Parameter) \
                and mask_token.requires_grad:
            # DINOv2's masked-image-modelling token, never used for frames: a zero gradient,
            # since an unused trainable parameter stops DDP at its second step. (Freezing it
            # instead changed the optimizer's groups, and earlier checkpoints' resume.)
            tokens = tokens + 0.0 * mask_token.sum()
        return self.pooling(tokens)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, T, H, W, 3]`` -> tokens ``[B, T, L, D]``."""
        B, T = video.shape[:2]
        frames = video.reshape(B * T, *video.shape[2:])
        chunks = []
        # Frozen weights need no graph, unless the pixels want gradients (saliency maps).
        frozen = self._follow_frozen() and not video.requires_grad
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            for start in range(0, B * T, self.chunk_size):
                pixels = self.preprocess(frames[start:start + self.chunk_size].to(self.mean.device))
                chunks.append(self.encode_pixels(pixels))
        tokens = torch.cat(chunks, dim=0)
        return tokens.view(B, T, *tokens.shape[1:])

    def count_tokens(self) -> int:
        """``L``: tokens per frame at ``image_size`` after pooling."""
        return self.pooling.num_tokens

    @torch.no_grad()
    def _count_backbone_tokens(self) -> int:
        """Tokens per frame the backbone returns at ``image_size`` (class, registers and
        patches)."""
        was_training = self.model.training
        self.model.eval()
        size = self.image_size
        try:
            dummy = torch.zeros(1, 3, size, size, device=self.mean.device)
            shape = tuple(self.model(pixel_values=dummy).last_hidden_state.shape)
        except (RuntimeError, TypeError, ValueError, MemoryError) as err:  # an allocator's
            first = (str(err).strip().splitlines() or [""])[0]  # limit, a text model, ...
            raise ValueError(f"backbone: {type(self.model).__name__} could not encode one "
                             f"blank {size}x{size} frame (image_size {size}): "
                             f"{type(err).__name__}: {first}") from err
        finally:
            self.model.train(was_training)
        width = getattr(self.model.config, "hidden_size", None)
        if len(shape) != 3 or shape[-1] != width:  # a ConvNet's [B, C, H, W] feature map
            raise ValueError(
                f"backbone: expected a vision transformer that returns tokens [B, N, D] with D "
                f"its config's hidden_size; {type(self.model).__name__} returns shape {shape} "
                f"(hidden_size {width})")
        return shape[1]


def build_frame_encoder(config: SpoolConfig) -> tuple[FrameEncoder, SpoolConfig]:
    """The frame encoder for ``config``, and ``config`` completed from the backbone: its own
    normalisation (from a local ``preprocessor_config.json``), ``hidden_size``,
    ``num_spatial_tokens`` and, where it shows its patch grid, ``num_prefix_tokens``."""
    if config.backbone_config is None:
        found = read_backbone_preprocessing(config.backbone_name)
        if config.crop_pct is not None or config.resize_mode != _DEFAULTS.resize_mode:
            found.pop("crop_pct", None)  # an explicit choice wins over the backbone's
            found.pop("resize_mode", None)
        for key in ("image_mean", "image_std"):  # so do values other than the defaults
            if list(getattr(config, key)) != list(getattr(_DEFAULTS, key)):
                found.pop(key, None)
        config = config.replace(**found)
    if config.crop_pct is None:
        config = config.replace(crop_pct=DEFAULT_CROP_PCT)
    encoder = FrameEncoder(config)
    if config.hidden_size is not None and config.hidden_size != encoder.hidden_size:
        # Said, not refused: a config that held another backbone's width (a backbone swapped
        # on a saved one) is completed as any other.
        built = "backbone_config" if config.backbone_config else repr(config.backbone_name)
        logger.warning(f"hidden_size {config.hidden_size} is not the backbone's width: the "
                       f"temporal stack takes the width of its backbone ({built}), "
                       f"{encoder.hidden_size}")
    layout = encoder.patch_layout  # None: no patch grid known, the config's value stays
    prefix = config.num_prefix_tokens if layout is None else layout[0]
    return encoder, config.replace(hidden_size=encoder.hidden_size,
                                   num_spatial_tokens=encoder.count_tokens(),
                                   num_prefix_tokens=prefix)


def names_another_backbone(field: str, value: Any, config: SpoolConfig) -> bool:
    """Whether ``backbone_name`` / ``backbone_config`` ``value`` names another backbone than
    ``config``'s: a folder by its real path (``./dino`` and a link to it are one), a config by
    the entries it gives (the saved one holds every default besides)."""
    if field == "backbone_name":
        return backbone_identity(str(value)) != backbone_identity(str(config.backbone_name))
    saved = config.backbone_config or {}
    return not isinstance(value, dict) or any(saved.get(k) != v for k, v in value.items())


def _architecture(found: dict[str, Any]) -> dict[str, Any]:
    """A backbone config's fields that shape what it computes from given weights: not the
    ones every transformers config has, nor its training and initialisation settings."""
    return {k: v for k, v in sorted(found.items()) if not (
        k in _GENERIC_CONFIG_KEYS or k in _NOT_COMPUTED or k.startswith("_")
        or k.endswith(("dropout", "dropout_prob", "dropout_rate")))}


def architecture_record(model: nn.Module) -> dict[str, Any]:
    """What the outputs of a model with a named backbone depend on besides its weights: the
    architecture its ``config.json`` gives (a local folder's can be edited without touching
    the weights: the heads, a norm's eps), as ``{"backbone_architecture": {...}}``. Empty
    where the backbone was built as ``backbone_config`` says (the config's fields hold it,
    so keys made before it was recorded stay), or for a model without a frame encoder."""
    encoder = next((m for m in model.modules() if isinstance(m, FrameEncoder)), None)
    if encoder is None:
        return {}
    found = _architecture(encoder.model.config.to_dict())
    given = getattr(model.config, "backbone_config", None)
    if given is not None:  # built from it, or loaded by name beside it (a checkpoint's)
        given = dict(given)
        if _architecture(AutoConfig.for_model(given.pop("model_type"), **given).to_dict()) \
                == found:
            return {}
    return {"backbone_architecture": found}
