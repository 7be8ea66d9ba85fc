"""Spool: a bidirectional temporal transformer over foundation image models for video."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
# The model classes and loaders of spool.models, at the top level as transformers has them.
_MODELS = ("Spool", "SpoolOutput", "SpoolPreTrainedModel", "SpoolForVideoClassification",
           "SpoolForFrameClassification", "FramePoolingForVideoClassification",
           "FrameProbeForFrameClassification", "MSTCNForFrameClassification",
           "FrameEncoderModel", "load_pretrained", "load_classifier", "export_onnx",
           "OnnxExport")
__all__ = ["SpoolConfig", *_MODELS, "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `spool --help` and the config do not import torch and transformers.
    if name == "SpoolConfig":
        from spool.config import SpoolConfig

        return SpoolConfig
    if name in _MODELS:
        import spool.models as models

        return getattr(models, name)
    raise AttributeError(f"module 'spool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
