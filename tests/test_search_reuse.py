"""Search trials reuse completed trainings with their point instead of training again.

The search step runs in this process; trainings are completed by writing their metrics, as the
training side would (no model is trained here).
"""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from mitorch.service.search import step as search
from mitorch.service.search.job import prepare
from mitorch.service.search.journal import study_storage
from mitorch.service.search.trials import reused_trials
from mitorch.store.sqlite import SQLiteStore
from tests.helpers import run_in_process

# Four points; a random sampler proposes some of them again within 8 trials.
SPACE = {"batch_size": "2,4", "optimizer.lr": "0.1,0.01"}
SAMPLER = {"name": "random", "seed": 3}


def _job(store: SQLiteStore, tmp_path: Path, **fields) -> str:
    job = {"job_type": "search", "overrides": ["max_epochs=1"], "search_space": SPACE, "sampler": SAMPLER,
           "pruner": {"name": "none"}, "n_trials": 8, "max_concurrent": 1, **fields}
    job_id, _ = store.add_job(prepare(job, store, str(tmp_path)))
    return job_id


def _value(training: dict) -> float:
    """A training's result, from its point: the best point is batch_size 4, lr 0.1."""
    config = training["config"]
    return round(config["batch_size"] / 10 + config["optimizer"]["lr"], 6)


def _run(store: SQLiteStore, job_id: str) -> list[str]:
    """Steps the job to its end, completing each training it queues."""
    actions: list[str] = []
    for _ in range(30):
        search.step(store, actions.append)
        for training in store.list_trainings(["new"], job_id=job_id):
            store.update_training(training["id"], {"status": "completed",
                                                   "metrics": {"top1_accuracy": _value(training)}})
        if store.get_job(job_id)["status"] != "running":
            return actions
    raise AssertionError(f"the job did not end: {actions}")


def _trials(store: SQLiteStore, job_id: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=job_id, storage=study_storage(store, job_id)).trials


