"""Checks of a composed config: key types (against the shipped defaults) and values."""
from __future__ import annotations

import math
import os
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mitorch.errors import ConfigError
from mitorch.task_types import TASK_TYPES

DETECTORS = ("fasterrcnn", "retinanet", "fcos", "ssdlite")

# Types of keys whose shipped default is null, so the default cannot tell.
_NULLABLE_TYPES: dict[str, type] = {
    "data.train": str,
    "data.val": str,
    "image_size": int,
    "gradient_clip_norm": float,
    "device": str,
    "weights": str,
    "output": str,
    "data.prefetch_factor": int,
    "checkpoint_dir": str,
    "best_metric": str,
    "ema_decay": float,
    "base": str,
    "swa_fraction": float,
    "logger.tensorboard.save_dir": str,
    "logger.csv.save_dir": str,
    "logger.mlflow.tracking_uri": str,
    "logger.mlflow.run_name": str,
}
# Keys that must be at least 1.
_POSITIVE = ("batch_size", "max_epochs", "accumulate_grad_batches", "val_every_n_epochs", "log_every_n_steps",
             "num_processes")


def validate(cfg: DictConfig, reference: DictConfig | None = None) -> None:
    """Validates a composed training config.

    Args:
        cfg: the composed config.
        reference: the same config with only the group selections applied; every leaf of
            cfg must have the type of its default there.

    Raises:
        ConfigError: naming the key and what it should be.
    """
    if reference is not None:
        _check_types(cfg, reference, "")
    _check_numbers(cfg, "")
    if cfg.task_type not in TASK_TYPES:
        raise ConfigError(f"unknown task_type '{cfg.task_type}'; choose from {', '.join(TASK_TYPES)}")
    _check_task_fits(cfg)
    for key in _POSITIVE:
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be at least 1, got {cfg[key]}")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be 0 or more, got {cfg.data.num_workers}")
    if cfg.image_size is not None and cfg.image_size < 8:
        raise ConfigError(f"image_size must be at least 8 pixels, got {cfg.image_size}")
    if cfg.ema_decay is not None and not 0 < cfg.ema_decay < 1:
        raise ConfigError(f"ema_decay must be between 0 and 1, got {cfg.ema_decay}")
    if cfg.swa_fraction is not None and not 0 < cfg.swa_fraction <= 1:
        raise ConfigError(f"swa_fraction must be in (0, 1], got {cfg.swa_fraction}")
    if cfg.ema_decay is not None and cfg.swa_fraction is not None:
        raise ConfigError("choose one kind of weight averaging: ema_decay or swa_fraction")
    if cfg.data.prefetch_factor is not None and cfg.data.num_workers == 0:
        raise ConfigError("data.prefetch_factor needs data.num_workers of 1 or more")
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and not value.strip():
            # An empty path would stand for the current folder once made absolute.
            raise ConfigError(f"{key} is empty; give a path, or leave it unset (null)")
    if cfg.base is not None and cfg.weights is not None:
        raise ConfigError("set base (a training id) or weights (a file), not both")
    if (cfg.data.train is None) != (cfg.data.val is None):
        raise ConfigError("set both data.train and data.val (TRAIN and VAL), or neither for the built-in dataset")
    _check_intervals(cfg)


# Whole numbers are kept as 64-bit integers by PyTorch, SQLite and MongoDB.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check_numbers(node: DictConfig | ListConfig, prefix: str) -> None:
    """Every number in the config (+extra keys and list items too) fits in 64 bits and is finite."""
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node._iter_ex(resolve=False))
    for key, _ in items:
        full_key = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix.rstrip('.')}[{key}]"
        if full_key == "hydra":
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            _check_numbers(child, f"{full_key}.")
            continue
        value = child._value()
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            raise ConfigError(f"{full_key} must be a whole number from -2**63 to 2**63-1, got {_digits(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{full_key} must be a finite number, got {value}")


def _digits(value: int) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:28]}... ({len(text)} digits)"


