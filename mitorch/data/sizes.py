"""The input size a run uses when the config leaves image_size unset (image_size=null)."""
from __future__ import annotations

import io
import statistics
from typing import Any

from omegaconf import DictConfig

from mitorch.data.readers import FileReader

# Where a size taken from the data may lie: small data keeps its own scale (upscaling 32 px
# images to 224 px costs ~50x the compute and loses accuracy on short trainings), large data
# is brought down to the sizes the architectures were designed for.
CLASSIFICATION_RANGE = (32, 224)
DETECTION_RANGE = (64, 512)
SAMPLE = 64  # image headers read to judge a dataset's size
_TORCHVISION_PRETRAINED = {("mitorch.models.efficientnet", "b1"): 240, ("mitorch.models.efficientnet", "b2"): 260,
                           ("mitorch.models.efficientnet", "b3"): 300}


def pretrained_input_size(model: DictConfig) -> int | None:
    """The input size the model's pretrained weights were trained at, when it starts from them."""
    target = model.get("_target_")
    if target == "mitorch.models.timm_model" and (model.get("pretrained") or model.get("pretrained_file")):
        import timm

        if timm.is_model(model.name):
            config = timm.models.get_pretrained_cfg(model.name)
            if config is not None and config.input_size:
                return int(config.input_size[-1])
        return None
    if model.get("pretrained"):
        return _TORCHVISION_PRETRAINED.get((target, model.get("variant")), 224)
    return None


def size_from_images(images: list[str], sizes: list[tuple[int, int]] | None, detection: bool) -> tuple[int, str]:
    """(size, why) from the training images: the median longer side, rounded up to a multiple of
    32 and kept within CLASSIFICATION_RANGE or DETECTION_RANGE. Reads the headers of at most
    SAMPLE images spread over the dataset (a detection index already holds every size)."""
    low, high = DETECTION_RANGE if detection else CLASSIFICATION_RANGE
    if sizes:
        longer = [max(w, h) for w, h in sizes]
    else:
        from PIL import Image

        step = max(len(images) // SAMPLE, 1)
        reader = FileReader()
        longer = []
        for path in images[::step][:SAMPLE]:
            try:
                with Image.open(io.BytesIO(reader.read(path))) as image:
                    longer.append(max(image.size))
            except (OSError, ValueError):
                continue  # a corrupt image is reported, with its line, when it is loaded
    if not longer:
        return high, "no training image could be read to judge their size"
    median = int(statistics.median(longer))
    size = min(max(-(-median // 32) * 32, low), high)
    return size, (f"the median longer side of {len(longer)} training images is {median} px; rounded up to a multiple "
                  f"of 32 within [{low}, {high}]")


def choose(cfg: DictConfig, index: Any | None, trained: dict[str, Any] | None, builtin: int | None,
           default: int) -> tuple[int, str]:
    """(image_size, why) for a config whose image_size is null.

    Args:
        index: the training set's index, when it is loaded (training).
        trained: the config stored with the weights being evaluated (mitest, mipredict).
        builtin: the built-in dataset's size when the run uses it.
        default: the size when nothing else tells.
    """
    if trained and isinstance(trained.get("image_size"), int):
        return trained["image_size"], "the size the weights were trained at"
    if builtin is not None:
        return builtin, "the built-in dataset's size"
    pretrained = pretrained_input_size(cfg.model)
    if pretrained is not None:
        return pretrained, "the input size of the model's pretrained weights"
    if index is not None and len(index.images):
        return size_from_images(index.images, getattr(index, "sizes", None), cfg.task_type == "object_detection")
    return default, "the default when the training images are not at hand"
