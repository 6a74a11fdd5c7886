"""Settings read from MITORCH_* environment variables, checked like any other input."""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TypeVar

from mitorch.errors import ConfigError

_Number = TypeVar("_Number", int, float)


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _parse_finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _env_number(name: str, default: _Number, minimum: _Number | None, parse: Callable[[str], _Number | None],
                kind: str) -> _Number:
    """$name parsed by parse (default when unset or empty), at least minimum; one error shape for all kinds."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    value = parse(text)
    if value is None:
        raise ConfigError(f"{name} must be {kind}, got {text[:40]!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be {_show(minimum)} or more, got {_show(value)}")
    return value


def _show(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    """The whole number in $name (default when unset or empty).

    Raises:
        ConfigError: not a whole number, or below minimum; the message names the variable.
    """
    return _env_number(name, default, minimum, _parse_int, "a whole number")


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    """The finite number in $name (default when unset or empty).

    Raises:
        ConfigError: not a finite number, or below minimum; the message names the variable.
    """
    return _env_number(name, default, minimum, _parse_finite, "a finite number")
