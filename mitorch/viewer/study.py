"""A search job's study as the job page shows it: trials by objective, best so far, the
optimization history, every trial's intermediate values and the parameter importances; for a
multi-objective job also its trials in the plane of the first two objectives (feasible or not,
on the Pareto front or dominated) and each trial's point against its first objective (a
parallel-coordinates plot).

The study is read from Optuna's journal in the job store (mitorch.service.search.journal), the same
storage the controller writes; loading a study appends nothing to it, and the viewer keeps
each study it replayed, reading only the logs appended since. The importances are the
ones the controller records in the job (mitorch.service.search.step), as miquery shows them. Optuna
is imported here only, when a search job's page is asked for.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mitorch.store import JobStore
from mitorch.task_types import direction, is_better


def study(store: JobStore, job: dict[str, Any], trainings: Sequence[dict[str, Any]],
          results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The study of a search job (see the module's docstring); `trials` is empty before its first tick."""
    import optuna

    from mitorch.service.search.journal import kept_study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = job.get("objective") or {}
    metric = objective.get("metric")
    importances, note = _importances(job)
    storage = kept_study_storage(store, job["id"])  # the viewer runs for days: replay each log once
    if not any(s.study_name == job["id"] for s in storage.get_all_studies()):
        return {"metric": metric, "direction": objective.get("direction"), "trials": [], "history": [],
                "intermediate": [], "importances": None, "importances_note": note, "best": None,
                "objectives": job.get("objectives"), "pareto": None}
    loaded = optuna.load_study(study_name=job["id"], storage=storage)
    trials = _trials(loaded, trainings, results)
    maximize = (objective.get("direction") or direction(metric or "")) == "maximize"
    history, best = _history(trials, maximize)
    pareto = _pareto(job, trials)
    if pareto is not None:  # a multi-objective job's best: its front's best in the first objective
        on_front = [point["number"] for point in pareto["points"] if point["front"]]
        best = next((t for t in trials if on_front and t["number"] == on_front[0]), None)
        for trial in trials:
            if trial["values"] is not None:
                trial["front"] = "infeasible" if not trial["feasible"] else \
                    "pareto" if trial["number"] in on_front else "dominated"

    def order(trial: dict[str, Any]) -> tuple:
        value = trial["value"]
        return (value is None, -(value or 0) if maximize else (value or 0), trial["number"])

    return {"metric": metric, "direction": objective.get("direction"), "trials": sorted(trials, key=order),
            "history": history, "best": best, "importances": importances, "importances_note": note,
            "objectives": job.get("objectives"), "pareto": pareto,
            "intermediate": [{"number": t["number"], "state": t["state"], **t["intermediate"]}
                             for t in trials if t["intermediate"]["steps"]]}


def _trials(loaded: Any, trainings: Sequence[dict[str, Any]],
            results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The study's trials by number, each with the state, value and epochs of its training."""
    from optuna.trial import TrialState

    from mitorch.service.search.trials import is_feasible, trial_state

    by_number = {t["trial_number"]: t for t in trainings if t.get("trial_number") is not None}
    trials = []
    for trial in sorted(loaded.get_trials(deepcopy=False), key=lambda t: t.number):
        training = by_number.get(trial.number)
        state = trial.state.name.lower()
        shown = trial_state(training) if training is not None else _OPTUNA_STATES.get(state, "running")
        steps = sorted(trial.intermediate_values.items())
        values = list(trial.values) if trial.state == TrialState.COMPLETE else None
        trials.append({"number": trial.number, "state": shown, "optuna_state": state,
                       "value": values[0] if values else None, "values": values,
                       "feasible": is_feasible(list(trial.constraints.values()) or None),
                       "last_intermediate": steps[-1][1] if steps else None, "params": dict(trial.params),
                       "intermediate": {"steps": [s for s, _ in steps], "values": [v for _, v in steps]},
                       "training_id": training and training["id"],
                       "epochs": len(results.get(training["id"], [])) if training else 0})
    return trials


# How a trial without a training (one the controller has not queued yet) is shown.
_OPTUNA_STATES = {"complete": "complete", "pruned": "pruned", "fail": "failed"}


def _history(trials: Sequence[dict[str, Any]], maximize: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Each complete trial's value with the best so far (by trial number), and the best trial
    (of those that meet the job's constraints)."""
    history, best = [], None
    for trial in trials:
        if trial["value"] is None:
            continue
        if trial["feasible"] and is_better(trial["value"], best["value"] if best else None, maximize):
            best = trial
        history.append({"number": trial["number"], "value": trial["value"], "best": best and best["value"]})
    return history, best


def _pareto(job: dict[str, Any], trials: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A multi-objective job's complete trials as the job page plots them (None for a job with
    one objective): `points` (number, every objective's value, feasible, on the front or not;
    sorted by the first objective, best first) and `parallel` (each parameter's values scaled to
    0..1 per trial, with its first objective)."""
    from mitorch.service.search.trials import pareto_front

    if not job.get("objectives"):
        return None
    directions = [o["direction"] for o in job["objectives"]]
    complete = [t for t in trials if t["values"] is not None]
    feasible = [t for t in complete if t["feasible"]]
    front = [feasible[i]["number"] for i in pareto_front([t["values"] for t in feasible], directions)]
    sign = -1.0 if directions[0] == "maximize" else 1.0
    points = [{"number": t["number"], "values": t["values"], "feasible": t["feasible"], "front": t["number"] in front,
               "training_id": t["training_id"]}
              for t in sorted(complete, key=lambda t: (sign * t["values"][0], t["number"]))]
    return {"metrics": [o["metric"] for o in job["objectives"]], "directions": directions, "points": points,
            "parallel": _parallel(job, complete)}


def _parallel(job: dict[str, Any], complete: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each complete trial's parameters, each scaled to 0..1 over the trials (numbers by value,
    others by their order of first appearance), with its first objective's value."""
    names = sorted({name for t in complete for name in t["params"]})
    scaled: dict[str, list[float | None]] = {}
    axes = []
    for name in names:
        values = [t["params"].get(name) for t in complete]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)
        keys = sorted({v for v in values if v is not None}) if numbers else list(dict.fromkeys(
            map(str, (v for v in values if v is not None))))
        position = {key: i for i, key in enumerate(keys)}
        low, high = (keys[0], keys[-1]) if numbers and keys else (0, max(len(keys) - 1, 0))
        spread = (high - low) or 1
        scaled[name] = [None if v is None else ((v if numbers else position[str(v)]) - low) / spread for v in values]
        axes.append({"name": name, "low": str(keys[0]) if keys else "", "high": str(keys[-1]) if keys else ""})
    return {"params": names, "axes": axes, "metric": job["objectives"][0]["metric"],
            "direction": job["objectives"][0]["direction"],
            "trials": [{"number": t["number"], "coords": [scaled[name][i] for name in names], "value": t["values"][0],
                        "feasible": t["feasible"]} for i, t in enumerate(complete)]}


def _importances(job: dict[str, Any]) -> tuple[dict[str, float] | None, str | None]:
    """The parameter importances the controller recorded, or why there are none yet."""
    recorded = job.get("importances") or {}
    if recorded.get("params"):
        return dict(recorded["params"]), f"from {recorded.get('trials')} complete trials"
    try:
        from mitorch.service.search.trials import IMPORTANCE_MIN_TRIALS

        return None, f"the controller computes them from {IMPORTANCE_MIN_TRIALS} complete trials on"
    except ImportError:
        return None, "not computed yet"
