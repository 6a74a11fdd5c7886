"""The controller's step for search jobs: the only code that talks to Optuna.

Run by a tick under the store lease "jobs" (once across hosts). Per running search job, in order:
  1. trials asked for whose training was never queued (a tick that died in between) get it now;
  2. each running trial's new epochs are reported, one at a time in order, and the pruner asked
     after each; a pruned trial's training gets a stop request first, then the trial is told PRUNED;
  3. ended trainings are told: completed -> COMPLETE with the objective, failed -> FAIL,
     cancelled -> PRUNED when pruned, else FAIL; more than max_failed failures fail the job;
  4. new trials are asked for until max_concurrent are in flight and n_trials were created;
  5. once every trial has ended, the job completes with its best trial and counts by state.

Every step reads its state from the study and the store and so is safe to repeat: a tick killed
at any point leaves work the next tick finishes, and never a duplicate trial or training.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitorch.errors import MiTorchError
from mitorch.store import JobStore

_ACTIVE = ("new", "queued", "running")


def step(store: JobStore, act: Callable[[str], None]) -> None:
    """One step of every running search job (see the module's docstring)."""
    jobs = [job for job in store.list_jobs(["running"]) if job.get("job_type") == "search"]
    for job in jobs:
        try:
            _Search(store, job, act).run()
        except MiTorchError as e:  # one broken job must not stop the others
            act(f"search job {job['id']}: {' '.join(str(e).split())}")


def trial_state(training: dict[str, Any]) -> str:
    """A trial's state as shown to users, from its training: running, pruned, failed or complete."""
    if training.get("pruned") or (training.get("prune_requested") and training["status"] != "completed"):
        return "pruned"
    return {"completed": "complete", "failed": "failed", "cancelled": "failed"}.get(training["status"], "running")


class _Search:
    def __init__(self, store: JobStore, job: dict[str, Any], act: Callable[[str], None]) -> None:
        import optuna

        from mitorch.service.journal import study_storage
        from mitorch.service.search_job import distributions, make_pruner

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.store, self.job, self.act = optuna, store, job, act
        self.metric = job["objective"]["metric"]
        self.space = distributions(job["search_space"])
        storage = study_storage(store, job["id"])
        # create_study(load_if_exists=True) would append a log at every tick: load when it exists.
        exists = any(study.study_name == job["id"] for study in storage.get_all_studies())
        open_study = optuna.load_study if exists else optuna.create_study
        direction = {} if exists else {"direction": job["objective"]["direction"]}
        self.study = open_study(study_name=job["id"], storage=storage, sampler=optuna.samplers.RandomSampler(),
                                pruner=make_pruner(job["pruner"]), **direction)

    def run(self) -> None:
        running = self.optuna.trial.TrialState.RUNNING
        trainings = {t["trial_number"]: t for t in self.store.list_trainings(job_id=self.job["id"])
                     if t.get("trial_number") is not None}
        for trial in self.study.get_trials(deepcopy=False):
            training = trainings.get(trial.number)
            if trial.state == running and training is None:
                self._queue(trial, recovered=True)
            elif trial.state == running:
                self._follow(trial, training)
        trials = self.study.get_trials(deepcopy=False)
        failed = sum(t.state == self.optuna.trial.TrialState.FAIL for t in trials)
        if failed > self.job["max_failed"]:
            self._fail(f"{failed} trials failed, more than max_failed {self.job['max_failed']}")
            return
        in_flight = sum(t.state == running for t in trials)
        created = len(trials)
        while in_flight < self.job["max_concurrent"] and created < self.job["n_trials"]:
            from mitorch.service.search_job import make_sampler

            self.study.sampler = make_sampler(self.job["sampler"], self.space, created)
            self._queue(self.study.ask(self.space), recovered=False)
            created += 1
            in_flight += 1
        trials = self.study.get_trials(deepcopy=False)
        summary = self._summary(trials)
        if created >= self.job["n_trials"] and not any(t.state == running for t in trials):
            ended = {"status": "completed", "completed_at": self.store.clock()}
            self.store.update_job(self.job["id"], {**summary, **ended})
            best = summary["best"]
            self.act(f"completed search job {self.job['id']} ("
                     + ", ".join(f"{n} {s}" for s, n in summary["counts"].items() if n)
                     + (f"; best trial {best['number']}: {self.metric} {best['value']:.6g})" if best else ")"))
        else:
            self.store.update_job(self.job["id"], summary)

    def _queue(self, trial: Any, recovered: bool) -> None:
        """Queues the trial's training (job_id, trial_number, params); a trial whose point does
        not compose is told FAIL."""
        from mitorch.config import compose
        from mitorch.config.overrides import merge
        from mitorch.service.search_job import param_overrides
        from mitorch.service.submit import submission

        params = dict(trial.params)
        overrides = param_overrides(params)
        try:
            config = submission(compose(merge(self.job["base_overrides"], overrides)), self.store, self.job["dataset"])
        except MiTorchError as e:
            self._tell(trial, self.optuna.trial.TrialState.FAIL)
            self.act(f"failed trial {trial.number} of job {self.job['id']} ({' '.join(str(e).split())})")
            return
        training_id = self.store.add_training({
            "config": config, "priority": self.job["priority"], "dataset": self.job["dataset"],
            "job_id": self.job["id"], "trial_number": trial.number, "params": params, "overrides": overrides})
        self.act(f"queued trial {trial.number} of job {self.job['id']} as {training_id} ({' '.join(overrides)})"
                 + (" (its tick had stopped before queueing it)" if recovered else ""))

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
        if training.get("pruned") or training.get("prune_requested"):
            self._tell(trial, states.PRUNED)  # its stop was requested by a tick that died before telling
            self.act(f"pruned trial {number} of job {self.job['id']}")
            return
        if status in ("failed", "cancelled"):
            self._tell(trial, states.FAIL)
            self.act(f"failed trial {number} of job {self.job['id']} (its training was {status})")
            return
        reported = trial.intermediate_values
        live = self.optuna.trial.Trial(self.study, trial._trial_id)
        for result in self.store.list_results(training["id"]):
            epoch, value = result["epoch"], (result.get("val") or {}).get(self.metric)
            if epoch in reported or value is None:
                continue
            live.report(float(value), epoch)
            if not live.should_prune():
                continue
            # The stop request first: a tick that dies before telling leaves a request the next
            # tick finds (and tells); the other order could leave a pruned trial training on.
            if self.store.update_training(training["id"], {"prune_requested": True}, expected_status=_ACTIVE):
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

    def _fail(self, reason: str) -> None:
        for training in self.store.list_trainings(_ACTIVE, job_id=self.job["id"]):
            if not self.store.update_training(training["id"], {"status": "cancelled", "cancel_requested": True},
                                              expected_status=["new"]):
                self.store.update_training(training["id"], {"cancel_requested": True}, expected_status=_ACTIVE)
        self.store.update_job(self.job["id"], {**self._summary(self.study.get_trials(deepcopy=False)),
                                               "status": "failed", "error": reason, "completed_at": self.store.clock()})
        self.act(f"failed search job {self.job['id']} ({reason})")

    def _summary(self, trials: list[Any]) -> dict[str, Any]:
        names = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}
        counts = {name: sum(t.state.name == state for t in trials) for state, name in names.items()}
        done = [t for t in trials if t.state == self.optuna.trial.TrialState.COMPLETE]
        best = None
        if done:
            pick = max if self.job["objective"]["direction"] == "maximize" else min
            trial = pick(done, key=lambda t: t.value)
            training = next(iter(t for t in self.store.list_trainings(job_id=self.job["id"])
                                 if t.get("trial_number") == trial.number), None)
            best = {"number": trial.number, "value": trial.value, "params": dict(trial.params),
                    "training_id": training and training["id"]}
        return {"counts": counts, "trials_created": len(trials), "best": best}
