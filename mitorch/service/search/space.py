"""A search job's space: Hydra's sweeper syntax read as Optuna distributions, the size of its
grid, the points checked before a job is stored, and a point as overrides of a training.

Optuna is imported inside the functions that build its objects: misubmit imports this module
through job.py for every file it is given, training configs included.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from mitorch.config.overrides import GROUPS, format_value, range_size, written
from mitorch.config.screen import shorten
from mitorch.errors import ConfigError, first_line

# A grid sampler tries every point once, and Optuna lists them all at every tick: each point is a
# training, so a grid beyond this many points is a mistake, not a search.
MAX_GRID_POINTS = 10_000
# Every choice of a space is composed once before the job is stored (a few ms each).
MAX_CHOICES = 1_000
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Float ranges step through at most this many values: beyond it consecutive values are no longer
# distinct doubles, and Optuna's stepped distribution cannot hold them.
_MAX_FLOAT_STEPS = 2**53
_SPACE_EXAMPLE = "optimizer.lr: tag(log, interval(1e-4, 1e-1))"


def distributions(search_space: Mapping[str, str]) -> dict[str, Any]:
    """Optuna distributions for a search space in Hydra's sweeper syntax.

    `a,b,c` and `choice(a, b, c)`: categorical; `range(start, stop[, step])`: the values Hydra's
    range gives (stop excluded), as a stepped int or float distribution, computed from the bounds
    (a range is never expanded value by value); `interval(low, high)`: a float between low and
    high (`tag(int, interval(...))`: an integer); `tag(log, ...)`: on a log scale.

    Args:
        search_space: config key -> sweep text (or a list of plain values, read as a,b,c).

    Returns:
        config key -> Optuna distribution, in the space's order.

    Raises:
        ConfigError: naming the key whose value is not one of these.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not isinstance(search_space, Mapping) or not search_space:
        raise ConfigError(f"search_space must map config keys to Hydra sweeps, e.g. {_SPACE_EXAMPLE}")
    parser = OverridesParser.create()
    result: dict[str, Any] = {}
    choices_in_all = 0
    for key, text in search_space.items():
        text = _sweep_text(key, text)
        result[key] = _distribution(f"search_space.{key}", key, text, _parse_sweep(parser, key, text))
        choices_in_all += len(getattr(result[key], "choices", ()))
        if choices_in_all > MAX_CHOICES:
            raise ConfigError(f"search_space holds more than {MAX_CHOICES} choices in all; each is checked before "
                              "the job is stored: use range(...) or interval(...) for many numbers")
    return result


def _parse_sweep(parser: Any, key: str, text: str) -> Any:
    """The sweep Hydra's override parser reads from key=text."""
    from hydra.errors import HydraException

    try:
        (override,) = parser.parse_overrides([f"{key}={text}"])
    except HydraException as e:
        raise ConfigError(f"search_space.{key}: cannot parse {shorten(text, 100)} "
                          f"({shorten(first_line(e), 200)})") from None
    return override.value()


