"""Search jobs: the job file, its search space in Hydra's sweeper syntax, and the Optuna objects
(distributions, sampler, pruner) it stands for. Everything here is checked before a job is stored.

Optuna is imported inside the functions that need it: misubmit and micontrol import this module.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from mitorch.config.overrides import GROUPS, format_value, range_size, written
from mitorch.config.screen import shorten
from mitorch.errors import ConfigError, first_line
from mitorch.task_types import METRICS, main_metric

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "grid")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "threshold", "none")
_JOB_KEYS = ("job_type", "name", "dataset", "config", "overrides", "search_space", "objective", "sampler", "pruner",
             "n_trials", "max_concurrent", "max_failed", "priority")
# A grid sampler tries every point once, and Optuna lists them all at every tick: each point is a
# training, so a grid beyond this many points is a mistake, not a search.
MAX_GRID_POINTS = 10_000
# Every choice of a space is composed once before the job is stored (a few ms each).
MAX_CHOICES = 1_000
# Trials of one job (n_trials, and what --add-trials adds at once).
MAX_TRIALS = 100_000
# A step asks for up to this many trials of a job at once (each composes a config, tens of
# milliseconds), under the jobs lease: the bound keeps a step well within its lease.
MAX_CONCURRENT = 256
# A job's name is a label shown in tables.
MAX_NAME_CHARS = 200
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Float ranges step through at most this many values: beyond it consecutive values are no longer
# distinct doubles, and Optuna's stepped distribution cannot hold them.
_MAX_FLOAT_STEPS = 2**53


def distributions(search_space: Mapping[str, str]) -> dict[str, Any]:
    """Optuna distributions for a search space in Hydra's sweeper syntax.

    `a,b,c` and `choice(a, b, c)`: categorical; `range(start, stop[, step])`: the values Hydra's
    range gives (stop excluded), as a stepped int or float distribution, computed from the bounds
    (a range is never expanded value by value); `interval(low, high)`: a float between low and
    high (`tag(int, interval(...))`: an integer); `tag(log, ...)`: on a log scale.

    Raises:
        ConfigError: naming the key whose value is not one of these.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException
    from optuna.distributions import CategoricalDistribution

    if not isinstance(search_space, Mapping) or not search_space:
        raise ConfigError("search_space must map config keys to Hydra sweeps, e.g. optimizer.lr: "
                          "tag(log, interval(1e-4, 1e-1))")
    parser = OverridesParser.create()
    result: dict[str, Any] = {}
    choices_in_all = 0
    for key, text in search_space.items():
        text = _sweep_text(key, text)
        where = f"search_space.{key}"
        try:
            (override,) = parser.parse_overrides([f"{key}={text}"])
        except HydraException as e:
            raise ConfigError(f"{where}: cannot parse {shorten(text, 100)} ({shorten(first_line(e), 200)})") from None
        sweep = override.value()
        tags = getattr(sweep, "tags", set()) or set()
        try:
            if isinstance(sweep, ChoiceSweep):
                choices = tuple(sweep.list)
                if any(not isinstance(c, (str, int, float, bool)) and c is not None for c in choices):
                    raise ConfigError(f"{where}: choices must be plain values (numbers, strings, booleans, null)")
                choices_in_all += len(choices)
                if choices_in_all > MAX_CHOICES:
                    raise ConfigError(f"search_space holds more than {MAX_CHOICES} choices in all; each is checked "
                                      "before the job is stored: use range(...) or interval(...) for many numbers")
                result[key] = CategoricalDistribution(choices)
            elif isinstance(sweep, RangeSweep):
                result[key] = _range_distribution(where, text, sweep, "log" in tags)
            elif isinstance(sweep, IntervalSweep):
                result[key] = _interval_distribution(where, text, sweep, tags)
            else:
                raise ConfigError(f"{where}: {shorten(text)!r} is one value, not a sweep; put {key}={shorten(text)} in "
                                  "overrides, or give choice(...), a,b,c, range(...) or interval(...)")
        except ValueError as e:  # Optuna refuses the bounds (low > high, log with low <= 0, ...)
            raise ConfigError(f"{where}: {text} is not a valid range ({first_line(e)})") from None
    return result


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
        if not (_INT64_MIN <= low and high <= _INT64_MAX):
            raise ConfigError(f"{where}: {shorten(text, 100)} goes beyond 64-bit whole numbers; values must be from "
                              "-2**63 to 2**63-1")
        return IntDistribution(low, high, log=log, step=1 if log else abs(step))
    if count > _MAX_FLOAT_STEPS:
        raise ConfigError(f"{where}: {shorten(text, 100)} holds more than 2**53 values; give a larger step, or "
                          "interval(low, high) for any value in between")
    last = float(written(start) + written(step) * (count - 1))
    low, high = min(float(start), last), max(float(start), last)
    return FloatDistribution(low, high, step=abs(float(step)))


