"""The model an export holds: a weights file's model, wrapped so that it takes [0, 1] pixels (and,
for detectors, one image and gives class indices), and the sidecar that describes it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mitorch.errors import DataError, MiTorchError

FORMAT = "mitorch-export-v1"
DETECTION = "object_detection"


class ExportError(MiTorchError):
    """An export that failed its check, or a model that cannot be exported."""


def sidecar_path(path: str | Path) -> Path:
    """The sidecar JSON of an exported model: `model.onnx` -> `model.onnx.json`."""
    return Path(f"{path}.json")


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar of an exported model, or None when path has none (a weights file)."""
    file = sidecar_path(path)
    if not file.is_file():
        return None
    try:
        sidecar = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return sidecar if isinstance(sidecar, dict) and sidecar.get("format") == FORMAT else None


class _Classifier(nn.Module):
    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image - self.mean) / self.std)


class _Detector(nn.Module):
    """One image in, (boxes, scores, labels) out; labels count from 0 like class_names (the
    model's own labels reserve 0 for the background)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():
            detections = self.model([image])[1][0]
        else:
            detections = self.model([image])[0]
        return detections["boxes"], detections["scores"], detections["labels"] - 1


def model_from_weights(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The weights' model, in eval mode, and the sidecar that describes it (without the check)."""
    from omegaconf import OmegaConf

    from mitorch import build
    from mitorch.models.weights import load_state, read_weights

    state, metadata = read_weights(path)
    class_names, task_type, config = (metadata.get(k) for k in ("class_names", "task_type", "config"))
    if not class_names or not task_type or not isinstance(config, dict):
        raise DataError(f"weights {path} carry no class names, task type or config; export weights written by "
                        "mitrain -o")
    cfg = OmegaConf.create(config)
    build.check_targets(cfg)
    if cfg.get("image_size") is None:
        raise DataError(f"weights {path} record no image_size; export weights written by mitrain -o")
    model = build.build_model(cfg, len(class_names))
    load_state(model, state, path, replace_head=False)
    model.eval()
    size = int(cfg.image_size)
    val = OmegaConf.to_container(cfg.augmentation.val, resolve=True)
    target = str(val.get("_target_", ""))
    sidecar: dict[str, Any] = {"format": FORMAT, "task_type": task_type, "class_names": list(class_names),
                               "image_size": size, "weights": str(path.resolve())}
    if task_type == DETECTION:
        if not target.endswith("DetectionValPreset"):
            raise ExportError(f"augmentation.val is {target}; miexport knows DetectionValPreset for detectors")
        transform = getattr(model, "transform", None)
        mean, std = list(transform.image_mean), list(transform.image_std)
        sidecar |= {"resize": {"size": [size, size]}, "input": {"name": "image", "shape": [3, size, size]},
                    "outputs": ["boxes", "scores", "labels"]}
        wrapped: nn.Module = _Detector(model)
    else:
        if not target.endswith("ClassificationValPreset"):
            raise ExportError(f"augmentation.val is {target}; miexport knows ClassificationValPreset for "
                              "classifiers")
        from mitorch.data.presets import IMAGENET_MEAN, IMAGENET_STD

        mean, std = list(val.get("mean", IMAGENET_MEAN)), list(val.get("std", IMAGENET_STD))
        shorter = round(int(val.get("crop_size", size)) * float(val.get("resize_ratio", 1.143)))
        sidecar |= {"resize": {"shorter_side": shorter, "center_crop": int(val.get("crop_size", size))},
                    "input": {"name": "image", "shape": ["batch", 3, size, size]}, "outputs": ["logits"]}
        wrapped = _Classifier(model, mean, std)
    sidecar |= {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                "pixels": "float32 RGB scaled to [0, 1], resized as 'resize' says; the model normalizes with "
                          "mean and std"}
    return wrapped.eval(), sidecar
