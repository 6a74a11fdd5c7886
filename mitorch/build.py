"""The one place that instantiates config nodes (hydra.utils.instantiate).

Every `_target_` is checked against an allow-list first: torch., torchvision., mitorch.,
plus the prefixes a config lists under allowed_targets.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig

from mitorch.errors import ConfigError, MiTorchError, first_line

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

    from mitorch.engine.loggers import Loggers

ALLOWED_PREFIXES = ("torch.", "torchvision.", "mitorch.")


def check_targets(cfg: DictConfig) -> None:
    """Refuses any `_target_` outside the allow-list.

    Raises:
        ConfigError: naming the key, the target and how to allow it.
    """
    allowed = ALLOWED_PREFIXES + tuple(str(p) for p in (cfg.get("allowed_targets") or ()))
    for key, target in _targets(cfg, ""):
        if not isinstance(target, str) or not target.startswith(allowed):
            raise ConfigError(f"{key}._target_ '{target}' is not allowed; targets must start with "
                              f"{', '.join(allowed)} (add a prefix to allowed_targets to permit it)")


def _targets(node: Any, prefix: str):
    if isinstance(node, DictConfig):
        for key in node.keys():
            if key == "_target_":
                yield prefix.rstrip(".") or "<root>", node._get_node(key)._value()
            else:
                yield from _targets(node._get_node(key), f"{prefix}{key}.")
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _targets(item, f"{prefix}{i}.")


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        raise _build_error(what, node, e.__cause__ or e) from None
    except MiTorchError:
        raise
    except Exception as e:
        raise _build_error(what, node, e) from None


def _complete(partial: Callable, what: str, node: DictConfig, **kwargs: Any) -> Any:
    try:
        return partial(**kwargs)
    except MiTorchError:
        raise
    except (TypeError, ValueError) as e:
        raise _build_error(what, node, e) from None


def _build_error(what: str, node: DictConfig, cause: BaseException) -> MiTorchError:
    if isinstance(cause, MiTorchError):
        return cause
    return ConfigError(f"cannot build {what} ({node.get('_target_')}): {first_line(cause)}")


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The model of cfg.model with a head of num_classes outputs.

    Raises:
        ConfigError: naming cfg.model's target and why it cannot be built.
    """
    return _instantiate(cfg.model, "model", num_classes=num_classes)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> Optimizer:
    """The optimizer of cfg.optimizer (a partial) over the model's parameters, without weight
    decay on biases and normalization parameters.

    Raises:
        ConfigError: naming cfg.optimizer's target and why it cannot be built.
    """
    from mitorch.engine.optim import param_groups

    partial = _instantiate(cfg.optimizer, "optimizer")
    return _complete(partial, "optimizer", cfg.optimizer, params=param_groups(model))


def build_scheduler(cfg: DictConfig, optimizer: Optimizer, steps_per_epoch: int, max_epochs: int) -> LRScheduler:
    """The lr schedule of cfg.lr_scheduler (a partial) over optimizer, in optimizer updates.

    Args:
        steps_per_epoch: optimizer updates in one epoch (batches over accumulate_grad_batches).
        max_epochs: the run's length in epochs.

    Raises:
        ConfigError: naming cfg.lr_scheduler's target and why it cannot be built.
    """
    partial = _instantiate(cfg.lr_scheduler, "lr_scheduler")
    return _complete(partial, "lr_scheduler", cfg.lr_scheduler, optimizer=optimizer,
                     steps_per_epoch=steps_per_epoch, max_epochs=max_epochs)


def build_transforms(cfg: DictConfig) -> tuple[Callable, Callable]:
    """The (train, val) image pipelines of cfg.augmentation."""
    return (_instantiate(cfg.augmentation.train, "augmentation.train"),
            _instantiate(cfg.augmentation.val, "augmentation.val"))


def build_loggers(cfg: DictConfig, run_dir: str | Path | None) -> Loggers:
    """The loggers of cfg.logger (none, one or several), as one mitorch.engine.loggers.Loggers.

    Raises:
        ConfigError: a logger whose library is missing (naming the pip extra), or a bad option.
    """
    from mitorch.engine.loggers import Loggers

    chosen = cfg.get("logger") or {}
    run_dir = str(run_dir) if run_dir is not None else None
    return Loggers([_instantiate(node, f"logger.{name}", run_dir=run_dir) for name, node in chosen.items()])
