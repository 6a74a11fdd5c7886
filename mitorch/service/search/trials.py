"""A search's trials as users see them: a trial's state from its training, from how many
complete trials parameter importances are shown, whether a trial meets the job's constraints
and which trials make its Pareto front.

Imports nothing: miquery shows a search job's trials with these, without loading the step's
configs or Optuna.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# Parameter importances are computed from this many complete trials on.
IMPORTANCE_MIN_TRIALS = 3
# A trial told the value of a completed training with its point, instead of training again,
# records that training's id under this name (a user attribute of the trial in the study, and a
# field of each entry of the job's `reused` list).
REUSED_FROM = "reused_from"
# A trial whose point an active training trains waits for it, recording its id under this name.
WAITS_FOR = "waits_for"
# The trial's system attribute that holds its constraint values, where Optuna reads them (its
# samplers' constraints_func writes them there too; study.best_trials keeps trials whose values
# are all <= 0).
CONSTRAINTS_ATTR = "constraints"


def trial_state(training: dict[str, Any]) -> str:
    """A trial's state as shown to users, from its training.

    Args:
        training: the trial's training (status and prune_requested are read).

    Returns:
        running, pruned, failed or complete.
    """
    if training["status"] == "pruned" or (training.get("prune_requested") and training["status"] != "completed"):
        return "pruned"
    return {"completed": "complete", "failed": "failed", "cancelled": "failed"}.get(training["status"], "running")


def reused_trials(job: dict[str, Any]) -> list[dict[str, Any]]:
    """A search job's reused trials as rows of its trial table (they have no training of their
    own): number, params, value, state complete, no epochs, and the training they reused as both
    `training_id` and `reused_from`; also every objective's value (`values`, a multi-objective
    job) and `feasible` (a job with constraints).

    Args:
        job: the search job (its `reused` list, kept by each step).
    """
    return [{"number": entry["number"], "params": entry.get("params", {}), "value": entry.get("value"),
             "state": "complete", "epochs": 0, "training_id": entry[REUSED_FROM], REUSED_FROM: entry[REUSED_FROM],
             **{key: entry[key] for key in ("values", "feasible") if key in entry}}
            for entry in job.get("reused") or ()]


def constraint_values(constraints: list[Mapping[str, Any]], metrics: Mapping[str, Any]) -> list[float] | None:
    """Optuna's constraint values of a training's metrics: how far each constraint is broken
    (`value - bound` for <=, `bound - value` for >=), so a value of 0 or less is met.

    Returns:
        None when a metric a constraint reads is missing or not a number.
    """
    values = []
    for constraint in constraints:
        value = metrics.get(constraint["metric"])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        gap = value - constraint["bound"]
        values.append(float(gap if constraint["op"] == "<=" else -gap))
    return values


def is_feasible(constraints: Sequence[float] | None) -> bool:
    """Whether constraint values (constraint_values; None: the job has none) meet every
    constraint."""
    return constraints is None or all(value <= 0 for value in constraints)


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether objective values `a` dominate `b`: no worse in any objective, better in one."""
    losses_a, losses_b = _losses(a, directions), _losses(b, directions)
    return all(x <= y for x, y in zip(losses_a, losses_b)) and losses_a != losses_b


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """The indices of the points that no other point dominates (a job's front among its
    feasible complete trials), best first in the first objective (then by index).

    A point is dominated only by points before it in lexicographic order of losses, and then by
    one of the front found so far (domination is transitive): n points cost n times the front.
    """
    order = sorted(range(len(points)), key=lambda i: (_losses(points[i], directions), i))
    front: list[int] = []
    for i in order:
        if not any(dominates(points[j], points[i], directions) for j in front):
            front.append(i)
    return front


def _losses(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    return [value if way == "minimize" else -value for value, way in zip(values, directions)]


__all__ = ["CONSTRAINTS_ATTR", "IMPORTANCE_MIN_TRIALS", "REUSED_FROM", "WAITS_FOR", "constraint_values", "dominates", "is_feasible",
           "pareto_front", "reused_trials", "trial_state"]
