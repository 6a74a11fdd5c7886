"""The training loop and evaluation, on plain PyTorch.

The trainer receives built objects (model, optimizer, scheduler, loaders); it never sees a config.
It checkpoints after every epoch and on SIGTERM/SIGINT, and resumes from its checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mitorch.data.samplers import EpochSampler, epoch_seed
from mitorch.engine.averaging import WeightAverage
from mitorch.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mitorch.engine.distributed import Distributed
from mitorch.engine.progress import PlainProgress
from mitorch.engine.tasks import Task, to_float
from mitorch.errors import DataError, Interrupted, Stopped, TrainingError, first_line
from mitorch.task_types import is_better, lower_is_better


@dataclass
class TrainerOptions:
    """How to train; mostly the config's top-level keys of the same names."""

    max_epochs: int
    accumulate_grad_batches: int = 1
    gradient_clip_norm: float | None = None
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    amp: bool = True
    max_train_batches: int | None = None  # fast dev run: 1
    max_val_batches: int | None = None
    seed: int = 0
    checkpoint_path: Path | None = None  # last.pt; None: no checkpoints
    resume: bool = True
    best_metric: str | None = None  # with on_best: the metric that picks the best epoch
    channels_last: bool = False


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA where supported, else fp16; None (off) on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _no_sync(model: nn.Module, skip: bool):
    """DDP's no_sync() when skip (also through torch.compile's wrapper), else nothing."""
    if not skip:  # every batch of a run without accumulation: nothing to look up
        return contextlib.nullcontext()
    ddp = getattr(model, "_orig_mod", model)
    return ddp.no_sync() if hasattr(ddp, "no_sync") else contextlib.nullcontext()


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _seed_epoch(seed: int, epoch: int) -> None:
    # Randomness is a function of (seed, epoch), so a resumed run repeats the same epochs.
    value = epoch_seed(seed, epoch)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


