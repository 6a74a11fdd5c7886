"""Model factories and weight files."""
from __future__ import annotations

from mitorch.models.classification import convnext_tiny, efficientnet, mobilenet_v3, resnet, vit_b_16
from mitorch.models.detection import fasterrcnn, fcos, retinanet, ssdlite

__all__ = ["convnext_tiny", "efficientnet", "fasterrcnn", "fcos", "mobilenet_v3", "resnet", "retinanet", "ssdlite",
           "vit_b_16"]
