"""The Python API behind mitrain and mitest: mitorch.train(cfg) and mitorch.evaluate(cfg)."""
from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mitorch import build
from mitorch.config import validate
from mitorch.data.builtin import IMAGE_SIZE as BUILTIN_IMAGE_SIZE
from mitorch.data.dataset import ImageDataset
from mitorch.data.loaders import is_multilabel, load_indices, make_loader
from mitorch.engine.progress import PlainProgress, default_progress
from mitorch.engine.tasks import ClassificationTask
from mitorch.engine.trainer import Trainer, TrainerOptions, amp_dtype
from mitorch.engine.trainer import evaluate as evaluate_model
from mitorch.errors import ConfigError, DataError
from mitorch.models.weights import load_state, read_weights, save_weights

_PATH_KEYS = ("data.train", "data.val", "weights", "output")
DEFAULT_IMAGE_SIZE = 224


def train(cfg: DictConfig, run_dir: str | Path | None = None, progress: PlainProgress | None = None,
          epoch_callbacks: list[Callable[[dict[str, Any]], None]] | None = None) -> dict[str, Any]:
    """Trains the model that cfg describes and returns its final validation metrics.

    Args:
        cfg: a composed training config (see mitorch.compose).
        run_dir: where metrics.jsonl is written, one line per epoch; None: not written.
        progress: where progress goes; default: a Rich bar on a terminal, else log lines.
        epoch_callbacks: called with each epoch's record (epoch, train_loss, lr, val, ...).

    Returns:
        The metrics of the last validation (task metrics, loss, num_samples).

    Raises:
        MiTorchError: a config, data or training problem the user can fix.
    """
    cfg = _prepare(cfg)
    device = _device(cfg)
    multilabel = is_multilabel(cfg)
    train_index, val_index = load_indices(cfg)
    _default_image_size(cfg)
    train_transform, val_transform = build.build_transforms(cfg)
    train_loader = make_loader(ImageDataset(train_index, multilabel, train_transform), cfg, True, device)
    val_loader = make_loader(ImageDataset(val_index, multilabel, val_transform), cfg, False, device)
    task = ClassificationTask(multilabel, len(train_index.class_names))
    progress = progress or default_progress()

    with _reproducible(cfg):
        model = build.build_model(cfg, task.num_classes)
        if cfg.weights is not None:
            state, _ = read_weights(cfg.weights)
            if load_state(model, state, cfg.weights, replace_head=True):
                progress.message(f"weights: the classifier head of {cfg.weights} does not match the dataset's "
                                 f"{task.num_classes} classes; it is replaced by a new one")
        model.to(device)
        optimizer = build.build_optimizer(cfg, model)
        options = _trainer_options(cfg)
        batches = len(train_loader) if options.max_train_batches is None else min(len(train_loader), 1)
        scheduler = build.build_scheduler(cfg, optimizer, math.ceil(batches / options.accumulate_grad_batches),
                                          options.max_epochs)
        callbacks = list(epoch_callbacks or [])
        if run_dir is not None:
            callbacks.append(_metrics_log(Path(run_dir) / "metrics.jsonl"))
        trainer = Trainer(model, task, optimizer, scheduler, device, options, progress, callbacks)
        try:
            metrics = trainer.fit(train_loader, val_loader)
        finally:
            progress.close()

    if cfg.output is not None:
        save_weights(cfg.output, model, train_index.class_names, cfg.task_type, _plain(cfg))
        progress.message(f"weights saved to {cfg.output}")
    return metrics


def evaluate(cfg: DictConfig, progress: PlainProgress | None = None) -> dict[str, Any]:
    """Evaluates cfg.weights on cfg.data.val (or the built-in validation set).

    Class names come from the weights file when it has them (MiTorch outputs), else from
    the training set.

    Returns:
        The same metrics as train() reports.
    """
    cfg = _prepare(cfg)
    if cfg.weights is None:
        raise ConfigError("mitest needs weights to evaluate: give -w WEIGHTS or weights=PATH")
    device = _device(cfg)
    state, metadata = read_weights(cfg.weights)
    trained_for = metadata.get("task_type")
    if trained_for is not None and trained_for != cfg.task_type:
        raise ConfigError(f"weights {cfg.weights} were trained for {trained_for}; set task_type={trained_for}")
    class_names = metadata.get("class_names")
    _, val_index = load_indices(cfg, class_names, need_train=class_names is None and cfg.data.train is not None)
    if class_names is None:
        class_names = val_index.class_names
    _default_image_size(cfg)
    _, val_transform = build.build_transforms(cfg)
    multilabel = is_multilabel(cfg)
    val_loader = make_loader(ImageDataset(val_index, multilabel, val_transform), cfg, False, device)
    task = ClassificationTask(multilabel, len(class_names))
    with _reproducible(cfg):
        model = build.build_model(cfg, task.num_classes)
        load_state(model, state, cfg.weights, replace_head=False)
        model.to(device)
        return evaluate_model(model, val_loader, task, device, amp_dtype(device, cfg.amp),
                              1 if cfg.fast_dev_run else None)


def _prepare(cfg: DictConfig) -> DictConfig:
    """A private copy of cfg with absolute paths, validated, its targets allow-listed."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(cfg, True)
    for key in _PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str):
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(value)))
    validate(cfg)
    build.check_targets(cfg)
    return cfg


def _default_image_size(cfg: DictConfig) -> None:
    if cfg.image_size is None:
        cfg.image_size = BUILTIN_IMAGE_SIZE if cfg.data.train is None else DEFAULT_IMAGE_SIZE


def _device(cfg: DictConfig) -> torch.device:
    name = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but no CUDA GPU is available; use device=cpu")
    return device


def _trainer_options(cfg: DictConfig) -> TrainerOptions:
    fast = cfg.fast_dev_run
    return TrainerOptions(
        max_epochs=1 if fast else cfg.max_epochs,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_norm=cfg.gradient_clip_norm,
        val_every_n_epochs=cfg.val_every_n_epochs,
        log_every_n_steps=cfg.log_every_n_steps,
        amp=cfg.amp,
        max_train_batches=1 if fast else None,
        max_val_batches=1 if fast else None,
    )


@contextmanager
def _reproducible(cfg: DictConfig) -> Iterator[None]:
    """Seeds every generator; in deterministic mode, also forbids nondeterministic kernels."""
    if cfg.seed is not None:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def _metrics_log(path: Path) -> Callable[[dict[str, Any]], None]:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(record: dict[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return write


def print_metrics(metrics: dict[str, Any]) -> None:
    """The final metrics as one JSON object on the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(metrics), flush=True)


__all__ = ["DataError", "evaluate", "print_metrics", "train"]
