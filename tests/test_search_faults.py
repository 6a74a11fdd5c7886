"""Search jobs under faults, across real processes on the embedded store: a step that outlives
its lease while another host's tick steps the same job, ticks killed at any point of a step, a
trial whose ask was cut short, and how a job ends."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from mitorch.service.search import step as search
from mitorch.service.search.journal import study_storage
from mitorch.service.search.job import prepare
from mitorch.store.sqlite import SQLiteStore

pytestmark = pytest.mark.slow

SPACE = {"optimizer.lr": "tag(log, interval(1e-3, 1e-1))", "batch_size": "2,4,8"}
# Nothing is dispatched (capacity 0): these tests are about the search step alone.
ENV = {"MITORCH_LOCAL_CAPACITY": "0", "MITORCH_TICK_WAIT_S": "0"}


def _job(store: SQLiteStore, tmp_path: Path, **fields) -> str:
    job = {"job_type": "search", "overrides": ["max_epochs=1"], "search_space": SPACE,
           "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, **fields}
    job_id, _ = store.add_job(prepare(job, store, str(tmp_path)))
    return job_id


def _tick(tmp_path: Path, host: str, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "MITORCH_DB_URI": f"sqlite:///{tmp_path / 'db.sqlite'}",
                   "MITORCH_ARTIFACTS_URI": str(tmp_path / "art"), **ENV, "MITORCH_HOSTNAME": host, **env}
    return subprocess.Popen([str(Path(sys.executable).parent / "micontrol")], cwd=tmp_path, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _logs(tmp_path: Path, job_id: str) -> int:
    with sqlite3.connect(tmp_path / "db.sqlite", timeout=30) as db:
        return db.execute("SELECT COUNT(*) FROM optuna_journal WHERE journal = ?", (job_id,)).fetchone()[0]


def _freeze_outside_a_write(process: subprocess.Popen, tmp_path: Path) -> None:
    """Stops the process (SIGSTOP) at a moment it holds no write lock on the database, as a
    process stalls between two requests."""
    for _ in range(1000):
        process.send_signal(signal.SIGSTOP)
        db = sqlite3.connect(tmp_path / "db.sqlite", timeout=0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # frozen inside a write: let it go on a little
            process.send_signal(signal.SIGCONT)
            time.sleep(0.001)
        finally:
            db.close()
    raise AssertionError("the process never left the database's write lock")


def _trials(store: SQLiteStore, job_id: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=job_id, storage=study_storage(store, job_id)).trials


def _complete_all(store: SQLiteStore, job_id: str, value: float = 0.5) -> None:
    for training in store.list_trainings(["new"], job_id=job_id):
        store.update_training(training["id"], {"status": "completed", "metrics": {"top1_accuracy": value}})


def test_a_step_that_outlives_its_lease_stops_and_the_job_gets_exactly_its_trials(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path, n_trials=6, max_concurrent=3)
    slow = _tick(tmp_path, "host-a", MITORCH_TICK_LEASE_S="2")
    # Frozen inside its step, once it has written its first log (the study) and before it has
    # asked for every trial: a step slower than its lease.
    deadline = time.monotonic() + 60
    while _logs(tmp_path, job_id) < 2:
        assert time.monotonic() < deadline and slow.poll() is None, slow.communicate()[0]
        time.sleep(0.002)
    _freeze_outside_a_write(slow, tmp_path)
    try:
        frozen_with = len(store.list_trainings(job_id=job_id))
        assert frozen_with < 3, "the step ended before it could be frozen"
        time.sleep(2.5)  # its lease runs out
        # The other tick's own lease is long: on a loaded machine its step may take seconds.
        other = _tick(tmp_path, "host-b", MITORCH_TICK_LEASE_S="120")
        other_output = other.communicate(timeout=120)[0]
        assert other.returncode == 0, other_output
        assert len(store.list_trainings(["new"], job_id=job_id)) == 3, other_output
    finally:
        slow.send_signal(signal.SIGCONT)
    output = slow.communicate(timeout=120)[0]
    # The late step wrote nothing more: three in flight, as max_concurrent allows.
    assert "stopped stepping the search jobs" in output, output
    assert len(store.list_trainings(job_id=job_id)) == 3, output
    for _ in range(4):  # then the job runs to its end, its trainings completed as they come
        _complete_all(store, job_id)
        finished = _tick(tmp_path, "host-a")
        assert finished.wait(120) == 0
        in_flight = store.list_trainings(["new", "queued", "running"], job_id=job_id)
        assert len(in_flight) <= 3
    trainings = store.list_trainings(job_id=job_id)
    job = store.get_job(job_id)
    assert job["status"] == "completed" and len(trainings) == 6, job
    assert job["counts"]["complete"] == 6 and job["trials_created"] == 6
    whole = [t for t in _trials(store, job_id) if set(t.params) == set(SPACE)]
    assert len(whole) == 6 and {t["trial_number"] for t in trainings} == {t.number for t in whole}


def test_ticks_killed_anywhere_in_a_step_never_train_a_partial_point(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path, n_trials=8, max_concurrent=8)
    rng = random.Random(0)
    kills = 0
    # Killed at random points of its step: inside an ask, between ask and queue. On a loaded
    # machine a tick may outlive its 1 s lease and stop by itself first: more tries then.
    for _ in range(25):
        if kills == 6:
            break
        tick = _tick(tmp_path, f"host-{kills % 2}", MITORCH_TICK_LEASE_S="1")
        target = _logs(tmp_path, job_id) + rng.randint(1, 7)
        deadline = time.monotonic() + 60
        while _logs(tmp_path, job_id) < target and tick.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        if tick.poll() is None:
            tick.kill()
            kills += 1
        tick.communicate()
        time.sleep(1.1)  # the killed tick's leases run out
    assert kills >= 3
    for _ in range(6):
        finished = _tick(tmp_path, "host-a")
        assert finished.wait(120) == 0
        _complete_all(store, job_id)
        if store.get_job(job_id)["status"] != "running":
            break
    trials = {t.number: t for t in _trials(store, job_id)}
    trainings = store.list_trainings(job_id=job_id)
    # Every training is of a whole point the space produced, and its config has that point.
    for training in trainings:
        assert set(training["params"]) == set(SPACE) == set(trials[training["trial_number"]].params)
        assert training["config"]["batch_size"] == training["params"]["batch_size"]
    job = store.get_job(job_id)
    assert job["status"] == "completed" and len(trainings) == 8 and job["counts"]["complete"] == 8, job
    dropped = [t for t in trials.values() if set(t.params) != set(SPACE)]
    print(f"{kills} ticks killed, {len(dropped)} trials cut short inside their ask")


def test_a_trial_whose_ask_was_cut_short_is_dropped_and_replaced(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path, n_trials=3, max_concurrent=2)
    assert _tick(tmp_path, "host-a").wait(120) == 0
    assert len(store.list_trainings(job_id=job_id)) == 2
    _complete_all(store, job_id)
    # What a tick killed inside study.ask leaves: the trial and the first of its two parameters.
    study = optuna.load_study(study_name=job_id, storage=study_storage(store, job_id))
    partial = study.ask()
    partial.suggest_float("optimizer.lr", 1e-3, 1e-1, log=True)
    tick = _tick(tmp_path, "host-a")
    output = tick.communicate(timeout=120)[0]
    assert f"dropped trial {partial.number} of job {job_id}" in output, output
    trainings = store.list_trainings(job_id=job_id)
    assert partial.number not in {t["trial_number"] for t in trainings}
    assert len(trainings) == 3 and all(set(t["params"]) == set(SPACE) for t in trainings)
    _complete_all(store, job_id)
    assert _tick(tmp_path, "host-a").wait(120) == 0
    job = store.get_job(job_id)
    # It counts neither as a trial of the job nor as a failure.
    assert job["status"] == "completed" and job["counts"] == {"complete": 3, "pruned": 0, "failed": 0, "running": 0}


def _step(store: SQLiteStore) -> list[str]:
    actions: list[str] = []
    search.step(store, actions.append)
    return actions


def test_a_job_whose_trials_all_failed_ends_failed(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path, n_trials=2, max_concurrent=2, max_failed=5)
    _step(store)
    for training in store.list_trainings(job_id=job_id):
        store.update_training(training["id"], {"status": "failed", "error": "boom"})
    actions = _step(store)
    job = store.get_job(job_id)
    assert job["status"] == "failed" and job["best"] is None and job["error"] == "no trial completed (2 failed)"
    assert actions[-1] == f"failed search job {job_id} (2 failed)"


def test_a_job_ends_only_once_a_pruned_trials_training_has_stopped(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path, n_trials=2, max_concurrent=2, objective={"metric": "loss"},
                  pruner={"name": "threshold", "upper": 1.0})
    _step(store)
    first, second = store.list_trainings(job_id=job_id)
    store.update_training(first["id"], {"status": "running"})
    store.put_result(first["id"], {"epoch": 1, "val": {"loss": 5.0}})
    store.update_training(second["id"], {"status": "completed", "metrics": {"loss": 0.3}})
    assert _step(store)[0].startswith("pruned trial 0")
    assert store.get_job(job_id)["status"] == "running"  # its training still finishes its epoch
    assert _step(store) == [] and store.get_job(job_id)["status"] == "running"
    store.update_training(first["id"], {"status": "pruned"})
    actions = _step(store)
    assert store.get_job(job_id)["status"] == "completed", actions
    assert actions[-1].startswith(f"completed search job {job_id} (1 complete, 1 pruned; best trial 1")


def test_cancelling_a_job_without_trials_says_so(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path, n_trials=2)
    store.update_job(job_id, {"cancel_requested": True})
    assert _step(store) == [f"cancelled search job {job_id} (no trials)"]
