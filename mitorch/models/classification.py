"""Classification model factories over torchvision; the head is sized to num_classes.

Each factory is the `_target_` of one conf/model option. Models start from random weights;
pretrained weights come through the `weights` key (see mitorch.models.weights).
"""
from __future__ import annotations

from torch import nn
from torchvision import models

from mitorch.errors import ConfigError


def _choose(key: str, value: object, choices: dict) -> object:
    if value not in choices:
        raise ConfigError(f"model.{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return choices[value]


def resnet(num_classes: int, depth: int = 18) -> nn.Module:
    """ResNet-18/34/50."""
    builder = _choose("depth", depth, {18: models.resnet18, 34: models.resnet34, 50: models.resnet50})
    return builder(num_classes=num_classes)


def mobilenet_v3(num_classes: int, size: str = "large") -> nn.Module:
    """MobileNetV3 small or large."""
    builder = _choose("size", size, {"small": models.mobilenet_v3_small, "large": models.mobilenet_v3_large})
    return builder(num_classes=num_classes)


def efficientnet(num_classes: int, variant: str = "b0") -> nn.Module:
    """EfficientNet b0..b3."""
    builders = {"b0": models.efficientnet_b0, "b1": models.efficientnet_b1,
                "b2": models.efficientnet_b2, "b3": models.efficientnet_b3}
    return _choose("variant", variant, builders)(num_classes=num_classes)


def convnext_tiny(num_classes: int, stochastic_depth_prob: float = 0.1) -> nn.Module:
    """ConvNeXt-Tiny."""
    return models.convnext_tiny(num_classes=num_classes, stochastic_depth_prob=stochastic_depth_prob)


def vit_b_16(num_classes: int, image_size: int = 224) -> nn.Module:
    """ViT-B/16; image_size must be a multiple of 16 and match the input size."""
    if image_size % 16:
        raise ConfigError(f"vit_b_16 needs an image_size that is a multiple of 16, got {image_size}")
    return models.vit_b_16(num_classes=num_classes, image_size=image_size)
