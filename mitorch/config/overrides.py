"""Building and merging Hydra override strings."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
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


def range_size(start: float, stop: float, step: float) -> int:
    """How many values range(start, stop, step) holds (start + i*step short of stop), counted
    without listing them: integers exactly, floats as the decimals they were written as, so
    that range(0, 0.9, 0.3) is 0, 0.3, 0.6 (in binary, 3 * 0.3 falls just short of 0.9).

    Raises:
        ValueError: a step of 0 or a bound that is not finite.
    """
    if any(isinstance(v, float) and not math.isfinite(v) for v in (start, stop, step)):
        raise ValueError("its numbers must be finite")
    if step == 0:
        raise ValueError("its step is 0")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return max(0, -((start - stop) // step))  # ceil((stop - start) / step)
    return max(0, math.ceil((written(stop) - written(start)) / written(step)))


def written(number: float) -> Fraction:
    """A number as the decimal it was written as: a float by its shortest repr (0.3 -> 3/10)."""
    return Fraction(repr(number)) if isinstance(number, float) else Fraction(number)