def _distribution(where: str, key: str, text: str, sweep: Any) -> Any:
    """The Optuna distribution a parsed sweep stands for."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution

    tags = getattr(sweep, "tags", set()) or set()
    try:
        if isinstance(sweep, ChoiceSweep):
            choices = tuple(sweep.list)
            if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
                raise ConfigError(f"{where}: choices must be plain values (numbers, strings, booleans, null)")
            return CategoricalDistribution(choices)
        if isinstance(sweep, RangeSweep):
            return _range_distribution(where, text, sweep, "log" in tags)
        if isinstance(sweep, IntervalSweep):
            return _interval_distribution(where, text, sweep, tags)
    except ValueError as e:  # Optuna refuses the bounds (low > high, log with low <= 0, ...)
        raise ConfigError(f"{where}: {text} is not a valid range ({first_line(e)})") from None
    raise ConfigError(f"{where}: {shorten(text)!r} is one value, not a sweep; put {key}={shorten(text)} in "
                      "overrides, or give choice(...), a,b,c, range(...) or interval(...)")


def _sweep_text(key: Any, text: Any) -> str:
    """A space's entry as the text of a Hydra sweep (a list becomes a,b,c), its size checked."""
    from mitorch.config.screen import MAX_NESTING, check_override_size, nesting

    if not isinstance(key, str) or not key:
        raise ConfigError(f"search_space keys are config keys such as optimizer.lr, got {shorten(repr(key))}")
    if isinstance(text, (list, tuple)):
        if any(isinstance(v, (Mapping, list, tuple)) for v in text):
            raise ConfigError(f"search_space.{shorten(key)}: a list of choices holds plain values (numbers, "
                              "strings, booleans, null)")
        text = ",".join(format_value(v) for v in text)
    elif not isinstance(text, str):
        raise ConfigError(f"search_space.{shorten(key)} must be a sweep such as choice(a, b), range(1, 5), "
                          f"interval(0.1, 1) or a list of values, got a {type(text).__name__}")
    check_override_size(key, text, where="search_space.")
    if nesting(text) > MAX_NESTING:  # Hydra's parser recurses once per level
        raise ConfigError(f"search_space.{shorten(key)} nests deeper than {MAX_NESTING} levels; a sweep nests a few")
    return text


def _range_distribution(where: str, text: str, sweep: Any, log: bool) -> Any:
    """The stepped distribution of range(start, stop, step): the values start + i*step (i = 0,
    1, ...) short of stop, from its bounds and count (range_size), never listed."""
    from optuna.distributions import FloatDistribution, IntDistribution

    start, stop, step = sweep.start, sweep.stop, sweep.step
    try:
        count = range_size(start, stop, step)
    except ValueError as e:
        raise ConfigError(f"{where}: {text} cannot be a range ({e}); give finite numbers and a step that moves from "
                          "start towards stop") from None
    if count == 0:
        raise ConfigError(f"{where}: {text} holds no value (Hydra's range excludes its end)")
    if all(isinstance(v, int) for v in (start, stop, step)):
        last = start + step * (count - 1)
        low, high = min(start, last), max(start, last)
        _check_int64(where, text, low, high, "values")
        return IntDistribution(low, high, log=log, step=1 if log else abs(step))
    if count > _MAX_FLOAT_STEPS:
        raise ConfigError(f"{where}: {shorten(text, 100)} holds more than 2**53 values; give a larger step, or "
                          "interval(low, high) for any value in between")
    last = float(written(start) + written(step) * (count - 1))
    low, high = min(float(start), last), max(float(start), last)
    return FloatDistribution(low, high, step=abs(float(step)))


def _interval_distribution(where: str, text: str, sweep: Any, tags: set[str]) -> Any:
    """The distribution of interval(low, high): a float, or an integer when tagged int."""
    from optuna.distributions import FloatDistribution, IntDistribution

    low, high = sweep.start, sweep.end
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where}: {text} needs finite bounds, e.g. interval(1e-4, 1e-1)")
    if "int" in tags:
        _check_int64(where, text, int(low), int(high), "bounds")
        return IntDistribution(int(low), int(high), log="log" in tags)
    return FloatDistribution(low, high, log="log" in tags)


def _check_int64(where: str, text: str, low: int, high: int, what: str) -> None:
    """Optuna keeps integers as 64-bit numbers: a wider range would fail at a tick, not here."""
    if not (_INT64_MIN <= low and high <= _INT64_MAX):
        raise ConfigError(f"{where}: {shorten(text, 100)} goes beyond 64-bit whole numbers; {what} must be from "
                          "-2**63 to 2**63-1")


def param_overrides(params: Mapping[str, Any]) -> list[str]:
    """A point of the space as overrides of a training's config.

    Args:
        params: config key -> value (a trial's params).

    Returns:
        `key=value` overrides in Hydra's grammar; a config group takes its option's bare name.
    """
    return [f"{key}={value if key in GROUPS and isinstance(value, str) else format_value(value)}"
            for key, value in params.items()]


