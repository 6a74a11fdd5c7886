"""The conformance suite of JobStore backends: what every backend must do.

A backend's tests subclass StoreConformance and provide a `store` fixture that yields an empty
store (and closes it afterwards); pytest then runs every case on it, as
`optuna.testing.pytest_storages.StorageTestCase` does for Optuna's storages. MiTorch runs it on
the embedded SQLite backend, on MongoDB over mongomock, and on a real MongoDB server when
MITORCH_TEST_MONGODB_URI is set (tests/test_store.py).
"""
from __future__ import annotations

import pickle
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from mitorch.store import STATUSES, DuplicateError, LeaseLost, StoreError
from mitorch.store.base import DB_NOW

class StoreConformance:
    """What every backend must do. Subclasses provide the `store` fixture."""

    def test_new_training_defaults(self, store) -> None:
        before = datetime.now(timezone.utc).replace(microsecond=0)
        training_id = store.add_training({"config": {"batch_size": 4}, "dataset": "shapes:1"})
        training = store.get_training(training_id)
        assert training["id"] == training_id and training["status"] == "new" and training["priority"] == 100
        assert training["config"] == {"batch_size": 4}
        assert before <= training["created_at"] <= datetime.now(timezone.utc)
        assert training["created_at"].tzinfo is not None
        assert [h["status"] for h in training["status_history"]] == ["new"]
        assert store.get_training("0" * 24) is None

    def test_claims_follow_priority_then_age(self, store) -> None:
        ids = {}
        for name, priority in (("a", 5), ("b", 1), ("c", 3), ("d", 1)):
            ids[name] = store.add_training({"name": name, "priority": priority})
            time.sleep(0.002)
        assert [t["name"] for t in store.list_trainings(["new"])] == ["b", "d", "c", "a"]
        claimed = [store.claim_training({"executor": "local"})["name"] for _ in range(4)]
        assert claimed == ["b", "d", "c", "a"]
        assert store.claim_training({}) is None
        training = store.get_training(ids["b"])
        assert training["status"] == "queued" and training["executor"] == "local"
        assert [h["status"] for h in training["status_history"]] == ["new", "queued"]

    def test_claim_between_other_statuses(self, store) -> None:
        first = store.add_training({"priority": 2})
        store.update_training(first, {"status": "queued"})
        assert store.claim_training({"host": "h"}, from_status="queued", to_status="running")["id"] == first
        assert store.get_training(first)["status"] == "running"

    def test_conditional_updates(self, store) -> None:
        training_id = store.add_training({})
        assert store.update_training(training_id, {"status": "running", "pid": 12}, expected_status="new")
        assert not store.update_training(training_id, {"status": "cancelled"}, expected_status=["new", "queued"])
        assert store.get_training(training_id)["status"] == "running"
        assert store.update_training(training_id, {"heartbeat_at": datetime.now(timezone.utc)})
        assert not store.update_training("f" * 24, {"status": "failed"})
        with pytest.raises(ValueError, match="unknown status"):
            store.update_training(training_id, {"status": "exploded"})

    def test_lists_and_counts(self, store) -> None:
        job, _ = store.add_job({"job_type": "sweep"})
        ids = store.add_trainings([{"job_id": job, "n": i} for i in range(3)] + [{"n": 9}])
        time.sleep(0.002)
        store.update_training(ids[1], {"status": "completed", "metrics": {"top1_accuracy": 0.5}})
        assert [t["n"] for t in store.list_trainings(job_id=job)] == [0, 1, 2]
        assert [t["n"] for t in store.list_trainings(["new"], order="queue", limit=2)] == [0, 2]
        assert store.list_trainings(["completed"], order="recent")[0]["metrics"] == {"top1_accuracy": 0.5}
        counts = store.count_trainings()
        assert counts == {**dict.fromkeys(STATUSES, 0), "new": 3, "completed": 1}
        assert store.count_trainings(job_id=job) == {**dict.fromkeys(STATUSES, 0), "new": 2, "completed": 1}
        assert store.count_trainings(job_id="0" * 24) == dict.fromkeys(STATUSES, 0)
        store.update_training(ids[2], {"flag": True, "x": 0.1 + 0.2})
        assert store.list_trainings(job_id=job, fields=["flag", "x"])[2] == {"id": ids[2], "flag": True,
                                                                           "x": 0.30000000000000004}
        listed = store.list_trainings(job_id=job, fields=["n", "status", "metrics", "missing"])
        assert listed == [{"id": ids[0], "n": 0, "status": "new", "metrics": None, "missing": None},
                          {"id": ids[1], "n": 1, "status": "completed", "metrics": {"top1_accuracy": 0.5},
                           "missing": None},
                          {"id": ids[2], "n": 2, "status": "new", "metrics": None, "missing": None}]
        with pytest.raises(ValueError, match="field name"):
            store.list_trainings(fields=["data') --"])

    def test_lists_a_trainings_children_by_parent(self, store) -> None:
        parent, other = store.add_training({"n": 0}), store.add_training({"n": 1})
        first = store.add_training({"parent": parent, "n": 2})
        time.sleep(0.002)
        second = store.add_training({"parent": parent, "n": 3, "status": "completed"})
        store.add_training({"parent": other, "n": 4})
        assert [t["id"] for t in store.list_trainings(order="recent", parent=parent)] == [second, first]
        assert store.list_trainings(["completed"], parent=parent, fields=["n"]) == [{"id": second, "n": 3}]
        assert store.list_trainings(parent=first) == [] and len(store.list_trainings()) == 5

    def test_results_by_epoch_replace_on_retry(self, store) -> None:
        training_id = store.add_training({})
        for epoch in (2, 1, 3):
            store.put_result(training_id, {"epoch": epoch, "train_loss": 1.0 / epoch})
        store.put_result(training_id, {"epoch": 2, "train_loss": 0.25, "val": {"loss": 0.3}})
        results = store.list_results(training_id)
        assert [r["epoch"] for r in results] == [1, 2, 3]
        assert results[1]["train_loss"] == 0.25 and results[1]["val"] == {"loss": 0.3}
        assert results[0]["training_id"] == training_id
        assert store.list_results("0" * 24) == []
        assert [r["epoch"] for r in store.list_results(training_id, after=1)] == [2, 3]
        assert store.list_results(training_id, after=3) == []
        assert [r["epoch"] for r in store.list_results(training_id, after=0)] == [1, 2, 3]

    def test_jobs(self, store) -> None:
        first, none = store.add_job({"job_type": "sweep", "overrides": ["optimizer.lr=0.1,0.01"]})
        time.sleep(0.002)
        second, _ = store.add_job({"job_type": "search", "status": "running"})
        assert none == []
        assert store.get_job(first)["job_type"] == "sweep" and store.get_job(first)["status"] == "new"
        assert store.update_job(first, {"status": "completed"})
        assert not store.update_job("0" * 24, {"status": "completed"})
        assert [j["id"] for j in store.list_jobs()] == [second, first]
        assert [j["id"] for j in store.list_jobs(["running"])] == [second]

    def test_datasets_by_name_and_version(self, store) -> None:
        store.put_datasets([{"name": "shapes", "version": 1, "train": {"path": "a.txt"}},
                            {"name": "shapes", "version": 2, "train": {"path": "b.txt"}},
                            {"name": "cars", "version": 1, "train": {"path": "c.txt"}}])
        store.put_datasets([{"name": "shapes", "version": 1, "train": {"path": "a2.txt"}}])
        assert store.get_dataset("shapes")["version"] == 2
        assert store.get_dataset("shapes", 1)["train"] == {"path": "a2.txt"}
        assert store.get_dataset("shapes", 7) is None and store.get_dataset("boats") is None
        assert [(d["name"], d["version"]) for d in store.list_datasets()] == [("cars", 1), ("shapes", 1), ("shapes", 2)]
        with pytest.raises(ValueError, match="version must be a whole number"):
            store.put_datasets([{"name": "ok", "version": 3}, {"name": "bad", "version": "x"}])
        assert store.get_dataset("ok") is None  # all or none

    def test_racing_claims_take_each_training_once(self, store) -> None:
        ids = store.add_trainings([{"n": i} for i in range(40)])
        taken: list[str] = []
        start = threading.Barrier(4)

        def claim() -> None:
            start.wait()  # the racers start together
            while (training := store.claim_training({"by": threading.get_ident()}, new_attempt={})) is not None:
                taken.append(training["id"])

        threads = [threading.Thread(target=claim) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(taken) == sorted(ids)
        assert {store.get_training(i)["attempt"] for i in ids} == {1}

    def test_a_claim_starts_a_new_attempt_and_fences_the_old_one(self, store) -> None:
        training_id = store.add_training({})
        first = store.claim_training({"executor": "local:a"}, new_attempt={"executor": "local:a", "at": DB_NOW})
        assert first["attempt"] == 1 and len(first["attempts"]) == 1
        assert first["attempts"][0]["executor"] == "local:a" and first["attempts"][0]["at"].tzinfo is not None
        assert store.update_training(training_id, {"status": "running", "attempts.0.pid": 7}, "queued", attempt=1)
        store.update_training(training_id, {"status": "new"})
        second = store.claim_training({"executor": "local:b"}, new_attempt={"executor": "local:b"})
        assert second["attempt"] == 2 and [a["executor"] for a in second["attempts"]] == ["local:a", "local:b"]
        # The first attempt's writes are refused from now on; the second attempt's go through.
        assert not store.update_training(training_id, {"heartbeat_at": DB_NOW}, attempt=1)
        assert not store.update_training(training_id, {"status": "new"}, expected_status="queued", attempt=1)
        assert store.update_training(training_id, {"status": "running", "attempts.1.pid": 8}, "queued", attempt=2)
        training = store.get_training(training_id)
        assert training["status"] == "running" and training["attempt"] == 2
        assert [a.get("pid") for a in training["attempts"]] == [7, 8]
        assert not store.update_training(store.add_training({}), {"status": "running"}, attempt=1)

    def test_results_of_an_attempt_are_stored_only_while_it_runs(self, store) -> None:
        training_id = store.add_training({})
        store.claim_training({}, new_attempt={})
        for status in ("queued", "cancelled", "failed", "completed", "pruned", "new"):
            store.update_training(training_id, {"status": status})
            assert store.get_training(training_id)["attempt"] == 1
            assert not store.put_result(training_id, {"epoch": 1, "status_was": status}, attempt=1)
        assert store.list_results(training_id) == []
        store.update_training(training_id, {"status": "running"})
        assert not store.put_result(training_id, {"epoch": 1}, attempt=2)
        assert store.put_result(training_id, {"epoch": 1, "loss": 0.5}, attempt=1)
        assert [(r["epoch"], r["loss"]) for r in store.list_results(training_id)] == [(1, 0.5)]
        assert not store.put_result("0" * 24, {"epoch": 1}, attempt=1)

    def test_db_now_stamps_the_databases_clock(self, store) -> None:
        training_id = store.add_training({})
        before = store.clock()
        store.update_training(training_id, {"heartbeat_at": DB_NOW})
        beat = store.get_training(training_id)["heartbeat_at"]
        assert before.tzinfo is not None and beat.tzinfo is not None
        assert before - timedelta(seconds=1) <= beat <= store.clock() + timedelta(seconds=1)

    def test_db_now_stamps_a_dotted_path_with_the_databases_clock(self, store) -> None:
        training_id = store.add_training({})
        store.claim_training({}, new_attempt={"executor": "local:a"})
        before = store.clock()
        assert store.update_training(training_id, {"attempts.0.started_at": DB_NOW}, attempt=1)
        after = store.clock()
        entry = store.get_training(training_id)["attempts"][0]
        assert entry["executor"] == "local:a" and isinstance(entry["started_at"], datetime)
        assert entry["started_at"].tzinfo is not None
        assert before - timedelta(seconds=1) <= entry["started_at"] <= after + timedelta(seconds=1)

    def test_leases_expire_and_hold_against_others(self, store) -> None:
        assert store.get_lease("jobs") is None
        assert store.acquire_lease("jobs", "host-a", ttl_s=30)
        assert not store.acquire_lease("jobs", "host-b", ttl_s=30)
        assert store.acquire_lease("jobs", "host-a", ttl_s=30)  # a renewal
        assert store.get_lease("jobs")["holder"] == "host-a"
        store.release_lease("jobs", "host-b")  # not the holder: nothing happens
        assert not store.acquire_lease("jobs", "host-b", ttl_s=30)
        store.release_lease("jobs", "host-a")
        assert store.acquire_lease("jobs", "host-b", ttl_s=0.05)
        time.sleep(0.1)  # host-b crashed: its lease runs out
        assert store.acquire_lease("jobs", "host-a", ttl_s=30)
        assert store.get_lease("jobs")["holder"] == "host-a"

    def test_racing_lease_acquisitions_have_one_winner(self, store) -> None:
        winners: list[str] = []
        start = threading.Barrier(6)

        def acquire(name: str) -> None:
            start.wait()
            if store.acquire_lease("tick", name, ttl_s=60):
                winners.append(name)

        threads = [threading.Thread(target=acquire, args=(f"host-{i}",)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1 and store.get_lease("tick")["holder"] == winners[0]

    def test_a_lease_fences_job_updates(self, store) -> None:
        job_id, _ = store.add_job({"job_type": "search", "status": "running"})
        assert store.acquire_lease("step", "host-a", ttl_s=30)
        assert store.update_job(job_id, {"n_trials": 4}, lease=("step", "host-a"))
        assert not store.update_job(job_id, {"n_trials": 5}, lease=("step", "host-b"))  # held by another
        assert not store.update_job(job_id, {"n_trials": 6}, lease=("other", "host-a"))  # never taken
        assert not store.update_job("0" * 24, {"n_trials": 7}, lease=("step", "host-a"))
        store.release_lease("step", "host-a")
        assert store.acquire_lease("step", "host-b", ttl_s=0.05)
        time.sleep(0.1)  # host-b's lease ran out and no one took it: host-b must renew first
        assert not store.update_job(job_id, {"n_trials": 8}, lease=("step", "host-b"))
        assert store.acquire_lease("step", "host-a", ttl_s=30)  # taken over
        assert not store.update_job(job_id, {"n_trials": 9}, lease=("step", "host-b"))
        assert store.get_job(job_id)["n_trials"] == 4
        assert store.update_job(job_id, {"n_trials": 10})  # unfenced, as before

    def test_a_lease_fences_journal_appends(self, store) -> None:
        assert store.acquire_lease("step", "host-a", ttl_s=30)
        store.append_logs("study", [{"n": 0}, {"n": 1}], lease=("step", "host-a"))
        with pytest.raises(LeaseLost, match="host-b lost the lease 'step'"):
            store.append_logs("study", [{"n": "b"}], lease=("step", "host-b"))
        store.release_lease("step", "host-a")
        assert store.acquire_lease("step", "host-b", ttl_s=0.05)
        time.sleep(0.1)
        with pytest.raises(LeaseLost, match="host-b lost the lease 'step'"):  # expired, not taken
            store.append_logs("study", [{"n": "b"}], lease=("step", "host-b"))
        assert store.acquire_lease("step", "host-a", ttl_s=30)
        with pytest.raises(LeaseLost, match="host-b lost the lease 'step'") as lost:  # expired and taken over
            store.append_logs("study", [{"n": "b"}, {"n": "c"}], lease=("step", "host-b"))
        assert str(pickle.loads(pickle.dumps(lost.value))) == str(lost.value)  # it crosses process boundaries
        store.append_logs("study", [{"n": 2}], lease=("step", "host-a"))
        assert store.read_logs("study") == [{"n": 0}, {"n": 1}, {"n": 2}]

    def test_a_job_and_its_trainings_are_stored_all_or_nothing(self, store) -> None:
        job_id, ids = store.add_job({"job_type": "sweep", "status": "running"}, [{"n": 0}, {"n": 1}])
        assert [t["n"] for t in store.list_trainings(job_id=job_id)] == [0, 1] and len(ids) == 2
        taken = store.add_training({"n": 9})
        with pytest.raises(StoreError):
            store.add_job({"job_type": "sweep", "status": "running"}, [{"n": 2}, {"id": taken, "n": 3}])
        assert len(store.list_jobs()) == 1
        assert sorted(t["n"] for t in store.list_trainings()) == [0, 1, 9]

    def test_a_search_trial_has_one_training_only(self, store) -> None:
        job_id, _ = store.add_job({"job_type": "search", "status": "running"})
        store.add_training({"job_id": job_id, "trial_number": 0})
        with pytest.raises(DuplicateError, match=f"trial 0 of job {job_id} already has a training"):
            store.add_trainings([{"job_id": job_id, "trial_number": 1}, {"job_id": job_id, "trial_number": 0}])
        assert [t["trial_number"] for t in store.list_trainings(job_id=job_id)] == [0]  # nothing of the batch
        first = store.list_trainings(job_id=job_id)[0]
        assert first["trial_key"] == f"{job_id}:0"  # what the unique index keys on
        assert store.get_training(store.add_training({}))["trial_key"] != first["trial_key"]
        other, _ = store.add_job({"job_type": "search", "status": "running"}, [{"trial_number": 0}])
        store.add_trainings([{"job_id": job_id, "trial_number": 1}, {"job_id": job_id}, {"job_id": job_id}])
        assert sorted(str(t.get("trial_number")) for t in store.list_trainings(job_id=job_id)) == ["0", "1", "None",
                                                                                                   "None"]
        assert len(store.list_trainings(job_id=other)) == 1

    def test_trainings_are_found_by_fingerprint(self, store) -> None:
        first = store.add_training({"fingerprint": "a" * 32, "n": 0})
        time.sleep(0.002)
        second = store.add_training({"fingerprint": "a" * 32, "n": 1})
        store.add_training({"fingerprint": "b" * 32, "n": 2})
        store.add_training({"n": 3})  # stored before fingerprints: never anyone's duplicate
        store.update_training(second, {"status": "completed", "metrics": {"top1_accuracy": 0.5}})
        assert [t["id"] for t in store.find_trainings("a" * 32)] == [first, second]  # oldest first
        found = store.find_trainings("a" * 32, ["completed"])
        assert [t["id"] for t in found] == [second] and found[0]["metrics"] == {"top1_accuracy": 0.5}
        assert [t["n"] for t in store.find_trainings("b" * 32, ["new", "completed"])] == [2]
        assert store.find_trainings("c" * 32) == [] and store.find_trainings("a" * 32, ["failed"]) == []

    def test_journal_logs_are_dense_ordered_and_kept_per_journal(self, store) -> None:
        assert store.read_logs("study-a") == []
        store.append_logs("study-a", [{"op_code": 0, "n": 0}, {"op_code": 1, "n": 1}])
        store.append_logs("study-b", [{"n": "other"}])
        store.append_logs("study-a", [{"op_code": 2, "values": {"3": 0.5}, "n": 2}])
        assert [log["n"] for log in store.read_logs("study-a")] == [0, 1, 2]
        assert [log["n"] for log in store.read_logs("study-a", 1)] == [1, 2]
        assert store.read_logs("study-a", 3) == [] and store.read_logs("study-b") == [{"n": "other"}]
        assert store.read_logs("study-a", 2)[0]["values"] == {"3": 0.5}

    def test_racing_journal_appends_keep_every_log_once(self, store) -> None:
        start = threading.Barrier(4)

        def append(writer: int) -> None:
            start.wait()
            for i in range(10):
                store.append_logs("study", [{"writer": writer, "i": i}])

        threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        logs = store.read_logs("study")
        assert sorted((log["writer"], log["i"]) for log in logs) == [(w, i) for w in range(4) for i in range(10)]
        for writer in range(4):  # each writer's logs in its own order
            assert [log["i"] for log in logs if log["writer"] == writer] == list(range(10))
        assert store.read_logs("study", 20) == logs[20:]
