"""A search job: its file, its checked settings, the sampler and pruner it names, the record
misubmit stores, and more trials for a stored job (under the jobs lease, lease.py).

Its space (the distributions, the grid, the points checked, the overrides of a point) is in
space.py. Optuna is imported inside the functions that build its objects:
misubmit and micontrol import this module.
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from mitorch.config.overrides import format_value
from mitorch.config.screen import shorten
from mitorch.errors import ConfigError, first_line
from mitorch.service.search.lease import jobs_lease
from mitorch.service.search.seeding import check_enqueue, check_warm_start
from mitorch.service.search.space import (MAX_GRID_POINTS, check_points, distributions, grid_size,
                                          param_overrides, sampler_grid)
from mitorch.service.search.trials import CONSTRAINTS_ATTR
from mitorch.store import JobStore, StoreError
from mitorch.task_types import COST_METRICS, METRICS, direction, main_metric

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "grid", "nsga2")
# The samplers that steer away from trials that break a job's constraints (their constraints_func);
# the others search without them, and a trial that breaks one is still kept off the job's result.
CONSTRAINED_SAMPLERS = ("tpe", "nsga2", "gp")
# Constraints of one job; a constraint is `METRIC <= NUMBER` or `METRIC >= NUMBER`.
MAX_CONSTRAINTS = 20
_CONSTRAINT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*(\S+)\s*")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "threshold", "none")
_JOB_KEYS = ("job_type", "name", "dataset", "config", "overrides", "search_space", "objective", "objectives",
             "constraints", "sampler", "pruner", "n_trials", "max_concurrent", "max_failed", "priority", "enqueue",
             "warm_start")
# Trials of one job (n_trials, and what --add-trials adds at once).
MAX_TRIALS = 100_000
# A step asks for up to this many trials of a job at once (each composes a config, tens of
# milliseconds), under the jobs lease: the bound keeps a step well within its lease.
MAX_CONCURRENT = 256
# A job's name is a label shown in tables.
MAX_NAME_CHARS = 200
# The store keeps whole numbers as 64-bit integers (MongoDB's long).
_STORED_MAX = 2**63 - 1


def read_job_file(path: str) -> dict[str, Any] | None:
    """The job in a JSON or YAML file.

    Args:
        path: a file misubmit was given.

    Returns:
        The file's content, or None when the file is a training config (no job_type).

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


def settings(job: Mapping[str, Any], task_type: str) -> dict[str, Any]:
    """The checked settings of a search job file (all but its config and dataset).

    Args:
        job: the job file's content.
        task_type: the task type of the job's base config.

    Returns:
        The settings filled in with defaults: objective (the task's main metric, in the way that
        metric is better; the first of `objectives` when the file lists 2 or more, kept as
        `objectives`), `constraints` as metric, op and bound, sampler tpe, pruner median (none for
        a multi-objective job, which takes no other), n_trials 20 (a grid's trials past its
        size repeat its points and are told their earlier training's value),
        max_concurrent 2, max_failed 5. The sampler and pruner were built and asked once.

    Raises:
        ConfigError: naming the key that is wrong.
    """
    _check_keys(job)
    space = job.get("search_space")
    if not isinstance(space, Mapping):
        raise ConfigError("search_space must map config keys to Hydra sweeps, e.g. search_space: {optimizer.lr: "
                          f"'tag(log, interval(1e-4, 1e-1))'}}, got {_kind(space)}")
    space = dict(space)
    space_distributions = distributions(space)
    objectives = _objectives(job, task_type)
    sampler = _spec(job.get("sampler"), "sampler", "tpe")
    pruner = _pruner(job.get("pruner"), len(objectives))
    result = {"job_type": "search", "name": _name(job.get("name")), "search_space": space, "objective": objectives[0],
              "sampler": sampler, "pruner": pruner, "n_trials": _whole(job, "n_trials", 20, 1, MAX_TRIALS),
              "max_concurrent": _whole(job, "max_concurrent", 2, 1, MAX_CONCURRENT),
              "max_failed": _whole(job, "max_failed", 5, 0)}
    if len(objectives) > 1:
        result["objectives"] = objectives
    if job.get("constraints") is not None:
        result["constraints"] = _constraints(job["constraints"], task_type)
    if job.get("enqueue") is not None:
        result["enqueue"] = check_enqueue(job["enqueue"], space_distributions)
    _try_once([o["direction"] for o in objectives], sampler, pruner, space_distributions,
              len(result.get("constraints") or ()))
    return result


