"""Search jobs: the job file, its search space in Hydra's sweeper syntax, and the Optuna objects
(distributions, sampler, pruner) it stands for. Everything here is checked before a job is stored.

Optuna is imported inside the functions that need it: misubmit and micontrol import this module.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from mitorch.config.overrides import GROUPS, format_value
from mitorch.errors import ConfigError
from mitorch.task_types import METRICS, main_metric

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "grid")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "threshold", "none")
_JOB_KEYS = ("job_type", "name", "dataset", "config", "overrides", "search_space", "objective", "sampler", "pruner",
             "n_trials", "max_concurrent", "max_failed", "priority")


def distributions(search_space: Mapping[str, str]) -> dict[str, Any]:
    """Optuna distributions for a search space in Hydra's sweeper syntax.

    `a,b,c` and `choice(a, b, c)`: categorical; `range(start, stop[, step])`: the values Hydra's
    range gives (stop excluded), as a stepped int or float distribution; `interval(low, high)`:
    a float between low and high (`tag(int, interval(...))`: an integer); `tag(log, ...)`: on a
    log scale.

    Raises:
        ConfigError: naming the key whose value is not one of these.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(search_space, Mapping) or not search_space:
        raise ConfigError("search_space must map config keys to Hydra sweeps, e.g. optimizer.lr: "
                          "tag(log, interval(1e-4, 1e-1))")
    parser = OverridesParser.create()
    result: dict[str, Any] = {}
    for key, text in search_space.items():
        where = f"search_space.{key}"
        if isinstance(text, (list, tuple)):
            text = ",".join(format_value(v) for v in text)
        try:
            (override,) = parser.parse_overrides([f"{key}={text}"])
        except HydraException as e:
            raise ConfigError(f"{where}: cannot parse {text!r} ({' '.join(str(e).split())[:200]})") from None
        sweep = override.value()
        tags = getattr(sweep, "tags", set()) or set()
        try:
            if isinstance(sweep, ChoiceSweep):
                choices = tuple(sweep.list)
                if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
                    raise ConfigError(f"{where}: choices must be plain values (numbers, strings, booleans, null)")
                result[key] = CategoricalDistribution(choices)
            elif isinstance(sweep, RangeSweep):
                values = _range_values(sweep.start, sweep.stop, sweep.step)
                if not values:
                    raise ConfigError(f"{where}: {text} holds no value (Hydra's range excludes its end)")
                if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
                    log = "log" in tags
                    result[key] = IntDistribution(values[0], values[-1], log=log, step=1 if log else sweep.step)
                else:
                    result[key] = FloatDistribution(values[0], values[-1], step=sweep.step)
            elif isinstance(sweep, IntervalSweep):
                low, high = sweep.start, sweep.end
                if "int" in tags:
                    result[key] = IntDistribution(int(low), int(high), log="log" in tags)
                else:
                    result[key] = FloatDistribution(low, high, log="log" in tags)
            else:
                raise ConfigError(f"{where}: {text!r} is one value, not a sweep; put {key}={text} in overrides, or "
                                  "give choice(...), a,b,c, range(...) or interval(...)")
        except ValueError as e:  # Optuna refuses the bounds (low > high, log with low <= 0, ...)
            raise ConfigError(f"{where}: {text} is not a valid range ({e})") from None
    return result


def _range_values(start: float, stop: float, step: float) -> list[float]:
    if step == 0:
        raise ValueError("its step is 0")
    values, value = [], start
    while (value < stop) if step > 0 else (value > stop):
        values.append(value)
        value = start + step * len(values)
    return values if step > 0 else values[::-1]


def param_overrides(params: Mapping[str, Any]) -> list[str]:
    """A trial's params as overrides; a config group takes its option's bare name."""
    return [f"{key}={value if key in GROUPS and isinstance(value, str) else format_value(value)}"
            for key, value in params.items()]


def make_sampler(spec: Mapping[str, Any], space: Mapping[str, Any], trials_so_far: int = 0):
    """The sampler a job names. A seeded sampler's seed moves on with the number of trials so far:
    a sampler rebuilt every tick would otherwise repeat its suggestions."""
    import optuna

    options = dict(spec)
    name = options.pop("name", "tpe")
    if options.get("seed") is not None:
        options["seed"] = int(options["seed"]) + trials_so_far
    if name == "grid":
        grid = {}
        for key, distribution in space.items():
            if not isinstance(distribution, optuna.distributions.CategoricalDistribution) and (
                    getattr(distribution, "step", None) is None):
                raise ConfigError(f"sampler: grid needs a finite search space; search_space.{key} is an interval")
            grid[key] = _grid_values(distribution)
        options["search_space"] = grid
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
               "cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler,
               "qmc": optuna.samplers.QMCSampler, "grid": optuna.samplers.GridSampler}
    return _build("sampler", name, classes, options)