class Trainer:
    """Fits a model epoch by epoch, validating every N epochs and after the last one.

    Args:
        model: the model itself; `forward_model` may wrap it (DistributedDataParallel,
            torch.compile) and is what training calls.
        average: optional weight averaging (EMA or SWA); when given, validation and the
            final metrics use the averaged weights.
        epoch_callbacks: called on the main process after each epoch with its record: epoch,
            train_loss, lr, duration_s, images_per_s and, on validated epochs, val.
        replay_callbacks: called, at the start of a run that resumes at an epoch boundary,
            with the record of the checkpoint's last epoch: the process that saved it may have
            stopped before its epoch callbacks ran. They must not mind a record twice.
        on_best: called on the main process with the evaluated model when a validation
            improves options.best_metric.
        step_callbacks: called on the main process every log_every_n_steps updates (and at
            an epoch's end) with (update count, {"loss": mean loss of the batches since the
            previous call, "lr": the lr of that update}).
    """

    def __init__(self, model: nn.Module, task: Task, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device, options: TrainerOptions,
                 progress: PlainProgress | None = None,
                 epoch_callbacks: Iterable[Callable[[dict[str, Any]], None]] = (),
                 forward_model: nn.Module | None = None, average: WeightAverage | None = None,
                 distributed: Distributed | None = None,
                 on_best: Callable[[nn.Module, dict[str, Any]], None] | None = None,
                 step_callbacks: Iterable[Callable[[int, dict[str, float]], None]] = (),
                 replay_callbacks: Iterable[Callable[[dict[str, Any]], None]] = ()) -> None:
        self.model = model
        self.forward_model = forward_model if forward_model is not None else model
        self.task = task
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.options = options
        self.progress = progress or PlainProgress()
        self.epoch_callbacks = list(epoch_callbacks)
        self.average = average
        self.distributed = distributed or Distributed()
        self.on_best = on_best
        self.step_callbacks = list(step_callbacks)
        self.replay_callbacks = list(replay_callbacks)
        self.last_lr = 0.0  # the lr of the latest update (the scheduler has moved on since)
        self.amp_dtype = amp_dtype(device, options.amp)
        # fp16 needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best: float | None = None
        self.record: dict[str, Any] | None = None  # the last epoch's record, kept in the checkpoint
        self._stop_signal: int | None = None

    # -- the run ---------------------------------------------------------------------------

    def fit(self, train_loader: Iterable, val_loader: Iterable) -> dict[str, Any]:
        """Trains up to max_epochs (resuming from the checkpoint if there is one).

        Returns:
            The last validation's metrics; with weight averaging, the averaged model's, and
            an "averaging" key naming it.

        Raises:
            Interrupted: SIGTERM or SIGINT arrived; a checkpoint to resume from was saved.
        """
        options = self.options
        first_epoch, skip, resumed_rng = self._resume()
        if self.record is not None and not skip:
            self._stop_together(self._deliver(self.record, self.replay_callbacks), first_epoch - 1)
        # The last epoch always validates: a run resumed after it trains nothing and returns that.
        final: dict[str, Any] = (self.record or {}).get("val", {})
        with self._signals():
            for epoch in range(first_epoch, options.max_epochs + 1):
                if skip:
                    set_rng_state(resumed_rng)
                else:
                    _seed_epoch(options.seed, epoch)
                record = {"epoch": epoch, **self._train_epoch(epoch, train_loader, skip)}
                skip = 0
                if self.average is not None:
                    self.average.after_epoch(self.model, epoch)
                if epoch % options.val_every_n_epochs == 0 or epoch == options.max_epochs:
                    final = record["val"] = self._validate(val_loader, train_loader, last=epoch == options.max_epochs)
                self.record = record
                self._save_checkpoint(epoch, 0)
                if self.distributed.is_main:
                    self.progress.end_epoch(epoch, {k: v for k, v in record.items() if k not in ("epoch", "val")}
                                            | record.get("val", {}))
                self._stop_together(self._deliver(record, self.epoch_callbacks), epoch)
        return final

    def _deliver(self, record: dict[str, Any], callbacks: list[Callable[[dict[str, Any]], None]]) -> Exception | None:
        """Hands record to callbacks on the main process; returns what one raised, for _stop_together."""
        if not self.distributed.is_main:
            return None
        try:
            for callback in callbacks:
                callback(record)
        except Exception as e:  # noqa: BLE001 - raised by _stop_together, once every process knows
            return e
        return None

    def _stop_together(self, stopping: Exception | None, epoch: int) -> None:
        """Raises `stopping` (what the main process's epoch callbacks raised) and, in a
        distributed run, stops the other processes with it: without this they would wait for
        the main process at the next epoch's first all-reduce, until the process group's timeout."""
        if self.distributed.enabled:
            # [stopped, on purpose, exit status] from the main process; the others add zeros.
            told = [0, 0, 0]
            if stopping is not None:
                told = [1, int(isinstance(stopping, Stopped)), int(getattr(stopping, "exit_code", 1))]
            try:
                told = self.distributed.all_sum(torch.tensor(told, device=self.device)).tolist()
            except Exception:  # noqa: BLE001 - a peer already gone: the main process's reason first
                if stopping is not None:
                    raise stopping from None
                raise
            if told[0] and not self.distributed.is_main:
                if told[1]:
                    raise Stopped(f"the main process stopped the run at the end of epoch {epoch}; "
                                  f"process {self.distributed.rank} stops with it", exit_code=told[2])
                raise TrainingError(f"the main process failed at the end of epoch {epoch} (its output says why); "
                                    f"process {self.distributed.rank} stops with it")
        if stopping is not None:
            raise stopping

    def _validate(self, val_loader: Iterable, train_loader: Iterable, last: bool) -> dict[str, Any]:
        model, averaging = self.model, None
        if self.average is not None and (self.average.kind == "ema" or last) and self.average.ready:
            if last:
                self.average.finish(train_loader, self.device, self.options.max_train_batches)
            model, averaging = self.average.module, self.average.kind
        self._share_buffers(model)
        metrics = evaluate(model, val_loader, self.task, self.device, self.amp_dtype, self.options.max_val_batches,
                           self.distributed)
        if averaging is not None:
            metrics["averaging"] = averaging
        self._track_best(model, metrics)
        return metrics

    def _share_buffers(self, module: nn.Module) -> None:
        # Batch-norm statistics drift apart between processes (each updates them on its own
        # batches); evaluate, and save, the main process's everywhere.
        if self.distributed.enabled:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, 0)

    def _track_best(self, model: nn.Module, metrics: dict[str, Any]) -> None:
        name = self.options.best_metric
        if name is None or self.on_best is None or metrics.get(name) is None:
            return
        value = metrics[name]
        if is_better(value, self.best, maximize=not lower_is_better(name)):
            self.best = value
            if self.distributed.is_main:
                self.on_best(model, metrics)

    # -- one epoch -------------------------------------------------------------------------

    def _train_epoch(self, epoch: int, loader: Iterable, skip: int) -> dict[str, Any]:
        options = self.options
        accumulate = options.accumulate_grad_batches
        sampler = getattr(loader, "sampler", None)
        batch_size = getattr(loader, "batch_size", None) or 1
        if isinstance(sampler, EpochSampler):
            sampler.set_epoch(epoch, skip * batch_size)
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(epoch_seed(options.seed, epoch))
        full = len(loader) + skip  # the loader yields what is left of the epoch
        total = full if options.max_train_batches is None else min(full, options.max_train_batches)
        if total == 0:
            raise DataError("the training set yields no batches; add images or lower batch_size")
        self.forward_model.train()
        if self.distributed.is_main:
            self.progress.start_epoch(epoch, options.max_epochs, total)
        # Losses stay on the device until the next log step, so the loop does not wait on the GPU.
        window: list[torch.Tensor] = []
        loss_sum, images, start = 0.0, 0, time.perf_counter()
        for batch, (inputs, targets) in enumerate(loader, skip + 1):
            inputs, targets = self.task.to_device(inputs, targets, self.device, options.channels_last)
            last = batch == total
            updating = batch % accumulate == 0 or last
            # Under DDP, gradients are all-reduced only for the batch that updates the weights;
            # the others accumulate locally (no_sync covers their forward and backward).
            with _no_sync(self.forward_model, not updating):
                with _autocast(self.device, self.amp_dtype):
                    loss = self.task.train_loss(self.forward_model, inputs, targets)
                self.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
            window.append(loss.detach())
            images += self.task.count(inputs)
            if updating:
                self._optimizer_step()
                if self.step % options.log_every_n_steps == 0 or last:
                    loss_sum += self._flush(window, epoch, batch, total, images / (time.perf_counter() - start))
                if not last and self.distributed.any(self._stop_signal is not None, self.device):
                    self._interrupt(epoch, batch)
            if last:
                break
        duration = time.perf_counter() - start
        return {"train_loss": loss_sum / max(total - skip, 1), "lr": self.optimizer.param_groups[0]["lr"],
                "duration_s": round(duration, 3), "images_per_s": round(images / duration, 1)}

    def _optimizer_step(self) -> None:
        if self.options.gradient_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.gradient_clip_norm)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.average is not None:
            self.average.after_update(self.model)

    def _flush(self, window: list[torch.Tensor], epoch: int, batch: int, total: int, images_per_s: float) -> float:
        losses = torch.stack(window).float().tolist()
        first_batch = batch - len(losses) + 1
        for offset, value in enumerate(losses):
            if not math.isfinite(value):
                raise TrainingError(
                    f"loss is {value} at epoch {epoch}, step {first_batch + offset} of {total}; "
                    "lower optimizer.lr, set gradient_clip_norm, or check the data")
        window.clear()
        if self.distributed.is_main:
            self.progress.update(batch, losses[-1], self.optimizer.param_groups[0]["lr"], images_per_s)
            for callback in self.step_callbacks:
                callback(self.step, {"loss": sum(losses) / len(losses), "lr": self.last_lr})
        return sum(losses)

    # -- checkpoints and signals -----------------------------------------------------------

    def state_dict(self, completed_epochs: int, batches_done: int) -> dict[str, Any]:
        """The checkpoint: fixed keys, the model saved unwrapped."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
            "epoch": completed_epochs, "batches_done": batches_done, "step": self.step, "best": self.best,
            "record": self.record, "rng": rng_state(),
            "sampler": {"seed": self.options.seed, "epoch": completed_epochs + 1, "batches_done": batches_done},
        }

    def _save_checkpoint(self, completed_epochs: int, batches_done: int) -> None:
        path = self.options.checkpoint_path
        if path is not None and self.distributed.is_main:
            save_checkpoint(path, self.state_dict(completed_epochs, batches_done))
        self.distributed.barrier()

    def _resume(self) -> tuple[int, int, dict | None]:
        path = self.options.checkpoint_path
        if path is None or not self.options.resume or not path.is_file():
            return 1, 0, None
        state = load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["lr_scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if (state["average"] is None) != (self.average is None):
                raise ValueError("weight averaging (ema_decay / swa_fraction) differs from the checkpoint's")
            if self.average is not None:
                self.average.load_state_dict(state["average"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise DataError(f"checkpoint {path} does not fit this training ({first_line(e)}); "
                            "delete it or set resume=false") from None
        self.step, self.best = state["step"], state["best"]
        self.record = state.get("record")  # None in a checkpoint saved before records were kept
        epoch, batches = state["epoch"] + 1, state["batches_done"]
        if self.distributed.is_main:
            where = f"epoch {epoch}" + (f", batch {batches + 1}" if batches else "")
            self.progress.message(f"resuming from {path} at {where}")
        return epoch, batches, state["rng"]

    def _interrupt(self, epoch: int, batch: int) -> None:
        name = signal.Signals(self._stop_signal or signal.SIGTERM).name
        self._save_checkpoint(epoch - 1, batch)
        where = f" saved to {self.options.checkpoint_path}" if self.options.checkpoint_path else " not saved"
        raise Interrupted(f"stopped by {name} at epoch {epoch}, step {batch}; checkpoint{where}; "
                          "run the same command again to resume", exit_code=128 + int(self._stop_signal or 15))

    @contextlib.contextmanager
    def _signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self._stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, task: Task, device: torch.device,
             dtype: torch.dtype | None = None, max_batches: int | None = None,
             distributed: Distributed | None = None, predictions: list | None = None) -> dict[str, Any]:
    """Metrics of model over every image of loader (or its first max_batches batches).

    Under distributed training each process evaluates its own share of the images and the
    results are combined, so every image counts exactly once.

    Args:
        predictions: when given, detection tasks append each image's predictions to it.

    Returns:
        The task's metrics, then loss (mean per image) and num_samples.
    """
    distributed = distributed or Distributed()
    model.eval()
    metrics = task.metrics().to(device)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, images
    for batch, (inputs, targets) in enumerate(loader, 1):
        inputs, targets = task.to_device(inputs, targets, device)
        with _autocast(device, dtype):
            totals[0] += task.eval_batch(model, inputs, targets, metrics, predictions)
        totals[1] += task.count(inputs)
        if max_batches is not None and batch >= max_batches:
            break
    distributed.all_sum(totals)
    count = int(totals[1].item())
    if count == 0:
        raise DataError("the validation set yields no images")
    results = task.compute(metrics)
    results["loss"] = to_float(totals[0] / count)
    results["num_samples"] = count
    return results
