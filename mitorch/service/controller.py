"""One controller tick: reconcile what the executor reports, step the search jobs (which may
queue trials), then dispatch queued trainings.

Several controllers (one per host, each with its own executor) may share one database. A tick
holds a lease per executor in the store, so two ticks of one executor take turns counting and
filling its capacity; it reconciles and counts only its own executor's trainings, and takes over
another executor's training only once that executor has stopped ticking and the training's
heartbeat has expired. Every time is judged on the database's clock.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mitorch.envvars import env_float, env_int
from mitorch.files.artifacts import log_tail
from mitorch.service import transitions
from mitorch.service.executors import Executor, LaunchError, LocalExecutor, launched
from mitorch.service.leases import JOBS_LEASE, Lease, new_holder
from mitorch.service.retention import collect_on_tick
from mitorch.store import JobStore, LeaseLost, StoreError
from mitorch.store.base import FINISHED


@dataclass
class Settings:
    """How patient a controller is; each has a MITORCH_* variable (seconds unless said)."""

    heartbeat_timeout: timedelta = field(default_factory=lambda: timedelta(
        seconds=env_float("MITORCH_HEARTBEAT_TIMEOUT_S", 600.0, minimum=1)))
    # How long a launched run may take to start training (install, pull, import) before it is
    # treated as silent; once it runs, its heartbeat counts.
    start_timeout: timedelta = field(default_factory=lambda: timedelta(
        seconds=env_float("MITORCH_START_TIMEOUT_S", 600.0, minimum=1)))
    # A claimed training with no recorded run after this long: its tick died before launching.
    start_grace: timedelta = field(default_factory=lambda: timedelta(
        seconds=env_float("MITORCH_START_GRACE_S", 60.0, minimum=1)))
    # A run asked to stop (SIGTERM) that is still alive after this long is killed.
    kill_grace: timedelta = field(default_factory=lambda: timedelta(
        seconds=env_float("MITORCH_KILL_GRACE_S", 120.0, minimum=0)))
    max_retries: int = field(default_factory=lambda: env_int("MITORCH_MAX_RETRIES", 2, minimum=0))
    max_launch_failures: int = field(default_factory=lambda: env_int("MITORCH_MAX_LAUNCH_FAILURES", 3, minimum=1))
    # How long a tick waits for another tick of the same executor before it skips.
    tick_wait_s: float = field(default_factory=lambda: env_float("MITORCH_TICK_WAIT_S", 60.0, minimum=0))
    # A tick's lease (renewed while it dispatches): how long a killed tick blocks the next one.
    tick_lease_s: float = field(default_factory=lambda: env_float("MITORCH_TICK_LEASE_S", 120.0, minimum=1))


def tick(store: JobStore, executor: Executor | None = None, say: Callable[[str], None] = print,
         settings: Settings | None = None) -> list[str]:
    """Reconciles the executor's trainings, steps the search jobs and completes jobs whose
    trainings have all ended, then dispatches new trainings while there is capacity.

    Returns:
        One line per action ("dispatched ID ...", "requeued ID ...", "failed ID ...", ...).

    Raises:
        MiTorchError: the executor cannot run trainings with these settings (checked before
            anything is claimed).
    """
    executor = executor or LocalExecutor()
    settings = settings or Settings()
    executor.check_ready()
    actions: list[str] = []

    def act(line: str) -> None:
        actions.append(line)
        say(line)

    holder = new_holder(executor.name)
    lease = Lease(store, f"tick:{executor.name}", holder, settings.tick_lease_s)
    if not lease.take(settings.tick_wait_s):
        act(f"skipped: another tick of {executor.name} still holds its lease")
        return actions
    try:
        # Other hosts take this executor's trainings over only once this marker has expired.
        store.acquire_lease(f"executor:{executor.name}", executor.name, settings.heartbeat_timeout.total_seconds())
        active = _Reconciler(store, executor, act, settings, lease).run()
        # Search jobs before dispatch: a trial queued now is dispatched by this same tick.
        _step_jobs(store, act, Lease(store, JOBS_LEASE, holder, settings.tick_lease_s))
        _dispatch(store, executor, act, active, lease, settings)
        # Last: removing old files waits for no training ($MITORCH_GC_ON_TICK=1 turns it on).
        collect_on_tick(store, holder, act)
    except LeaseLost as e:  # a tick slower than its lease: another tick took over; it stops here
        act(f"stopped: {e}")
    finally:
        lease.release()
    return actions


def _step_jobs(store: JobStore, act: Callable[[str], None], lease: Lease) -> None:
    """Steps the search jobs and completes ended sweep jobs, once across hosts (the jobs lease)."""
    if not lease.take():
        return
    try:
        if any(job.get("job_type") == "search" for job in store.list_jobs(["running"])):
            from mitorch.service.search import step as search  # imports Optuna only when a job needs a step

            search.step(store, act, lease)
        _finish_jobs(store, act, lease)
    except LeaseLost as e:
        act(f"stopped stepping the search jobs: {e}")
    finally:
        lease.release()


def _finish_jobs(store: JobStore, act: Callable[[str], None], lease: Lease) -> None:
    """Completes the sweep jobs whose trainings have all ended (search jobs end in their own step,
    which knows whether more trials are to come)."""
    for job in store.list_jobs(["running"]):
        if job.get("job_type") == "search":
            continue
        lease.keep()
        counts = store.count_trainings(job_id=job["id"])
        if any(counts.values()) and not any(counts[s] for s in counts if s not in FINISHED):
            counts = {s: counts[s] for s in FINISHED}
            fields = {"status": "completed", "completed_at": store.clock(), "counts": counts}
            if not store.update_job(job["id"], fields, lease=lease.fence):
                raise LeaseLost(*lease.fence)
            act(f"completed job {job['id']} ({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")


class _Reconciler:
    """Acts on the executor's lost, silent, cancelled or never-launched trainings."""

    def __init__(self, store: JobStore, executor: Executor, act: Callable[[str], None], settings: Settings,
                 lease: Lease) -> None:
        self.store, self.executor, self.act, self.settings, self.lease = store, executor, act, settings, lease
        self.clock = store.clock()

    def run(self) -> list[dict[str, Any]]:
        """Returns the executor's trainings that still hold a slot."""
        active = []
        for training in self.store.list_trainings(["queued", "running"]):
            self.lease.keep()
            try:
                if training.get("executor") != self.executor.name:
                    self._maybe_take_over(training)
                elif self._reconcile(training):
                    active.append(training)
            except StoreError as e:  # one training's failed write must not stop the others
                if isinstance(e, LeaseLost):
                    raise
                self.act(f"skipped {training['id']} this tick ({' '.join(str(e).split())})")
                if training.get("executor") == self.executor.name:
                    active.append(training)  # it may hold a slot: count it
        return active

    def _age(self, moment: datetime | None) -> timedelta:
        return timedelta(0) if moment is None else self.clock - moment

    def _reconcile(self, training: dict[str, Any]) -> bool:
        """Whether the training still holds a slot."""
        if training["status"] == "queued" and not training.get("run_id") and not training.get("pid"):
            if self._age(training.get("dispatched_at") or training["created_at"]) <= self.settings.start_grace:
                return True
            self._requeue(training, "it was claimed but never launched (its tick stopped)", retry=False)
            return False
        state = self.executor.state(training)
        if state == "waiting":
            if not training.get("cancel_requested"):
                # Queued for capacity (or building its image): no heartbeat is due yet, and the
                # heartbeat timeout counts from the last tick that saw it waiting.
                transitions.record_waiting(self.store, training)
                return True
            state = "running"  # a cancelled run is stopped whether or not it started
        if training["status"] == "running":
            beat, limit = training.get("heartbeat_at"), self.settings.heartbeat_timeout
            silence = f"no heartbeat for {limit}"
        else:
            beat, limit = training.get("dispatched_at"), self.settings.start_timeout
            silence = f"not started after {limit}"
        stale = self._age(max(filter(None, (beat, training.get("waiting_at"))), default=None)) > limit
        if state == "running":
            if training.get("cancel_requested") or stale:
                self._stop(training, "cancelled" if training.get("cancel_requested") else silence)
            return True
        if state == "unknown" and not stale:
            return True
        # Gone, or silent where the executor cannot tell: the attempt fencing makes a live
        # process of it harmless, since its next write is refused and it stops.
        if state == "gone":
            reason = self.executor.gone_reason(training) or (
                "its process is gone" if training["status"] == "running" else "it exited before it started")
        else:
            reason = f"{silence} and its executor cannot tell"
        tail = log_tail(training["id"], training.get("attempt", 0), lines=3)
        if tail and training["status"] == "queued":  # a crash at start-up: its log says why
            reason += " (log: " + " | ".join(tail.splitlines()) + ")"
        self._requeue(training, reason, retry=True)
        return False

    def _stop(self, training: dict[str, Any], why: str) -> None:
        """Stops a live run before its training runs again: SIGTERM first, then, past the kill
        grace, at once. The training keeps its slot until its run is gone."""
        asked = training.get("stop_requested_at")
        if asked is None:
            if not self.executor.cancel(training):
                self.act(f"cancel refused {training['id']} ({why}; {self.executor.name} refused to stop its run; "
                         "asking again next tick)")
                return
            transitions.record_stop_requested(self.store, training)
            self.act(f"stopping {training['id']} ({why})")
        elif self._age(asked) > self.settings.kill_grace:
            if self.executor.cancel(training, force=True):
                self.act(f"killed {training['id']} ({why}; still running {self.settings.kill_grace} after SIGTERM)")
            else:
                self.act(f"cancel refused {training['id']} ({why}; {self.executor.name} refused to kill its run "
                         f"still running {self.settings.kill_grace} after SIGTERM; asking again next tick)")

    def _requeue(self, training: dict[str, Any], reason: str, retry: bool) -> None:
        """Puts a training whose run is over back in the queue; one whose cancel (or pruning) was
        asked for while its run was out of reach ends as asked instead, using no retry."""
        retries, training_id = training.get("retries", 0), training["id"]
        if training.get("cancel_requested"):
            self._end(training, "cancelled", "cancelled", f"cancelled {training_id} ({reason})")
        elif training.get("prune_requested"):
            self._end(training, "pruned", "pruned", f"pruned {training_id} ({reason})",
                      error="pruned by its search job while its run was out of reach")
        elif not retry:
            self._end(training, "new", "requeued", f"requeued {training_id} ({reason}; no retry used)",
                      requeue_reason=reason)
        elif retries < self.settings.max_retries:
            self._end(training, "new", "lost",
                      f"requeued {training_id} (retry {retries + 1} of {self.settings.max_retries}: {reason})",
                      retries=retries + 1, requeue_reason=reason)
        else:
            self._end(training, "failed", "lost", f"failed {training_id} ({reason}; no retries left)",
                      error=f"lost after {retries} retries: {reason}")

    def _end(self, training: dict[str, Any], to: str, outcome: str, line: str, **fields: Any) -> None:
        """Ends the training's attempt, whose run is over, and says so when it moved."""
        if transitions.end_attempt(self.store, training["id"], training.get("attempt", 0), came_from=training["status"],
                                   to=to, outcome=outcome, forget_run=True, **fields):
            self.act(line)

    def _maybe_take_over(self, training: dict[str, Any]) -> None:
        """Requeues another executor's training once that executor stopped ticking (its marker
        lease expired) and the training's heartbeat expired too."""
        beat = training.get("heartbeat_at") or training.get("dispatched_at")
        if self._age(beat) <= self.settings.heartbeat_timeout:
            return
        owner = training.get("executor") or ""
        marker = self.store.get_lease(f"executor:{owner}")
        if marker is not None and marker["expires_at"] > self.clock:
            return  # its own controller is alive and will act
        self._requeue(training, f"its executor {owner} stopped ticking and no heartbeat for "
                                f"{self.settings.heartbeat_timeout}", retry=True)


