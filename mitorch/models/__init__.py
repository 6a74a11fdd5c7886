"""Model factories and weight files."""
from __future__ import annotations

from mitorch.models.classification import convnext_tiny, efficientnet, mobilenet_v3, resnet, vit_b_16
from mitorch.models.detection import fasterrcnn, fcos, retinanet, ssdlite
from mitorch.models.timm_models import timm_model

__all__ = ["convnext_tiny", "efficientnet", "fasterrcnn", "fcos", "mobilenet_v3", "resnet", "retinanet", "ssdlite",
           "timm_model", "vit_b_16"]