def job_metrics(task_type: str) -> tuple[str, ...]:
    """The metrics a search job of a task type may optimize or constrain: the task's metrics and
    the cost metrics every training measures."""
    return METRICS[task_type] + COST_METRICS


def metric_direction(metric: str) -> str:
    """Which way a metric is better (minimize or maximize): mitorch.task_types.direction."""
    return direction(metric)


def objectives_of(job: Mapping[str, Any]) -> list[dict[str, str]]:
    """A stored search job's objectives, in order: `objectives` of a multi-objective job, else
    its one `objective`."""
    return list(job.get("objectives") or [job["objective"]])


def _objectives(job: Mapping[str, Any], task_type: str) -> list[dict[str, str]]:
    """The job's objectives: its `objectives:` list (2 or more), or its one `objective:`."""
    listed = job.get("objectives")
    if listed is None:
        return [_objective(job.get("objective"), task_type)]
    if job.get("objective") is not None:
        raise ConfigError("give objective (one metric) or objectives (a list of 2 or more), not both")
    if not isinstance(listed, list) or len(listed) < 2:
        raise ConfigError("objectives must be a list of 2 or more {metric, direction}, e.g. objectives: [{metric: "
                          "top1_accuracy}, {metric: num_parameters}]; for one metric use objective:")
    objectives = [_objective(entry, task_type, f"objectives[{number}]", required=True)
                  for number, entry in enumerate(listed)]
    names = [o["metric"] for o in objectives]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated:
        raise ConfigError(f"objectives names {repeated} more than once; give each metric once")
    return objectives


def _pruner(value: Any, objectives: int) -> dict[str, Any]:
    """The job's pruner: median by default; a multi-objective job prunes nothing (Optuna's
    pruners judge one value), so it takes none or no pruner."""
    if objectives == 1:
        return _spec(value, "pruner", "median")
    pruner = _spec(value, "pruner", "none")
    if pruner["name"] != "none":
        raise ConfigError(f"a job with {objectives} objectives cannot be pruned (Optuna's pruners judge one value); "
                          "set pruner: none or leave it out")
    return pruner


def _constraints(value: Any, task_type: str) -> list[dict[str, Any]]:
    """The job's constraints, each `METRIC <= NUMBER` or `METRIC >= NUMBER`, as metric, op, bound."""
    if not isinstance(value, list) or not value or len(value) > MAX_CONSTRAINTS:
        raise ConfigError(f"constraints must be a list of 1 to {MAX_CONSTRAINTS} strings such as 'latency_ms_b1 <= 5',"
                          f" got {_kind(value)}")
    return [_constraint(text, task_type) for text in value]


def _constraint(text: Any, task_type: str) -> dict[str, Any]:
    match = _CONSTRAINT.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"constraint {shorten(repr(text))} must read METRIC <= NUMBER or METRIC >= NUMBER, e.g. "
                          "'num_parameters <= 5e6'")
    metric, op, number = match.groups()
    if metric not in job_metrics(task_type):
        raise ConfigError(f"constraint {shorten(repr(text))}: {metric} is not a metric of {task_type}; choose from "
                          f"{', '.join(job_metrics(task_type))}")
    try:
        bound = float(number)
    except ValueError:
        bound = math.nan
    if not math.isfinite(bound):
        raise ConfigError(f"constraint {shorten(repr(text))}: {shorten(number)} is not a finite number")
    return {"metric": metric, "op": op, "bound": bound}


