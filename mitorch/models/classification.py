"""Classification model factories over torchvision; the head is sized to num_classes.

Each factory is the `_target_` of one conf/model option. Models start from random weights, or
with pretrained=true from torchvision's ImageNet weights of the chosen depth, size or variant
(downloaded once into the torch hub cache, $TORCH_HOME/hub/checkpoints), the head replaced by
one sized to num_classes. Other weight files come through the `weights` key (see
mitorch.models.weights).
"""
from __future__ import annotations

from torch import nn
from torchvision import models

from mitorch.errors import ConfigError


def _choose(key: str, value: object, choices: dict) -> object:
    if value not in choices:
        raise ConfigError(f"model.{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return choices[value]


def _build(builder, num_classes: int, pretrained: bool, **kwargs) -> nn.Module:
    model = builder(num_classes=num_classes, **kwargs)
    if pretrained:
        from mitorch.models.weights import load_state, pretrained_state

        weights = models.get_model_weights(builder).DEFAULT
        state, file = pretrained_state(weights)
        load_state(model, state, file, replace_head=True)
    return model


def resnet(num_classes: int, depth: int = 18, pretrained: bool = False) -> nn.Module:
    """ResNet-18/34/50."""
    builder = _choose("depth", depth, {18: models.resnet18, 34: models.resnet34, 50: models.resnet50})
    return _build(builder, num_classes, pretrained)


def mobilenet_v3(num_classes: int, size: str = "large", pretrained: bool = False) -> nn.Module:
    """MobileNetV3 small or large."""
    builder = _choose("size", size, {"small": models.mobilenet_v3_small, "large": models.mobilenet_v3_large})
    return _build(builder, num_classes, pretrained)


def efficientnet(num_classes: int, variant: str = "b0", pretrained: bool = False) -> nn.Module:
    """EfficientNet b0..b3."""
    builders = {"b0": models.efficientnet_b0, "b1": models.efficientnet_b1,
                "b2": models.efficientnet_b2, "b3": models.efficientnet_b3}
    return _build(_choose("variant", variant, builders), num_classes, pretrained)


def convnext_tiny(num_classes: int, stochastic_depth_prob: float = 0.1, pretrained: bool = False) -> nn.Module:
    """ConvNeXt-Tiny."""
    return _build(models.convnext_tiny, num_classes, pretrained, stochastic_depth_prob=stochastic_depth_prob)


def vit_b_16(num_classes: int, image_size: int = 224, pretrained: bool = False) -> nn.Module:
    """ViT-B/16; image_size must be a multiple of 16 and match the input size (224 with
    pretrained weights, whose position embeddings are for 224)."""
    if image_size % 16:
        raise ConfigError(f"vit_b_16 needs an image_size that is a multiple of 16, got {image_size}")
    if pretrained and image_size != 224:
        raise ConfigError(f"vit_b_16's pretrained weights are for image_size=224, got {image_size}")
    return _build(models.vit_b_16, num_classes, pretrained, image_size=image_size)
