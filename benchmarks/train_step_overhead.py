"""The trainer's own cost per training step, in microseconds, against a hand-written loop.

A model so small (one linear layer on 8 numbers) that a step is almost all bookkeeping: what
MiTorch's Trainer adds per step (moving the batch, the loss window, the schedule, the stop
check) shows up on its own instead of hiding in the noise of convolutions, as it does in
train_overhead.py. Both sides run the same number of steps with the same batches, on one
thread; each side's fastest of several runs is compared.

    python benchmarks/train_step_overhead.py [--steps 3000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from mitorch.engine.progress import PlainProgress
from mitorch.engine.schedules import cosine
from mitorch.engine.tasks import ClassificationTask
from mitorch.engine.trainer import Trainer, TrainerOptions
from train_overhead import hand_written_epoch  # the script's own folder is on sys.path


def _setup(data: torch.utils.data.TensorDataset) -> tuple[nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader]:
    torch.manual_seed(0)
    model = nn.Linear(8, 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    return model, optimizer, loader


def run_engine(data: torch.utils.data.TensorDataset) -> float:
    model, optimizer, loader = _setup(data)
    trainer = Trainer(model, ClassificationTask(False, 5), optimizer, cosine(optimizer, len(loader), 1),
                      torch.device("cpu"), TrainerOptions(max_epochs=1),
                      PlainProgress(stream=open(os.devnull, "w"), interval_s=1e9))
    start = time.perf_counter()
    trainer._train_epoch(1, loader, 0)  # the steps alone: validation is not per-step cost
    return time.perf_counter() - start


def run_hand_written(data: torch.utils.data.TensorDataset) -> float:
    model, optimizer, loader = _setup(data)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=len(loader))
    start = time.perf_counter()
    hand_written_epoch(model, optimizer, scheduler, loader)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = torch.utils.data.TensorDataset(torch.randn(args.steps * 4, 8), torch.randint(0, 5, (args.steps * 4,)))
    times: dict[str, list[float]] = {"hand-written": [], "mitorch": []}
    for _ in range(args.repeats):
        times["hand-written"].append(run_hand_written(data))
        times["mitorch"].append(run_engine(data))
    hand, engine = min(times["hand-written"]), min(times["mitorch"])
    print(f"{args.steps} steps, best of {args.repeats}: hand-written {hand * 1e6 / args.steps:.1f} us/step, "
          f"mitorch {engine * 1e6 / args.steps:.1f} us/step; the trainer adds "
          f"{(engine - hand) * 1e6 / args.steps:.1f} us/step")


if __name__ == "__main__":
    main()
