"""MiTorch: train and evaluate image models from composable Hydra configs.

The public API is small and imports torch only when used:

    import mitorch
    cfg = mitorch.compose(["model=resnet", "max_epochs=2"])
    metrics = mitorch.train(cfg)            # final validation metrics, a dict
    metrics = mitorch.evaluate(cfg)         # cfg.weights evaluated on cfg.data.val
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mitorch.errors import ConfigError, DataError, MiTorchError, TrainingError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "MiTorchError", "TrainingError", "compose", "evaluate", "train"]

if TYPE_CHECKING:
    from mitorch.api import evaluate, train
    from mitorch.config import compose


def __getattr__(name: str) -> Any:
    if name in ("train", "evaluate"):
        from mitorch import api

        return getattr(api, name)
    if name == "compose":
        from mitorch.config import compose

        return compose
    raise AttributeError(f"module 'mitorch' has no attribute {name!r}")
