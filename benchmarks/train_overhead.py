"""Training-time overhead of MiTorch's engine against a minimal hand-written PyTorch loop.

Both train the same model from the same initial weights on the same batches (the built-in
dataset, decoded once into memory so that image decoding does not blur the comparison),
with the same optimizer settings and a per-update cosine schedule, then run one validation
pass. Runs alternate between the two to share the machine's conditions. On a shared or
virtual machine one run can take 20% longer than the next for the same work, so the headline
ratio compares each side's fastest run (the least disturbed, as timeit advises); the ratio
of medians is printed beside it. Target: at most 1.01 on CPU.

    python benchmarks/train_overhead.py [--images 320] [--epochs 2] [--repeats 8]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.nn import functional as F

from mitorch import build
from mitorch.config import compose
from mitorch.data.builtin import builtin_dataset
from mitorch.data.dataset import ImageDataset
from mitorch.data.formats import load_index
from mitorch.data.presets import ClassificationValPreset
from mitorch.engine.progress import PlainProgress
from mitorch.engine.tasks import ClassificationTask
from mitorch.engine.trainer import Trainer, TrainerOptions


def _tensors(path: str, count: int, size: int) -> torch.utils.data.TensorDataset:
    dataset = ImageDataset(load_index(path, multilabel=False), False, ClassificationValPreset(size))
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    return torch.utils.data.TensorDataset(torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]))


def _loaders(train, val, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator),
            torch.utils.data.DataLoader(val, batch_size=batch_size))


def run_engine(cfg, train, val, epochs: int) -> float:
    torch.manual_seed(0)
    train_loader, val_loader = _loaders(train, val, cfg.batch_size, 0)
    model = build.build_model(cfg, num_classes=5)
    optimizer = build.build_optimizer(cfg, model)
    scheduler = build.build_scheduler(cfg, optimizer, len(train_loader), epochs)
    # One validation pass at the end, as the hand-written loop does: by default the trainer
    # validates after every epoch, which is more work, not overhead.
    options = TrainerOptions(max_epochs=epochs, val_every_n_epochs=epochs)
    trainer = Trainer(model, ClassificationTask(False, 5), optimizer, scheduler, torch.device("cpu"), options,
                      PlainProgress(stream=open(os.devnull, "w"), interval_s=1e9))
    start = time.perf_counter()
    trainer.fit(train_loader, val_loader)
    return time.perf_counter() - start


def hand_written_epoch(model, optimizer, scheduler, loader) -> None:
    """One epoch of the plain PyTorch loop that MiTorch's trainer is measured against."""
    model.train()
    for inputs, targets in loader:
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def run_hand_written(cfg, train, val, epochs: int) -> float:
    torch.manual_seed(0)
    train_loader, val_loader = _loaders(train, val, cfg.batch_size, 0)
    model = build.build_model(cfg, num_classes=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum,
                                weight_decay=cfg.optimizer.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(train_loader) * epochs)
    start = time.perf_counter()
    for _ in range(epochs):
        hand_written_epoch(model, optimizer, scheduler, train_loader)
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, targets in val_loader:
            correct += (model(inputs).argmax(1) == targets).sum().item()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320, help="training images (default 320)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--model", default="resnet")
    args = parser.parse_args()

    cfg = compose([f"model={args.model}", f"image_size={args.image_size}"])
    train_path, val_path = builtin_dataset("multiclass_classification")
    train = _tensors(train_path, args.images, args.image_size)
    val = _tensors(val_path, args.images // 4, args.image_size)
    run_hand_written(cfg, train, val, 1)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"hand-written": [], "mitorch": []}
    runners = {"hand-written": run_hand_written, "mitorch": run_engine}
    for repeat in range(args.repeats):
        # Alternate which side goes first, so slow drift of the machine falls on both.
        order = ("hand-written", "mitorch") if repeat % 2 == 0 else ("mitorch", "hand-written")
        for name in order:
            times[name].append(runners[name](cfg, train, val, args.epochs))
    hand, engine = (min(times[k]) for k in ("hand-written", "mitorch"))
    hand_median, engine_median = (statistics.median(times[k]) for k in ("hand-written", "mitorch"))
    images = len(train) // cfg.batch_size * cfg.batch_size * args.epochs
    print(f"model {args.model}, {args.image_size}px, {images} training images, {args.repeats} runs each, "
          f"{torch.get_num_threads()} threads")
    for name, best, median in (("hand-written", hand, hand_median), ("mitorch", engine, engine_median)):
        print(f"{name:13s} best {best:7.2f} s ({images / best:6.1f} img/s)  median {median:7.2f} s  runs: "
              + ", ".join(f"{t:.2f}" for t in times[name]))
    print(f"ratio mitorch / hand-written: {engine / hand:.3f} best-of-{args.repeats} (target <= 1.01), "
          f"{engine_median / hand_median:.3f} of medians")


if __name__ == "__main__":
    main()
