"""What misubmit (and the sweep launcher) store: a checked, self-contained training config."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from mitorch.build import check_targets
from mitorch.config import resolve_paths
from mitorch.config.validate import PATH_KEYS
from mitorch.errors import ConfigError
from mitorch.service.remote import is_remote
from mitorch.store import JobStore, StoreError
from mitorch.store.uri import credential_forms


def find_dataset(reference: str | None, store: JobStore) -> dict[str, Any] | None:
    """The registered dataset NAME[:VERSION] (the highest version without one), as the training's
    `dataset` field: {"name", "version"}, pinned to the version found."""
    if reference is None:
        return None
    from mitorch.service.datasets import parse_reference

    name, version = parse_reference(reference)
    dataset = store.get_dataset(name, version)
    if dataset is None:
        shown = name if version is None else f"{name}:{version}"
        raise StoreError(f"dataset {shown} is not registered; see midataset list, or register it with "
                         "midataset register FILE")
    return {"name": dataset["name"], "version": dataset["version"]}


def submission(cfg: DictConfig, store: JobStore, dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config to store for a composed, validated cfg: absolute paths, allowed targets, and a
    `base` that names a training of this store.

    Raises:
        ConfigError, StoreError: naming what is wrong.
    """
    _refuse_credentials(OmegaConf.to_container(cfg, resolve=False), "")
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and is_remote(value):
            raise ConfigError(f"{key} is a URL; register remote data with midataset register and queue it "
                              "with --dataset NAME (the job store keeps no URLs with tokens)")
    if dataset is not None and cfg.data.train is not None:
        raise ConfigError("--dataset gives data.train and data.val; do not set them as well")
    resolve_paths(cfg)
    check_targets(cfg)
    if cfg.base is not None and store.get_training(cfg.base) is None:
        raise StoreError(f"base training {cfg.base} is not in the job store; see miquery for the ids")
    return OmegaConf.to_container(cfg, resolve=False)


def _refuse_credentials(value: Any, key: str) -> None:
    """The job store never keeps a secret: no string of a stored config may carry a credential."""
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_credentials(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_credentials(item, f"{key}[{index}]")
    elif isinstance(value, str) and credential_forms(value):
        raise ConfigError(f"{key} carries a credential ({', '.join(credential_forms(value))}); the job store keeps "
                          "no secrets: register remote data with midataset register and queue it with --dataset NAME")
