"""The training loop and evaluation, on plain PyTorch.

The trainer receives built objects (model, optimizer, scheduler, loaders); it never sees a config.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mitorch.engine.progress import PlainProgress
from mitorch.engine.tasks import ClassificationTask, to_float
from mitorch.errors import DataError, TrainingError


@dataclass
class TrainerOptions:
    """How to train; the config's top-level keys of the same names."""

    max_epochs: int
    accumulate_grad_batches: int = 1
    gradient_clip_norm: float | None = None
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    amp: bool = True
    max_train_batches: int | None = None  # fast dev run: 1
    max_val_batches: int | None = None


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA where supported, else fp16; None (off) on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """Fits a model epoch by epoch, validating every N epochs and after the last one.

    Args:
        epoch_callbacks: called after each epoch with its record: epoch, train_loss, lr,
            duration_s, images_per_s and, on validated epochs, val (the metrics).
    """

    def __init__(self, model: nn.Module, task: ClassificationTask, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device, options: TrainerOptions,
                 progress: PlainProgress | None = None,
                 epoch_callbacks: Iterable[Callable[[dict[str, Any]], None]] = ()) -> None:
        self.model = model
        self.task = task
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.options = options
        self.progress = progress or PlainProgress()
        self.epoch_callbacks = list(epoch_callbacks)
        self.amp_dtype = amp_dtype(device, options.amp)
        # fp16 needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0

    def fit(self, train_loader: Iterable, val_loader: Iterable) -> dict[str, Any]:
        """Trains for max_epochs; returns the last validation's metrics."""
        options = self.options
        final: dict[str, Any] = {}
        for epoch in range(1, options.max_epochs + 1):
            record = {"epoch": epoch, **self._train_epoch(epoch, train_loader)}
            if epoch % options.val_every_n_epochs == 0 or epoch == options.max_epochs:
                final = evaluate(self.model, val_loader, self.task, self.device, self.amp_dtype,
                                 options.max_val_batches)
                record["val"] = final
            self.progress.end_epoch(epoch, {k: v for k, v in record.items() if k not in ("epoch", "val")}
                                    | record.get("val", {}))
            for callback in self.epoch_callbacks:
                callback(record)
        return final

    def _train_epoch(self, epoch: int, loader: Iterable) -> dict[str, Any]:
        options = self.options
        accumulate = options.accumulate_grad_batches
        total = len(loader) if options.max_train_batches is None else min(len(loader), options.max_train_batches)
        self.model.train()
        self.progress.start_epoch(epoch, options.max_epochs, total)
        # Losses stay on the device until the next log step, so the loop does not wait on the GPU.
        window: list[torch.Tensor] = []
        loss_sum, images, start = 0.0, 0, time.perf_counter()
        for batch, (inputs, targets) in enumerate(loader, 1):
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with _autocast(self.device, self.amp_dtype):
                loss = self.task.loss(self.model(inputs), targets)
            self.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
            window.append(loss.detach())
            images += inputs.shape[0]
            last = batch == total
            if batch % accumulate == 0 or last:
                self._optimizer_step()
                if self.step % options.log_every_n_steps == 0 or last:
                    loss_sum += self._flush(window, epoch, batch, total, images / (time.perf_counter() - start))
            if last:
                break
        if total == 0:
            raise DataError("the training set yields no batches; add images or lower batch_size")
        duration = time.perf_counter() - start
        return {"train_loss": loss_sum / total, "lr": self.optimizer.param_groups[0]["lr"],
                "duration_s": round(duration, 3), "images_per_s": round(images / duration, 1)}

    def _optimizer_step(self) -> None:
        if self.options.gradient_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.gradient_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def _flush(self, window: list[torch.Tensor], epoch: int, batch: int, total: int, images_per_s: float) -> float:
        losses = torch.stack(window).float().tolist()
        first_batch = batch - len(losses) + 1
        for offset, value in enumerate(losses):
            if not math.isfinite(value):
                raise TrainingError(
                    f"loss is {value} at epoch {epoch}, step {first_batch + offset} of {total}; "
                    "lower optimizer.lr, set gradient_clip_norm, or check the data")
        window.clear()
        self.progress.update(batch, losses[-1], self.optimizer.param_groups[0]["lr"], images_per_s)
        return sum(losses)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, task: ClassificationTask, device: torch.device,
             dtype: torch.dtype | None = None, max_batches: int | None = None) -> dict[str, Any]:
    """Metrics of model over every image of loader (or its first max_batches batches).

    Returns:
        The task's metrics, then loss (mean per image) and num_samples.
    """
    model.eval()
    metrics = task.metrics().to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for batch, (inputs, targets) in enumerate(loader, 1):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with _autocast(device, dtype):
            logits = model(inputs)
        logits = logits.float()
        loss_sum += task.loss_sum(logits, targets)
        task.update_metrics(metrics, logits, targets)
        count += inputs.shape[0]
        if max_batches is not None and batch >= max_batches:
            break
    if count == 0:
        raise DataError("the validation set yields no images")
    results = {name: to_float(value) for name, value in metrics.compute().items()}
    results["loss"] = to_float(loss_sum / count)
    results["num_samples"] = count
    return results
