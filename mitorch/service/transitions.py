"""Every move of a training's status and attempt: the allowed transitions, each write fenced.

The controller, the training's own process (the runner), micontrol's cancel and requeue and the
search step ask this module; none of them writes a status or an `attempts` entry itself. Each
write names the status it expects the training to be in (and, once the training has attempts,
the attempt it expects to be current), so a write based on a stale read changes nothing and
returns False.

The allowed moves (MOVES), and who makes them:

    new       -> queued     a controller claims it (a new attempt); or `mitrain --training-id`
                            run by hand takes it
    new       -> cancelled  micontrol cancel, a search job's cancel
    queued    -> running    its run starts training
    queued    -> new        its launch failed, or its run was lost before it started (requeued)
    queued    -> failed     as above, with no launches or retries left
    queued    -> cancelled  micontrol cancel (a dispatched run that has not started finds its
                            training cancelled and never trains); or a cancel asked while its
                            run was out of reach
    queued    -> pruned     a pruning asked while its run was out of reach
    running   -> completed  its run ended with metrics and weights
    running   -> failed     its run failed, or it was lost with no retries left
    running   -> cancelled  its run stopped for a cancel, or was lost after one was asked
    running   -> pruned     its run stopped for its search job's pruner, or was lost after
    running   -> new        preempted (SIGTERM), or lost: back in the queue
    completed, failed, cancelled, pruned -> new   micontrol requeue
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from mitorch.store import ACTIVE, FINISHED, STATUSES, JobStore
from mitorch.store.base import DB_NOW

if TYPE_CHECKING:
    from mitorch.service.executors.base import Launched

# from-status -> the statuses a training may move to from it.
MOVES: dict[str, tuple[str, ...]] = {
    "new": ("queued", "cancelled"),
    "queued": ("running", "new", "failed", "cancelled", "pruned"),
    "running": ("completed", "failed", "cancelled", "pruned", "new"),
    "completed": ("new",),
    "failed": ("new",),
    "cancelled": ("new",),
    "pruned": ("new",),
}
# What a run's record points at: cleared when a controller ends an attempt whose run is over.
_RUN_FIELDS = ("run_id", "pid", "stop_requested_at", "heartbeat_at")


class MoveRefused(ValueError):
    """A status move that MOVES does not allow: a bug in the code that asked for it."""


def check_move(from_status: str, to_status: str) -> None:
    """Raises MoveRefused unless MOVES allows from_status -> to_status."""
    allowed = MOVES.get(from_status, ())
    if to_status not in allowed:
        raise MoveRefused(f"a training cannot move from {from_status} to {to_status}; from {from_status} it may "
                          f"move to {', '.join(allowed) or 'nothing'}")


def _move(store: JobStore, training_id: str, came_from: str | Sequence[str] | None, to: str | None,
          fields: dict[str, Any], attempt: int | None) -> bool:
    """The one write of this module: fields (and the move to `to`, when given), only while the
    training is in one of came_from (any status when None: no move) and holds `attempt` (when given)."""
    expected = None if came_from is None else [came_from] if isinstance(came_from, str) else list(came_from)
    if to is not None:
        for status in expected or STATUSES:
            check_move(status, to)
        fields = {**fields, "status": to}
        if to in FINISHED:
            fields["completed_at"] = DB_NOW
    return store.update_training(training_id, fields, expected_status=expected, attempt=attempt)


def _attempt_fields(attempt: int, **fields: Any) -> dict[str, Any]:
    """Fields of entry `attempt` of `attempts` (attempt N is attempts[N - 1]); none before the first."""
    return {f"attempts.{attempt - 1}.{name}": value for name, value in fields.items()} if attempt else {}


def _fresh_run(executor: str) -> dict[str, Any]:
    """A new attempt's record: this executor, nothing of the previous attempt's run."""
    return {"executor": executor, "dispatched_at": DB_NOW, "run_id": None, "pid": None, "heartbeat_at": None,
            "stop_requested_at": None}


# The controller's side -----------------------------------------------------------------------


def claim(store: JobStore, executor: str) -> dict[str, Any] | None:
    """Takes the first new training in queue order for the executor, as a new attempt (new ->
    queued); two racing claims never take the same training.

    Returns:
        The claimed training (its `attempt` is the new attempt), or None when none is new.
    """
    check_move("new", "queued")
    return store.claim_training({**_fresh_run(executor), "host": None}, from_status="new", to_status="queued",
                                new_attempt={"executor": executor, "dispatched_at": DB_NOW})


def record_launch(store: JobStore, training: dict[str, Any], launched: Launched, gpu: int | None) -> bool:
    """Records what the executor said of the run it launched for the training's attempt (in any
    status: a training cancelled meanwhile still shows which run was sent)."""
    attempt = training["attempt"]
    fields = {**launched.details, "run_id": launched.run_id, "gpu": gpu,
              **_attempt_fields(attempt, run_id=launched.run_id)}
    if launched.link:
        fields.update({"studio_url": launched.link, **_attempt_fields(attempt, studio_url=launched.link)})
    return _move(store, training["id"], None, None, fields, attempt)


def launch_failed(store: JobStore, training: dict[str, Any], error: str, give_up: bool) -> bool:
    """Ends a claimed attempt whose launch failed: back in the queue (queued -> new), or, with
    give_up, failed (queued -> failed). Counts the failure in `launch_failures`."""
    failures = training.get("launch_failures", 0) + 1
    if give_up:
        to, reason = "failed", {"error": f"could not be launched {failures} times: {error}"}
    else:
        to, reason = "new", {"requeue_reason": f"launch failed: {error}"}
    return end_attempt(store, training["id"], training["attempt"], came_from="queued", to=to,
                       outcome=f"launch failed: {error}", launch_failures=failures, **reason)


def record_waiting(store: JobStore, training: dict[str, Any]) -> bool:
    """Stamps a run its executor reports waiting to start: the heartbeat timeout counts from here."""
    return _move(store, training["id"], training["status"], None, {"waiting_at": DB_NOW},
                 training.get("attempt", 0))


def record_stop_requested(store: JobStore, training: dict[str, Any]) -> bool:
    """Stamps the moment a controller asked the training's run to stop (the kill grace counts from it)."""
    return _move(store, training["id"], training["status"], None, {"stop_requested_at": DB_NOW},
                 training.get("attempt", 0))


