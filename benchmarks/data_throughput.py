"""Images per second of MiTorch's data loading against torchvision's ImageFolder.

Both read the same JPEGs (MiTorch: the text format with the images inside a zip archive;
ImageFolder: the same files in class folders), apply the same training preset
(ImageNet's random-resized crop + flip at 224 px, normalization), and use the same DataLoader settings
(workers, batch size). Runs alternate; the script prints each side's best and median
images/s and the ratio MiTorch / ImageFolder (target: at least 1.0).

A third side loads MiTorch's dataset through its training sampler, whose keys carry each image's
augmentation seed (so every augmentation is a function of seed, epoch and index), against the
same shuffled order with plain indices: the ratio is the cost of that (target: at least 0.97).
Whole loader runs vary by up to 20% from one to the next on a shared machine, so the same two
are also timed image by image, alternating, in this process: the steadier figure.

    python benchmarks/data_throughput.py [--images 1000] [--workers 2] [--repeats 4]
"""
from __future__ import annotations

import argparse
import io
import itertools
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from mitorch.data.dataset import ImageDataset
from mitorch.data.formats import load_index
from mitorch.data.presets import ClassificationTrainPreset
from mitorch.data.samplers import EpochSampler


def _write_images(root: Path, count: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    lines = []
    with zipfile.ZipFile(root / "images.zip", "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            label = i % classes
            # A smooth gradient with noise, 400x320: JPEG sizes like a photo's.
            base = np.linspace(0, 255, 400)[None, :, None] * rng.uniform(0.3, 1.0, size=(1, 1, 3))
            pixels = np.clip(base + rng.normal(0, 20, size=(320, 400, 3)), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
            name = f"{label}/{i:05d}.jpg"
            archive.writestr(name, buffer.getvalue())
            (root / "folder" / str(label)).mkdir(parents=True, exist_ok=True)
            (root / "folder" / name).write_bytes(buffer.getvalue())
            lines.append(f"images.zip@{name} {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")


class _PlainIndices(torch.utils.data.Sampler[int]):
    """The training sampler's order, as plain indices (augmentations from the workers' generators)."""

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def __iter__(self):
        return (key.index for key in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def _images_per_second(dataset: torch.utils.data.Dataset, workers: int, batch_size: int,
                       sampler: torch.utils.data.Sampler | None = None) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                         num_workers=workers, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    images = sum(inputs.shape[0] for inputs, _ in loader)
    return images / (time.perf_counter() - start)


def _interleaved(dataset: ImageDataset, keys: EpochSampler, count: int) -> tuple[float, float]:
    """Seconds an image with its seed and with a plain index, loaded in this process image by
    image, the two alternating (which goes first alternates too): both meet the same machine
    conditions, so the ratio holds still where whole-epoch runs vary by 20% on a shared machine."""
    seeded = plain = 0.0
    for i, key in enumerate(itertools.islice(iter(keys), count)):
        for with_seed in ((True, False) if i % 2 == 0 else (False, True)):
            start = time.perf_counter()
            dataset[key if with_seed else key.index]
            elapsed = time.perf_counter() - start
            if with_seed:
                seeded += elapsed
            else:
                plain += elapsed
    return seeded / count, plain / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _write_images(root, args.images)
        preset = ClassificationTrainPreset(224, hflip_prob=0.5, min_scale=0.08)  # ImageNet's recipe
        mitorch_dataset = ImageDataset(load_index(str(root / "train.txt"), multilabel=False), False, preset)
        # ImageFolder decodes with PIL into RGB; the same conversion to a tensor, then the same preset.
        folder_dataset = datasets.ImageFolder(str(root / "folder"), transform=v2.Compose([v2.PILToTensor(), preset]))
        keys = EpochSampler(len(mitorch_dataset), shuffle=True, seed=0)
        sides = {"ImageFolder": (folder_dataset, None), "mitorch": (mitorch_dataset, None),
                 "mitorch, training sampler (per-image seeds)": (mitorch_dataset, keys),
                 "mitorch, same order, plain indices": (mitorch_dataset, _PlainIndices(keys))}
        rates: dict[str, list[float]] = {name: [] for name in sides}
        _images_per_second(folder_dataset, args.workers, args.batch_size)  # warm the page cache
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for name in order:
                dataset, sampler = sides[name]
                rates[name].append(_images_per_second(dataset, args.workers, args.batch_size, sampler))
        keys.set_epoch(1)
        per_seeded, per_plain = _interleaved(mitorch_dataset, keys, min(args.images, 400))
    print(f"{args.images} JPEGs 400x320 -> 224 px train preset, {args.workers} workers, batch {args.batch_size}, "
          f"{args.repeats} runs each")
    for name, values in rates.items():
        print(f"{name:45s} best {max(values):7.1f} img/s  median {statistics.median(values):7.1f} img/s  runs: "
              + ", ".join(f"{v:.1f}" for v in values))
    best = max(rates["mitorch"]) / max(rates["ImageFolder"])
    median = statistics.median(rates["mitorch"]) / statistics.median(rates["ImageFolder"])
    print(f"ratio mitorch / ImageFolder: {best:.3f} best-of-{args.repeats} (target >= 1.0), {median:.3f} of medians")
    seeded, plain = rates["mitorch, training sampler (per-image seeds)"], rates["mitorch, same order, plain indices"]
    print(f"ratio per-image seeds / plain indices: {max(seeded) / max(plain):.3f} best-of-{args.repeats} "
          f"(target >= 0.97), {statistics.median(seeded) / statistics.median(plain):.3f} of medians")
    print(f"ratio per-image seeds / plain indices, image by image in one process: {per_plain / per_seeded:.3f} "
          f"({per_seeded * 1e3:.2f} ms against {per_plain * 1e3:.2f} ms an image; target >= 0.97)")


if __name__ == "__main__":
    main()
