"""``save_pretrained`` / ``from_pretrained`` shared by the Spool models."""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import load_file

from spool.config import SpoolConfig
from spool.io_utils import atomic_save_safetensors

WEIGHTS_NAME = "model.safetensors"


def check_and_load_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor],
                              source: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` strictly; any missing, unexpected or mis-shaped tensor is a
    ``ValueError`` naming the tensor."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match the model built from its config: "
                         f"missing tensors {missing[:10]}, unexpected tensors {unexpected[:10]}")
    mismatched = [f"{name!r} has shape {tuple(value.shape)} in the checkpoint but "
                  f"{tuple(own[name].shape)} in the model"
                  for name, value in state.items() if value.shape != own[name].shape]
    if mismatched:
        raise ValueError(f"{source}: tensors do not match the model built from its config: "
                         + "; ".join(mismatched[:10]))
    module.load_state_dict(state)


class PretrainedMixin:
    """``config.json`` + ``model.safetensors``, in the style of HF transformers."""

    config: SpoolConfig

    def config_for_saving(self) -> SpoolConfig:
        return self.config

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (atomically) to ``directory``."""
        os.makedirs(directory, exist_ok=True)
        atomic_save_safetensors(self.state_dict(), os.path.join(directory, WEIGHTS_NAME),
                                metadata={"format": "pt"})
        self.config_for_saving().save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any):
        """Load a directory written by ``save_pretrained``; ``kwargs`` override config fields
        (e.g. ``attn_implementation``) or are passed to the constructor (``with_backbone``)."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise OSError(f"{directory!r}: not a directory. Spool checkpoints are directories "
                          "with config.json and model.safetensors, written by save_pretrained")
        config = SpoolConfig.from_pretrained(directory)
        init_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k == "with_backbone"}
        config = config.replace(**kwargs)
        model = cls(config, **init_kwargs)
        path = os.path.join(directory, WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise OSError(f"{path}: missing weights file ({WEIGHTS_NAME})")
        ignore = () if init_kwargs.get("with_backbone", True) else ("backbone.", "spool.backbone.")
        check_and_load_state_dict(model, load_file(path), path, ignore)
        return model