def _dispatch(store: JobStore, executor: Executor, act: Callable[[str], None], active: list[dict[str, Any]],
              lease: Lease, settings: Settings) -> None:
    busy_gpus = {t["gpu"] for t in active if t.get("gpu") is not None}
    free = executor.capacity - len(active)
    failed_launches: list[tuple[dict[str, Any], str]] = []
    try:
        while free > 0:
            lease.keep()  # a tick that lost its lease claims nothing more
            training = transitions.claim(store, executor.name)
            if training is None:
                break
            gpu = executor.free_gpu(busy_gpus)
            try:
                run = launched(executor.launch(training, gpu))
            except LaunchError as e:
                failed_launches.append((training, str(e)))  # back to the queue after this tick's claims
                continue
            transitions.record_launch(store, training, run, gpu)
            if gpu is not None:
                busy_gpus.add(gpu)
            free -= 1
            act(f"dispatched {training['id']} to {run.run_id}" + (f" (GPU {gpu})" if gpu is not None else ""))
    finally:  # also when the lease was lost: a claimed training goes back to the queue
        for training, error in failed_launches:
            _launch_failed(store, training, error, settings, act)


def _launch_failed(store: JobStore, training: dict[str, Any], error: str, settings: Settings,
                   act: Callable[[str], None]) -> None:
    failures = training.get("launch_failures", 0) + 1
    give_up = failures >= settings.max_launch_failures
    if give_up:
        line = f"failed {training['id']} (launch failed {failures} times: {error})"
    else:
        line = f"launch failed {training['id']} ({failures} of {settings.max_launch_failures}: {error}); requeued"
    if transitions.launch_failed(store, training, error, give_up):
        act(line)
