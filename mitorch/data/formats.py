"""Dataset formats: the text format ("<image> <label>" lines) and image folders."""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from mitorch.data.readers import FileReader, split_zip_path
from mitorch.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class DatasetIndex:
    """What a dataset holds, before any image is read.

    Attributes:
        images: image paths (absolute; "archive.zip@member" for zip members).
        labels: per image, the list of class indices (one for multiclass).
        sources: per image, where it was listed ("train.txt line 3"), for error messages.
        class_names: names of the classes, index i naming class i.
    """

    images: list[str] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def load_index(path: str, multilabel: bool, class_names: list[str] | None = None) -> DatasetIndex:
    """Loads a dataset description: a text file or an image folder.

    Args:
        path: a text file, or a folder with one sub-folder per class.
        multilabel: whether lines carry comma-separated label lists.
        class_names: the classes the labels must fit (the training set's); None: this
            dataset defines them.

    Raises:
        DataError: a missing file, a bad line, a label out of range, or no images.
    """
    p = Path(path)
    if p.is_dir():
        index = _load_folder(p, class_names)
    elif p.is_file():
        index = _load_text(p, multilabel, class_names)
    else:
        raise DataError(f"dataset not found: {path} (give a text file of '<image> <label>' lines or an image folder)")
    if not index.images:
        raise DataError(f"dataset {path} has no images")
    check_images_exist(index)
    return index


def _load_text(path: Path, multilabel: bool, class_names: list[str] | None) -> DatasetIndex:
    own_names = _read_labels_file(path.parent / "labels.txt")
    if class_names is not None and own_names is not None and own_names != class_names:
        raise DataError(f"{path.parent / 'labels.txt'} names other classes than the training set's labels.txt")
    names = class_names if class_names is not None else own_names
    index = DatasetIndex()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            source = f"{path} line {number}"
            image, label_text = _split_line(line, multilabel, source)
            labels = _parse_labels(label_text, multilabel, source)
            index.images.append(_resolve(path.parent, image))
            index.labels.append(labels)
            index.sources.append(source)
    index.class_names = class_names_for(index.labels, index.sources, names)
    return index


def class_names_for(labels: list[list[int]], sources: list[str], names: list[str] | None,
                    word: str = "label") -> list[str]:
    """The class names of a dataset: names (labels.txt, or the training set's), else label_0 ...
    up to the largest index used; every label must be below their count.

    Raises:
        DataError: naming the line of the first label out of range (called `word` there).
    """
    count = len(names) if names is not None else max((max(ls) for ls in labels if ls), default=-1) + 1
    for image_labels, source in zip(labels, sources):
        for label in image_labels:
            if label >= count:
                where = "labels.txt names" if names is not None else "the training set has"
                raise DataError(f"{source}: {word} {label} is out of range; {where} {count} classes (0..{count - 1})")
    return list(names) if names is not None else [f"label_{i}" for i in range(count)]


def _split_line(line: str, multilabel: bool, source: str) -> tuple[str, str]:
    parts = line.rsplit(maxsplit=1)
    if len(parts) == 2 and (not multilabel or all(p.strip().isdigit() for p in parts[1].split(",") if p.strip())):
        return parts[0], parts[1]
    if multilabel:
        return line, ""  # an image with none of the labels
    raise DataError(f"{source}: expected '<image> <label>', got {line!r}")


def _parse_labels(text: str, multilabel: bool, source: str) -> list[int]:
    if not multilabel and "," in text:
        raise DataError(f"{source}: one label expected for multiclass_classification, got {text!r} "
                        "(use task_type=multilabel_classification for label lists)")
    labels = []
    for part in (p for p in text.split(",") if p.strip()):
        try:
            label = int(part)
        except ValueError:
            raise DataError(f"{source}: label {part!r} is not a class index (0, 1, ...)") from None
        if label < 0:
            raise DataError(f"{source}: label {label} is negative")
        labels.append(label)
    return sorted(set(labels))


def _read_labels_file(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return names or None


def _resolve(base: Path, image: str) -> str:
    archive, member = split_zip_path(image)
    archive = archive if os.path.isabs(archive) else str(base / archive)
    return archive if member is None else f"{archive}@{member}"


def _load_folder(path: Path, class_names: list[str] | None) -> DatasetIndex:
    folders = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = class_names if class_names is not None else folders
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise DataError(f"{path}: folder(s) {', '.join(unknown)} are not classes of the training set ({', '.join(names)})")
    index = DatasetIndex(class_names=list(names))
    for label, name in enumerate(names):
        folder = path / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.rglob("*")):
            if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file():
                index.images.append(str(file))
                index.labels.append([label])
                index.sources.append(f"{path} class {name}")
    return index


def check_images_exist(index: DatasetIndex) -> None:
    reader = FileReader()
    members: dict[str, set[str]] = {}
    for image, source in zip(index.images, index.sources):
        archive, member = split_zip_path(image)
        if member is None:
            if not os.path.isfile(archive):
                raise DataError(f"{source}: image not found: {archive}")
            continue
        if archive not in members:
            if not os.path.isfile(archive):
                raise DataError(f"{source}: zip archive not found: {archive}")
            try:
                members[archive] = reader.members(archive)
            except zipfile.BadZipFile:
                raise DataError(f"{source}: {archive} is not a valid zip archive") from None
        if member not in members[archive]:
            raise DataError(f"{source}: {member} is not in {archive}")
