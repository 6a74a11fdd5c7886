"""The built-in dataset: coloured shapes on noisy backgrounds, generated on first use.

Each shape kind is drawn in its own band of hues (circles red-orange, squares yellow-green,
...), so a short CPU run separates the classes; longer runs learn the shapes themselves.

It is written in the text format with JPEG images inside zip archives, so a run on it goes
through the same reader as a user's data. Generation is deterministic: every machine gets
the same images.
"""
from __future__ import annotations

import colorsys
import io
import math
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mitorch.paths import cache_dir

SHAPES = ("circle", "square", "triangle", "star", "cross")
IMAGE_SIZE = 64
_VERSION = "shapes-v1"
_SPLITS = {"train": (1000, 1), "val": (250, 2)}  # images, seed


DETECTION_IMAGE_SIZE = 128
_DETECTION_SPLITS = {"train": (400, 3), "val": (100, 4)}


def builtin_dataset(task_type: str) -> tuple[str, str]:
    """Paths of the built-in train and val text files, generating them on first use.

    Args:
        task_type: multiclass_classification (one shape an image), multilabel_classification
            (1-3 shapes) or object_detection (1-3 shapes with their boxes, bigger images, some
            images with none).

    Returns:
        (train.txt, val.txt) paths.
    """
    variant = {"multilabel_classification": "multilabel", "object_detection": "detection"}.get(task_type, "multiclass")
    root = cache_dir() / "builtin" / _VERSION / variant
    if not (root / "val.txt").is_file():
        _generate(root, variant)
    return str(root / "train.txt"), str(root / "val.txt")


def _generate(root: Path, variant: str) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so concurrent first runs never see half a dataset.
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        (work / "labels.txt").write_text("\n".join(SHAPES) + "\n")
        if variant == "detection":
            _generate_detection(work)
        else:
            _generate_classification(work, multilabel=variant == "multilabel")
        try:
            work.rename(root)
        except OSError:
            if not (root / "val.txt").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _generate_classification(work: Path, multilabel: bool) -> None:
    """SPLIT.zip@NAME.jpg lines with their labels."""
    for split, (count, seed) in _SPLITS.items():
        rng = np.random.default_rng([seed, int(multilabel)])
        lines = []
        with zipfile.ZipFile(work / f"{split}.zip", "w", zipfile.ZIP_STORED) as archive:
            for i in range(count):
                image, labels = _draw(rng, multilabel)
                name = f"{i:05d}.jpg"
                archive.writestr(name, _jpeg(image))
                lines.append(f"{split}.zip@{name} {','.join(map(str, labels))}")
        (work / f"{split}.txt").write_text("\n".join(lines) + "\n")


def _generate_detection(work: Path) -> None:
    """images.zip@NAME.jpg labels.zip@NAME.txt lines; each label file "<class> x0 y0 x1 y1" lines."""
    size = DETECTION_IMAGE_SIZE
    for split, (count, seed) in _DETECTION_SPLITS.items():
        rng = np.random.default_rng(seed)
        lines = []
        with zipfile.ZipFile(work / f"{split}_images.zip", "w", zipfile.ZIP_STORED) as images, \
                zipfile.ZipFile(work / f"{split}_labels.zip", "w", zipfile.ZIP_STORED) as labels:
            for i in range(count):
                background = rng.integers(0, 256, size=3)
                pixels = np.clip(background + rng.normal(0, 10, size=(size, size, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                draw = ImageDraw.Draw(image)
                boxes = []
                for _ in range(rng.choice(4, p=[0.1, 0.4, 0.3, 0.2])):  # a tenth of the images are negatives
                    kind, radius = int(rng.integers(len(SHAPES))), rng.uniform(10, 24)
                    cx, cy = rng.uniform(radius, size - radius, size=2)
                    colour = _contrasting(rng, background, kind)
                    corners = _draw_shape(draw, SHAPES[kind], cx, cy, radius, rng.uniform(0, 2 * math.pi), colour)
                    x0, y0, x1, y1 = (min(max(v, 0.0), size) for v in corners)
                    boxes.append(f"{kind} {x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}")
                images.writestr(f"{i:05d}.jpg", _jpeg(image))
                labels.writestr(f"{i:05d}.txt", "".join(f"{b}\n" for b in boxes))
                lines.append(f"{split}_images.zip@{i:05d}.jpg {split}_labels.zip@{i:05d}.txt")
        (work / f"{split}.txt").write_text("\n".join(lines) + "\n")


def _draw(rng: np.random.Generator, multilabel: bool) -> tuple[Image.Image, list[int]]:
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 10, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    kinds = rng.choice(len(SHAPES), size=rng.integers(1, 4), replace=False) if multilabel else [rng.integers(len(SHAPES))]
    radius_range = (10, 14) if multilabel else (18, 26)
    for kind in kinds:
        radius = rng.uniform(*radius_range)
        cx, cy = rng.uniform(radius, IMAGE_SIZE - radius, size=2)
        colour = _contrasting(rng, background, int(kind))
        _draw_shape(draw, SHAPES[int(kind)], cx, cy, radius, rng.uniform(0, 2 * math.pi), colour)
    return image, sorted(int(k) for k in kinds)


def _contrasting(rng: np.random.Generator, background: np.ndarray, kind: int) -> tuple[int, int, int]:
    # Each shape kind has its own band of hues, so that a one-minute CPU run learns the classes;
    # within the band, saturation and brightness vary.
    while True:
        hue = (kind / len(SHAPES) + rng.uniform(-0.06, 0.06)) % 1.0
        colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))) * 255
        if np.abs(colour - background).sum() > 150:
            return tuple(int(c) for c in colour)


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    step = 2 * math.pi / len(radii)
    return [(cx + r * math.cos(angle + i * step), cy + r * math.sin(angle + i * step)) for i, r in enumerate(radii)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float,
                colour: tuple[int, int, int]) -> tuple[float, float, float, float]:
    """Draws a shape; returns its tight box (x0, y0, x1, y1)."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        return cx - r, cy - r, cx + r, cy + r
    if shape == "cross":  # a plus sign of two bars
        w = r * 0.35
        cos, sin = math.cos(angle), math.sin(angle)
        points = []
        for bar in ([(-r, -w), (r, -w), (r, w), (-r, w)], [(-w, -r), (w, -r), (w, r), (-w, r)]):
            corners = [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in bar]
            draw.polygon(corners, fill=colour)
            points += corners
    else:
        radii = {"square": [r] * 4, "triangle": [r] * 3, "star": [r, r * 0.45] * 5}[shape]
        points = _polygon(cx, cy, radii, angle)
        draw.polygon(points, fill=colour)
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return min(xs), min(ys), max(xs), max(ys)