def _grid_values(distribution: Any) -> list[Any]:
    if hasattr(distribution, "choices"):
        return list(distribution.choices)
    count = int(round((distribution.high - distribution.low) / distribution.step)) + 1
    return [distribution.low + i * distribution.step for i in range(count)]


def make_pruner(spec: Mapping[str, Any]):
    """The pruner a job names."""
    import optuna

    options = dict(spec)
    name = options.pop("name", "median")
    classes = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
               "hyperband": optuna.pruners.HyperbandPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "threshold": optuna.pruners.ThresholdPruner, "none": optuna.pruners.NopPruner}
    return _build("pruner", name, classes, options)


def _build(kind: str, name: Any, classes: dict[str, Any], options: dict[str, Any]) -> Any:
    if name not in classes:
        raise ConfigError(f"unknown {kind} {name!r}; choose from {', '.join(classes)}")
    import warnings

    from optuna.exceptions import ExperimentalWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # QMC and GP: the user chose them
            return classes[name](**options)
    except (TypeError, ValueError, ImportError) as e:
        raise ConfigError(f"{kind} {name}: {' '.join(str(e).split())[:200]}") from None


def _whole(job: Mapping[str, Any], key: str, default: int | None, minimum: int) -> int:
    value = job.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**63:
        raise ConfigError(f"{key} must be a whole number of at least {minimum}, got {value!r}")
    return value


