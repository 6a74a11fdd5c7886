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
            return _boxes(image, inputs, output["boxes"].cpu(), output["scores"].cpu(), output["labels"].cpu() - 1,
                          self.class_names, self.threshold)
        logits = self.model(self.transform(pixels).unsqueeze(0).to(self.device))[0].float().cpu()
        return _classes(logits, self.task_type, self.class_names, self.threshold)


class ExportedPredictor:
    """An exported model (miexport's ONNX or TorchScript file and its sidecar) ready to predict,
    with Predictor's output: the sidecar gives the preprocessing and the class names.

    Raises:
        ConfigError: path has no sidecar; ExportError: onnxruntime is missing.
    """

    def __init__(self, path: str, threshold: float | None = None) -> None:
        from torchvision.transforms import v2

        from mitorch.export import load_exported, read_sidecar

        sidecar = read_sidecar(path)
        if sidecar is None:
            raise ConfigError(f"{path} has no sidecar {path}.json; export it again with miexport")
        self.class_names = sidecar["class_names"]
        self.task_type = sidecar["task_type"]
        self.threshold = threshold
        resize = sidecar["resize"]
        steps = ([v2.Resize(resize["size"], antialias=True)] if "size" in resize else
                 [v2.Resize(resize["shorter_side"], antialias=True), v2.CenterCrop(resize["center_crop"])])
        self.transform = v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])
        self.run = load_exported(path, sidecar)
        self._reader = FileReader()

    def load(self, path: str) -> Image.Image:
        return read_image(self._reader, path)

    def predict(self, image: Image.Image) -> dict[str, Any]:
        """{"boxes": [...]} for detection, {"classes": [...]} for classification."""
        inputs = self.transform(tv_tensors.Image(pil_to_tensor(image))).as_subclass(torch.Tensor)
        if self.task_type == "object_detection":
            boxes, scores, labels = self.run(inputs)
            return _boxes(image, inputs, boxes, scores, labels, self.class_names, self.threshold)
        return _classes(self.run(inputs.unsqueeze(0))[0][0].float(), self.task_type, self.class_names,
                        self.threshold)


def _boxes(image: Image.Image, inputs: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
           labels: torch.Tensor, class_names: list[str], threshold: float | None) -> dict[str, Any]:
    """Boxes over the threshold, in the image's own pixels; labels index class_names."""
    scale = torch.tensor([image.width / inputs.shape[-1], image.height / inputs.shape[-2]] * 2)
    threshold = 0.5 if threshold is None else threshold
    found = []
    for box, score, label in zip((boxes * scale).tolist(), scores.tolist(), labels.tolist()):
        if score >= threshold:
            found.append({"class": class_names[label], "index": label, "score": round(score, 4),
                          "box": [round(v, 1) for v in box]})
    return {"boxes": found}


def _classes(logits: torch.Tensor, task_type: str, class_names: list[str], threshold: float | None) -> dict[str, Any]:
    """The top classes (multiclass) or those over the threshold (multilabel) of one image's logits."""
    if task_type == "multilabel_classification":
        scores = logits.sigmoid()
        threshold = 0.5 if threshold is None else threshold
        order = [i for i in scores.argsort(descending=True).tolist() if scores[i] >= threshold]
    else:
        scores = logits.softmax(0)
        order = scores.argsort(descending=True)[:TOP_CLASSES].tolist()
        if threshold is not None:
            order = [i for i in order if scores[i] >= threshold]
    return {"classes": [{"class": class_names[i], "index": i, "score": round(float(scores[i]), 4)} for i in order]}


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
