"""From config to DataLoaders: which files, which classes, how to batch."""
from __future__ import annotations

import random
import signal
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from mitorch.data.builtin import builtin_dataset
from mitorch.data.dataset import ImageDataset
from mitorch.data.detection import DetectionDataset, DetectionIndex, collate, load_detection_index
from mitorch.data.formats import DatasetIndex, load_index
from mitorch.data.samplers import EpochSampler


def is_multilabel(cfg: DictConfig) -> bool:
    return cfg.task_type == "multilabel_classification"


def dataset_paths(cfg: DictConfig) -> tuple[str, str]:
    """(train, val) paths: the configured ones, or the built-in dataset's."""
    if cfg.data.train is None:
        return builtin_dataset(cfg.task_type)
    return cfg.data.train, cfg.data.val


def is_detection(cfg: DictConfig) -> bool:
    return cfg.task_type == "object_detection"


def load_indices(cfg: DictConfig, class_names: list[str] | None = None,
                 need_train: bool = True) -> tuple[DatasetIndex | DetectionIndex | None, DatasetIndex | DetectionIndex]:
    """Loads the train (optional) and val indices; val's labels must fit train's classes."""
    train_path, val_path = dataset_paths(cfg)
    if is_detection(cfg):
        def load(path: str, names: list[str] | None) -> DetectionIndex:
            return load_detection_index(path, names)
    else:
        def load(path: str, names: list[str] | None) -> DatasetIndex:
            return load_index(path, is_multilabel(cfg), names)
    train = load(train_path, class_names) if need_train else None
    names = train.class_names if train is not None else class_names
    return train, load(val_path, names)


def make_dataset(cfg: DictConfig, index: DatasetIndex | DetectionIndex, transform) -> torch.utils.data.Dataset:
    if is_detection(cfg):
        return DetectionDataset(index, transform)
    return ImageDataset(index, is_multilabel(cfg), transform)


def _start_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it. (Training
    # augmentations draw from each image's own seed instead: see samplers.augmentation_random.)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    signal.signal(signal.SIGTERM, _first_sigterm)


def _first_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM is the training process's to act on: it checkpoints, stops and then shuts its
    # workers down. A worker it reaches as well (Slurm signals every process of a job on
    # preemption, at its time limit, and on cancel of a multi-process job) keeps serving until
    # then, or the training would fail on a killed worker. A second SIGTERM, as the loader's own
    # shutdown sends a worker that does not stop, ends it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def make_loader(dataset: torch.utils.data.Dataset, cfg: DictConfig, train: bool, device: torch.device, seed: int = 0,
                rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    """A DataLoader over this process's share: reshuffled per epoch for training, in order for
    validation (each image in exactly one process)."""
    workers = cfg.data.num_workers
    extra = {"persistent_workers": cfg.data.persistent_workers} if workers else {}
    if workers and cfg.data.prefetch_factor is not None:
        extra["prefetch_factor"] = cfg.data.prefetch_factor
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size),
        # A last batch of one image breaks batch norm in training mode.
        drop_last=train and len(dataset) // world_size > cfg.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_start_worker,
        # Its own generator (the trainer reseeds it per epoch): starting an epoch's iterator
        # must not draw from the global generator, or a resumed epoch would drift.
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate if isinstance(dataset, DetectionDataset) else None,
        **extra,
    )
