"""A model's weights as tensors: reading a safetensors file, a digest of them, the frame
encoder's part, and a strict load that names what does not fit."""

from __future__ import annotations

import hashlib
import os
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from spool.errors import CheckpointMismatchError, CheckpointNotFoundError, SpoolLoadError
from spool.validation import all_finite

WEIGHTS_NAME = "model.safetensors"
_BACKBONE_KEY = re.compile(r"(^|\.)backbone\.")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a :class:`SpoolLoadError` naming a damaged file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: missing weights file")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise SpoolLoadError(f"{path}: not a readable safetensors file ({err}); it may be "
                             "damaged or half-written") from err


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """Short hash of tensor names and values: equal only for identical weights. Values of less
    than float32's precision are hashed as the float32 they load as, so a checkpoint saved in
    bf16 and the model it loads into (float32) have the same digest."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu()
        if value.is_floating_point() and value.element_size() < 4:  # float16, bf16, float8
            value = value.float()
        h.update(key.encode())
        h.update(value.contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def weights_dtype_record(module: nn.Module) -> dict[str, str]:
    """``{"weights_dtype": "bfloat16"}`` (names joined by commas when mixed) where a floating
    parameter of ``module`` is not float32, else ``{}``: :func:`weights_digest` hashes
    half-precision values as float32, so outputs of a cast model are keyed apart by this."""
    held = sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters()
                   if p.is_floating_point()})
    return {} if held in ([], ["float32"]) else {"weights_dtype": ",".join(held)}


def backbone_digest(state: dict[str, torch.Tensor]) -> str | None:
    """:func:`weights_digest` of the frame encoder's tensors in a model's ``state`` (keys
    below its ``backbone.``); None when it holds none."""
    found = {}
    for key, value in state.items():
        match = _BACKBONE_KEY.search(key)
        if match is not None:
            found[key[match.end():]] = value
    return weights_digest(found) if found else None


def without_backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` less the frame encoder's tensors (keys below its ``backbone.``)."""
    return {k: v for k, v in state.items() if not _BACKBONE_KEY.search(k)}


def _kind(tensor: torch.Tensor) -> str:
    return "complex" if tensor.is_complex() else "float" if tensor.is_floating_point() else \
        "bool" if tensor.dtype == torch.bool else "integer"


def check_and_load_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                              ignore_backbone: bool = False) -> None:
    """Load ``state`` strictly; a missing, unexpected or mis-shaped tensor, or one of another
    kind of dtype (integers for floats), is a :class:`CheckpointMismatchError` naming it.
    Floats of another precision load cast, as ``load_state_dict`` does."""
    own = module.state_dict()
    if ignore_backbone:
        state = without_backbone(state)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing and all(_BACKBONE_KEY.search(k) for k in missing) and \
            not any(_BACKBONE_KEY.search(k) for k in state):
        raise CheckpointMismatchError(
            f"{source}: holds no backbone weights (saved from a model built with "
            "with_backbone=False); load it with with_backbone=False, for cached tokens")
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: checkpoint does not match the model built from its config: missing "
            f"tensors {missing[:10]}, unexpected tensors {unexpected[:10]}")
    mismatched = [f"{name!r} has shape {tuple(value.shape)} in the checkpoint but "
                  f"{tuple(own[name].shape)} in the model"
                  for name, value in state.items() if value.shape != own[name].shape]
    # load_state_dict casts: integer or boolean weights in a float slot load without a word
    mismatched += [f"{name!r} is {str(value.dtype).removeprefix('torch.')} in the checkpoint "
                   f"but {str(own[name].dtype).removeprefix('torch.')} in the model"
                   for name, value in state.items() if _kind(value) != _kind(own[name])]
    if mismatched:
        raise CheckpointMismatchError(f"{source}: tensors do not match the model built from "
                                      "its config: " + "; ".join(mismatched[:10]))
    diverged = next((k for k, v in state.items()
                     if v.is_floating_point() and not all_finite(v)), None)
    if diverged is not None:  # every output would be NaN
        raise SpoolLoadError(f"{source}: tensor {diverged!r} holds NaN or infinite values: "
                             "saved by a training run that diverged; train it again (a lower "
                             "learning rate)")
    module.load_state_dict(state)
