"""What a search job's study starts with: points to try first (`enqueue:`) and an earlier search
job's completed trials (`warm_start: JOB_ID`), which its sampler then learns from.

The job file's entries are checked when the job is stored (check_enqueue, check_warm_start); the
study is seeded at the job's first step (seed), once: every trial added carries the earlier
trial it copies (`warm_start_of`), and the study records that it was seeded, so a step killed
part-way adds only what is missing at the next one. Copied trials and enqueued points not yet
asked for are not the job's trials: they count neither towards n_trials nor in its table.

Optuna is imported inside the functions that use it: misubmit imports this module.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mitorch.config.screen import shorten
from mitorch.errors import ConfigError
from mitorch.service.search.trials import CONSTRAINTS_ATTR
from mitorch.store import JobStore, StoreError

# A trial copied from an earlier job records "JOB_ID:NUMBER" of the trial it copies under this name.
WARM_START_OF = "warm_start_of"
_SEEDED = "mitorch_seeded"
# Points a job file may enqueue.
MAX_ENQUEUED = 1000


def check_enqueue(value: Any, space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The points of a job file's `enqueue:`, checked against the job's distributions.

    Args:
        value: the entry (a list of mappings from space keys to values), or None.
        space: the job's distributions (as space.distributions gives).

    Returns:
        The points (empty without an entry).

    Raises:
        ConfigError: naming the point and key that are wrong.
    """
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(point, Mapping) for point in value):
        raise ConfigError("enqueue must be a list of points, e.g. enqueue: [{optimizer.lr: 0.01, batch_size: 32}]")
    if len(value) > MAX_ENQUEUED:
        raise ConfigError(f"enqueue lists {len(value)} points, more than {MAX_ENQUEUED}")
    return [_point(index, point, space) for index, point in enumerate(value)]


def _point(index: int, point: Mapping[str, Any], space: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in point.items():
        if key not in space:
            raise ConfigError(f"enqueue[{index}]: {shorten(repr(key))} is not a key of search_space; keys are "
                              f"{', '.join(space)}")
        if not _contains(space[key], value):
            raise ConfigError(f"enqueue[{index}]: {key}={shorten(repr(value))} is outside its search_space "
                              f"{space[key]!r}; give a value the space holds")
    return dict(point)


def _contains(distribution: Any, value: Any) -> bool:
    if value is None and not hasattr(distribution, "choices"):
        return False
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def check_warm_start(value: Any, store: JobStore, objectives: list[Mapping[str, str]],
                     constraints: list[Mapping[str, Any]]) -> str | None:
    """The earlier search job a job file's `warm_start:` names, checked: it is a search job of
    this store that optimizes the same metrics the same ways, under the same constraints (its
    trials' constraint values are copied with them).

    Raises:
        ConfigError, StoreError: naming what is wrong.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 64 or not value.isalnum():
        raise ConfigError(f"warm_start must be a search job's id (see miquery), got {shorten(repr(value))}")
    job = store.get_job(value)
    if job is None or job.get("job_type") != "search":
        raise StoreError(f"warm_start: no search job {value} in the job store; see miquery for the ids")
    theirs = [dict(o) for o in job.get("objectives") or [job["objective"]]]
    if theirs != [dict(o) for o in objectives]:
        raise ConfigError(f"warm_start: job {value} optimizes {_told(theirs)}, this job {_told(objectives)}; set the "
                          "same objectives, or leave warm_start out")
    if [dict(c) for c in job.get("constraints") or []] != [dict(c) for c in constraints]:
        raise ConfigError(f"warm_start: job {value} has other constraints than this job; set the same constraints, or "
                          "leave warm_start out")
    return value


def _told(objectives: list[Mapping[str, str]]) -> str:
    return ", ".join(f"{o['metric']} ({o['direction']})" for o in objectives)


def seed(study: Any, store: JobStore, job: Mapping[str, Any], space: Mapping[str, Any]) -> None:
    """Adds the warm-start job's completed trials and the enqueued points to the job's study,
    once (see the module's docstring)."""
    if not (job.get("warm_start") or job.get("enqueue")) or study.user_attrs.get(_SEEDED):
        return
    if job.get("warm_start"):
        _copy_trials(study, store, job["warm_start"], space)
    for point in job.get("enqueue") or ():
        study.enqueue_trial(point, skip_if_exists=True)
    study.set_user_attr(_SEEDED, True)


def _copy_trials(study: Any, store: JobStore, earlier: str, space: Mapping[str, Any]) -> None:
    """The earlier job's completed trials whose point lies in this job's space, each once."""
    import optuna

    from mitorch.service.search.journal import study_storage

    try:
        source = optuna.load_study(study_name=earlier, storage=study_storage(store, earlier))
    except KeyError:  # its first step never ran: nothing to learn from
        return
    present = {t.user_attrs.get(WARM_START_OF) for t in study.get_trials(deepcopy=False)}
    copies = []
    for trial in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        origin = trial.user_attrs.get(WARM_START_OF) or f"{earlier}:{trial.number}"
        if origin in present or set(trial.params) != set(space) or \
                not all(_contains(space[key], value) for key, value in trial.params.items()):
            continue
        present.add(origin)
        kept = {key: value for key, value in trial.system_attrs.items() if key == CONSTRAINTS_ATTR}
        copies.append(optuna.trial.create_trial(params=dict(trial.params), distributions=dict(space),
                                                values=list(trial.values), system_attrs=kept,
                                                user_attrs={**trial.user_attrs, WARM_START_OF: origin}))
    study.add_trials(copies)


def is_seeded(trial: Any) -> bool:
    """Whether a trial of the study is not one of the job's own: copied from an earlier job."""
    return WARM_START_OF in trial.user_attrs


__all__ = ["MAX_ENQUEUED", "WARM_START_OF", "check_enqueue", "check_warm_start", "is_seeded", "seed"]