def constraint_text(constraint: Mapping[str, Any]) -> str:
    """A stored constraint as the job file wrote it, e.g. `latency_ms_b1 <= 5`."""
    return f"{constraint['metric']} {constraint['op']} {constraint['bound']:g}"


def _check_keys(job: Mapping[str, Any]) -> None:
    unknown = sorted(str(key) for key in set(job) - set(_JOB_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {shorten(unknown[0])!r} in the job; keys are {', '.join(_JOB_KEYS)}")
    if job.get("job_type", "search") != "search":
        raise ConfigError(f"job_type must be search, got {shorten(repr(job.get('job_type')))}")


def _objective(objective: Any, task_type: str, key: str = "objective", required: bool = False) -> dict[str, str]:
    """A metric a job optimizes (the task's main one by default) and which way."""
    objective = {} if objective is None and not required else objective
    if not isinstance(objective, Mapping):
        raise ConfigError(f"{key} must be a mapping, e.g. {key}: {{metric: loss, direction: minimize}}, got "
                          f"{_kind(objective)}")
    if set(objective) - {"metric", "direction"}:
        raise ConfigError(f"{key} takes metric and direction")
    metric = objective.get("metric") or (None if required else main_metric(task_type))
    if not isinstance(metric, str) or metric not in job_metrics(task_type):
        raise ConfigError(f"{key}.metric {shorten(repr(metric))} is not a metric of {task_type}; choose from "
                          f"{', '.join(job_metrics(task_type))}")
    way = objective.get("direction") or metric_direction(metric)
    if way not in ("minimize", "maximize"):
        raise ConfigError(f"{key}.direction must be minimize or maximize, got {shorten(repr(way))}")
    return {"metric": metric, "direction": way}


def _try_once(directions: list[str], sampler: dict[str, Any], pruner: dict[str, Any], space: dict[str, Any],
              constraints: int = 0) -> None:
    """Builds the sampler and pruner and asks for one point, in memory: unknown options and
    missing extras fail here, not at a tick."""
    import optuna

    if len(directions) > 1 and sampler["name"] == "cmaes":
        raise ConfigError("sampler cmaes optimizes one objective; for objectives use nsga2, tpe, gp, random, qmc or "
                          "grid")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=directions, sampler=make_sampler(sampler, space, constraints=constraints),
                                pruner=make_pruner(pruner))
    try:
        study.ask(space)
    except (TypeError, ValueError, ImportError, OverflowError) as e:
        raise ConfigError(f"sampler {sampler['name']}: {shorten(first_line(e), 200)}") from None


def make_sampler(spec: Mapping[str, Any], space: Mapping[str, Any], trials_so_far: int = 0,
                 constraints: int = 0) -> Any:
    """The Optuna sampler a job names.

    Args:
        spec: the job's sampler: its name and options.
        space: the job's distributions (a grid lists their values).
        trials_so_far: a seeded sampler's seed moves on with it: a sampler rebuilt every tick
            would otherwise repeat its suggestions.
        constraints: how many constraints the job has; a sampler of CONSTRAINED_SAMPLERS then
            reads each trial's constraint values (stored by the step under CONSTRAINTS_ATTR).

    Raises:
        ConfigError: an unknown name, or options the sampler does not take.
    """
    import optuna

    options = dict(spec)
    name = options.pop("name", "tpe")
    if options.get("seed") is not None:
        # NumPy takes seeds below 2**32: a seed near the top wraps instead of failing at a tick.
        options["seed"] = (_seed(options["seed"]) + trials_so_far) % 2**32
    if name == "grid":
        options["search_space"] = sampler_grid(space)
    if constraints and name in CONSTRAINED_SAMPLERS and int(optuna.__version__.split(".")[0]) < 5:
        # Optuna 5 samplers read a trial's stored constraint values themselves (constraints_func
        # is deprecated there); Optuna 4 reads them only when given a constraints_func.
        options["constraints_func"] = functools.partial(stored_constraints, constraints)
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
               "cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler,
               "qmc": optuna.samplers.QMCSampler, "grid": optuna.samplers.GridSampler,
               "nsga2": optuna.samplers.NSGAIISampler}
    return _build("sampler", name, classes, options)


