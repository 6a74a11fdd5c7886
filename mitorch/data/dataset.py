"""The torch Dataset over a DatasetIndex: reads, decodes and transforms one image."""
from __future__ import annotations

import io
from collections.abc import Callable

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor

from mitorch.data.formats import DatasetIndex
from mitorch.data.readers import FileReader
from mitorch.data.samplers import SampleKey, augmentation_random, split_key
from mitorch.errors import DataError


class ImageDataset(torch.utils.data.Dataset):
    """Images with class targets: an int (multiclass) or a multi-hot float vector (multilabel)."""

    def __init__(self, index: DatasetIndex, multilabel: bool, transform: Callable | None = None) -> None:
        self.index = index
        self.multilabel = multilabel
        self.transform = transform
        self.num_classes = len(index.class_names)
        self._reader = FileReader()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, torch.Tensor | int]:
        i, seed = split_key(key)
        image = self.load_image(i)
        if self.transform is not None:
            with augmentation_random(seed):
                image = self.transform(image)
        labels = self.index.labels[i]
        if self.multilabel:
            target = torch.zeros(self.num_classes)
            target[labels] = 1.0
            return image, target
        return image, labels[0]

    def load_image(self, i: int) -> torch.Tensor:
        """The i-th image as a uint8 RGB tensor (3, H, W)."""
        return pil_to_tensor(read_image(self._reader, self.index.images[i], f"{self.index.sources[i]}: "))


def read_image(reader: FileReader, path: str, where: str = "") -> Image.Image:
    """An image file or zip member, decoded by Pillow and converted to RGB.

    Raises:
        DataError: starting with `where`, naming the file and why it cannot be read or decoded.
    """
    try:
        data = reader.read(path)
    except (OSError, KeyError) as e:
        raise DataError(f"{where}cannot read image {path}: {e}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise DataError(f"{where}cannot decode image {path}: not an image format "
                        "that Pillow reads (or the file is corrupt)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unknown format"
        raise DataError(f"{where}cannot decode image {path}: {reason}") from None