def grid_size(space: Mapping[str, Any]) -> int:
    """How many points a grid over the space holds, counted without listing them.

    Args:
        space: config key -> Optuna distribution (as distributions() gives).

    Raises:
        ConfigError: a key is an interval (no grid), or the grid holds more than MAX_GRID_POINTS.
    """
    size = 1
    for key, distribution in space.items():
        size *= _grid_count(key, distribution)
        if size > MAX_GRID_POINTS:
            raise ConfigError(f"sampler: grid holds more than {MAX_GRID_POINTS} points (the cap of a grid, which tries "
                              "each point as a training); narrow the space or choose another sampler (tpe, random)")
    return size


def sampler_grid(space: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Every value of each key of a finite space, as Optuna's GridSampler takes them.

    Args:
        space: config key -> Optuna distribution (as distributions() gives).

    Raises:
        ConfigError: as grid_size (an interval, or more than MAX_GRID_POINTS points).
    """
    grid_size(space)  # before listing anything
    return {key: _grid_values(d, _grid_count(key, d)) for key, d in space.items()}


def _grid_count(key: str, distribution: Any) -> int:
    """How many values one key of a grid takes."""
    if hasattr(distribution, "choices"):
        return len(distribution.choices)
    if getattr(distribution, "step", None) is None:
        raise ConfigError(f"sampler: grid needs a finite search space; search_space.{key} is an interval")
    if isinstance(distribution.step, int):
        return (distribution.high - distribution.low) // distribution.step + 1
    steps = (distribution.high - distribution.low) / distribution.step
    return int(round(steps)) + 1 if math.isfinite(steps) else MAX_GRID_POINTS + 1


def _grid_values(distribution: Any, count: int) -> list[Any]:
    if hasattr(distribution, "choices"):
        return list(distribution.choices)
    return [_stepped(distribution, i) for i in range(count)]


def _stepped(distribution: Any, index: int) -> Any:
    """The index-th value of a stepped distribution; a float's in decimals (0.1 * 3 is 0.3)."""
    if isinstance(distribution.step, int):
        return distribution.low + index * distribution.step
    return float(written(distribution.low) + index * written(distribution.step))


def check_points(space: Mapping[str, Any], seed: int = 0, samples: int = 3) -> list[dict[str, Any]]:
    """Points of the space to compose before a job is stored, each once.

    Args:
        space: config key -> Optuna distribution (as distributions() gives).
        seed, samples: the random points: how they are drawn and how many.

    Returns:
        Every bound (the lows together, the highs together), every choice once, and a few
        random points; no two give the same overrides.
    """
    lows = {k: d.choices[0] if hasattr(d, "choices") else d.low for k, d in space.items()}
    highs = {k: d.choices[-1] if hasattr(d, "choices") else d.high for k, d in space.items()}
    points = [lows, highs]
    for key, distribution in space.items():
        for choice in getattr(distribution, "choices", ())[1:-1]:
            points.append({**lows, key: choice})
    rng = random.Random(seed)
    for _ in range(samples):
        points.append({k: rng.choice(d.choices) if hasattr(d, "choices") else _uniform(rng, d)
                       for k, d in space.items()})
    unique: dict[tuple[str, ...], dict[str, Any]] = {}
    for point in points:
        unique.setdefault(tuple(param_overrides(point)), point)
    return list(unique.values())


def _uniform(rng: random.Random, distribution: Any) -> Any:
    if getattr(distribution, "step", None) is not None:  # one of its values, by index: none are listed
        return _stepped(distribution, rng.randrange(_grid_count("", distribution)))
    value = rng.uniform(distribution.low, distribution.high)
    return int(round(value)) if isinstance(distribution.low, int) and not isinstance(distribution.low, bool) \
        else value


__all__ = ["MAX_CHOICES", "MAX_GRID_POINTS", "check_points", "distributions", "grid_size", "param_overrides",
           "sampler_grid"]
