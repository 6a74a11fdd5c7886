"""A search job's study as the job page shows it: trials by objective, best so far, the
optimization history, every trial's intermediate values and the parameter importances.

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
                "intermediate": [], "importances": None, "importances_note": note, "best": None}
    loaded = optuna.load_study(study_name=job["id"], storage=storage)
    trials = _trials(loaded, trainings, results)
    maximize = (objective.get("direction") or direction(metric or "")) == "maximize"
    history, best = _history(trials, maximize)

    def order(trial: dict[str, Any]) -> tuple:
        value = trial["value"]
        return (value is None, -(value or 0) if maximize else (value or 0), trial["number"])

    return {"metric": metric, "direction": objective.get("direction"), "trials": sorted(trials, key=order),
            "history": history, "best": best, "importances": importances, "importances_note": note,
            "intermediate": [{"number": t["number"], "state": t["state"], **t["intermediate"]}
                             for t in trials if t["intermediate"]["steps"]]}


def _trials(loaded: Any, trainings: Sequence[dict[str, Any]],
            results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The study's trials by number, each with the state, value and epochs of its training."""
    from optuna.trial import TrialState

    from mitorch.service.search.trials import trial_state

    by_number = {t["trial_number"]: t for t in trainings if t.get("trial_number") is not None}
    trials = []
    for trial in sorted(loaded.get_trials(deepcopy=False), key=lambda t: t.number):
        training = by_number.get(trial.number)
        state = trial.state.name.lower()
        shown = trial_state(training) if training is not None else _OPTUNA_STATES.get(state, "running")
        steps = sorted(trial.intermediate_values.items())
        trials.append({"number": trial.number, "state": shown, "optuna_state": state,
                       "value": trial.value if trial.state == TrialState.COMPLETE else None,
                       "last_intermediate": steps[-1][1] if steps else None, "params": dict(trial.params),
                       "intermediate": {"steps": [s for s, _ in steps], "values": [v for _, v in steps]},
                       "training_id": training and training["id"],
                       "epochs": len(results.get(training["id"], [])) if training else 0})
    return trials


# How a trial without a training (one the controller has not queued yet) is shown.
_OPTUNA_STATES = {"complete": "complete", "pruned": "pruned", "fail": "failed"}


def _history(trials: Sequence[dict[str, Any]], maximize: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Each complete trial's value with the best so far (by trial number), and the best trial."""
    history, best = [], None
    for trial in trials:
        if trial["value"] is None:
            continue
        if is_better(trial["value"], best["value"] if best else None, maximize):
            best = trial
        history.append({"number": trial["number"], "value": trial["value"], "best": best["value"]})
    return history, best


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
