"""Model factories and weight files."""
from __future__ import annotations

from mitorch.models.classification import convnext_tiny, efficientnet, mobilenet_v3, resnet, vit_b_16

__all__ = ["convnext_tiny", "efficientnet", "mobilenet_v3", "resnet", "vit_b_16"]
