"""Search jobs without training: the space's syntax, the job's checks, and the controller's
Optuna steps over trainings whose progress the tests write into the store."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mitorch.errors import ConfigError
from mitorch.service.search import step as search
from mitorch.service.search.journal import study_storage
from mitorch.service.search.job import make_pruner, make_sampler, prepare, read_job_file, settings
from mitorch.service.search.space import distributions, param_overrides
from mitorch.service.search.trials import trial_state
from mitorch.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path):
    store = SQLiteStore(tmp_path / "db.sqlite")
    yield store
    store.close()


def test_the_space_maps_hydra_sweeps_to_optuna_distributions() -> None:
    space = distributions({"optimizer.lr": "tag(log, interval(1e-4, 1e-1))", "a": "interval(0, 1)",
                           "b": "tag(int, interval(1, 10))", "batch_size": "range(32, 129, 32)",
                           "c": "range(0, 1, 0.25)", "model": "resnet,mobilenet_v3", "d": "choice(18, 34, 50)",
                           "e": [1, 2]})
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert space["a"] == FloatDistribution(0, 1)
    assert space["b"] == IntDistribution(1, 10)
    assert space["batch_size"] == IntDistribution(32, 128, step=32)  # Hydra's range excludes its end
    assert space["c"] == FloatDistribution(0, 0.75, step=0.25)
    assert space["model"] == CategoricalDistribution(("resnet", "mobilenet_v3"))
    assert space["d"] == CategoricalDistribution((18, 34, 50)) and space["e"] == CategoricalDistribution((1, 2))
    assert param_overrides({"model": "resnet", "optimizer.lr": 0.5, "data.name": "x"}) == [
        "model=resnet", "optimizer.lr=0.5", "data.name='x'"]


@pytest.mark.parametrize("space, message", [
    ({"optimizer.lr": "0.1"}, "search_space.optimizer.lr: '0.1' is one value, not a sweep"),
    ({"optimizer.lr": "interval(1,"}, "search_space.optimizer.lr: cannot parse"),
    ({"optimizer.lr": "tag(log, interval(0, 1))"},
     "search_space.optimizer.lr: tag(log, interval(0, 1)) is not a valid"),
    ({"batch_size": "range(8, 8)"}, "search_space.batch_size: range(8, 8) holds no value"),
    ({}, "search_space must map config keys"),
])
def test_a_broken_space_names_its_key(space: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        distributions(space)
    assert str(error.value).startswith(message)


def test_settings_default_to_the_tasks_main_metric_and_check_names() -> None:
    job = {"job_type": "search", "search_space": {"optimizer.lr": "interval(0.01, 0.1)"}}
    assert settings(job, "multiclass_classification")["objective"] == {"metric": "top1_accuracy",
                                                                      "direction": "maximize"}
    assert settings(job, "multilabel_classification")["objective"]["metric"] == "accuracy_50"
    assert settings(job, "object_detection")["objective"]["metric"] == "mAP"
    loss = settings({**job, "objective": {"metric": "loss"}}, "object_detection")
    assert loss["objective"]["direction"] == "minimize"
    filled = settings(job, "multiclass_classification")
    assert (filled["sampler"], filled["pruner"], filled["n_trials"], filled["max_concurrent"]) == (
        {"name": "tpe"}, {"name": "median"}, 20, 2)
    for bad, message in (({"sampler": {"name": "anneal"}}, "unknown sampler 'anneal'; choose from tpe, random"),
                         ({"pruner": "wizard"}, "unknown pruner 'wizard'; choose from median"),
                         ({"pruner": {"name": "median", "n_warmup": 2}}, "pruner median: "),
                         ({"objective": {"metric": "mAP"}}, "objective.metric 'mAP' is not a metric of multiclass"),
                         ({"n_trials": 0}, "n_trials must be a whole number of at least 1"),
                         ({"trials": 3}, "unknown key 'trials' in the job"),
                         ({"sampler": "grid"}, "sampler: grid needs a finite search space")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            settings({**job, **bad}, "multiclass_classification")
    grid = settings({**job, "search_space": {"model": "resnet,mobilenet_v3"}, "sampler": "grid"},
                    "multiclass_classification")
    assert grid["n_trials"] == 20  # past the grid's 2 points, trials reuse their trainings' values


def test_every_sampler_and_pruner_name_builds() -> None:
    space = distributions({"x": "interval(0, 1)"})
    for name in ("tpe", "random", "qmc"):
        assert make_sampler({"name": name, "seed": 1}, space) is not None
    for spec in ({"name": "median"}, {"name": "percentile", "percentile": 25.0}, {"name": "hyperband"},
                 {"name": "successive_halving"}, {"name": "threshold", "lower": 0.1}, {"name": "none"}):
        assert make_pruner(spec) is not None


def test_a_rebuilt_seeded_sampler_does_not_repeat_itself() -> None:
    space = distributions({"x": "interval(0, 1)"})
    study = optuna.create_study()
    points = set()
    for count in range(12):
        study.sampler = make_sampler({"name": "random", "seed": 0}, space, count)
        points.add(study.ask(space).params["x"])
    assert len(points) == 12


def test_a_bad_job_is_refused_naming_the_key_and_stores_nothing(store, tmp_path: Path) -> None:
    job = {"job_type": "search", "overrides": ["max_epochs=1"], "search_space": {"model": "resnet,vgg"}}
    with pytest.raises(ConfigError, match="search_space point model=vgg: unknown model 'vgg'"):
        prepare(job, store, str(tmp_path))
    with pytest.raises(Exception, match="dataset nope is not registered"):
        prepare({**job, "search_space": {"optimizer.lr": "interval(0.01, 0.1)"}, "dataset": "nope"}, store)
    assert store.list_jobs() == [] and store.list_trainings() == []
    (tmp_path / "job.yaml").write_text("job_type: search\nsearch_space: {optimizer.lr: 'interval(0.01, 0.1)'}\n")
    (tmp_path / "train.yaml").write_text("max_epochs: 1\n")
    assert read_job_file(str(tmp_path / "job.yaml"))["job_type"] == "search"
    assert read_job_file(str(tmp_path / "train.yaml")) is None


def _search_job(store, tmp_path: Path, **fields) -> str:
    job = {"job_type": "search", "overrides": ["max_epochs=2"], "config": {"batch_size": 4},
           "search_space": {"optimizer.lr": "tag(log, interval(1e-3, 1e-1))"}, "sampler": {"name": "random", "seed": 0},
           "n_trials": 4, "max_concurrent": 2, **fields}
    job_id, _ = store.add_job(prepare(job, store, str(tmp_path)))
    return job_id


def _step(store) -> list[str]:
    actions: list[str] = []
    search.step(store, actions.append)
    return actions


def _trials(store, job_id: str):
    return optuna.load_study(study_name=job_id, storage=study_storage(store, job_id)).trials


def test_trials_are_kept_in_flight_told_and_the_job_completes(store, tmp_path: Path) -> None:
    job_id = _search_job(store, tmp_path)
    assert store.get_job(job_id)["base_overrides"][0] == "batch_size=4"
    _step(store)
    _step(store)  # repeated: nothing more while two are in flight
    trainings = store.list_trainings(job_id=job_id)
    assert [t["trial_number"] for t in trainings] == [0, 1]
    assert trainings[0]["config"]["optimizer"]["lr"] == trainings[0]["params"]["optimizer.lr"]
    assert trainings[0]["config"]["batch_size"] == 4 and trainings[0]["config"]["max_epochs"] == 2
    values = {0: 0.4, 1: 0.9, 2: 0.7}
    for number in (0, 1):
        store.update_training(trainings[number]["id"], {"status": "completed",
                                                        "metrics": {"top1_accuracy": values[number]}})
    _step(store)
    trainings = store.list_trainings(job_id=job_id)
    assert [t["trial_number"] for t in trainings] == [0, 1, 2, 3]
    store.update_training(trainings[2]["id"], {"status": "completed", "metrics": {"top1_accuracy": values[2]}})
    store.update_training(trainings[3]["id"], {"status": "failed", "error": "boom"})
    actions = _step(store)
    job = store.get_job(job_id)
    assert job["status"] == "completed" and actions[-1].startswith(f"completed search job {job_id}")
    assert job["counts"] == {"complete": 3, "pruned": 0, "failed": 1, "running": 0}
    assert (job["best"]["number"], job["best"]["value"], job["best"]["training_id"]) == (1, 0.9, trainings[1]["id"])
    states = [t.state.name for t in _trials(store, job_id)]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]


def test_a_threshold_pruner_stops_a_hopeless_trial_and_its_slot_is_reused(store, tmp_path: Path) -> None:
    job_id = _search_job(store, tmp_path, objective={"metric": "loss"}, pruner={"name": "threshold", "upper": 1.0},
                         max_concurrent=1, n_trials=2)
    _step(store)
    (training,) = store.list_trainings(job_id=job_id)
    store.update_training(training["id"], {"status": "running"})
    store.put_result(training["id"], {"epoch": 1, "val": {"loss": 0.5}})
    assert not any(a.startswith("pruned") for a in _step(store))
    store.put_result(training["id"], {"epoch": 2, "val": {"loss": 3.0}})
    actions = _step(store)
    assert actions[0].startswith(f"pruned trial 0 of job {job_id} at epoch 2 (loss 3)")
    assert store.get_training(training["id"])["prune_requested"] is True
    trials = _trials(store, job_id)
    assert trials[0].state.name == "PRUNED" and trials[0].intermediate_values == {1: 0.5, 2: 3.0}
    assert [t["trial_number"] for t in store.list_trainings(job_id=job_id)] == [0, 1]  # its slot, reused
    assert trial_state(store.get_training(training["id"])) == "pruned"


def test_a_trial_asked_for_by_a_tick_that_died_gets_its_training_once(store, tmp_path: Path) -> None:
    job_id = _search_job(store, tmp_path)
    _step(store)
    study = optuna.load_study(study_name=job_id, storage=study_storage(store, job_id))
    orphan = study.ask(distributions({"optimizer.lr": "tag(log, interval(1e-3, 1e-1))"}))  # then the tick died
    actions = _step(store)
    assert actions == [f"queued trial {orphan.number} of job {job_id} as "
                       f"{store.list_trainings(job_id=job_id)[-1]['id']} "
                       f"(optimizer.lr={orphan.params['optimizer.lr']!r}) (its tick had stopped before queueing it)"]
    _step(store)
    numbers = [t["trial_number"] for t in store.list_trainings(job_id=job_id)]
    assert numbers == [0, 1, 2] and len(_trials(store, job_id)) == 3


def test_more_failures_than_max_failed_fail_the_job(store, tmp_path: Path) -> None:
    job_id = _search_job(store, tmp_path, max_failed=1, n_trials=6)
    _step(store)
    for training in store.list_trainings(job_id=job_id):
        store.update_training(training["id"], {"status": "failed"})
    actions = _step(store)
    assert actions[-1] == f"failed search job {job_id} (2 trials failed, more than max_failed 1)"
    assert store.get_job(job_id)["status"] == "failed" and len(store.list_trainings(job_id=job_id)) == 2


def test_a_trial_that_does_not_compose_is_replaced_in_the_same_step(store, tmp_path: Path, monkeypatch) -> None:
    from mitorch.service import submit

    job_id = _search_job(store, tmp_path, n_trials=6, max_failed=2)
    real, calls = submit.submission, []

    def first_two_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise ConfigError("this point does not compose")
        return real(*args, **kwargs)

    monkeypatch.setattr(submit, "submission", first_two_fail)
    actions = _step(store)
    assert [a.split(" (")[0] for a in actions[:2]] == [f"failed trial 0 of job {job_id}", f"failed trial 1 of job {job_id}"]
    assert [t["trial_number"] for t in store.list_trainings(job_id=job_id)] == [2, 3]  # 2 in flight all the same
    assert [t.state.name for t in _trials(store, job_id)] == ["FAIL", "FAIL", "RUNNING", "RUNNING"]
    monkeypatch.setattr(submit, "submission", lambda *args, **kwargs: (_ for _ in ()).throw(ConfigError("no")))
    for training in store.list_trainings(job_id=job_id):
        store.update_training(training["id"], {"status": "completed", "metrics": {"top1_accuracy": 0.5}})
    assert _step(store)[-1] == f"failed search job {job_id} (3 trials failed, more than max_failed 2)"


def test_misubmit_search_stores_the_same_job_as_a_file(store, tmp_path: Path, monkeypatch, capsys) -> None:
    from mitorch.cli import misubmit

    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.chdir(tmp_path)
    misubmit.main(["--search", "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "model=resnet,mobilenet_v3",
                   "batch_size=range(4, 13, 4)", "--trials", "5", "--parallel", "3", "--sampler", "random",
                   "--pruner", "none", "--priority", "7", "max_epochs=2"])
    job_id = capsys.readouterr().out.split()[1]
    job = store.get_job(job_id)
    assert job["search_space"] == {"optimizer.lr": "tag(log, interval(1e-4, 1e-1))", "model": "resnet,mobilenet_v3",
                                   "batch_size": "range(4, 13, 4)"}
    assert job["base_overrides"] == ["max_epochs=2"] and job["priority"] == 7
    assert (job["n_trials"], job["max_concurrent"], job["sampler"], job["pruner"]) == (5, 3, {"name": "random"},
                                                                                       {"name": "none"})
    with pytest.raises(SystemExit):
        misubmit.main(["--search", "optimizer.lr=interval(0.01, 0.1)", "--sampler", "anneal"])
    assert capsys.readouterr().err.strip() == ("misubmit: error: unknown sampler 'anneal'; choose from tpe, random, "
                                               "cmaes, gp, qmc, grid, nsga2")
    assert len(store.list_jobs()) == 1 and store.list_trainings() == []
    _step(store)
    _step(store)
    journal = store.read_logs(job_id)
    assert sum(log["op_code"] == 0 for log in journal) == 1  # the study is created once, then loaded


def test_submitting_and_stepping_a_search_does_not_import_torch(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "from mitorch.cli.misubmit import main\n"
            "main(['--search', 'optimizer.lr=interval(0.01, 0.1)', '--trials', '2'])\n"
            "from mitorch.store import open_store\n"
            "from mitorch.service.search import step as search\n"
            "search.step(open_store(), print)\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "MITORCH_DB_URI": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "NO TORCH" and sum(line.startswith("queued trial") for line in lines) == 2, out.stderr


def test_the_job_and_step_modules_import_neither_optuna_nor_torch() -> None:
    import subprocess
    import sys

    # micontrol cancel (manage), miquery and misubmit import these for jobs_lease, trial_state and
    # add_trials: Optuna loads only when a step opens a study.
    code = ("import sys\n"
            "import mitorch.service.search.job, mitorch.service.search.space, mitorch.service.search.step\n"
            "print(sorted(m for m in ('optuna', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_showing_trials_and_taking_the_jobs_lease_load_neither_configs_nor_optuna() -> None:
    import subprocess
    import sys

    # miquery JOB_ID shows each trial's state, micontrol cancel takes the jobs lease: neither must
    # cost the import of the config system.
    code = ("import sys\n"
            "from mitorch.service.search.trials import trial_state\n"
            "from mitorch.service.search.lease import jobs_lease\n"
            "assert trial_state({'status': 'running', 'prune_requested': True}) == 'pruned'\n"
            "print(sorted(m for m in ('omegaconf', 'hydra', 'optuna', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_minimizing_search_takes_its_lowest_trial_as_the_best(store, tmp_path: Path) -> None:
    job_id = _search_job(store, tmp_path, objective={"metric": "loss"}, n_trials=3, max_concurrent=3)
    _step(store)
    trainings = store.list_trainings(job_id=job_id)
    for value, training in zip((0.7, 0.2, 0.5), trainings):
        store.update_training(training["id"], {"status": "completed", "metrics": {"loss": value}})
    actions = _step(store)
    job = store.get_job(job_id)
    assert job["objective"]["direction"] == "minimize"
    assert (job["best"]["number"], job["best"]["value"], job["best"]["training_id"]) == (1, 0.2, trainings[1]["id"])
    assert actions[-1] == f"completed search job {job_id} (3 complete; best trial 1: loss 0.2)"


def test_racing_ticks_create_each_trial_once(store, tmp_path: Path) -> None:
    import threading

    from mitorch.service.controller import Settings, tick
    from mitorch.service.executors import LocalExecutor

    job_id = _search_job(store, tmp_path, max_concurrent=3, n_trials=6)
    start = threading.Barrier(3)

    def race(host: int) -> None:
        racer = SQLiteStore(tmp_path / "db.sqlite")
        start.wait()
        # Each host its own executor: their ticks do not wait for one another, only "jobs" is shared.
        executor = LocalExecutor(capacity=0)
        executor.name = f"local:host-{host}"
        tick(racer, executor, say=lambda line: None, settings=Settings(tick_wait_s=0))
        racer.close()

    threads = [threading.Thread(target=race, args=(host,)) for host in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _step(store)
    numbers = [t["trial_number"] for t in store.list_trainings(job_id=job_id)]
    assert numbers == [0, 1, 2] and len(_trials(store, job_id)) == 3


def test_a_tick_skips_a_job_in_which_nothing_changed(store, tmp_path: Path, monkeypatch) -> None:
    job_id = _search_job(store, tmp_path, objective={"metric": "loss"}, pruner={"name": "threshold", "upper": 1.0})
    _step(store)
    opened: list[str] = []
    real_init = search._Search.__init__
    monkeypatch.setattr(search._Search, "__init__", lambda self, s, job, act, lease: (
        opened.append(job["id"]), real_init(self, s, job, act, lease))[1])
    assert _step(store) == [] and opened == []  # two trials in flight, nothing new: the study stays shut
    first = store.list_trainings(job_id=job_id)[0]
    store.update_training(first["id"], {"status": "running"})
    assert _step(store) == [] and opened == [job_id]  # a new status: looked at
    store.put_result(first["id"], {"epoch": 1, "val": {"loss": 2.0}})
    assert _step(store)[0].startswith(f"pruned trial 0 of job {job_id} at epoch 1") and len(opened) == 2
    study = optuna.load_study(study_name=job_id, storage=study_storage(store, job_id))
    study.ask()  # a log written outside a step (a tick that died inside its ask): looked at
    actions = _step(store)
    # Dropped, and no trial in its place yet: trials 1 and 2 fill max_concurrent.
    assert len(actions) == 1 and actions[0].startswith("dropped trial 3") and len(opened) == 3


def test_importances_are_kept_on_the_job_once_enough_trials_completed(store, tmp_path: Path) -> None:
    job_id = _search_job(store, tmp_path, n_trials=3, max_concurrent=3,
                         search_space={"optimizer.lr": "tag(log, interval(1e-3, 1e-1))", "batch_size": "2,4,8"})
    _step(store)
    for value, training in zip((0.2, 0.5, 0.9), store.list_trainings(job_id=job_id)):
        store.update_training(training["id"], {"status": "completed", "metrics": {"top1_accuracy": value}})
    _step(store)
    importances = store.get_job(job_id)["importances"]
    assert importances["trials"] == 3 and set(importances["params"]) == {"optimizer.lr", "batch_size"}
    assert abs(sum(importances["params"].values()) - 1) < 1e-6


def test_cancelling_a_search_job_cancels_its_trainings_and_ends_it(store, tmp_path: Path, monkeypatch, capsys) -> None:
    from mitorch.cli import micontrol

    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    job_id = _search_job(store, tmp_path, n_trials=6)
    _step(store)
    running, waiting = store.list_trainings(job_id=job_id)
    store.update_training(running["id"], {"status": "running", "executor": "elsewhere"})
    micontrol.main(["cancel", job_id])
    assert capsys.readouterr().out.splitlines() == [
        f"cancel-requested {running['id']} (its controller stops it at its next tick; it also stops at the end of "
        "its current epoch)", f"cancelled {waiting['id']}",
        f"cancel-requested job {job_id} with its 2 active trainings (the next micontrol tick ends it)"]
    assert store.get_training(running["id"])["cancel_requested"] is True
    assert _step(store) == [f"failed trial 1 of job {job_id} (its training was cancelled)"]
    assert store.get_job(job_id)["status"] == "running"  # its running training has not stopped yet
    store.update_training(running["id"], {"status": "cancelled"})
    actions = _step(store)
    assert actions[-1] == f"cancelled search job {job_id} (2 failed)" and len(store.list_trainings(job_id=job_id)) == 2
    assert [t.state.name for t in _trials(store, job_id)] == ["FAIL", "FAIL"]
    micontrol.main(["cancel", job_id])
    assert capsys.readouterr().out.strip() == f"unchanged job {job_id} (already cancelled)"


def test_requeue_leaves_a_trial_as_its_study_was_told(store, tmp_path: Path, monkeypatch, capsys) -> None:
    from mitorch.cli import micontrol

    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    job_id = _search_job(store, tmp_path, n_trials=2)
    _step(store)
    failed, done = store.list_trainings(job_id=job_id)
    store.update_training(failed["id"], {"status": "failed", "error": "boom"})
    store.update_training(done["id"], {"status": "completed", "metrics": {"top1_accuracy": 0.5}})
    _step(store)
    micontrol.main(["requeue", failed["id"]])
    assert capsys.readouterr().out.strip() == (
        f"unchanged {failed['id']} (trial 0 of search job {job_id}, whose study keeps how it ended; "
        f"`misubmit --add-trials 1 {job_id}` asks for another trial)")
    assert store.get_training(failed["id"])["status"] == "failed"
    assert [t.state.name for t in _trials(store, job_id)] == ["FAIL", "COMPLETE"]


def test_add_trials_extends_a_completed_search_in_the_same_study(store, tmp_path: Path, monkeypatch, capsys) -> None:
    from mitorch.cli import misubmit

    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    job_id = _search_job(store, tmp_path, n_trials=2)
    _step(store)
    for training in store.list_trainings(job_id=job_id):
        store.update_training(training["id"], {"status": "completed", "metrics": {"top1_accuracy": 0.5}})
    _step(store)
    assert store.get_job(job_id)["status"] == "completed"
    misubmit.main(["--add-trials", "3", job_id])
    assert capsys.readouterr().out.strip() == f"job {job_id}: n_trials 2 -> 5"
    assert store.get_job(job_id)["status"] == "running"
    assert _step(store)[0].startswith(f"queued trial 2 of job {job_id}")
    assert [t["trial_number"] for t in store.list_trainings(job_id=job_id)] == [0, 1, 2, 3]
    assert len(_trials(store, job_id)) == 4
    with pytest.raises(SystemExit):
        misubmit.main(["--add-trials", "2", "0123456789abcdef01234567"])
    assert "no search job 0123456789abcdef01234567" in capsys.readouterr().err


@pytest.mark.parametrize("values", [{"optimizer.lr": 0.0123, "batch_size": 8},
                                    {"model.depth": 34, "lr_scheduler.warmup_steps": 3},
                                    {"model": "mobilenet_v3", "optimizer.lr": 0.5},
                                    {"logger.mlflow.tags.team": "vision", "optimizer.lr": 0.5}])
def test_a_trials_config_is_the_one_compose_gives(values: dict) -> None:
    from omegaconf import OmegaConf

    from mitorch.config import compose, compose_with_values

    base = ["max_epochs=2", "model=resnet", "task_type=multiclass_classification", "logger=[mlflow]"]
    fast = compose_with_values(base, values)
    slow = compose([*base, *param_overrides(values)])
    assert OmegaConf.to_container(fast) == OmegaConf.to_container(slow)
    assert compose_with_values(base, values) is not fast  # a copy each time: the kept base stays as it was
    with pytest.raises(ConfigError, match="unknown key 'optimizer.lrr'"):
        compose_with_values(base, {"optimizer.lrr": 0.1})
    with pytest.raises(ConfigError, match="batch_size"):
        compose_with_values(base, {"batch_size": "many"})
