"""Augmentation presets: small callables that each build one transforms.v2 pipeline.

They take uint8 image tensors (3, H, W) and return normalized float tensors.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_AUTO_AUGMENT = {
    "trivialaugment": v2.TrivialAugmentWide,
    "randaugment": v2.RandAugment,
    "autoaugment": v2.AutoAugment,
    "augmix": v2.AugMix,
}


class ClassificationTrainPreset:
    """Random-resized crop and optional horizontal flip, optionally an automatic augmentation policy.

    The defaults are MiTorch's (a crop of half the image or more, no flip); ImageNet's recipe is
    min_scale=0.08, hflip_prob=0.5.

    Args:
        crop_size: output size in pixels (square).
        hflip_prob: probability of a horizontal flip.
        auto_augment: None, "trivialaugment", "randaugment", "autoaugment" or "augmix".
        random_erase_prob: probability of erasing a random rectangle after normalization.
        min_scale: smallest fraction of the image area a crop covers.
    """

    def __init__(self, crop_size: int, hflip_prob: float = 0.0, auto_augment: str | None = None,
                 random_erase_prob: float = 0.0, min_scale: float = 0.5,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        if auto_augment is not None and auto_augment not in _AUTO_AUGMENT:
            raise ValueError(f"unknown auto_augment '{auto_augment}'; choose from {', '.join(_AUTO_AUGMENT)} or null")
        steps: list = [v2.RandomResizedCrop(crop_size, scale=(min_scale, 1.0), antialias=True)]
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if auto_augment is not None:
            steps.append(_AUTO_AUGMENT[auto_augment]())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        if random_erase_prob > 0:
            steps.append(v2.RandomErasing(random_erase_prob))
        self.transforms = v2.Compose(steps)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms(image)


class ClassificationValPreset:
    """Resize the shorter side to crop_size * resize_ratio, then center-crop to crop_size."""

    def __init__(self, crop_size: int, resize_ratio: float = 1.143,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        self.transforms = v2.Compose([
            v2.Resize(round(crop_size * resize_ratio), antialias=True),
            v2.CenterCrop(crop_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms(image)


class DetectionTrainPreset:
    """Box-aware training augmentation: photometric distortion, zoom out, random IoU crop,
    horizontal flip, then a square resize. Boxes move with the image; boxes left too small are
    removed. Outputs float images in [0, 1] (detectors normalize inside the model).

    Args:
        image_size: output size in pixels (square).
        hflip_prob: probability of a horizontal flip.
        photometric_prob: probability of a random photometric distortion.
        zoom_out_prob: probability of placing the image on a larger canvas (up to zoom_out_max).
        iou_crop: whether to take a random crop that keeps boxes (SSD's sampling).
    """

    def __init__(self, image_size: int, hflip_prob: float = 0.5, photometric_prob: float = 0.5,
                 zoom_out_prob: float = 0.5, zoom_out_max: float = 2.0, iou_crop: bool = True) -> None:
        steps: list = []
        if photometric_prob > 0:
            steps.append(v2.RandomPhotometricDistort(p=photometric_prob))
        if zoom_out_prob > 0:
            steps.append(v2.RandomZoomOut(fill=0, side_range=(1.0, zoom_out_max), p=zoom_out_prob))
        if iou_crop:
            steps.append(v2.RandomIoUCrop())
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        steps += [v2.Resize((image_size, image_size), antialias=True), v2.ClampBoundingBoxes(),
                  v2.SanitizeBoundingBoxes(min_size=1.0), v2.ToDtype(torch.float32, scale=True)]
        self.transforms = v2.Compose(steps)

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        return self.transforms(image, target)


class DetectionValPreset:
    """A square resize; float images in [0, 1]."""

    def __init__(self, image_size: int) -> None:
        self.transforms = v2.Compose([v2.Resize((image_size, image_size), antialias=True),
                                      v2.ToDtype(torch.float32, scale=True)])

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        return self.transforms(image, target)
