"""Predictions on image files for every task type, and pictures of them (mipredict)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import pil_to_tensor

from mitorch import build
from mitorch.data.readers import FileReader
from mitorch.data.dataset import read_image
from mitorch.errors import ConfigError
from mitorch.models.weights import load_state

TOP_CLASSES = 5


class Predictor:
    """A trained model ready to predict: the config's model and validation preset, the weights'
    class names.

    Args:
        threshold: the least score reported (boxes, multilabel classes); None: 0.5 for those,
            and the top classes whatever their score for multiclass classification.
    """

    def __init__(self, cfg: DictConfig, threshold: float | None = None) -> None:
        from mitorch.api import _default_image_size, _device, _prepare, weights_for_task

        cfg = _prepare(cfg)
        state, metadata = weights_for_task(cfg)
        self.class_names = metadata.get("class_names")
        if not self.class_names:
            raise ConfigError(f"weights {cfg.weights} carry no class names; give weights written by mitrain -o")
        _default_image_size(cfg, metadata=metadata)
        self.task_type = cfg.task_type
        self.threshold = threshold
        self.device = _device(cfg)
        self.transform = build.build_transforms(cfg)[1]
        self.model = build.build_model(cfg, len(self.class_names))
        load_state(self.model, state, cfg.weights, replace_head=False)
        self.model.to(self.device).eval()
        self._reader = FileReader()

    def load(self, path: str) -> Image.Image:
        return read_image(self._reader, path)

    @torch.no_grad()
    def predict(self, image: Image.Image) -> dict[str, Any]:
        """{"boxes": [...]} for detection, {"classes": [...]} for classification."""
        pixels = tv_tensors.Image(pil_to_tensor(image))
        if self.task_type == "object_detection":
            empty = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=pixels.shape[-2:])
            inputs, _ = self.transform(pixels, {"boxes": empty, "labels": torch.zeros(0, dtype=torch.int64)})
            output = self.model([inputs.to(self.device)])[0]
            scale = torch.tensor([image.width / inputs.shape[-1], image.height / inputs.shape[-2]] * 2)
            threshold = 0.5 if self.threshold is None else self.threshold
            boxes = []
            for box, score, label in zip((output["boxes"].cpu() * scale).tolist(), output["scores"].tolist(),
                                         (output["labels"] - 1).tolist()):
                if score >= threshold:
                    boxes.append({"class": self.class_names[label], "index": label, "score": round(score, 4),
                                  "box": [round(v, 1) for v in box]})
            return {"boxes": boxes}
        logits = self.model(self.transform(pixels).unsqueeze(0).to(self.device))[0].float().cpu()
        if self.task_type == "multilabel_classification":
            scores = logits.sigmoid()
            threshold = 0.5 if self.threshold is None else self.threshold
            order = [i for i in scores.argsort(descending=True).tolist() if scores[i] >= threshold]
        else:
            scores = logits.softmax(0)
            order = scores.argsort(descending=True)[:TOP_CLASSES].tolist()
            if self.threshold is not None:
                order = [i for i in order if scores[i] >= self.threshold]
        return {"classes": [{"class": self.class_names[i], "index": i, "score": round(float(scores[i]), 4)}
                            for i in order]}


def draw(image: Image.Image, prediction: dict[str, Any]) -> Image.Image:
    """A copy of image with the boxes (and their class and score) or the top classes drawn on it."""
    image = image.copy()
    pen = ImageDraw.Draw(image)
    for box in prediction.get("boxes", []):
        x0, y0, x1, y1 = box["box"]
        pen.rectangle([x0, y0, x1, y1], outline=(255, 40, 40), width=2)
        pen.text((x0 + 2, max(y0 - 11, 0)), f"{box['class']} {box['score']:.2f}", fill=(255, 255, 0))
    for row, item in enumerate(prediction.get("classes", [])[:3]):
        pen.text((3, 3 + 11 * row), f"{item['class']} {item['score']:.2f}", fill=(255, 255, 0))
    return image


def picture_path(folder: Path, image: str, taken: set[str]) -> Path:
    """folder/<image name>.png, numbered when two images share a name."""
    stem = Path(image.split("@")[-1]).stem or "image"
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}.png"
    taken.add(name)
    return folder / name