def _check_intervals(cfg: DictConfig) -> None:
    """Lengths and intervals that a negative or reversed value would turn into nonsense."""
    warmup = OmegaConf.select(cfg, "lr_scheduler.warmup_epochs", default=None)
    if _number(warmup) and warmup < 0:
        raise ConfigError(f"lr_scheduler.warmup_epochs must be 0 or more, got {warmup}")
    step = OmegaConf.select(cfg, "lr_scheduler.step_epochs", default=None)
    if _number(step) and step <= 0:
        raise ConfigError(f"lr_scheduler.step_epochs (the interval between lr steps) must be more than 0, got {step}")
    min_scale = OmegaConf.select(cfg, "augmentation.train.min_scale", default=None)
    if _number(min_scale) and not 0 < min_scale <= 1:
        raise ConfigError(f"augmentation.train.min_scale must be in (0, 1] (crops cover min_scale to all of the "
                          f"image), got {min_scale}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_task_fits(cfg: DictConfig) -> None:
    """A detector for object detection and a classifier otherwise, with fitting augmentation."""
    detection = cfg.task_type == "object_detection"
    model = str(cfg.model.get("_target_", ""))
    is_detector = model.rsplit(".", 1)[-1] in DETECTORS and model.startswith("mitorch.models")
    if detection and model.startswith("mitorch.models") and not is_detector:
        raise ConfigError(f"object_detection needs a detector; choose model= one of {', '.join(DETECTORS)}")
    if not detection and is_detector:
        raise ConfigError(f"{model} is a detector; set task_type=object_detection or choose a classifier model")
    augmentation = str(OmegaConf.select(cfg, "augmentation.train._target_", default=""))
    if detection and augmentation.startswith("mitorch.data.presets.Classification"):
        raise ConfigError("object_detection needs box-aware augmentation; choose augmentation=detection or "
                          "augmentation=detection_val")
    if not detection and augmentation.startswith("mitorch.data.presets.Detection"):
        raise ConfigError(f"augmentation {cfg.augmentation.train._target_} is for object_detection; choose a "
                          "classification augmentation (standard, trivialaugment, randaugment, val)")
    if detection and (cfg.channels_last or cfg.swa_fraction is not None):
        key = "channels_last" if cfg.channels_last else "swa_fraction"
        raise ConfigError(f"{key} is for classification models; leave it unset for object_detection")


PATH_KEYS = ("data.train", "data.val", "weights", "output", "checkpoint_dir")


def resolve_paths(cfg: DictConfig, base: str | None = None) -> None:
    """Makes the config's file paths absolute, relative to base (default: the current directory)."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str):
            path = os.path.expanduser(value)
            OmegaConf.update(cfg, key, os.path.abspath(os.path.join(base or os.getcwd(), path)))


def _check_types(node: DictConfig, reference: DictConfig, prefix: str) -> None:
    for key in node.keys():
        full_key = f"{prefix}{key}"
        if full_key == "hydra" or key not in reference:
            continue
        value, default = node._get_node(key), reference._get_node(key)
        if isinstance(value, DictConfig) and isinstance(default, DictConfig):
            _check_types(value, default, f"{full_key}.")
            continue
        value = value if isinstance(value, (DictConfig, ListConfig)) else value._value()
        default = default if isinstance(default, (DictConfig, ListConfig)) else default._value()
        expected = _expected_type(full_key, default)
        if expected is not None and not _matches(value, expected):
            raise ConfigError(f"{full_key} must be {_describe(expected)}, got {_show(value)}")


def _expected_type(full_key: str, default: Any) -> type | None:
    if default is None or _is_interpolation(default):
        return _NULLABLE_TYPES.get(full_key)
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return type(default)
    if isinstance(default, str):
        return str
    if isinstance(default, ListConfig):
        return list
    if isinstance(default, DictConfig):
        return dict
    return None


def _matches(value: Any, expected: type) -> bool:
    if value is None or _is_interpolation(value):
        return True
    if expected is bool:
        return isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is list:
        return isinstance(value, ListConfig)
    if expected is dict:
        return isinstance(value, DictConfig)
    return isinstance(value, expected)


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _describe(expected: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}[expected]


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        return repr(OmegaConf.to_container(value))
    return repr(value)