def test_a_search_trains_each_point_once_and_tells_every_trial(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path)
    actions = _run(store, job_id)
    trainings = store.list_trainings(job_id=job_id)
    trials = _trials(store, job_id)
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(points) == 4 and len(trainings) == 4, actions  # the seed proposes every point, some twice
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t["fingerprint"] for t in trainings}) == 4
    by_id = {t["id"]: t for t in trainings}
    job = store.get_job(job_id)
    assert job["status"] == "completed" and job["counts"]["complete"] == 8
    assert len(job["reused"]) == 4 and sum(a.startswith("reused ") for a in actions) == 4
    for entry in job["reused"]:
        source = by_id[entry["reused_from"]]  # a training of this job, with the same point and value
        assert entry["value"] == _value(source) == trials[entry["number"]].value
        assert entry["params"] == source["params"] and entry["params"] == trials[entry["number"]].params
    assert job["best"]["value"] == 0.5 and by_id[job["best"]["training_id"]]["params"] == {
        "batch_size": 4, "optimizer.lr": 0.1}
    rows = reused_trials(job)
    assert sorted(row["number"] for row in rows) == sorted(entry["number"] for entry in job["reused"])
    assert all(row["state"] == "complete" and row["training_id"] == row["reused_from"] for row in rows)
    # miquery JOB lists all 8 trials, the 4 reused ones marked so, with the training they reused.
    shown = run_in_process("miquery", job_id, cwd=tmp_path, env={"MITORCH_DB_URI": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    rows = [line.split("\t") for line in shown.stdout.split("# trials (best first)")[1].splitlines()[2:] if line]
    assert len(rows) == 8 and sorted(row[3] for row in rows) == ["complete"] * 4 + ["reused"] * 4, shown.stdout
    assert {row[5] for row in rows if row[3] == "reused"} <= set(by_id)


def test_a_grid_of_4_points_with_8_trials_trains_4_trainings_and_tells_every_trial(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path, sampler={"name": "grid"})
    actions = _run(store, job_id)
    trials = _trials(store, job_id)
    assert len(store.list_trainings(job_id=job_id)) == 4, actions
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len(store.get_job(job_id)["reused"]) == 4 and store.get_job(job_id)["status"] == "completed"


def test_trials_asked_together_for_one_point_wait_for_its_one_training(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path, max_concurrent=8)  # every trial asked at the first step
    actions: list[str] = []
    search.step(store, actions.append)
    first = store.list_trainings(job_id=job_id)
    points = {tuple(sorted(t.params.items())) for t in _trials(store, job_id)}
    assert len(first) == len(points) < 8, actions  # one training per point, the other trials wait
    waiting = [a for a in actions if " waits for " in a]
    assert len(waiting) == 8 - len(first) and all(a.endswith("which trains its point (new)") for a in waiting)
    # One awaited training fails and another is being pruned: the trials that waited for them queue
    # their own trainings; the others reuse.
    awaited = list(dict.fromkeys(a.split(" waits for ")[1].split(",")[0] for a in waiting))
    assert len(awaited) >= 2, waiting
    store.update_training(awaited[0], {"status": "failed"})
    store.update_training(awaited[1], {"prune_requested": True})
    actions += _run(store, job_id)
    assert len(store.list_trainings(job_id=job_id)) == len(points) + 2, actions
    assert store.get_job(job_id)["counts"]["complete"] == 8 - 2
    for training_id in awaited[:2]:
        assert sum(f"({training_id}, which has its point, did not complete)" in a for a in actions) == 1


def test_a_search_reuses_trainings_of_other_jobs_and_of_misubmit(store, tmp_path: Path, monkeypatch) -> None:
    from mitorch.config import compose
    from mitorch.service.fingerprint import fingerprint
    from mitorch.service.submit import submission

    monkeypatch.chdir(tmp_path)
    # A training queued by hand (as misubmit stores it) with one of the points, completed.
    config = submission(compose(["max_epochs=1", "batch_size=4", "optimizer.lr=0.1"]), store)
    by_hand = store.add_training({"config": config, "fingerprint": fingerprint(config)})
    store.update_training(by_hand, {"status": "completed", "metrics": {"top1_accuracy": 0.5}})
    first = _job(store, tmp_path)
    _run(store, first)
    assert len(store.list_trainings(job_id=first)) == 3  # the hand-queued point was not trained again
    assert by_hand in {entry["reused_from"] for entry in store.get_job(first)["reused"]}
    # A training that did not complete is no result, even with metrics: the point trains.
    second = _job(store, tmp_path, search_space={"batch_size": "choice(2)", "optimizer.lr": "choice(0.1)"}, n_trials=1,
                  overrides=["max_epochs=1", "seed=7"])
    search.step(store, lambda line: None)
    [training] = store.list_trainings(job_id=second)
    store.update_training(training["id"], {"status": "cancelled", "metrics": {"top1_accuracy": 0.9}})
    third = _job(store, tmp_path, search_space={"batch_size": "choice(2)", "optimizer.lr": "choice(0.1)"}, n_trials=1,
                 overrides=["max_epochs=1", "seed=7"])
    search.step(store, lambda line: None)
    assert len(store.list_trainings(job_id=third)) == 1
    # Another job over the same space trains nothing: every trial is told a result.
    again = _job(store, tmp_path)
    actions = _run(store, again)
    assert store.list_trainings(job_id=again) == [] and len(store.get_job(again)["reused"]) == 8, actions
    assert store.get_job(again)["best"]["value"] == 0.5


def test_enqueued_points_are_tried_first_and_checked_when_the_job_is_stored(store, tmp_path: Path) -> None:
    from mitorch.errors import ConfigError

    points = [{"batch_size": 4, "optimizer.lr": 0.01}, {"batch_size": 2, "optimizer.lr": 0.01},
              {"batch_size": 4, "optimizer.lr": 0.1}]
    job_id = _job(store, tmp_path, enqueue=points, n_trials=3)
    search.step(store, lambda line: None)
    [training] = store.list_trainings(job_id=job_id)
    assert training["params"] == points[0] and training["trial_number"] == 0
    _run(store, job_id)
    assert [t.params for t in _trials(store, job_id)] == points
    assert store.get_job(job_id)["counts"]["complete"] == 3  # enqueued points are the job's own trials
    # More points than trials: the job asks for its trials, and points left over never count.
    job_id = _job(store, tmp_path, enqueue=points[1:], n_trials=1, overrides=["max_epochs=1", "seed=9"])
    _run(store, job_id)
    assert [t["params"] for t in store.list_trainings(job_id=job_id)] == [points[1]]
    assert store.get_job(job_id)["counts"]["complete"] == 1
    for enqueue, message in (([{"batch": 4}], "enqueue[0]: 'batch' is not a key of search_space; keys are "),
                             ([{"batch_size": 3}], "enqueue[0]: batch_size=3 is outside its search_space"),
                             ({"batch_size": 4}, "enqueue must be a list of points")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            _job(store, tmp_path, enqueue=enqueue)


SPACE_LR = {"optimizer.lr": "tag(log, interval(1e-3, 1e-1))"}
TPE = {"name": "tpe", "seed": 5, "n_startup_trials": 2}


def _first_ask(store: SQLiteStore, tmp_path: Path, **fields) -> dict:
    job_id = _job(store, tmp_path, search_space=SPACE_LR, sampler=TPE, n_trials=1, **fields)
    search.step(store, lambda line: None)
    return store.list_trainings(job_id=job_id)[0]["params"]


def test_a_warm_started_job_learns_from_the_earlier_jobs_results(store, tmp_path: Path) -> None:
    from mitorch.service.search.job import make_sampler
    from mitorch.service.search.space import distributions

    earlier = _job(store, tmp_path, search_space=SPACE_LR, sampler={"name": "random", "seed": 1}, n_trials=3)
    _run(store, earlier)
    # What TPE asks first when it holds the earlier job's results (past its random startup).
    space = distributions(SPACE_LR)
    expected = optuna.create_study(direction="maximize", sampler=make_sampler(TPE, space))
    expected.add_trials([optuna.trial.create_trial(params=t.params, distributions=space, value=t.value)
                         for t in _trials(store, earlier)])
    asked = expected.ask(space).params
    assert _first_ask(store, tmp_path, warm_start=earlier) == asked
    assert _first_ask(store, tmp_path) != asked  # cold, TPE starts at random


def test_a_warm_started_job_never_retrains_a_point_of_the_earlier_one(store, tmp_path: Path) -> None:
    from mitorch.errors import ConfigError, MiTorchError

    earlier = _job(store, tmp_path)
    _run(store, earlier)
    trained = {t["fingerprint"] for t in store.list_trainings(job_id=earlier)}
    later = _job(store, tmp_path, warm_start=earlier, sampler={"name": "tpe", "seed": 0})
    actions = _run(store, later)
    assert store.list_trainings(job_id=later) == [], actions
    trials = _trials(store, later)
    assert sum("warm_start_of" in t.user_attrs for t in trials) == 8  # every completed trial of the earlier job
    assert len(trials) == 16  # and 8 of its own, told the earlier results
    job = store.get_job(later)
    assert job["trials_created"] == 8 and job["counts"]["complete"] == 8 and len(trained) == 4
    with pytest.raises(MiTorchError, match="warm_start: no search job f{24} in the job store"):
        _job(store, tmp_path, warm_start="f" * 24)
    with pytest.raises(ConfigError, match=f"warm_start: job {earlier} optimizes top1_accuracy \\(maximize\\), this "
                                          "job loss \\(minimize\\)"):
        _job(store, tmp_path, warm_start=earlier, objective={"metric": "loss"})
