"""COCO files of an evaluation: ground_truth.json (instances) and predictions.json (results).

Boxes are written as [x, y, w, h] in the original image's pixels, converted from the same
float32 corner boxes that the mAP was computed on, so pycocotools on these two files gives the
mAP that mitest printed. Category ids are the dataset's own (COCO input) or class index + 1.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torchvision.ops import box_convert

from mitorch.data.detection import DetectionIndex


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    return box_convert(boxes.float().reshape(-1, 4), "xyxy", "xywh").tolist()


def write_coco(folder: Path, index: DetectionIndex, predictions: list) -> None:
    """Writes folder/ground_truth.json for the evaluated images and folder/predictions.json.

    Args:
        predictions: (image_id, boxes xyxy, scores, labels) per evaluated image.
    """
    folder.mkdir(parents=True, exist_ok=True)
    evaluated = {image_id for image_id, *_ in predictions}
    position = {image_id: i for i, image_id in enumerate(index.image_ids)}
    images, annotations = [], []
    for image_id in sorted(evaluated, key=position.__getitem__):
        i = position[image_id]
        width, height = index.sizes[i]
        images.append({"id": image_id, "file_name": index.images[i], "width": width, "height": height})
        for box, label in zip(_xywh(torch.tensor(index.boxes[i])), index.labels[i]):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": index.category_ids[label], "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": category, "name": name} for category, name in zip(index.category_ids, index.class_names)]
    results = [{"image_id": image_id, "category_id": index.category_ids[int(label)], "bbox": box, "score": float(score)}
               for image_id, boxes, scores, labels in predictions
               for box, score, label in zip(_xywh(boxes), scores.tolist(), labels.tolist())]
    _write(folder / "ground_truth.json", {"images": images, "annotations": annotations, "categories": categories})
    _write(folder / "predictions.json", results)


def _write(path: Path, content: object) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(content))
    os.replace(temporary, path)
