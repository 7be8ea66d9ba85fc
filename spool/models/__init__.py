"""Spool models; importing this package registers every architecture for ``load_pretrained``."""

from spool.models.classification import (
    FramePoolingForVideoClassification,
    SpoolForVideoClassification,
    load_classifier,
)
from spool.models.export import OnnxExport, export_onnx
from spool.models.frame_baselines import (
    FrameProbeForFrameClassification,
    MSTCNForFrameClassification,
)
from spool.models.frame_classification import SpoolForFrameClassification
from spool.models.frame_encoder import FrameEncoderModel
from spool.models.pretrained import SpoolPreTrainedModel, load_pretrained
from spool.models.spool import Spool, SpoolOutput

__all__ = [
    "FrameEncoderModel",
    "FrameProbeForFrameClassification",
    "MSTCNForFrameClassification",
    "OnnxExport",
    "FramePoolingForVideoClassification",
    "Spool",
    "SpoolForFrameClassification",
    "SpoolForVideoClassification",
    "SpoolOutput",
    "SpoolPreTrainedModel",
    "export_onnx",
    "load_classifier",
    "load_pretrained",
]