def stored_constraints(count: int, trial: Any) -> list[float]:
    """A trial's constraint values as the step stored them before telling it (the system
    attribute `constraints`, which Optuna reads); a trial without them (pruned before its costs
    were measured) breaks every constraint."""
    stored = trial.system_attrs.get(CONSTRAINTS_ATTR)
    return list(stored) if stored is not None else [math.inf] * count


def make_pruner(spec: Mapping[str, Any]) -> Any:
    """The Optuna pruner a job names.

    Args:
        spec: the job's pruner: its name and options.

    Raises:
        ConfigError: an unknown name, or options the pruner does not take.
    """
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


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ConfigError(f"sampler.seed must be a whole number from 0 to 2**32-1, got {shorten(repr(value))}")
    return value


def _whole(job: Mapping[str, Any], key: str, default: int | None, minimum: int, maximum: int = _STORED_MAX) -> int:
    value = job.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        most = f" and at most {maximum}" if maximum < _STORED_MAX else ""
        raise ConfigError(f"{key} must be a whole number of at least {minimum}{most}, got {shorten(repr(value))}")
    return value


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


def prepare(job: Mapping[str, Any], store: JobStore, base_dir: str = ".", priority: int | None = None,
            dataset: str | None = None) -> dict[str, Any]:
    """The record of a search job, checked: the base config and points of the space compose as
    valid trainings, the dataset exists, the sampler and pruner build.

    Args:
        job: the job file's content (or the same built from misubmit --search).
        store: the job store (datasets, and the base trainings a config names).
        base_dir: where a relative `config` path is found (the job file's folder).
        priority, dataset: misubmit's --priority and --dataset, which win over the file's.

    Returns:
        The job as the store keeps it, status running.

    Raises:
        ConfigError, StoreError: naming what is wrong.
    """
    from mitorch.config import compose
    from mitorch.service.submit import find_dataset, submission
    from mitorch.store.base import DEFAULT_PRIORITY

    if not isinstance(job, Mapping):
        raise ConfigError("a job file holds a mapping with job_type: search")
    base = _base_overrides(job, base_dir)
    pinned = find_dataset(_dataset_reference(dataset or job.get("dataset")), store)
    stored = submission(compose(base), store, pinned)
    base = _with_absolute_paths(base, stored)
    record = settings(job, stored["task_type"])
    if job.get("warm_start") is not None:
        record["warm_start"] = check_warm_start(job["warm_start"], store, objectives_of(record),
                                                record.get("constraints") or [])
    _check_points_compose(base, distributions(record["search_space"]), store, pinned)
    priority = _priority(job.get("priority", DEFAULT_PRIORITY) if priority is None else priority)
    return {**record, "status": "running", "dataset": pinned, "base_overrides": base, "priority": priority,
            "task_type": stored["task_type"]}


def _base_overrides(job: Mapping[str, Any], base_dir: str) -> list[str]:
    """The overrides every trial starts from: the job's config (a file or a mapping), then its
    overrides."""
    import os

    from mitorch.config import config_file_overrides, mapping_overrides, merge

    overrides = job.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("overrides must be a list of key=value strings")
    config = job.get("config")
    if isinstance(config, str) and not config.strip():
        raise ConfigError("config is empty; give a training-config file's path (from the job file's folder) or a "
                          "mapping, or leave it out")
    if isinstance(config, str):
        return merge(config_file_overrides(os.path.join(base_dir, os.path.expanduser(config)), overrides), overrides)
    if isinstance(config, Mapping):
        return merge(mapping_overrides(config, overrides, "config"), overrides)
    if config is not None:
        raise ConfigError("config must be a training-config file's path or a mapping")
    return list(overrides)


def _dataset_reference(reference: Any) -> str | None:
    if reference is not None and not isinstance(reference, str):
        raise ConfigError(f"dataset must be NAME or NAME:VERSION of a dataset registered with midataset, got "
                          f"{_kind(reference)}")
    return reference


