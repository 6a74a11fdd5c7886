"""Building and merging Hydra override strings."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

GROUPS = ("model", "optimizer", "lr_scheduler", "augmentation", "logger")

_PLAIN_KEY = re.compile(r"^[A-Za-z_][\w\-]*$")


def format_value(value: Any) -> str:
    """Formats a Python value in Hydra's override grammar (quoted strings, [lists], {dicts})."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_dict_key(k)}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    raise TypeError(f"cannot express a {type(value).__name__} value in a config override")


def _quote(text: str) -> str:
    # In Hydra's grammar a backslash needs escaping only before a quote or at the end.
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    return f"'{escaped}'"


def _dict_key(key: Any) -> str:
    key = str(key)
    if not _PLAIN_KEY.match(key):
        raise TypeError(f"config key {key!r} cannot be expressed in an override")
    return key


def override_key(override: str) -> str:
    """The key or group an override sets: 'model.depth' for 'model.depth=50', '+x' -> 'x'."""
    head = override.split("=", 1)[0]
    return head.lstrip("+~")


def merge(*override_lists: Iterable[str]) -> list[str]:
    """Concatenates override lists; for a key set more than once, the last one wins."""
    latest: dict[str, str] = {}
    for overrides in override_lists:
        for override in overrides:
            key = override_key(override)
            latest.pop(key, None)
            latest[key] = override
    return list(latest.values())


def group_choices(overrides: Iterable[str]) -> dict[str, str]:
    """The config-group options that overrides select, e.g. {'model': 'resnet'}."""
    choices = {}
    for override in overrides:
        key = override_key(override)
        if key in GROUPS and "=" in override:
            choices[key] = override.split("=", 1)[1]
    return choices
