"""Which default training augmentation (or other default) suits small data: top-1 after a
default 4-epoch run.

Three kinds of generated data, each trained with the default model and schedule (and
image_size=null) under several augmentation strengths:
  - shapes:  the built-in dataset (coloured shapes on noisy backgrounds, 64 px, 1,000 images);
  - glyphs:  digits 0-9 drawn in PIL's font at random places, sizes and shades on noise, 32 px,
             2,000 images: orientation matters (a flipped 2 is no 2), the content fills the frame;
  - tiny:    the built-in shapes shrunk to 24 px, 300 training images.
Candidates: ImageNet's recipe (random-resized crop down to 8% of the image, flips), milder
crops (25%, 50%, 75%) with and without flips, and no augmentation.

    python benchmarks/augmentation_defaults.py [--epochs 4] [--seeds 2] [--only glyphs]
        [--dataset NAME=TRAIN,VAL ...]      # your own datasets as further columns
        [--candidate NAME ...] [--try 'NAME:KEY=VALUE ...' ...]   # some candidates; other overrides

Prints one line per run (data, candidate, seed, top-1, seconds) and a table at the end: each
cell is the mean top-1 over the seeds (each seed changes the model's initialization, the data
order and the augmentations).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import mitorch
from mitorch.data.builtin import builtin_dataset
from mitorch.data.readers import FileReader

CANDIDATES = {
    "imagenet (0.08, flip)": ["augmentation.train.min_scale=0.08", "augmentation.train.hflip_prob=0.5"],
    "crop 0.25, flip": ["augmentation.train.min_scale=0.25", "augmentation.train.hflip_prob=0.5"],
    "crop 0.5, flip": ["augmentation.train.min_scale=0.5", "augmentation.train.hflip_prob=0.5"],
    "crop 0.5, no flip": ["augmentation.train.min_scale=0.5", "augmentation.train.hflip_prob=0.0"],
    "crop 0.75, no flip": ["augmentation.train.min_scale=0.75", "augmentation.train.hflip_prob=0.0"],
    "none": ["augmentation=val"],
}


def _write(root: Path, split: str, images: list[tuple[Image.Image, int]], names: list[str]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    with zipfile.ZipFile(root / f"{split}.zip", "w") as archive:
        for i, (image, label) in enumerate(images):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            archive.writestr(f"{i}.png", buffer.getvalue())
            lines.append(f"{split}.zip@{i}.png {label}")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "labels.txt").write_text("\n".join(names) + "\n")
    return str(root / f"{split}.txt")


def glyphs(root: Path) -> tuple[str, str]:
    font = ImageFont.load_default(size=22)
    rng = np.random.default_rng(0)

    def draw(digit: int) -> Image.Image:
        noise = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
        image = Image.fromarray(noise)
        shade = tuple(int(v) for v in rng.integers(150, 256, 3))
        ImageDraw.Draw(image).text((int(rng.integers(3, 14)), int(rng.integers(-2, 8))), str(digit), fill=shade,
                                   font=font)
        return image

    splits = {split: [(draw(i % 10), i % 10) for i in range(count)] for split, count in (("train", 2000), ("val", 500))}
    names = [str(d) for d in range(10)]
    return _write(root, "train", splits["train"], names), _write(root, "val", splits["val"], names)


def tiny(root: Path) -> tuple[str, str]:
    reader = FileReader()
    out = {}
    for split, path, count in (("train", 0, 300), ("val", 1, 250)):
        text = Path(builtin_dataset("multiclass_classification")[path])
        images = []
        for line in text.read_text().splitlines()[:count]:
            member, label = line.split()
            image = Image.open(io.BytesIO(reader.read(str(text.parent / member)))).convert("RGB").resize((24, 24))
            images.append((image, int(label)))
        names = (text.parent / "labels.txt").read_text().split()
        out[split] = _write(root, split, images, names)
    return out["train"], out["val"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only this dataset (repeatable)")
    parser.add_argument("--candidate", action="append", help="run only this candidate (repeatable)")
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="NAME:OVERRIDES",
                        help="another candidate: a name, a colon, overrides separated by spaces, e.g. "
                             "'lr 0.05:optimizer.lr=0.05 lr_scheduler.warmup_epochs=1' (repeatable)")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME=TRAIN,VAL",
                        help="another dataset in the text format (repeatable)")
    args = parser.parse_args()
    for spec in args.tries:
        name, colon, overrides = spec.partition(":")
        if not colon or not name.strip():
            parser.error(f"--try {spec!r}: expected NAME:OVERRIDES")
        CANDIDATES[name.strip()] = overrides.split()
    unknown = sorted(set(args.candidate or []) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; choose from {list(CANDIDATES)}")
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        datasets = {"shapes": lambda: builtin_dataset("multiclass_classification"),
                    "glyphs": lambda: glyphs(Path(folder) / "glyphs"), "tiny": lambda: tiny(Path(folder) / "tiny")}
        for spec in args.dataset:
            name, _, paths = spec.partition("=")
            datasets[name] = lambda paths=paths: tuple(str(Path(p).resolve()) for p in paths.split(","))
        for name, make in datasets.items():
            if args.only and name not in args.only:
                continue
            train, val = make()
            for seed in range(args.seeds):
                for candidate, overrides in CANDIDATES.items():
                    if args.candidate and candidate not in args.candidate:
                        continue
                    cfg = mitorch.compose([f"data.train={train}", f"data.val={val}", f"max_epochs={args.epochs}",
                                           f"seed={seed}", *overrides])
                    start = time.perf_counter()
                    with open(os.devnull, "w") as quiet:
                        stderr, sys.stderr = sys.stderr, quiet
                        try:
                            metrics = mitorch.train(cfg)
                        finally:
                            sys.stderr = stderr
                    results.setdefault((name, candidate), []).append(metrics["top1_accuracy"])
                    print(f"{name:7s} {candidate:24s} seed {seed} top-1 {metrics['top1_accuracy']:.3f}  "
                          f"{time.perf_counter() - start:6.1f} s", flush=True)
    print()
    names = sorted({n for n, _ in results}, key=list(datasets).index)
    print(f"mean top-1 over {args.seeds} seed(s), {args.epochs} epochs, default model and schedule, image_size=null")
    print(f"{'candidate':24s} " + " ".join(f"{n:>7s}" for n in names) + "    mean")
    for candidate in [c for c in CANDIDATES if (names[0], c) in results]:
        row = [sum(results[n, candidate]) / len(results[n, candidate]) for n in names]
        print(f"{candidate:24s} " + " ".join(f"{v:7.3f}" for v in row) + f"  {sum(row) / len(row):6.3f}")


if __name__ == "__main__":
    main()
