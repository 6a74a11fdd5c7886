"""Object detection model factories over torchvision.

Each factory is the `_target_` of one conf/model option. num_classes counts the dataset's
classes; the models reserve label 0 for the background, so dataset class c is model label c + 1
(DetectionTask converts both ways). Models start from random weights (`weights` loads a
torchvision COCO state dict, with the class-dependent layers replaced when the count differs).
Inputs are resized by the model to image_size (square), and at most detections_per_img boxes an
image are kept (100, as COCO scores).
"""
from __future__ import annotations

from torch import nn
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


def _sizes(image_size: int) -> dict:
    if image_size < 32:
        raise ConfigError(f"detectors need an image_size of 32 or more, got {image_size}")
    return {"min_size": image_size, "max_size": image_size}


def fasterrcnn(num_classes: int, image_size: int = 512, backbone: str = "resnet18",
               detections_per_img: int = 100, score_thresh: float = 0.05, rpn_pre_nms_top_n_train: int = 2000,
               rpn_post_nms_top_n_train: int = 2000, box_batch_size_per_image: int = 512) -> nn.Module:
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
        return detection.FasterRCNN(body, **common)
    builders = {"mobilenet_v3_large": detection.fasterrcnn_mobilenet_v3_large_fpn,
                "resnet50": detection.fasterrcnn_resnet50_fpn_v2}
    return builders[backbone](**common)


def retinanet(num_classes: int, image_size: int = 512, detections_per_img: int = 100,
              score_thresh: float = 0.05) -> nn.Module:
    """RetinaNet with a ResNet-50 FPN (v2 recipe)."""
    return detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes + BACKGROUND,
                                               detections_per_img=detections_per_img, score_thresh=score_thresh,
                                               **_sizes(image_size))


def fcos(num_classes: int, image_size: int = 512, backbone: str = "resnet50", detections_per_img: int = 100,
         score_thresh: float = 0.2) -> nn.Module:
    """FCOS with a ResNet-50 (torchvision's) or ResNet-18 FPN."""
    common = {"num_classes": num_classes + BACKGROUND, "detections_per_img": detections_per_img,
              "score_thresh": score_thresh, **_sizes(image_size)}
    _choose("backbone", backbone, dict.fromkeys(("resnet50", "resnet18")))
    if backbone == "resnet50":
        return detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, **common)
    body = _resnet18_fpn(returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return detection.FCOS(body, **common)


def ssdlite(num_classes: int, image_size: int = 320, detections_per_img: int = 100,
            score_thresh: float = 0.001) -> nn.Module:
    """SSDlite with a MobileNetV3-Large backbone (320 px in torchvision; any size here)."""
    model = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                    num_classes=num_classes + BACKGROUND,
                                                    detections_per_img=detections_per_img, score_thresh=score_thresh)
    _sizes(image_size)
    model.transform.min_size, model.transform.max_size = (image_size,), image_size
    model.transform.fixed_size = (image_size, image_size)
    return model


__all__ = ["fasterrcnn", "fcos", "retinanet", "ssdlite"]