def settings(job: Mapping[str, Any], task_type: str) -> dict[str, Any]:
    """The checked settings of a search job file (all but its config and dataset), filled in
    with defaults: objective (the task's main metric), sampler tpe, pruner median, n_trials 20,
    max_concurrent 2, max_failed 5.

    Raises:
        ConfigError: naming the key that is wrong.
    """
    import optuna

    unknown = sorted(set(job) - set(_JOB_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in the job; keys are {', '.join(_JOB_KEYS)}")
    if job.get("job_type", "search") != "search":
        raise ConfigError(f"job_type must be search, got {job.get('job_type')!r}")
    space = dict(job.get("search_space") or {})
    distributions_ = distributions(space)
    objective = dict(job.get("objective") or {})
    if set(objective) - {"metric", "direction"}:
        raise ConfigError("objective takes metric and direction")
    metric = objective.get("metric") or main_metric(task_type)
    if metric not in METRICS[task_type]:
        raise ConfigError(f"objective.metric {metric!r} is not a metric of {task_type}; choose from "
                          f"{', '.join(METRICS[task_type])}")
    direction = objective.get("direction") or ("minimize" if metric == "loss" else "maximize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"objective.direction must be minimize or maximize, got {direction!r}")
    sampler = _spec(job.get("sampler"), "sampler", "tpe")
    pruner = _spec(job.get("pruner"), "pruner", "median")
    result = {"job_type": "search", "name": job.get("name"), "search_space": space,
              "objective": {"metric": metric, "direction": direction}, "sampler": sampler, "pruner": pruner,
              "n_trials": _whole(job, "n_trials", 20, 1), "max_concurrent": _whole(job, "max_concurrent", 2, 1),
              "max_failed": _whole(job, "max_failed", 5, 0)}
    # Both are built and tried once, in memory: unknown options and missing extras fail here.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=make_sampler(sampler, distributions_),
                                pruner=make_pruner(pruner))
    try:
        study.ask(distributions_)
    except (TypeError, ValueError, ImportError) as e:
        raise ConfigError(f"sampler {sampler['name']}: {' '.join(str(e).split())[:200]}") from None
    if sampler["name"] == "grid":
        size = 1
        for values in sampler_grid(distributions_).values():
            size *= len(values)
        result["n_trials"] = min(result["n_trials"], size)  # each grid point once
    return result


def sampler_grid(space: Mapping[str, Any]) -> dict[str, list[Any]]:
    return {key: _grid_values(d) for key, d in space.items()}


def _spec(value: Any, kind: str, default: str) -> dict[str, Any]:
    if value is None:
        return {"name": default}
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{kind} must be a name or a mapping with a name and options")
    return {"name": default, **value}


def check_points(space: Mapping[str, Any], seed: int = 0, samples: int = 3) -> list[dict[str, Any]]:
    """Points of the space to compose before a job is stored: every bound (the lows together,
    the highs together), every choice once, and a few random points."""
    lows = {k: _grid_values(d)[0] if hasattr(d, "choices") else d.low for k, d in space.items()}
    highs = {k: _grid_values(d)[-1] if hasattr(d, "choices") else d.high for k, d in space.items()}
    points = [lows, highs]
    for key, distribution in space.items():
        for choice in getattr(distribution, "choices", ())[1:-1]:
            points.append({**lows, key: choice})
    rng = random.Random(seed)
    for _ in range(samples):
        points.append({k: rng.choice(d.choices) if hasattr(d, "choices") else _uniform(rng, d)
                       for k, d in space.items()})
    return points


def _uniform(rng: random.Random, distribution: Any) -> Any:
    if getattr(distribution, "step", None) is not None:
        return rng.choice(_grid_values(distribution))
    value = rng.uniform(distribution.low, distribution.high)
    return int(round(value)) if isinstance(distribution.low, int) and not isinstance(distribution.low, bool) \
        else value


def read_job_file(path: str) -> dict[str, Any] | None:
    """The job in a JSON or YAML file, or None when the file is a training config (no job_type)."""
    import json
    from pathlib import Path

    import yaml

    file = Path(path)
    if file.suffix.lower() not in (".json", ".yaml", ".yml") or not file.is_file():
        return None
    text = file.read_text()
    try:
        content = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        return None  # read as a training config, whose reader names what is wrong
    if not isinstance(content, dict) or "job_type" not in content:
        return None
    return content


def prepare(job: Mapping[str, Any], store: Any, base_dir: str = ".", priority: int | None = None,
            dataset: str | None = None) -> dict[str, Any]:
    """The record of a search job, checked: the base config and points of the space compose as
    valid trainings, the dataset exists, the sampler and pruner build.

    Args:
        job: the job file's content (or the same built from misubmit --search).
        base_dir: where a relative `config` path is found (the job file's folder).
        priority, dataset: misubmit's --priority and --dataset, which win over the file's.

    Raises:
        ConfigError, StoreError: naming what is wrong.
    """
    import json
    import os
    import tempfile

    from omegaconf import OmegaConf

    from mitorch.config import PATH_KEYS, compose, config_file_overrides, merge
    from mitorch.service.submit import find_dataset, submission
    from mitorch.store.base import DEFAULT_PRIORITY

    if not isinstance(job, Mapping):
        raise ConfigError("a job file holds a mapping with job_type: search")
    overrides = job.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("overrides must be a list of key=value strings")
    base = list(overrides)
    config = job.get("config")
    if isinstance(config, str):
        base = merge(config_file_overrides(os.path.join(base_dir, os.path.expanduser(config)), overrides), overrides)
    elif isinstance(config, Mapping):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
            json.dump(dict(config), file)
        try:
            base = merge(config_file_overrides(file.name, overrides), overrides)
        finally:
            os.unlink(file.name)
    elif config is not None:
        raise ConfigError("config must be a training-config file's path or a mapping")
    pinned = find_dataset(dataset or job.get("dataset"), store)
    stored = submission(compose(base), store, pinned)
    # Paths were made absolute against this folder; the controller composes elsewhere.
    resolved = OmegaConf.create(stored)
    base = merge(base, [f"{key}={format_value(value)}" for key in PATH_KEYS
                        if isinstance(value := OmegaConf.select(resolved, key), str)])
    record = settings(job, stored["task_type"])
    space = distributions(record["search_space"])
    for point in check_points(space):
        try:
            submission(compose(merge(base, param_overrides(point))), store, pinned)
        except ConfigError as e:
            raise ConfigError(f"search_space point {' '.join(param_overrides(point))}: {e}") from None
    if priority is None:
        priority = job.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int) or not -2**63 <= priority < 2**63:
        raise ConfigError(f"priority must be a whole number, got {priority!r}")
    return {**record, "status": "running", "dataset": pinned, "base_overrides": base, "priority": priority,
            "task_type": stored["task_type"]}
