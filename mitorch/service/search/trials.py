"""A search's trials as users see them: a trial's state from its training, and from how many
complete trials parameter importances are shown.

Imports nothing: miquery shows a search job's trials with these, without loading the step's
configs or Optuna.
"""
from __future__ import annotations

from typing import Any

# Parameter importances are computed from this many complete trials on.
IMPORTANCE_MIN_TRIALS = 3


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


__all__ = ["IMPORTANCE_MIN_TRIALS", "trial_state"]
