"""The controller's step for search jobs: the only code that talks to Optuna.

Run by a tick under the store lease "jobs" (once across hosts). Per running search job, in order:
  1. trials asked for whose training was never queued (a tick that died in between) get it now;
  2. each running trial's new epochs are reported, one at a time in order, and the pruner asked
     after each; a pruned trial's training gets a stop request first, then the trial is told PRUNED;
  3. ended trainings are told: completed -> COMPLETE with the objective, failed -> FAIL,
     cancelled -> PRUNED when pruned, else FAIL; more than max_failed failures fail the job;
  4. new trials are asked for until max_concurrent are in flight and n_trials were created;
  5. once every trial has ended and every training of the job has stopped (a pruned trial's
     training finishes its epoch first), the job completes with its best trial and counts by
     state, or fails when no trial completed; a job whose cancel was requested (micontrol cancel
     JOB_ID) asks for nothing more and ends cancelled once its trainings have ended.

A step holds the store lease "jobs" (leases.JOBS_LEASE) and keeps it renewed; every write to a
job and to its study is fenced by it, so a step that outlived its lease (another host's tick took
over) is refused and stops. A job has at most job.MAX_CONCURRENT (256) trials in flight.

`study.ask` journals a trial's creation and then each parameter on its own: a tick killed in
between leaves a trial with part of its point. Such a trial is told FAIL and another asked in its
place; it counts neither towards n_trials nor towards max_failed, and never trains.

Every step reads its state from the study and the store and so is safe to repeat: a tick killed
at any point leaves work the next tick finishes, and never a duplicate trial or training (the
store keeps one training per (job_id, trial_number)).

A job whose in-flight trainings have neither a new epoch nor a new status, and whose study has
no new log, is skipped without opening its study: a tick's cost follows what changed, not how
many trials the running searches hold.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mitorch.errors import MiTorchError
from mitorch.service.leases import JOBS_LEASE, Lease, new_holder
from mitorch.service.transitions import cancel_trainings, request_prune
from mitorch.store import DuplicateError, JobStore, LeaseLost, StoreError

_ACTIVE = ("new", "queued", "running")
# Parameter importances are computed from this many complete trials on.
IMPORTANCE_MIN_TRIALS = 3


def step(store: JobStore, act: Callable[[str], None], lease: Lease | None = None) -> None:
    """One step of every running search job (see the module's docstring).

    Args:
        lease: the jobs lease this step holds (the controller's tick passes it); None: no fence.

    Raises:
        LeaseLost: the lease was taken over; this step wrote nothing after that.
    """
    from mitorch.service.search.journal import keep_only

    jobs = [job for job in store.list_jobs(["running"]) if job.get("job_type") == "search"]
    keep_only(store, (job["id"] for job in jobs))  # studies of jobs that ended elsewhere
    watched = [training_id for job in jobs for training_id in ((job.get("watch") or {}).get("trainings") or {})]
    seen = _observed(store, store.get_trainings(watched))
    for job in jobs:
        try:
            if lease is not None:
                lease.keep()
            if not _changed(store, job, seen):
                continue
            _Search(store, job, act, lease).run()
        except LeaseLost:
            raise
        except MiTorchError as e:  # one broken job must not stop the others
            act(f"search job {job['id']}: {' '.join(str(e).split())}")


def _changed(store: JobStore, job: dict[str, Any], seen: dict[str, list[Any]]) -> bool:
    """Whether the job may have work: anything differs from what its last step left (`watch`);
    `seen` holds every watched training's [status, results] now."""
    watch = job.get("watch")
    if not watch or job.get("cancel_requested") or watch.get("n_trials") != job["n_trials"]:
        return True
    if any(seen.get(training_id) != then for training_id, then in watch["trainings"].items()):
        return True
    return bool(store.read_logs(job["id"], watch["logs"]))  # a tick that died part-way wrote to the study


def _observed(store: JobStore, trainings: list[dict[str, Any]],
              known: dict[str, int] | None = None) -> dict[str, list[Any]]:
    """Each training's [status, results recorded]: what a step leaves in the job's `watch` and
    the next tick compares. known: result counts already read (training id -> count)."""
    known = known or {}
    counted = store.count_results([t["id"] for t in trainings if t["id"] not in known])
    return {t["id"]: [t["status"], known[t["id"]] if t["id"] in known else counted[t["id"]]["count"]]
            for t in trainings}


@contextmanager
def jobs_lease(store: JobStore, who: str, wait_s: float = 60.0, ttl_s: float = 120.0) -> Iterator[Lease]:
    """Holds the lease of the controller's search step while the caller changes a search job.

    Raises:
        StoreError: a controller tick held it for all of wait_s.
    """
    lease = Lease(store, JOBS_LEASE, new_holder(who), ttl_s)
    if not lease.take(wait_s):
        holder = (store.get_lease(JOBS_LEASE) or {}).get("holder", "unknown")
        raise StoreError(f"a controller tick ({holder}) has been working on the search jobs for {wait_s:.0f} s; "
                         "try again in a few minutes")
    try:
        yield lease
    finally:
        lease.release()


def add_trials(store: JobStore, job_id: str, count: int) -> tuple[int, int]:
    """Extends a running or completed search job by `count` trials of the same study (a grid up
    to its size); the next tick asks for them.

    Returns:
        n_trials before and after.

    Raises:
        ConfigError, StoreError: naming why the job cannot take more trials.
    """
    from mitorch.errors import ConfigError
    from mitorch.service.search.job import MAX_TRIALS, distributions, grid_size

    if count < 1:
        raise ConfigError(f"--add-trials needs 1 or more trials, got {count}")
    with jobs_lease(store, "misubmit") as lease:
        job = store.get_job(job_id)
        if job is None:
            raise StoreError(f"no search job {job_id}; see miquery for the ids")
        if job.get("job_type") != "search":
            raise ConfigError(f"job {job_id} is a sweep (misubmit -m), whose trainings are all queued at once; "
                              "--add-trials takes a search job")
        if job["status"] not in ("running", "completed") or job.get("cancel_requested"):
            raise ConfigError(f"search job {job_id} is {'cancelling' if job.get('cancel_requested') else job['status']}"
                              "; only a running or completed search takes more trials")
        before = job["n_trials"]
        after = before + count
        if after > MAX_TRIALS:
            raise ConfigError(f"search job {job_id} would hold {after} trials, more than {MAX_TRIALS}; "
                              "submit another search job instead")
        if job["sampler"]["name"] == "grid":
            size = grid_size(distributions(job["search_space"]))  # counted, never listed
            after = min(after, size)
            if after == before:
                raise ConfigError(f"search job {job_id} has asked for every point of its grid ({size})")
        if not store.update_job(job_id, {"n_trials": after, "status": "running", "completed_at": None, "error": None},
                                lease=lease.fence):
            raise StoreError(f"search job {job_id} was not changed: a controller tick took the search jobs over; "
                             "try again")
    return before, after


def trial_state(training: dict[str, Any]) -> str:
    """A trial's state as shown to users, from its training: running, pruned, failed or complete."""
    if training["status"] == "pruned" or (training.get("prune_requested") and training["status"] != "completed"):
        return "pruned"
    return {"completed": "complete", "failed": "failed", "cancelled": "failed"}.get(training["status"], "running")


class _Search:
    def __init__(self, store: JobStore, job: dict[str, Any], act: Callable[[str], None],
                 lease: Lease | None = None) -> None:
        import optuna

        from mitorch.service.search.journal import kept_study_storage
        from mitorch.service.search.job import distributions, make_pruner

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.store, self.job, self.act, self.lease = optuna, store, job, act, lease
        self.wrote = False  # whether this step changed any of the job's trainings
        self.results_read: dict[str, int] = {}  # training id -> the results _follow reported from
        self.metric = job["objective"]["metric"]
        self.space = distributions(job["search_space"])
        self.storage = storage = kept_study_storage(store, job["id"])
        storage.journal.lease = lease and lease.fence  # every log this step appends is fenced
        # create_study(load_if_exists=True) would append a log at every tick: load when it exists.
        exists = any(study.study_name == job["id"] for study in storage.get_all_studies())
        open_study = optuna.load_study if exists else optuna.create_study
        direction = {} if exists else {"direction": job["objective"]["direction"]}
        self.study = open_study(study_name=job["id"], storage=storage, sampler=optuna.samplers.RandomSampler(),
                                pruner=make_pruner(job["pruner"]), **direction)

    def run(self) -> None:
        states = self.optuna.trial.TrialState
        cancelling = self.wrote = bool(self.job.get("cancel_requested"))
        if cancelling:
            cancel_trainings(self.store, self.store.list_trainings(_ACTIVE, job_id=self.job["id"]))
        listed = self._trainings()
        trainings = {t["trial_number"]: t for t in listed if t["trial_number"] is not None}
        for trial in self.study.get_trials(deepcopy=False):
            training = trainings.get(trial.number)
            if trial.state != states.RUNNING:
                continue
            self._keep()
            if training is not None:
                self._follow(trial, training)
            elif self._partial(trial):
                self._tell(trial, states.FAIL)
                self.act(f"dropped trial {trial.number} of job {self.job['id']} (its tick stopped while asking "
                         f"for its point: {', '.join(sorted(trial.params)) or 'no parameter'} of "
                         f"{', '.join(sorted(self.space))}); another trial takes its place")
            elif cancelling:
                self._tell(trial, states.FAIL)
            else:
                self._queue(trial, recovered=True)
        trials = self._counted()
        failed = sum(t.state == states.FAIL for t in trials)
        if failed > self.job["max_failed"] and not cancelling:
            self._fail(f"{failed} trials failed, more than max_failed {self.job['max_failed']}")
            return
        in_flight = sum(t.state == states.RUNNING for t in trials)
        created = len(trials)
        while not cancelling and in_flight < self.job["max_concurrent"] and created < self.job["n_trials"]:
            from mitorch.service.search.job import make_sampler

            self._keep()
            self.study.sampler = make_sampler(self.job["sampler"], self.space, created)
            created += 1
            if self._queue(self.study.ask(self.space), recovered=False):
                in_flight += 1
                continue
            failed += 1  # its point did not compose: ask for another in its place
            if failed > self.job["max_failed"]:
                self._fail(f"{failed} trials failed, more than max_failed {self.job['max_failed']}")
                return
        trials = self._counted()
        if self.wrote:  # the trainings as this step left them (a status read earlier only makes
            listed = self._trainings()  # the next tick look again)
        summary = {**self._summary(trials, listed), **self._importances(trials),
                   "watch": self._watch(trials, listed)}
        # Ended once no trial runs and no training of the job is active: a pruned trial's training
        # still finishing its epoch (or a cancelled one still stopping) keeps the job running.
        over = not any(t.state == states.RUNNING for t in trials) and not any(t["status"] in _ACTIVE for t in listed)
        if (cancelling or created >= self.job["n_trials"]) and over:
            self._end(summary, cancelling)
        else:
            self._update_job(summary)

    def _end(self, summary: dict[str, Any], cancelling: bool) -> None:
        counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items() if n) or "no trials"
        best = summary["best"]
        if cancelling:
            status, error = "cancelled", None
        elif best is None:
            status, error = "failed", f"no trial completed ({counts})"
        else:
            status, error = "completed", None
        self._update_job({**summary, "status": status, "error": error, "completed_at": self.store.clock()})
        self._forget()
        self.act(f"{status} search job {self.job['id']} ({counts}"
                 + (f"; best trial {best['number']}: {self.metric} {best['value']:.6g})" if best else ")"))

    def _keep(self) -> None:
        """Renews the jobs lease inside the step's loops (LeaseLost: another tick took over)."""
        if self.lease is not None:
            self.lease.keep()

    def _update_job(self, fields: dict[str, Any]) -> None:
        """Updates the job while this step still holds the jobs lease.

        Raises:
            LeaseLost: another tick took the lease over; nothing was written.
        """
        fence = self.lease and self.lease.fence
        if not self.store.update_job(self.job["id"], fields, lease=fence) and fence is not None:
            raise LeaseLost(*fence)

    def _partial(self, trial: Any) -> bool:
        """Whether the trial has only part of its point (its ask was cut short)."""
        return set(trial.params) != set(self.space)

    def _counted(self) -> list[Any]:
        """The study's trials, without those dropped because their ask was cut short."""
        failed = self.optuna.trial.TrialState.FAIL
        return [t for t in self.study.get_trials(deepcopy=False) if not (t.state == failed and self._partial(t))]

    def _trainings(self) -> list[dict[str, Any]]:
        """The job's trainings, as much of them as a step reads (not their configs)."""
        return self.store.list_trainings(job_id=self.job["id"],
                                         fields=["trial_number", "status", "metrics", "prune_requested"])

    def _watch(self, trials: list[Any], trainings: list[dict[str, Any]]) -> dict[str, Any]:
        """What the next tick compares to skip this job when nothing changed (see _changed)."""
        numbers = {t.number for t in trials if t.state == self.optuna.trial.TrialState.RUNNING}
        # Also the trainings that are still active though their trial ended (a pruned trial's
        # training finishing its epoch): the job ends once they stop.
        running = [training for training in trainings
                   if training.get("trial_number") in numbers or training["status"] in _ACTIVE]
        # The counts _follow reported from: a result recorded since must look new to the next tick.
        watched = _observed(self.store, running, self.results_read)
        if len({t.get("trial_number") for t in running} & numbers) < len(numbers):
            watched[""] = ["a running trial without a training", 0]  # never matches: look again next tick
        self.study.get_trials(deepcopy=False)  # reads the logs this step wrote
        return {"logs": self.storage.journal.logs_read, "n_trials": self.job["n_trials"], "trainings": watched}

    def _importances(self, trials: list[Any]) -> dict[str, Any]:
        """Parameter importances, recomputed when more trials completed. PED-ANOVA: deterministic,
        milliseconds for hundreds of trials, and no scikit-learn (which fANOVA needs)."""
        done = sum(t.state == self.optuna.trial.TrialState.COMPLETE for t in trials)
        if done < IMPORTANCE_MIN_TRIALS or done == (self.job.get("importances") or {}).get("trials"):
            return {}
        import warnings

        from optuna.exceptions import ExperimentalWarning
        from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                values = get_param_importances(self.study, evaluator=PedAnovaImportanceEvaluator())
        except (ValueError, RuntimeError):
            return {}  # e.g. every complete trial has the same params
        return {"importances": {"trials": done, "params": {k: float(v) for k, v in values.items()}}}

    def _queue(self, trial: Any, recovered: bool) -> bool:
        """Queues the trial's training (job_id, trial_number, params); a trial whose point does
        not compose is told FAIL.

        Returns:
            Whether the trial has its training (False: it was told FAIL).
        """
        from mitorch.config import compose_with_values
        from mitorch.service.search.job import param_overrides
        from mitorch.service.submit import submission

        params = dict(trial.params)
        overrides = param_overrides(params)
        try:
            config = submission(compose_with_values(self.job["base_overrides"], params), self.store,
                                self.job["dataset"])
        except MiTorchError as e:
            self._tell(trial, self.optuna.trial.TrialState.FAIL)
            self.act(f"failed trial {trial.number} of job {self.job['id']} ({' '.join(str(e).split())})")
            return False
        self._keep()
        self.wrote = True
        try:
            training_id = self.store.add_training({
                "config": config, "priority": self.job["priority"], "dataset": self.job["dataset"],
                "job_id": self.job["id"], "trial_number": trial.number, "params": params, "overrides": overrides})
        except DuplicateError:
            return True  # another tick queued it in the meantime
        self.act(f"queued trial {trial.number} of job {self.job['id']} as {training_id} ({' '.join(overrides)})"
                 + (" (its tick had stopped before queueing it)" if recovered else ""))
        return True

    def _follow(self, trial: Any, training: dict[str, Any]) -> None:
        states = self.optuna.trial.TrialState
        status, number = training["status"], trial.number
        if status == "completed":
            value = (training.get("metrics") or {}).get(self.metric)
            if value is None:
                self._tell(trial, states.FAIL)
                self.act(f"failed trial {number} of job {self.job['id']} (its training recorded no {self.metric})")
            else:
                self._tell(trial, values=float(value))
                self.act(f"told trial {number} of job {self.job['id']}: {self.metric} {value:.6g}")
            return
        if status == "pruned" or training.get("prune_requested"):
            self._tell(trial, states.PRUNED)  # its stop was requested by a tick that died before telling
            self.act(f"pruned trial {number} of job {self.job['id']}")
            return
        if status in ("failed", "cancelled"):
            self._tell(trial, states.FAIL)
            self.act(f"failed trial {number} of job {self.job['id']} (its training was {status})")
            return
        reported = trial.intermediate_values
        live = self.optuna.trial.Trial(self.study, trial._trial_id)
        results = self.store.list_results(training["id"])
        self.results_read[training["id"]] = len(results)
        for result in results:
            epoch, value = result["epoch"], (result.get("val") or {}).get(self.metric)
            if epoch in reported or value is None:
                continue
            live.report(float(value), epoch)
            if not live.should_prune():
                continue
            # The stop request first: a tick that dies before telling leaves a request the next
            # tick finds (and tells); the other order could leave a pruned trial training on.
            self._keep()
            self.wrote = True
            if request_prune(self.store, training["id"]):
                self._tell(trial, states.PRUNED)
                self.act(f"pruned trial {number} of job {self.job['id']} at epoch {epoch} "
                         f"({self.metric} {value:.6g}); stopping {training['id']}")
            return

    def _tell(self, trial: Any, state: Any = None, values: float | None = None) -> None:
        try:
            self.study.tell(trial.number, values, state=state, skip_if_finished=True)
        except RuntimeError as e:
            # GridSampler stops the study once its grid is covered, which raises outside
            # optimize(); the trial's state was stored before it did.
            if "stop" not in str(e):
                raise

    def _forget(self) -> None:
        from mitorch.service.search.journal import forget_study_storage

        forget_study_storage(self.store, self.job["id"])

    def _fail(self, reason: str) -> None:
        self._keep()
        cancel_trainings(self.store, self.store.list_trainings(_ACTIVE, job_id=self.job["id"]))
        self._update_job({**self._summary(self._counted(), self._trainings()),
                          "status": "failed", "error": reason, "completed_at": self.store.clock()})
        self._forget()
        self.act(f"failed search job {self.job['id']} ({reason})")

    def _summary(self, trials: list[Any], trainings: list[dict[str, Any]]) -> dict[str, Any]:
        names = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
        counts = {name: sum(t.state.name == state for t in trials) for state, name in names.items()}
        done = [t for t in trials if t.state == self.optuna.trial.TrialState.COMPLETE]
        best = None
        if done:
            pick = max if self.job["objective"]["direction"] == "maximize" else min
            trial = pick(done, key=lambda t: t.value)
            training = next(iter(t for t in trainings if t.get("trial_number") == trial.number), None)
            best = {"number": trial.number, "value": trial.value, "params": dict(trial.params),
                    "training_id": training and training["id"]}
        return {"counts": counts, "trials_created": len(trials), "best": best}
