"""Composing the shipped configs with overrides, with errors a user can act on."""
from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mitorch.config.overrides import GROUPS, group_choices, override_key
from mitorch.config.screen import override_error, screen_overrides, shorten
from mitorch.config.validate import validate
from mitorch.errors import ConfigError, first_line

CONFIG_MODULE = "mitorch.conf"
CONFIG_NAME = "train"


def group_options(group: str) -> list[str]:
    """The options of a config group, e.g. group_options('model') -> ['convnext_tiny', ...]."""
    folder = resources.files(CONFIG_MODULE) / group
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Composes conf/train.yaml with overrides and validates the result.

    Args:
        overrides: Hydra overrides such as ["model=resnet", "optimizer.lr=0.1"].

    Returns:
        The composed config (interpolations unresolved, struct mode on).

    Raises:
        ConfigError: an unknown group option or key, a wrong type, or a bad value (a value that
            carries a credential among them).
    """
    overrides = task_defaults(list(overrides))
    screen_overrides(overrides)
    # The defaults of the selected options are the reference for key names and types.
    selections = _selections(overrides)
    reference, tree = _reference(selections), _reference_tree(selections)
    _refuse_additions(overrides, tree, reference)
    cfg = _compose(_into_open_mappings(overrides, tree), overrides, reference)
    validate(cfg, reference)
    return cfg


def _refuse_additions(overrides: list[str], tree: dict[str, Any], reference: DictConfig) -> None:
    """Refuses `+key=value` (and `++`) that would add a key inside a section of the config, such as
    +model.foo=1: the model's keys are its factory's arguments, so the training would fail long
    after the config was accepted. A new top-level key (+note=...) or a key of an open mapping
    (+logger.mlflow.tags.team=...) is still added. tree: the reference config (_reference_tree)."""
    for override in overrides:
        if not override.startswith("+") or "=" not in override:
            continue
        key = override_key(override)
        parts = key.split(".")
        if len(parts) < 2 or parts[0] not in tree or parts[0] == "hydra" or "/" in key:
            continue
        if _in_open_mapping(key, tree) or _has_key(tree, parts):
            continue
        raise ConfigError(f"unknown key '{shorten(key, 100)}'; {_valid_keys_hint(key, reference)} ('+' adds keys only "
                          "at the top level or under an empty mapping such as logger.mlflow.tags)")


def _has_key(tree: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _into_open_mappings(overrides: list[str], tree: dict[str, Any]) -> list[str]:
    """overrides, with those that set a key of an open mapping (a key whose default is `{}`,
    such as logger.mlflow.tags) written as Hydra's add-or-override (`++key=value`): without it
    Hydra refuses `tags.team=vision` and `tags={team: vision}` (and so a config file's tags)
    as keys that are not in the config. tree: the reference config (_reference_tree)."""
    return [f"++{override}" if "=" in override and not override.startswith(("+", "~"))
            and _in_open_mapping(override_key(override), tree) else override for override in overrides]


def _in_open_mapping(key: str, tree: Any) -> bool:
    """Whether key is, or is inside, a mapping whose default is empty (in tree, a plain config),
    other than a config group with no option chosen (`logger` under logger=none): that one takes
    no keys, and a group is chosen, never added to."""
    node, parts = tree, key.split(".")
    for depth, part in enumerate(parts, 1):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if node == {}:
            prefix = ".".join(parts[:depth])
            return prefix not in GROUPS and prefix not in _known_groups()
    return False


def compose_with_values(overrides: Sequence[str], values: Mapping[str, Any]) -> DictConfig:
    """The same config as compose(overrides + key=value for each of values), faster when called
    again with the same overrides: a search job's trials differ from its base config by a few
    values, and Hydra takes a few 100 ms a compose. Values that choose a config-group option (or
    the task type) go through compose.

    Raises:
        ConfigError: as compose.
    """
    from mitorch.config.overrides import format_value

    if any(key in GROUPS or key == "task_type" for key in values):
        return compose([*overrides, *(f"{k}={v if k in GROUPS else format_value(v)}" for k, v in values.items())])
    overrides = tuple(overrides)
    cfg = copy.deepcopy(_composed(overrides))
    selections = _selections(task_defaults(list(overrides)))
    reference, tree = _reference(selections), _reference_tree(selections)
    for key, value in values.items():
        if key.startswith(("+", "~")):
            raise ConfigError(f"unknown key '{shorten(key, 100)}'; a trial's values set keys that the config has, "
                              "named without '+' or '~' (a key under an empty mapping such as "
                              "logger.mlflow.tags.NAME is added as it is)")
        try:
            OmegaConf.update(cfg, key, value, merge=False, force_add=_in_open_mapping(key, tree))
        except Exception as e:  # noqa: BLE001 - OmegaConf's errors for unknown keys and wrong types
            if "not in struct" in str(e) or "Key" in type(e).__name__:
                raise ConfigError(f"unknown key '{key}'; {_valid_keys_hint(key, reference)}") from None
            raise ConfigError(f"cannot set '{key}': {first_line(e)}") from None
    validate(cfg, reference)
    return cfg


@functools.lru_cache(maxsize=8)
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    return compose(overrides)


def _selections(overrides: Sequence[str]) -> tuple[str, ...]:
    """The group choices of overrides, as the key of a reference config."""
    return tuple(f"{g}={c}" for g, c in group_choices(overrides).items())


@functools.lru_cache(maxsize=32)
def _reference_tree(selections: tuple[str, ...]) -> dict[str, Any]:
    """_reference(selections) as plain containers, unresolved (read, never changed)."""
    return OmegaConf.to_container(_reference(selections), resolve=False)


@functools.lru_cache(maxsize=32)
def _reference(selections: tuple[str, ...]) -> DictConfig:
    """The config of these group selections alone, kept per process (read, never changed): the
    controller composes one config per search trial, and each Hydra compose takes a few 100 ms."""
    return _compose(list(selections), selections)


# What a task type sets unless the command line chooses otherwise: group options, and values
# that apply while their group is the default one (SGD's lr of 0.05 after a one-epoch warmup suits
# classifiers, not detectors; a few hundred proposals suit images with a few objects and train several times faster).
# Detectors from random weights see rare gradient spikes (a box-head loss jumps) that SGD at 0.02
# turns into a divergence within a few updates, on small data with few updates an epoch most of
# all: clipping the gradient norm bounds those updates, and a warmup counted in updates (not
# epochs, which may be two updates long) eases the first ones, as torchvision's reference does.
TASK_DEFAULTS = {"object_detection": {"model": "fasterrcnn", "augmentation": "detection", "optimizer.lr": "0.02",
                                      "gradient_clip_norm": "10.0", "lr_scheduler.warmup_steps": "10",
                                      "lr_scheduler.warmup_epochs": "0",
                                      "model.rpn_pre_nms_top_n_train": "300", "model.rpn_post_nms_top_n_train": "100",
                                      "model.box_batch_size_per_image": "64"}}


def task_defaults(overrides: list[str]) -> list[str]:
    """overrides, preceded by the defaults of the task type they set (task_type=...)."""
    task = next((o.split("=", 1)[1] for o in reversed(overrides) if override_key(o) == "task_type" and "=" in o), None)
    task = task.strip("'\" ") if task else task  # config files give quoted values
    given = {override_key(o) for o in overrides}
    extra = [f"{key}={value}" for key, value in TASK_DEFAULTS.get(task, {}).items()
             if key not in given and key.split(".")[0] not in given]
    return extra + overrides


def _compose(overrides: list[str], shown: Iterable[str], reference: DictConfig | None = None) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    try:
        if GlobalHydra.instance().is_initialized():
            # Inside a running Hydra app (mitrain's task function): reuse its search path.
            return hydra_compose(CONFIG_NAME, overrides=overrides)
        with initialize_config_module(CONFIG_MODULE, version_base=None):
            return hydra_compose(CONFIG_NAME, overrides=overrides)
    except (HydraException, ValueError) as e:
        raise _explain(e, reference) from None


_MISSING_OPTION = re.compile(r"Could not find '([^'/]+)/([^']+)'")
_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'")
_NOT_DELETABLE = re.compile(r"Could not delete from config\. '([^']+)' does not exist")


def _explain(error: Exception, reference: DictConfig | None) -> ConfigError:
    message = str(error)
    if type(error).__name__ == "OverrideParseException":
        return override_error(error)
    cause = str(error.__cause__ or "")
    missing = _MISSING_OPTION.search(message)
    if missing:
        group, option = missing.groups()
        if group in GROUPS or group in _known_groups():
            return ConfigError(f"unknown {group} '{option}'; choose from {', '.join(group_options(group))}")
    unknown = _UNKNOWN_KEY.search(message)
    if unknown and "is not in struct" in cause:
        key = unknown.group(1)
        return ConfigError(f"unknown key '{key}'; {_valid_keys_hint(key, reference)}")
    if unknown and cause:
        return ConfigError(f"cannot set '{unknown.group(1)}': {cause.splitlines()[0]}")
    not_deletable = _NOT_DELETABLE.search(message)
    if not_deletable:
        return ConfigError(f"cannot delete '{not_deletable.group(1)}': it is not in the config")
    return ConfigError(first_line(error))


def _known_groups() -> set[str]:
    root = resources.files(CONFIG_MODULE)
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")}


def _valid_keys_hint(key: str, reference: DictConfig | None) -> str:
    parent_key, _, _ = key.rpartition(".")
    if reference is None:
        return "check the spelling"
    parent = OmegaConf.select(reference, parent_key) if parent_key else reference
    if not isinstance(parent, DictConfig):
        return f"'{parent_key}' has no sub-keys"
    keys = sorted(k for k in parent.keys() if not str(k).startswith("_") and k != "hydra")
    where = f"'{parent_key}'" if parent_key else "the top level"
    return f"valid keys at {where}: {', '.join(map(str, keys))}" if keys else f"{where} takes no keys"