def _with_absolute_paths(base: list[str], stored: dict[str, Any]) -> list[str]:
    """The base overrides with the paths that submission made absolute against this folder: the
    controller composes trials elsewhere."""
    from omegaconf import OmegaConf

    from mitorch.config import PATH_KEYS, merge

    resolved = OmegaConf.create(stored)
    return merge(base, [f"{key}={format_value(value)}" for key in PATH_KEYS
                        if isinstance(value := OmegaConf.select(resolved, key), str)])


def _check_points_compose(base: list[str], space: dict[str, Any], store: JobStore, pinned: Any) -> None:
    """Composes points of the space as the controller's tick composes a trial
    (compose_with_values): what passes here composes there, and what would fail there is
    refused here."""
    from mitorch.config import compose_with_values
    from mitorch.service.submit import submission

    for point in check_points(space):
        try:
            submission(compose_with_values(base, point), store, pinned)
        except ConfigError as e:
            raise ConfigError(f"search_space point {shorten(' '.join(param_overrides(point)), 200)}: {e}") from None


def _priority(priority: Any) -> int:
    from mitorch.store.base import parse_priority

    if isinstance(priority, str) or not isinstance(priority, int):  # a job file's value: no text
        raise ConfigError(f"priority must be a whole number from -2**63 to 2**63-1, got {shorten(repr(priority))}")
    try:
        return parse_priority(priority, "priority")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def add_trials(store: JobStore, job_id: str, count: int) -> tuple[int, int]:
    """Extends a running or completed search job by `count` trials of the same study (a grid up
    to its size); the next tick asks for them.

    Args:
        store: the job store.
        job_id: the search job's id.
        count: how many trials to add (misubmit --add-trials).

    Returns:
        n_trials before and after.

    Raises:
        ConfigError, StoreError: naming why the job cannot take more trials.
    """
    if count < 1:
        raise ConfigError(f"--add-trials needs 1 or more trials, got {count}")
    with jobs_lease(store, "misubmit") as lease:
        job = _extendable_job(store, job_id)
        before = job["n_trials"]
        after = before + count
        if after > MAX_TRIALS:
            raise ConfigError(f"search job {job_id} would hold {after} trials, more than {MAX_TRIALS}; "
                              "submit another search job instead")
        if job["sampler"]["name"] == "grid":
            size = grid_size(distributions(job["search_space"]))  # counted, never listed
            after = min(after, size)
            if after == before:
                raise ConfigError(f"search job {job_id} has asked for every point of its grid ({size})")
        if not store.update_job(job_id, {"n_trials": after, "status": "running", "completed_at": None, "error": None},
                                lease=lease.fence):
            raise StoreError(f"search job {job_id} was not changed: a controller tick took the search jobs over; "
                             "try again")
    return before, after


def _extendable_job(store: JobStore, job_id: str) -> dict[str, Any]:
    """The search job, if it may take more trials (running or completed, not being cancelled)."""
    job = store.get_job(job_id)
    if job is None:
        raise StoreError(f"no search job {job_id}; see miquery for the ids")
    if job.get("job_type") != "search":
        raise ConfigError(f"job {job_id} is a sweep (misubmit -m), whose trainings are all queued at once; "
                          "--add-trials takes a search job")
    if job["status"] not in ("running", "completed") or job.get("cancel_requested"):
        raise ConfigError(f"search job {job_id} is {'cancelling' if job.get('cancel_requested') else job['status']}"
                          "; only a running or completed search takes more trials")
    return job


__all__ = ["CONSTRAINED_SAMPLERS", "CONSTRAINTS_ATTR", "COST_METRICS", "MAX_CONCURRENT", "MAX_CONSTRAINTS",
           "MAX_NAME_CHARS", "MAX_TRIALS", "PRUNERS", "SAMPLERS", "add_trials", "constraint_text",
           "job_metrics", "make_pruner", "make_sampler", "metric_direction", "objectives_of", "prepare",
           "read_job_file", "settings", "stored_constraints"]
