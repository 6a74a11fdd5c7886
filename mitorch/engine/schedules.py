"""Learning-rate schedules, computed in optimizer updates (never in samples).

Each factory is the `_target_` of a conf/lr_scheduler option, with `_partial_: true`; the
trainer completes it with the optimizer and the run's length in updates, and steps it once
per optimizer update. Every schedule takes an optional linear warmup, given in epochs
(warmup_epochs, converted to updates) and/or in updates (warmup_steps); the two add up, up to
half of the run.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _with_warmup(factor: Callable[[int], float], warmup_steps: int) -> Callable[[int], float]:
    def schedule(step: int) -> float:
        if step < warmup_steps:
            # Linear warmup to the first value of the schedule that follows.
            return factor(warmup_steps) * (step + 1) / (warmup_steps + 1)
        return factor(step)
    return schedule


def _warmup_steps(warmup_epochs: float, steps_per_epoch: int, warmup_steps: int, max_epochs: int) -> int:
    """The warmup in updates: epochs' worth plus steps, never more than half of the run (the
    default one-epoch warmup must leave a one-epoch run time at its full lr and to decay)."""
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be 0 or more, got {warmup_epochs}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be 0 or more, got {warmup_steps}")
    return min(int(round(warmup_epochs * steps_per_epoch)) + warmup_steps, steps_per_epoch * max_epochs // 2)


def _decay(optimizer: Optimizer, factor_at: Callable[[float], float], steps_per_epoch: int, max_epochs: int,
           warmup_epochs: float, warmup_steps: int) -> LambdaLR:
    """A schedule whose factor is factor_at(progress), progress going from 0 after the warmup
    to 1 at the run's last update."""
    total = max(steps_per_epoch * max_epochs, 1)
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, warmup_steps, max_epochs)
    span = max(total - warmup, 1)

    def factor(step: int) -> float:
        return factor_at(min(max(step - warmup, 0) / span, 1.0))
    return LambdaLR(optimizer, _with_warmup(factor, warmup))


def cosine(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, warmup_epochs: float = 0,
           min_lr_ratio: float = 0.0, warmup_steps: int = 0) -> LambdaLR:
    """Cosine decay from the optimizer's lr to min_lr_ratio * lr over the whole run."""
    def factor(progress: float) -> float:
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return _decay(optimizer, factor, steps_per_epoch, max_epochs, warmup_epochs, warmup_steps)


def linear(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, warmup_epochs: float = 0,
           end_lr_ratio: float = 0.0, warmup_steps: int = 0) -> LambdaLR:
    """Linear decay from the optimizer's lr to end_lr_ratio * lr over the whole run."""
    return _decay(optimizer, lambda progress: 1 - (1 - end_lr_ratio) * progress, steps_per_epoch, max_epochs,
                  warmup_epochs, warmup_steps)


def step(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, warmup_epochs: float = 0,
         step_epochs: float = 30, gamma: float = 0.1, warmup_steps: int = 0) -> LambdaLR:
    """Multiply the lr by gamma every step_epochs epochs' worth of updates."""
    if step_epochs <= 0:
        raise ValueError(f"step_epochs must be positive, got {step_epochs}")
    interval = max(int(round(step_epochs * steps_per_epoch)), 1)
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, warmup_steps, max_epochs)
    return LambdaLR(optimizer, _with_warmup(lambda s: gamma ** (s // interval), warmup))


def constant(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, warmup_epochs: float = 0,
             warmup_steps: int = 0) -> LambdaLR:
    """The optimizer's lr throughout, after the optional warmup."""
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, warmup_steps, max_epochs)
    return LambdaLR(optimizer, _with_warmup(lambda s: 1.0, warmup))
