"""One controller tick: reconcile what executors report, then dispatch queued trainings."""
from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

from mitorch.service.artifacts import artifacts_root
from mitorch.service.executors import Executor, LocalExecutor
from mitorch.store import JobStore
from mitorch.store.base import now

HEARTBEAT_TIMEOUT = timedelta(seconds=float(os.environ.get("MITORCH_HEARTBEAT_TIMEOUT_S", "600")))
MAX_RETRIES = int(os.environ.get("MITORCH_MAX_RETRIES", "2"))


@contextmanager
def _tick_lock() -> Iterator[None]:
    # Capacity is counted, then filled: two ticks on one machine take turns.
    root = artifacts_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".micontrol.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def tick(store: JobStore, executor: Executor | None = None, say: Callable[[str], None] = print,
         heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT, max_retries: int = MAX_RETRIES) -> list[str]:
    """Reconciles running and queued trainings, then dispatches new ones while there is capacity.

    Returns:
        One line per action ("dispatched ID ...", "requeued ID ...", "failed ID ...", ...).
    """
    executor = executor or LocalExecutor()
    actions: list[str] = []

    def act(line: str) -> None:
        actions.append(line)
        say(line)

    with _tick_lock():
        active = _reconcile(store, executor, act, heartbeat_timeout, max_retries)
        _dispatch(store, executor, act, active)
        _finish_jobs(store, act)
    return actions


def _finish_jobs(store: JobStore, act: Callable[[str], None]) -> None:
    for job in store.list_jobs(["running"]):
        trainings = store.list_trainings(job_id=job["id"])
        if trainings and all(t["status"] in ("completed", "failed", "cancelled") for t in trainings):
            counts = {s: sum(t["status"] == s for t in trainings) for s in ("completed", "failed", "cancelled")}
            store.update_job(job["id"], {"status": "completed", "completed_at": now(), "counts": counts})
            act(f"completed job {job['id']} ({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")


def _reconcile(store: JobStore, executor: Executor, act: Callable[[str], None], heartbeat_timeout: timedelta,
               max_retries: int) -> list[dict]:
    """Acts on the executor's lost or silent trainings; returns those still active."""
    active = []
    for training in store.list_trainings(["queued", "running"]):
        if training.get("executor") != executor.name:
            continue
        state = executor.state(training.get("run_id", ""))
        beat = training.get("heartbeat_at") or training.get("dispatched_at")
        stale = beat is not None and now() - beat > heartbeat_timeout
        if state != "gone" and not stale:
            active.append(training)
            continue
        reason = "its process is gone" if state == "gone" else f"no heartbeat for {heartbeat_timeout}"
        if training.get("cancel_requested"):
            if store.update_training(training["id"], {"status": "cancelled", "completed_at": now()},
                                     expected_status=training["status"]):
                act(f"cancelled {training['id']} ({reason})")
            continue
        if state == "running":
            executor.cancel(training["run_id"])  # alive but silent: stop it before running it again
        retries = training.get("retries", 0)
        if retries < max_retries:
            if store.update_training(training["id"], {"status": "new", "retries": retries + 1, "requeue_reason": reason},
                                     expected_status=training["status"]):
                act(f"requeued {training['id']} (retry {retries + 1} of {max_retries}: {reason})")
        elif store.update_training(training["id"], {"status": "failed", "completed_at": now(),
                                                    "error": f"lost after {retries} retries: {reason}"},
                                   expected_status=training["status"]):
            act(f"failed {training['id']} ({reason}; no retries left)")
    return active


def _dispatch(store: JobStore, executor: Executor, act: Callable[[str], None], active: list[dict]) -> None:
    busy_gpus = {t["gpu"] for t in active if t.get("gpu") is not None}
    for _ in range(executor.capacity - len(active)):
        training = store.claim_training({"executor": executor.name, "dispatched_at": now()})
        if training is None:
            break
        gpu = executor.free_gpu(busy_gpus)
        run_id = executor.launch(training, gpu)
        store.update_training(training["id"], {"run_id": run_id, "gpu": gpu})
        if gpu is not None:
            busy_gpus.add(gpu)
        act(f"dispatched {training['id']} to {run_id}" + (f" (GPU {gpu})" if gpu is not None else ""))
