"""Every move of a training's status and attempt: the allowed transitions, each write fenced."""
from __future__ import annotations

from typing import Any

from mitorch.store import ACTIVE, JobStore


def cancel_trainings(store: JobStore, trainings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cancels trainings: a new one at once, any other active one by a cancel request (its
    process stops at its next epoch end, or when its controller stops it).

    Returns:
        The running or dispatched ones, which were sent a request.
    """
    requested = []
    for training in trainings:
        if store.update_training(training["id"], {"status": "cancelled", "cancel_requested": True},
                                 expected_status=["new"]):
            continue
        if store.update_training(training["id"], {"cancel_requested": True}, expected_status=list(ACTIVE)):
            requested.append(training)
    return requested


def request_prune(store: JobStore, training_id: str) -> bool:
    """Asks an active training to stop as pruned (its process stops at its next epoch end, or its
    controller records it pruned when its run is out of reach).

    Returns:
        Whether the request was recorded (False: the training had already ended).
    """
    return store.update_training(training_id, {"prune_requested": True}, expected_status=list(ACTIVE))
