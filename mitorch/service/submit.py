"""What misubmit (and the sweep launcher) store: a checked, self-contained training config."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from mitorch.build import check_targets
from mitorch.config import resolve_paths
from mitorch.store import JobStore, StoreError


def submission(cfg: DictConfig, store: JobStore) -> dict[str, Any]:
    """The config to store for a composed, validated cfg: absolute paths, allowed targets, and a
    `base` that names a training of this store.

    Raises:
        ConfigError, StoreError: naming what is wrong.
    """
    resolve_paths(cfg)
    check_targets(cfg)
    if cfg.base is not None and store.get_training(cfg.base) is None:
        raise StoreError(f"base training {cfg.base} is not in the job store; see miquery for the ids")
    return OmegaConf.to_container(cfg, resolve=False)
