"""Object detection model factories over torchvision.

Each factory is the `_target_` of one conf/model option. num_classes counts the dataset's
classes; the models reserve label 0 for the background, so dataset class c is model label c + 1
(DetectionTask converts both ways). Models start from random weights, or with pretrained=true
from torchvision's COCO weights (where torchvision has them for the backbone), or with
pretrained_backbone=true from ImageNet weights for the backbone only; both come through the torch
hub cache, and the class-dependent layers are replaced when the class count differs, as `weights`
(a COCO state dict file) does.
Inputs are resized by the model to image_size (square), and at most detections_per_img boxes an
image are kept (100, as COCO scores).
"""
from __future__ import annotations

from torch import nn
from torchvision import models
from torchvision.models import detection
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from mitorch.errors import ConfigError
from mitorch.models.classification import _choose

# Model labels of the dataset's classes start at 1: 0 is the background.
BACKGROUND = 1


class _BatchNorm2d(nn.BatchNorm2d):
    """Batch norm for the ResNet-18 FPN backbones, which torchvision would build with frozen
    norms (fixed at the identity from random weights: an unnormalized ResNet whose training
    diverges at detection learning rates). It keeps FrozenBatchNorm2d's state-dict keys (no
    num_batches_tracked, which a set momentum never reads), so weights saved from those
    backbones load and predict as before."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.register_buffer("num_batches_tracked", None)


def _resnet18_fpn(**kwargs) -> nn.Module:
    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=_BatchNorm2d, trainable_layers=5,
                               **kwargs)


# COCO weights torchvision has, by (factory, backbone); ImageNet weights of the backbones.
_COCO = {("fasterrcnn", "mobilenet_v3_large"): "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
         ("fasterrcnn", "resnet50"): "FasterRCNN_ResNet50_FPN_V2_Weights",
         ("retinanet", "resnet50"): "RetinaNet_ResNet50_FPN_V2_Weights",
         ("fcos", "resnet50"): "FCOS_ResNet50_FPN_Weights",
         ("ssdlite", "mobilenet_v3_large"): "SSDLite320_MobileNet_V3_Large_Weights"}
_IMAGENET = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights",
             "mobilenet_v3_large": "MobileNet_V3_Large_Weights"}


def _pretrained(model: nn.Module, factory: str, backbone: str, pretrained: bool, pretrained_backbone: bool) -> nn.Module:
    """Loads COCO weights (head replaced for another class count) or ImageNet backbone weights."""
    from mitorch.models.weights import load_state, pretrained_state

    if pretrained:
        if (factory, backbone) not in _COCO:
            offered = [b for f, b in _COCO if f == factory]
            raise ConfigError(f"torchvision has no COCO weights for {factory} with backbone {backbone}; use "
                              f"model.pretrained_backbone=true (ImageNet) or model.backbone={' or '.join(offered)}")
        state, file = pretrained_state(getattr(detection, _COCO[factory, backbone]).DEFAULT)
        load_state(model, state, file, replace_head=True)
    elif pretrained_backbone:
        body = getattr(getattr(model, "backbone", None), "body", None)
        if body is None or backbone not in _IMAGENET:
            raise ConfigError(f"{factory} takes no ImageNet backbone weights here; use model.pretrained=true (COCO)")
        state, file = pretrained_state(getattr(models, _IMAGENET[backbone]).DEFAULT)
        state = {k.removeprefix("features."): v for k, v in state.items()}  # MobileNet's body is its features
        expected = body.state_dict()
        missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise ConfigError(f"the ImageNet weights {file.name} do not fit the {backbone} backbone (missing "
                              f"{', '.join(missing[:3])})")
        body.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return model


def _sizes(image_size: int) -> dict:
    if image_size < 32:
        raise ConfigError(f"detectors need an image_size of 32 or more, got {image_size}")
    return {"min_size": image_size, "max_size": image_size}


def fasterrcnn(num_classes: int, image_size: int = 512, backbone: str = "resnet18",
               detections_per_img: int = 100, score_thresh: float = 0.05, rpn_pre_nms_top_n_train: int = 2000,
               rpn_post_nms_top_n_train: int = 2000, box_batch_size_per_image: int = 512, pretrained: bool = False,
               pretrained_backbone: bool = False) -> nn.Module:
    """Faster R-CNN with an FPN over ResNet-18, MobileNetV3-Large or ResNet-50 (v2 recipe for 50).

    The rpn_*_train and box_batch_size_per_image counts trade training speed for recall; fewer
    proposals train several times faster on small images with few objects.
    """
    common = {"num_classes": num_classes + BACKGROUND, "weights": None, "weights_backbone": None,
              "box_detections_per_img": detections_per_img, "box_score_thresh": score_thresh,
              "rpn_pre_nms_top_n_train": rpn_pre_nms_top_n_train, "rpn_post_nms_top_n_train": rpn_post_nms_top_n_train,
              "box_batch_size_per_image": box_batch_size_per_image, **_sizes(image_size)}
    _choose("backbone", backbone, dict.fromkeys(("mobilenet_v3_large", "resnet18", "resnet50")))
    if backbone == "resnet18":
        body = _resnet18_fpn()
        del common["weights"], common["weights_backbone"]
        model = detection.FasterRCNN(body, **common)
    else:
        builders = {"mobilenet_v3_large": detection.fasterrcnn_mobilenet_v3_large_fpn,
                    "resnet50": detection.fasterrcnn_resnet50_fpn_v2}
        model = builders[backbone](**common)
    return _pretrained(model, "fasterrcnn", backbone, pretrained, pretrained_backbone)


def retinanet(num_classes: int, image_size: int = 512, detections_per_img: int = 100,
              score_thresh: float = 0.05, pretrained: bool = False, pretrained_backbone: bool = False) -> nn.Module:
    """RetinaNet with a ResNet-50 FPN (v2 recipe)."""
    model = detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes + BACKGROUND,
                                                detections_per_img=detections_per_img, score_thresh=score_thresh,
                                                **_sizes(image_size))
    return _pretrained(model, "retinanet", "resnet50", pretrained, pretrained_backbone)


def fcos(num_classes: int, image_size: int = 512, backbone: str = "resnet50", detections_per_img: int = 100,
         score_thresh: float = 0.2, pretrained: bool = False, pretrained_backbone: bool = False) -> nn.Module:
    """FCOS with a ResNet-50 (torchvision's) or ResNet-18 FPN."""
    common = {"num_classes": num_classes + BACKGROUND, "detections_per_img": detections_per_img,
              "score_thresh": score_thresh, **_sizes(image_size)}
    _choose("backbone", backbone, dict.fromkeys(("resnet50", "resnet18")))
    if backbone == "resnet50":
        model = detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, **common)
    else:
        model = detection.FCOS(_resnet18_fpn(returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)), **common)
    return _pretrained(model, "fcos", backbone, pretrained, pretrained_backbone)


def ssdlite(num_classes: int, image_size: int = 320, detections_per_img: int = 100,
            score_thresh: float = 0.001, pretrained: bool = False, pretrained_backbone: bool = False) -> nn.Module:
    """SSDlite with a MobileNetV3-Large backbone (320 px in torchvision; any size here)."""
    model = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                    num_classes=num_classes + BACKGROUND,
                                                    detections_per_img=detections_per_img, score_thresh=score_thresh)
    _sizes(image_size)
    model.transform.min_size, model.transform.max_size = (image_size,), image_size
    model.transform.fixed_size = (image_size, image_size)
    return _pretrained(model, "ssdlite", "mobilenet_v3_large", pretrained, pretrained_backbone)


__all__ = ["fasterrcnn", "fcos", "retinanet", "ssdlite"]