# The training's own process --------------------------------------------------------------------


def take_by_hand(store: JobStore, training: dict[str, Any], executor: str) -> int | None:
    """Takes a new training as a new attempt run by hand (new -> queued), as a controller's claim
    would, but for no controller's executor: a previous attempt's executor and run id would make
    that controller take this process for its own lost run and stop it.

    Returns:
        The new attempt, or None when the training was not new (or moved meanwhile).
    """
    current = training.get("attempt", 0)
    entry = {"executor": executor, "dispatched_at": training["created_at"]}
    fields = {**_fresh_run(executor), "attempt": current + 1, "gpu": None,
              "attempts": [*training.get("attempts", []), entry]}
    return current + 1 if _move(store, training["id"], "new", "queued", fields, current) else None


def start(store: JobStore, training_id: str, attempt: int, host: str, pid: int, log: str, artifacts: str) -> bool:
    """The attempt's run starts training (queued -> running): where it runs and logs."""
    fields = {"host": host, "pid": pid, "started_at": DB_NOW, "heartbeat_at": DB_NOW, "artifacts": artifacts,
              "log": log, **_attempt_fields(attempt, host=host, pid=pid, started_at=DB_NOW, log=log)}
    return _move(store, training_id, "queued", "running", fields, attempt)


def heartbeat(store: JobStore, training_id: str, attempt: int) -> bool:
    """A running attempt's sign of life, on the database's clock."""
    return _move(store, training_id, "running", None, {"heartbeat_at": DB_NOW}, attempt)


# Both sides ----------------------------------------------------------------------------------


def end_attempt(store: JobStore, training_id: str, attempt: int, *, came_from: str, to: str, outcome: str,
                forget_run: bool = False, **fields: Any) -> bool:
    """Ends the training's current attempt with an outcome (recorded on its `attempts` entry) and
    moves the training on: to a finished status (stamped `completed_at`), or back to new.

    Args:
        came_from: the status the training must be in.
        to: the status it moves to.
        outcome: what ended the attempt ("completed", "failed", "preempted", "lost", ...).
        forget_run: clear the run's id, pid, heartbeat and stop request (a controller ending an
            attempt whose run is over, so nothing takes it for a live run).
        fields: what else the move records (error, metrics, requeue_reason, retries, ...).

    Returns:
        Whether the training was in came_from, held the attempt and moved.
    """
    fields.update(_attempt_fields(attempt, ended_at=DB_NOW, outcome=outcome))
    if forget_run:
        fields.update(dict.fromkeys(_RUN_FIELDS))
    return _move(store, training_id, came_from, to, fields, attempt)


def cancel(store: JobStore, training_id: str) -> Literal["cancelled", "requested"] | None:
    """Cancels a training: a new or queued one at once (a dispatched run that has not started
    finds its training cancelled and never trains), a running one by a cancel request (its
    process stops at its next epoch end, or when its controller stops it).

    Returns:
        "cancelled", "requested", or None when the training had already ended.
    """
    if _move(store, training_id, ("new", "queued"), "cancelled", {"cancel_requested": True}, None):
        return "cancelled"
    if _move(store, training_id, "running", None, {"cancel_requested": True}, None):
        return "requested"
    return None


def cancel_trainings(store: JobStore, trainings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cancels trainings as `cancel` does.

    Returns:
        The running ones, which were sent a request.
    """
    return [training for training in trainings if cancel(store, training["id"]) == "requested"]


def request_prune(store: JobStore, training_id: str) -> bool:
    """Asks an active training to stop as pruned (its process stops at its next epoch end, or its
    controller records it pruned when its run is out of reach).

    Returns:
        Whether the request was recorded (False: the training had already ended).
    """
    return _move(store, training_id, ACTIVE, None, {"prune_requested": True}, None)


def requeue(store: JobStore, training: dict[str, Any]) -> bool:
    """Queues an ended training again (finished -> new) with its retries and launch failures
    reset; a completed one as a fresh run, its earlier result moved to its `history`.

    Returns:
        Whether it moved (False: it is not ended, or it changed meanwhile).
    """
    fields: dict[str, Any] = {"retries": 0, "launch_failures": 0, "cancel_requested": False, "error": None}
    if training["status"] == "completed":
        earlier = {k: training.get(k) for k in ("metrics", "weights", "completed_at", "attempt")}
        fields.update({"history": [*training.get("history", []), earlier], "metrics": None, "weights": None,
                       "resume_from_attempt": training.get("attempt", 0) + 1})
    return _move(store, training["id"], FINISHED, "new", fields, training.get("attempt", 0))


def set_priority(store: JobStore, training_id: str, priority: int) -> bool:
    """Changes a training's place in the queue (lower runs first), in any status: no move.

    Returns:
        Whether the training exists.
    """
    return _move(store, training_id, None, None, {"priority": priority}, None)
