"""Settings read from MITORCH_* environment variables, checked like any other input."""
from __future__ import annotations

import math
import os

from mitorch.errors import ConfigError


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    """The whole number in $name (default when unset or empty).

    Raises:
        ConfigError: not a whole number, or below minimum; the message names the variable.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {text[:40]!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be {minimum} or more, got {value}")
    return value


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    """The finite number in $name (default when unset or empty).

    Raises:
        ConfigError: not a finite number, or below minimum; the message names the variable.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {text[:40]!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be {minimum:g} or more, got {value:g}")
    return value
