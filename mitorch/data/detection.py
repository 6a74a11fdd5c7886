"""Object detection data: the text format's detection lines, COCO instances JSON, and the Dataset.

Text format: each line is `<image> <label file>` (both may be zip members, `images.zip@1.jpg
labels.zip@1.txt`); each label file line is `<class> <xmin> <ymin> <xmax> <ymax>` in absolute
pixels; an empty label file is a negative image; labels.txt beside the list names the classes.

COCO: `images` (id, file_name, width, height), `annotations` (image_id, category_id, bbox
[x, y, w, h], iscrowd), `categories` (id, name). Categories become class indices in id order;
the ids are kept (DetectionIndex.category_ids) for COCO output.

Boxes are clipped to their image, and dropped when nothing is left; both are counted in one
warning. Coordinates are never reordered: a box whose xmax is below its xmin is dropped.
"""
from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torchvision import tv_tensors

from mitorch.data.formats import _read_labels_file, _resolve, check_images_exist, class_names_for
from mitorch.data.readers import FileReader
from mitorch.data.samplers import SampleKey, augmentation_random, split_key
from mitorch.errors import DataError


@dataclass
class DetectionIndex:
    """A detection dataset before any image is decoded.

    Attributes:
        images: image paths (absolute; "archive.zip@member" for zip members).
        boxes: per image, [xmin, ymin, xmax, ymax] lists in pixels, clipped to the image.
        labels: per image, the class index of each box.
        sizes: per image, (width, height).
        image_ids: per image, its COCO id (its position from 1 for the text format).
        sources: per image, where it was listed, for error messages.
        class_names: names of the classes.
        category_ids: per class, its COCO category id (class index + 1 for the text format).
    """

    images: list[str] = field(default_factory=list)
    boxes: list[list[list[float]]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def load_detection_index(path: str, class_names: list[str] | None = None) -> DetectionIndex:
    """Loads a detection dataset: a text list of `<image> <label file>` lines, or COCO JSON.

    Args:
        class_names: the training set's classes, which this set's labels must fit; None: this
            dataset defines them.

    Raises:
        DataError: a missing file, a line or label file that does not parse (naming file and
            line), a class out of range, or no images.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset not found: {path} (object detection takes a text file of '<image> <label file>' "
                        "lines or a COCO instances JSON file)")
    index = _load_coco(p, class_names) if p.suffix.lower() == ".json" else _load_text(p, class_names)
    if not index.images:
        raise DataError(f"dataset {path} has no images")
    check_images_exist(index)
    _clip(index, path)
    return index


def _load_text(path: Path, class_names: list[str] | None) -> DetectionIndex:
    own_names = _read_labels_file(path.parent / "labels.txt")
    names = class_names if class_names is not None else own_names
    reader = FileReader()
    index = DetectionIndex()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            source = f"{path} line {number}"
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{source}: expected '<image> <label file>', got {line.strip()!r}")
            image, label_file = (_resolve(path.parent, part) for part in parts)
            boxes, labels = _read_label_file(reader, label_file, source)
            index.images.append(image)
            index.boxes.append(boxes)
            index.labels.append(labels)
            index.sources.append(source)
            index.image_ids.append(len(index.images))
    index.class_names = class_names_for(index.labels, index.sources, names, word="class")
    index.category_ids = list(range(1, len(index.class_names) + 1))
    index.sizes = [_image_size(reader, image, source) for image, source in zip(index.images, index.sources)]
    return index


def _read_label_file(reader: FileReader, path: str, source: str) -> tuple[list[list[float]], list[int]]:
    try:
        text = reader.read(path).decode("utf-8")
    except (OSError, KeyError) as e:
        raise DataError(f"{source}: cannot read label file {path}: {e}") from None
    except UnicodeDecodeError:
        raise DataError(f"{source}: label file {path} is not UTF-8 text") from None
    boxes, labels = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError
            label, coordinates = int(parts[0]), [float(v) for v in parts[1:]]
        except ValueError:
            raise DataError(f"{path} line {number}: expected '<class> <xmin> <ymin> <xmax> <ymax>', "
                            f"got {line.strip()!r}") from None
        if label < 0:
            raise DataError(f"{path} line {number}: class {label} is negative")
        boxes.append(coordinates)
        labels.append(label)
    return boxes, labels


def _image_size(reader: FileReader, path: str, source: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(reader.read(path))) as image:
            return image.size
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{source}: cannot decode image {path}: {str(e).splitlines()[0] if str(e) else 'unknown'}") \
            from None


def _load_coco(path: Path, class_names: list[str] | None) -> DetectionIndex:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        categories = sorted(data["categories"], key=lambda c: c["id"])
        images = data["images"]
        annotations = data.get("annotations", [])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not COCO instances JSON ({type(e).__name__}: {e}); it needs images, "
                        "annotations and categories") from None
    names = [str(c["name"]) for c in categories]
    if class_names is not None and names != class_names:
        raise DataError(f"{path}: its categories ({', '.join(names)}) differ from the training set's classes "
                        f"({', '.join(class_names)})")
    class_of = {c["id"]: i for i, c in enumerate(categories)}
    index = DetectionIndex(class_names=names, category_ids=[c["id"] for c in categories])
    position = {}
    for number, image in enumerate(images, 1):
        try:
            image_id, file_name, size = image["id"], image["file_name"], (int(image["width"]), int(image["height"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: images[{number - 1}] needs id, file_name, width and height") from None
        position[image_id] = len(index.images)
        index.images.append(_resolve(path.parent, file_name))
        index.sizes.append(size)
        index.image_ids.append(image_id)
        index.sources.append(f"{path} image {image_id}")
        index.boxes.append([])
        index.labels.append([])
    for number, annotation in enumerate(annotations):
        try:
            i, label = position[annotation["image_id"]], class_of[annotation["category_id"]]
            x, y, w, h = (float(v) for v in annotation["bbox"])
        except KeyError as e:
            raise DataError(f"{path}: annotations[{number}] refers to an unknown {e.args[0]!s} or lacks a field") \
                from None
        except (TypeError, ValueError):
            raise DataError(f"{path}: annotations[{number}].bbox must be [x, y, width, height]") from None
        if annotation.get("iscrowd", 0):
            continue  # crowd regions are neither targets nor misses
        index.boxes[i].append([x, y, x + w, y + h])
        index.labels[i].append(label)
    return index


def _clip(index: DetectionIndex, path: str) -> None:
    clipped = dropped = 0
    for i, (width, height) in enumerate(index.sizes):
        kept_boxes, kept_labels = [], []
        for (x0, y0, x1, y1), label in zip(index.boxes[i], index.labels[i]):
            box = [min(max(x0, 0.0), width), min(max(y0, 0.0), height),
                   min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
            if box[2] - box[0] < 1e-3 or box[3] - box[1] < 1e-3:
                dropped += 1
                continue
            clipped += box != [x0, y0, x1, y1]
            kept_boxes.append(box)
            kept_labels.append(label)
        index.boxes[i], index.labels[i] = kept_boxes, kept_labels
    if clipped or dropped:
        print(f"warning: {path}: {clipped} box(es) clipped to their image, {dropped} dropped "
              "(empty, inverted or outside the image)", file=sys.stderr)


class DetectionDataset(torch.utils.data.Dataset):
    """(image, target): a uint8 tv_tensors.Image and {"boxes": BoundingBoxes (XYXY), "labels",
    "image_id"}, through a transforms.v2 pipeline that moves boxes with the image."""

    def __init__(self, index: DetectionIndex, transform=None) -> None:
        from mitorch.data.dataset import ImageDataset

        self.index = index
        self.transform = transform
        self._images = ImageDataset(index, multilabel=False)  # reading and decoding, with its errors

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | SampleKey):
        i, seed = split_key(key)
        image = tv_tensors.Image(self._images.load_image(i))
        height, width = image.shape[-2:]
        boxes = torch.tensor(self.index.boxes[i], dtype=torch.float32).reshape(-1, 4)
        if (width, height) != tuple(self.index.sizes[i]):
            raise DataError(f"{self.index.sources[i]}: the image is {width}x{height}, not the "
                            f"{self.index.sizes[i][0]}x{self.index.sizes[i][1]} its annotations say")
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
                  "labels": torch.tensor(self.index.labels[i], dtype=torch.int64),
                  "image_id": self.index.image_ids[i],
                  # For evaluation in the original pixels: plain tensors pass transforms untouched.
                  "orig_boxes": boxes.clone(), "orig_size": (width, height)}
        if self.transform is not None:
            with augmentation_random(seed):
                image, target = self.transform(image, target)
        return image, target


def collate(batch: list) -> tuple[list, list]:
    """Images and targets as lists: detection images and box counts differ in size."""
    images, targets = zip(*batch)
    return list(images), list(targets)
