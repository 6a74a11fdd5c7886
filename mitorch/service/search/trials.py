"""A search's trials as users see them: a trial's state from its training, and from how many
complete trials parameter importances are shown.

Imports nothing: miquery shows a search job's trials with these, without loading the step's
configs or Optuna.
"""
from __future__ import annotations

from typing import Any

# Parameter importances are computed from this many complete trials on.
IMPORTANCE_MIN_TRIALS = 3
# A trial told the value of a completed training with its point, instead of training again,
# records that training's id under this name (a user attribute of the trial in the study, and a
# field of each entry of the job's `reused` list).
REUSED_FROM = "reused_from"
# A trial whose point an active training trains waits for it, recording its id under this name.
WAITS_FOR = "waits_for"


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
    `training_id` and `reused_from`.

    Args:
        job: the search job (its `reused` list, kept by each step).
    """
    return [{"number": entry["number"], "params": entry.get("params", {}), "value": entry.get("value"),
             "state": "complete", "epochs": 0, "training_id": entry[REUSED_FROM], REUSED_FROM: entry[REUSED_FROM]}
            for entry in job.get("reused") or ()]


__all__ = ["IMPORTANCE_MIN_TRIALS", "REUSED_FROM", "WAITS_FOR", "reused_trials", "trial_state"]
