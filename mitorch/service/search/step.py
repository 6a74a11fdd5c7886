"""The controller's step for search jobs: the only code that talks to Optuna.

Run by a tick under the store lease "jobs" (once across hosts). Per running search job, in order:
  1. trials asked for whose training was never queued (a tick that died in between) get it now;
  2. each running trial's new epochs are reported, one at a time in order, and the pruner asked
     after each; a pruned trial's training gets a stop request first, then the trial is told PRUNED;
  3. ended trainings are told: completed -> COMPLETE with every objective's value (its
     constraint values stored on the trial first, where Optuna reads them; a metric missing ->
     FAIL), failed -> FAIL, cancelled -> PRUNED when pruned, else FAIL; more than max_failed
     failures fail the job; a multi-objective job reports no epochs and prunes nothing;
  4. new trials are asked for until max_concurrent are in flight and n_trials were created; a
     trial whose point's fingerprint matches a completed training (of this job or any other) is
     told that training's value at once, without a training of its own (its `reused_from`), and
     one whose point an active training trains waits for that training (its `waits_for`; step 1
     then reuses its result, or queues the trial's own training when it does not complete);
  5. once every trial has ended and every training of the job has stopped (a pruned trial's
     training finishes its epoch first), the job completes with its best trial (a
     multi-objective job: also its Pareto front, `pareto`; only trials that meet every
     constraint) and counts by state, or fails when no trial completed or none met the
     constraints; a job whose cancel was requested (micontrol cancel
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

from collections.abc import Callable
from typing import Any

from mitorch.errors import MiTorchError
from mitorch.service.leases import Lease
from mitorch.service.search.job import CONSTRAINTS_ATTR, make_pruner, make_sampler, objectives_of
from mitorch.service.search.seeding import is_seeded, seed
from mitorch.service.search.space import distributions, param_overrides
from mitorch.service.search.trials import (IMPORTANCE_MIN_TRIALS, REUSED_FROM, WAITS_FOR, constraint_values,
                                           is_feasible, pareto_front)
from mitorch.service.transitions import cancel_trainings, request_prune
from mitorch.store import ACTIVE, DuplicateError, JobStore, LeaseLost


def step(store: JobStore, act: Callable[[str], None], lease: Lease | None = None) -> None:
    """One step of every running search job (see the module's docstring).

    Args:
        store: the job store.
        act: called with one line for each thing the step did (queued, told, pruned, ended).
        lease: the jobs lease this step holds (the controller's tick passes it); None: no fence.

    Raises:
        LeaseLost: the lease was taken over; this step wrote nothing after that.
    """
    from mitorch.service.search.journal import keep_only  # imports Optuna: here, not with this module

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


def _open_study(store: JobStore, job: dict[str, Any], lease: Lease | None) -> tuple[Any, Any, int]:
    """The job's kept journal storage, every append fenced by the lease, its study on it
    (created at the job's first step) and the study's id in the storage."""
    import optuna

    from mitorch.service.search.journal import kept_study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = kept_study_storage(store, job["id"])
    storage.journal.lease = lease and lease.fence
    # The sampler that asks is set before each ask (make_sampler); following trials needs none.
    options = {"study_name": job["id"], "storage": storage, "sampler": optuna.samplers.RandomSampler(),
               "pruner": make_pruner(job["pruner"])}
    # create_study(load_if_exists=True) would append a log at every tick: load when it exists.
    try:
        study_id = storage.get_study_id_from_name(job["id"])
    except KeyError:
        study = optuna.create_study(directions=[o["direction"] for o in objectives_of(job)], **options)
        return storage, study, storage.get_study_id_from_name(job["id"])
    return storage, optuna.load_study(**options), study_id


class _Search:
    """One search job's step: its study, the trainings of its trials, and what it did."""

    def __init__(self, store: JobStore, job: dict[str, Any], act: Callable[[str], None],
                 lease: Lease | None = None) -> None:
        import optuna  # here, not at the top: manage, miquery and misubmit import this module

        self.states = optuna.trial.TrialState
        self.store, self.job, self.act, self.lease = store, job, act, lease
        self.wrote = False  # whether this step changed any of the job's trainings
        self.results_read: dict[str, int] = {}  # training id -> the results _report reported from
        self.objectives = objectives_of(job)
        self.metric = self.objectives[0]["metric"]  # the one a single-objective job reports and prunes on
        self.constraints = job.get("constraints") or []
        self.space = distributions(job["search_space"])
        self.storage, self.study, self.study_id = _open_study(store, job, lease)
        seed(self.study, store, job, self.space)  # enqueue: and warm_start:, at the job's first step

    def run(self) -> None:
        """Settles the running trials, asks for more, then records the job or ends it."""
        cancelling = self.wrote = bool(self.job.get("cancel_requested"))
        if cancelling:
            cancel_trainings(self.store, self.store.list_trainings(ACTIVE, job_id=self.job["id"]))
        listed = self._trainings()
        self._settle(listed, cancelling)
        if not cancelling and not self._fill(self._counted()):
            return  # the job failed
        trials = self._counted()
        if self.wrote:  # the trainings as this step left them (a status read earlier only makes
            listed = self._trainings()  # the next tick look again)
        summary = {**self._summary(trials, listed), **self._importances(trials),
                   "watch": self._watch(trials, listed)}
        # Ended once no trial runs and no training of the job is active: a pruned trial's training
        # still finishing its epoch (or a cancelled one still stopping) keeps the job running.
        over = not any(t.state == self.states.RUNNING for t in trials) and \
            not any(t["status"] in ACTIVE for t in listed)
        if (cancelling or len(trials) >= self.job["n_trials"]) and over:
            self._end(summary, cancelling)
        else:
            self._update_job(summary)

    def _settle(self, listed: list[dict[str, Any]], cancelling: bool) -> None:
        """Each running trial: followed through its training, dropped when its ask was cut short,
        failed when the job is cancelling, else its training queued (a tick died before)."""
        trainings = {t["trial_number"]: t for t in listed if t["trial_number"] is not None}
        for trial in self.study.get_trials(deepcopy=False, states=(self.states.RUNNING,)):
            self._keep()
            training = trainings.get(trial.number)
            if training is not None:
                self._follow(trial, training)
            elif self._partial(trial):
                self._tell(trial, self.states.FAIL)
                self.act(f"dropped trial {trial.number} of job {self.job['id']} (its tick stopped while asking "
                         f"for its point: {', '.join(sorted(trial.params)) or 'no parameter'} of "
                         f"{', '.join(sorted(self.space))}); another trial takes its place")
            elif cancelling:
                self._tell(trial, self.states.FAIL)
            else:
                self._queue(trial, recovered=True)

    def _fill(self, trials: list[Any]) -> bool:
        """Asks for trials until max_concurrent are in flight and n_trials were created; a trial
        whose point does not compose is replaced.

        Returns:
            False when more trials failed than max_failed: the job failed.
        """
        failed = sum(t.state == self.states.FAIL for t in trials)
        in_flight = sum(t.state == self.states.RUNNING for t in trials)
        created = len(trials)
        if self._failed_too_often(failed):
            return False
        while in_flight < self.job["max_concurrent"] and created < self.job["n_trials"]:
            self._keep()
            self.study.sampler = make_sampler(self.job["sampler"], self.space, created, len(self.constraints))
            created += 1
            outcome = self._queue(self.study.ask(self.space), recovered=False)
            if outcome != "failed":
                in_flight += outcome == "queued"  # a reused trial was told at once
                continue
            failed += 1  # its point did not compose: ask for another in its place
            if self._failed_too_often(failed):
                return False
        return True

    def _failed_too_often(self, failed: int) -> bool:
        """Fails the job when more than max_failed of its trials failed."""
        if failed <= self.job["max_failed"]:
            return False
        self._fail(f"{failed} trials failed, more than max_failed {self.job['max_failed']}")
        return True

    def _queue(self, trial: Any, recovered: bool) -> str:
        """Queues the trial's training (job_id, trial_number, params, fingerprint); a trial whose
        point a completed training already has is told that training's value instead, one whose
        point an active training is training waits for it (it stays running without a training
        of its own, and a later step reuses that training's result or, when it does not complete,
        queues the trial's own), and one whose point does not compose is told FAIL.

        Returns:
            "queued" (the trial has its training, or waits for one), "reused" or "failed".
        """
        from mitorch.config import compose_with_values
        from mitorch.service import submit
        from mitorch.service.fingerprint import fingerprint

        params = dict(trial.params)
        overrides = param_overrides(params)
        try:
            config = submit.submission(compose_with_values(self.job["base_overrides"], params), self.store,
                                       self.job["dataset"])
        except MiTorchError as e:
            self._tell(trial, self.states.FAIL)
            self.act(f"failed trial {trial.number} of job {self.job['id']} ({' '.join(str(e).split())})")
            return "failed"
        key = fingerprint(config, self.job["dataset"])
        if self._reuse(trial, key):
            return "reused"
        if self._wait(trial, key):
            return "queued"
        self._keep()
        self.wrote = True
        try:
            training_id = self.store.add_training({
                "config": config, "priority": self.job["priority"], "dataset": self.job["dataset"],
                "job_id": self.job["id"], "trial_number": trial.number, "params": params, "overrides": overrides,
                "fingerprint": key, **submit.lineage(config)})
        except DuplicateError:
            return "queued"  # another tick queued it in the meantime
        waited = trial.user_attrs.get(WAITS_FOR)
        self.act(f"queued trial {trial.number} of job {self.job['id']} as {training_id} ({' '.join(overrides)})"
                 + (f" ({waited}, which has its point, did not complete)" if waited
                    else " (its tick had stopped before queueing it)" if recovered else ""))
        return "queued"

    def _wait(self, trial: Any, key: str) -> bool:
        """Whether an active training with the trial's fingerprint (one not being pruned) trains
        its point: the trial then waits for it, recording it as `waits_for` when it is new."""
        active = next((training for training in self.store.find_trainings(key, ACTIVE)
                       if not training.get("prune_requested")), None)
        if active is None:
            return False
        if trial.user_attrs.get(WAITS_FOR) != active["id"]:
            self._keep()
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            self.storage.set_trial_user_attr(trial_id, WAITS_FOR, active["id"])
            self.act(f"trial {trial.number} of job {self.job['id']} waits for {active['id']}, which trains its point "
                     f"({active['status']})")
        return True

    def _reuse(self, trial: Any, key: str) -> bool:
        """Tells the trial the objective of the oldest completed training with its fingerprint
        (of this job or any other), recording that training as the trial's `reused_from`.

        Returns:
            Whether the trial was told (False: no completed training has its point).
        """
        source = next((training for training in self.store.find_trainings(key, ["completed"])
                       if not isinstance(self._outcome(training.get("metrics") or {}), str)), None)
        if source is None:
            return False
        self._keep()
        # Recorded before the trial is told: a tick that dies in between leaves a running trial
        # without a training, which the next tick reuses again.
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        self.storage.set_trial_user_attr(trial_id, REUSED_FROM, source["id"])
        _, told = self._complete(trial, source["metrics"])
        self.act(f"reused {source['id']} for trial {trial.number} of job {self.job['id']}: {told}")
        return True

    def _outcome(self, metrics: dict[str, Any]) -> tuple[list[float], list[float] | None] | str:
        """A completed training's objective values and constraint values, or why it has none (a
        metric an objective or a constraint reads is missing)."""
        values = [metrics.get(o["metric"]) for o in self.objectives]
        missing = [o["metric"] for o, v in zip(self.objectives, values)
                   if isinstance(v, bool) or not isinstance(v, (int, float))]
        missing += [c["metric"] for c in self.constraints
                    if constraint_values([c], metrics) is None and c["metric"] not in missing]
        if missing:
            return f"its training recorded no {', '.join(missing)}"
        return [float(v) for v in values], constraint_values(self.constraints, metrics) if self.constraints else None

    def _complete(self, trial: Any, metrics: dict[str, Any]) -> tuple[bool, str]:
        """Tells the trial its training's objective values, its constraint values stored first
        (where Optuna's samplers and best_trials read them); FAIL when a metric is missing.

        Returns:
            Whether it completed, and what was told (e.g. `top1_accuracy 0.9, num_parameters
            1e+04`) or why it failed.
        """
        outcome = self._outcome(metrics)
        if isinstance(outcome, str):
            self._tell(trial, self.states.FAIL)
            return False, outcome
        values, constraints = outcome
        if constraints is not None:
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            self.storage.set_trial_system_attr(trial_id, CONSTRAINTS_ATTR, constraints)
        self._tell(trial, values=values if len(values) > 1 else values[0])
        told = ", ".join(f"{o['metric']} {v:.6g}" for o, v in zip(self.objectives, values))
        return True, told + ("" if constraints is None or max(constraints) <= 0 else " (breaks a constraint)")

    def _follow(self, trial: Any, training: dict[str, Any]) -> None:
        """Tells the trial how its training ended, or reports the training's new epochs."""
        status, number = training["status"], trial.number
        if status == "completed":
            completed, told = self._complete(trial, training.get("metrics") or {})
            self.act(f"told trial {number} of job {self.job['id']}: {told}" if completed
                     else f"failed trial {number} of job {self.job['id']} ({told})")
        elif status == "pruned" or training.get("prune_requested"):
            self._tell(trial, self.states.PRUNED)  # its stop was requested by a tick that died before telling
            self.act(f"pruned trial {number} of job {self.job['id']}")
        elif status in ("failed", "cancelled"):
            self._tell(trial, self.states.FAIL)
            self.act(f"failed trial {number} of job {self.job['id']} (its training was {status})")
        else:
            self._report(trial, training)

    def _report(self, trial: Any, training: dict[str, Any]) -> None:
        """Reports the training's new epochs to the trial, one at a time in order, and asks the
        pruner after each; a trial to prune has its training's stop requested, then is told."""
        results = self.store.list_results(training["id"])
        self.results_read[training["id"]] = len(results)
        if len(self.objectives) > 1:
            return  # a multi-objective job is never pruned (job.py refuses its pruners)
        new = [(result["epoch"], value) for result in results
               if result["epoch"] not in trial.intermediate_values
               and (value := (result.get("val") or {}).get(self.metric)) is not None]
        if not new:
            return
        # A trial of an earlier step has no live Trial to report through: its storage is told by
        # the trial's id, and the pruner judges the trial as the storage now holds it.
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        for epoch, value in new:
            self.storage.set_trial_intermediate_value(trial_id, epoch, float(value))
            if self.study.pruner.prune(self.study, self.storage.get_trial(trial_id)):
                self._prune(trial, training, epoch, value)
                return

    def _prune(self, trial: Any, training: dict[str, Any], epoch: int, value: float) -> None:
        # The stop request first: a tick that dies before telling leaves a request the next
        # tick finds (and tells); the other order could leave a pruned trial training on.
        self._keep()
        self.wrote = True
        if request_prune(self.store, training["id"]):
            self._tell(trial, self.states.PRUNED)
            self.act(f"pruned trial {trial.number} of job {self.job['id']} at epoch {epoch} "
                     f"({self.metric} {value:.6g}); stopping {training['id']}")

    def _tell(self, trial: Any, state: Any = None, values: float | None = None) -> None:
        """Ends the trial in the study (ask-and-tell, by its number); an ended one stays as it is."""
        try:
            self.study.tell(trial.number, values, state=state, skip_if_finished=True)
        except RuntimeError as e:
            # GridSampler stops the study once its grid is covered, which raises outside
            # optimize(); the trial's state was stored before it did.
            if "stop" not in str(e):
                raise

    def _end(self, summary: dict[str, Any], cancelling: bool) -> None:
        """Ends the job: cancelled, completed with its best trial, or failed without one."""
        counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items() if n) or "no trials"
        best = summary["best"]
        if cancelling:
            status, error = "cancelled", None
        elif best is None and summary["counts"]["complete"]:
            status, error = "failed", f"no trial met the constraints ({counts})"
        elif best is None:
            status, error = "failed", f"no trial completed ({counts})"
        else:
            status, error = "completed", None
        self._update_job({**summary, "status": status, "error": error, "completed_at": self.store.clock()})
        self._forget()
        self.act(f"{status} search job {self.job['id']} ({counts}"
                 + (f"; best trial {best['number']}: {self.metric} {best['value']:.6g}" if best else "")
                 + (f"; Pareto front of {len(summary['pareto'])} trials" if "pareto" in summary else "") + ")")

    def _fail(self, reason: str) -> None:
        self._keep()
        cancel_trainings(self.store, self.store.list_trainings(ACTIVE, job_id=self.job["id"]))
        self._update_job({**self._summary(self._counted(), self._trainings()),
                          "status": "failed", "error": reason, "completed_at": self.store.clock()})
        self._forget()
        self.act(f"failed search job {self.job['id']} ({reason})")

    def _forget(self) -> None:
        from mitorch.service.search.journal import forget_study_storage

        forget_study_storage(self.store, self.job["id"])

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
        """The job's trials: the study's, without those dropped because their ask was cut short,
        those copied from a warm-start job and enqueued points not asked for yet."""
        return [t for t in self.study.get_trials(deepcopy=False)
                if not (t.state == self.states.FAIL and self._partial(t)) and not is_seeded(t)
                and t.state != self.states.WAITING]

    def _trainings(self) -> list[dict[str, Any]]:
        """The job's trainings, as much of them as a step reads (not their configs)."""
        return self.store.list_trainings(job_id=self.job["id"],
                                         fields=["trial_number", "status", "metrics", "prune_requested"])

    def _watch(self, trials: list[Any], trainings: list[dict[str, Any]]) -> dict[str, Any]:
        """What the next tick compares to skip this job when nothing changed (see _changed)."""
        numbers = {t.number for t in trials if t.state == self.states.RUNNING}
        # Also the trainings that are still active though their trial ended (a pruned trial's
        # training finishing its epoch): the job ends once they stop.
        running = [training for training in trainings
                   if training.get("trial_number") in numbers or training["status"] in ACTIVE]
        # The counts _report reported from: a result recorded since must look new to the next tick.
        watched = _observed(self.store, running, self.results_read)
        if len({t.get("trial_number") for t in running} & numbers) < len(numbers):
            watched[""] = ["a running trial without a training", 0]  # never matches: look again next tick
        self.study.get_trials(deepcopy=False)  # reads the logs this step wrote
        return {"logs": self.storage.journal.logs_read, "n_trials": self.job["n_trials"], "trainings": watched}

    def _importances(self, trials: list[Any]) -> dict[str, Any]:
        """Parameter importances, recomputed when more trials completed. PED-ANOVA: deterministic,
        milliseconds for hundreds of trials, and no scikit-learn (which fANOVA needs)."""
        done = sum(t.state == self.states.COMPLETE for t in trials)
        if done < IMPORTANCE_MIN_TRIALS or done == (self.job.get("importances") or {}).get("trials"):
            return {}
        import warnings

        from optuna.exceptions import ExperimentalWarning
        from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes", UserWarning)
                # A multi-objective job's importances are those for its first objective, as a
                # loss (PED-ANOVA takes a target as lower-is-better).
                sign = -1.0 if self.objectives[0]["direction"] == "maximize" else 1.0
                target = (lambda trial: sign * trial.values[0]) if len(self.objectives) > 1 else None
                values = get_param_importances(self.study, evaluator=PedAnovaImportanceEvaluator(), target=target)
        except (ValueError, RuntimeError):
            return {}  # e.g. every complete trial has the same params
        return {"importances": {"trials": done, "params": {k: float(v) for k, v in values.items()}}}

    def _summary(self, trials: list[Any], trainings: list[dict[str, Any]]) -> dict[str, Any]:
        """The job's counts by state, trials created, its best trial, its Pareto front (a
        multi-objective job) and its reused trials. Only feasible complete trials (those that
        meet every constraint) are best or on the front; a multi-objective job's best is its
        front's trial best in the first objective."""
        names = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
        counts = {name: sum(t.state.name == state for t in trials) for state, name in names.items()}
        ids = {t.get("trial_number"): t["id"] for t in trainings}
        feasible = [t for t in trials if t.state == self.states.COMPLETE
                    and is_feasible(t.system_attrs.get(CONSTRAINTS_ATTR))]
        front = [feasible[i] for i in pareto_front([t.values for t in feasible],
                                                   [o["direction"] for o in self.objectives])]
        entries = [self._entry(trial, trial.user_attrs.get(REUSED_FROM) or ids.get(trial.number)) for trial in front]
        reused = [{**self._entry(t, t.user_attrs[REUSED_FROM]), REUSED_FROM: t.user_attrs[REUSED_FROM]}
                  for t in trials if t.state == self.states.COMPLETE and REUSED_FROM in t.user_attrs]
        for entry in reused:
            del entry["training_id"]
        summary = {"counts": counts, "trials_created": len(trials), "best": entries[0] if entries else None,
                   "reused": reused}
        if len(self.objectives) > 1:
            summary["pareto"] = entries
        return summary

    def _entry(self, trial: Any, training_id: str | None) -> dict[str, Any]:
        """A complete trial as the job keeps it: number, value (of the first objective), params,
        training id; also every objective's value (multi-objective) and its feasibility
        (constraints)."""
        entry = {"number": trial.number, "value": trial.values[0], "params": dict(trial.params),
                 "training_id": training_id}
        if len(self.objectives) > 1:
            entry["values"] = list(trial.values)
        if self.constraints:
            entry["feasible"] = is_feasible(trial.system_attrs.get(CONSTRAINTS_ATTR))
        return entry


__all__ = ["step"]