def _interval_distribution(where: str, text: str, sweep: Any, tags: set[str]) -> Any:
    from optuna.distributions import FloatDistribution, IntDistribution

    low, high = sweep.start, sweep.end
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where}: {text} needs finite bounds, e.g. interval(1e-4, 1e-1)")
    if "int" in tags:
        if not (_INT64_MIN <= int(low) and int(high) <= _INT64_MAX):
            raise ConfigError(f"{where}: {shorten(text, 100)} goes beyond 64-bit whole numbers; bounds must be from "
                              "-2**63 to 2**63-1")
        return IntDistribution(int(low), int(high), log="log" in tags)
    return FloatDistribution(low, high, log="log" in tags)


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
        # NumPy takes seeds below 2**32: a seed near the top wraps instead of failing at a tick.
        options["seed"] = (_seed(options["seed"]) + trials_so_far) % 2**32
    if name == "grid":
        options["search_space"] = sampler_grid(space)
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
               "cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler,
               "qmc": optuna.samplers.QMCSampler, "grid": optuna.samplers.GridSampler}
    return _build("sampler", name, classes, options)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ConfigError(f"sampler.seed must be a whole number from 0 to 2**32-1, got {shorten(repr(value))}")
    return value


def grid_size(space: Mapping[str, Any]) -> int:
    """How many points a grid over the space holds, counted without listing them.

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


def _grid_count(key: str, distribution: Any) -> int:
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
        raise ConfigError(f"unknown {kind} {shorten(repr(name))}; choose from {', '.join(classes)}")
    import warnings

    from optuna.exceptions import ExperimentalWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # QMC and GP: the user chose them
            return classes[name](**options)
    except (TypeError, ValueError, ImportError) as e:
        raise ConfigError(f"{kind} {name}: {' '.join(str(e).split())[:200]}") from None


def _whole(job: Mapping[str, Any], key: str, default: int | None, minimum: int, maximum: int = _INT64_MAX) -> int:
    value = job.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        most = f" and at most {maximum}" if maximum < _INT64_MAX else ""
        raise ConfigError(f"{key} must be a whole number of at least {minimum}{most}, got {shorten(repr(value))}")
    return value


def settings(job: Mapping[str, Any], task_type: str) -> dict[str, Any]:
    """The checked settings of a search job file (all but its config and dataset), filled in
    with defaults: objective (the task's main metric), sampler tpe, pruner median, n_trials 20,
    max_concurrent 2, max_failed 5.

    Raises:
        ConfigError: naming the key that is wrong.
    """
    import optuna

    unknown = sorted(str(key) for key in set(job) - set(_JOB_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {shorten(unknown[0])!r} in the job; keys are {', '.join(_JOB_KEYS)}")
    if job.get("job_type", "search") != "search":
        raise ConfigError(f"job_type must be search, got {shorten(repr(job.get('job_type')))}")
    space = job.get("search_space")
    if not isinstance(space, Mapping):
        raise ConfigError("search_space must map config keys to Hydra sweeps, e.g. search_space: {optimizer.lr: "
                          f"'tag(log, interval(1e-4, 1e-1))'}}, got {_kind(space)}")
    space = dict(space)
    distributions_ = distributions(space)
    objective = job.get("objective") or {}
    if not isinstance(objective, Mapping):
        raise ConfigError(f"objective must be a mapping, e.g. objective: {{metric: loss, direction: minimize}}, got "
                          f"{_kind(objective)}")
    objective = dict(objective)
    if set(objective) - {"metric", "direction"}:
        raise ConfigError("objective takes metric and direction")
    metric = objective.get("metric") or main_metric(task_type)
    if not isinstance(metric, str) or metric not in METRICS[task_type]:
        raise ConfigError(f"objective.metric {shorten(repr(metric))} is not a metric of {task_type}; choose from "
                          f"{', '.join(METRICS[task_type])}")
    direction = objective.get("direction") or ("minimize" if metric == "loss" else "maximize")
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"objective.direction must be minimize or maximize, got {shorten(repr(direction))}")
    sampler = _spec(job.get("sampler"), "sampler", "tpe")
    pruner = _spec(job.get("pruner"), "pruner", "median")
    result = {"job_type": "search", "name": _name(job.get("name")), "search_space": space,
              "objective": {"metric": metric, "direction": direction}, "sampler": sampler, "pruner": pruner,
              "n_trials": _whole(job, "n_trials", 20, 1, MAX_TRIALS),
              "max_concurrent": _whole(job, "max_concurrent", 2, 1, MAX_CONCURRENT),
              "max_failed": _whole(job, "max_failed", 5, 0)}
    if sampler["name"] == "grid":
        result["n_trials"] = min(result["n_trials"], grid_size(distributions_))  # each grid point once
    # Both are built and tried once, in memory: unknown options and missing extras fail here.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=make_sampler(sampler, distributions_),
                                pruner=make_pruner(pruner))
    try:
        study.ask(distributions_)
    except (TypeError, ValueError, ImportError, OverflowError) as e:
        raise ConfigError(f"sampler {sampler['name']}: {shorten(first_line(e), 200)}") from None
    return result


def _kind(value: Any) -> str:
    """What a value is, for an error message, without echoing it (it may be long, or a secret)."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return "null" if value is None else f"a {type(value).__name__}"


def _name(name: Any) -> str | None:
    """A job's name: one line of text, shown by miquery and the viewer, so never a credential."""
    from mitorch.files.secrets import credential_forms

    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ConfigError(f"name must be one line of text of 1 to {MAX_NAME_CHARS} characters, got {_kind(name)}")
    forms = credential_forms(name)
    if forms:
        raise ConfigError(f"name carries a credential ({', '.join(forms)}); a job's name is stored and shown, so it "
                          "takes no secrets")
    return name


def sampler_grid(space: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Every value of each key of a finite space, as GridSampler takes them.

    Raises:
        ConfigError: as grid_size (an interval, or more than MAX_GRID_POINTS points).
    """
    grid_size(space)  # before listing anything
    return {key: _grid_values(d, _grid_count(key, d)) for key, d in space.items()}


def _spec(value: Any, kind: str, default: str) -> dict[str, Any]:
    if value is None:
        return {"name": default}
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigError(f"{kind} must be a name or a mapping with a name and options, e.g. {kind}: {{name: "
                          f"{default}}}")
    spec = {"name": default, **value}
    if not isinstance(spec["name"], str):
        raise ConfigError(f"{kind}.name must be a string, got {_kind(spec['name'])}")
    if kind == "sampler" and spec.get("seed") is not None:
        _seed(spec["seed"])
    return spec


def check_points(space: Mapping[str, Any], seed: int = 0, samples: int = 3) -> list[dict[str, Any]]:
    """Points of the space to compose before a job is stored, each once: every bound (the lows
    together, the highs together), every choice once, and a few random points."""
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


def read_job_file(path: str) -> dict[str, Any] | None:
    """The job in a JSON or YAML file, or None when the file is a training config (no job_type).

    Raises:
        ConfigError: the file does not parse, or is too deep or too big for a config (read as
            read_config_file reads a training config).
    """
    from pathlib import Path

    from mitorch.config import read_config_file

    file = Path(path)
    if file.suffix.lower() not in (".json", ".yaml", ".yml") or not file.is_file():
        return None
    content = read_config_file(file)
    return content if "job_type" in content else None


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
    import os

    from omegaconf import OmegaConf

    from mitorch.config import PATH_KEYS, compose, compose_with_values, config_file_overrides, mapping_overrides, merge
    from mitorch.service.submit import find_dataset, submission
    from mitorch.store.base import DEFAULT_PRIORITY, parse_priority

    if not isinstance(job, Mapping):
        raise ConfigError("a job file holds a mapping with job_type: search")
    overrides = job.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("overrides must be a list of key=value strings")
    base = list(overrides)
    config = job.get("config")
    if isinstance(config, str) and not config.strip():
        raise ConfigError("config is empty; give a training-config file's path (from the job file's folder) or a "
                          "mapping, or leave it out")
    if isinstance(config, str):
        base = merge(config_file_overrides(os.path.join(base_dir, os.path.expanduser(config)), overrides), overrides)
    elif isinstance(config, Mapping):
        base = merge(mapping_overrides(config, overrides, "config"), overrides)
    elif config is not None:
        raise ConfigError("config must be a training-config file's path or a mapping")
    reference = dataset or job.get("dataset")
    if reference is not None and not isinstance(reference, str):
        raise ConfigError(f"dataset must be NAME or NAME:VERSION of a dataset registered with midataset, got "
                          f"{_kind(reference)}")
    pinned = find_dataset(reference, store)
    stored = submission(compose(base), store, pinned)
    # Paths were made absolute against this folder; the controller composes elsewhere.
    resolved = OmegaConf.create(stored)
    base = merge(base, [f"{key}={format_value(value)}" for key in PATH_KEYS
                        if isinstance(value := OmegaConf.select(resolved, key), str)])
    record = settings(job, stored["task_type"])
    space = distributions(record["search_space"])
    # Each point composed as the controller's tick composes a trial (compose_with_values): what
    # passes here composes there, and what would fail there is refused here.
    for point in check_points(space):
        try:
            submission(compose_with_values(base, point), store, pinned)
        except ConfigError as e:
            raise ConfigError(f"search_space point {shorten(' '.join(param_overrides(point)), 200)}: {e}") from None
    if priority is None:
        priority = job.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, str) or not isinstance(priority, int):  # a job file's value: no text
        raise ConfigError(f"priority must be a whole number from -2**63 to 2**63-1, got {shorten(repr(priority))}")
    try:
        priority = parse_priority(priority, "priority")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {**record, "status": "running", "dataset": pinned, "base_overrides": base, "priority": priority,
            "task_type": stored["task_type"]}
