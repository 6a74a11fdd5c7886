"""One conformance suite for every JobStore backend.

It runs on the embedded SQLite backend, on the MongoDB backend over mongomock, and on a real
MongoDB server whenever MITORCH_TEST_MONGODB_URI is set (each test in a database of its own,
dropped afterwards), e.g.  MITORCH_TEST_MONGODB_URI=mongodb://localhost:27017 pytest tests/test_store.py
"""
from __future__ import annotations

import multiprocessing
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mitorch.store import STATUSES, StoreError, open_store, redact
from mitorch.store.mongo import MongoStore
from mitorch.store.sqlite import SQLiteStore


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
        job = store.add_job({"job_type": "sweep"})
        ids = store.add_trainings([{"job_id": job, "n": i} for i in range(3)] + [{"n": 9}])
        time.sleep(0.002)
        store.update_training(ids[1], {"status": "completed", "metrics": {"top1_accuracy": 0.5}})
        assert [t["n"] for t in store.list_trainings(job_id=job)] == [0, 1, 2]
        assert [t["n"] for t in store.list_trainings(["new"], order="queue", limit=2)] == [0, 2]
        assert store.list_trainings(["completed"], order="recent")[0]["metrics"] == {"top1_accuracy": 0.5}
        counts = store.count_trainings()
        assert counts == {**dict.fromkeys(STATUSES, 0), "new": 3, "completed": 1}

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

    def test_jobs(self, store) -> None:
        first = store.add_job({"job_type": "sweep", "overrides": ["optimizer.lr=0.1,0.01"]})
        time.sleep(0.002)
        second = store.add_job({"job_type": "search", "status": "running"})
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

        def claim() -> None:
            while (training := store.claim_training({"by": threading.get_ident()})) is not None:
                taken.append(training["id"])

        threads = [threading.Thread(target=claim) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(taken) == sorted(ids)


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path):
        store = SQLiteStore(tmp_path / "db" / "mitorch.db")
        yield store
        store.close()


class TestMongoStoreOnMongomock(StoreConformance):
    @pytest.fixture
    def store(self):
        mongomock = pytest.importorskip("mongomock")
        store = MongoStore(client=mongomock.MongoClient(tz_aware=True))
        yield store
        store.close()

    # mongomock's collections are not thread-safe; on MongoDB, find_one_and_update is atomic on
    # the server, which the same test checks against a real server (MITORCH_TEST_MONGODB_URI).
    test_racing_claims_take_each_training_once = pytest.mark.skip(reason="mongomock is not thread-safe")(
        StoreConformance.test_racing_claims_take_each_training_once)


@pytest.mark.skipif(not os.environ.get("MITORCH_TEST_MONGODB_URI"), reason="set MITORCH_TEST_MONGODB_URI")
class TestMongoStoreOnServer(StoreConformance):
    @pytest.fixture
    def store(self):
        import pymongo

        uri = os.environ["MITORCH_TEST_MONGODB_URI"]
        name = f"mitorch_test_{secrets.token_hex(4)}"
        store = MongoStore(uri, database=name)
        yield store
        pymongo.MongoClient(uri).drop_database(name)
        store.close()


def _claim_in_process(path: str, queue) -> None:
    store = SQLiteStore(path)
    taken = []
    while (training := store.claim_training({"pid": os.getpid()})) is not None:
        taken.append(training["id"])
    queue.put(taken)


def test_sqlite_claims_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    ids = SQLiteStore(path).add_trainings([{"n": i} for i in range(60)])
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_claim_in_process, args=(path, queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    taken = [i for _ in workers for i in queue.get(timeout=60)]
    for worker in workers:
        worker.join()
    assert sorted(taken) == sorted(ids)


def test_uri_selection_and_errors(tmp_path: Path, monkeypatch) -> None:
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), SQLiteStore)
    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path}/b.db")
    assert open_store().path == tmp_path / "b.db"
    monkeypatch.delenv("MITORCH_DB_URI")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert open_store().path == tmp_path / "data" / "mitorch" / "mitorch.db"
    with pytest.raises(StoreError, match=r"unsupported database URI redis://u:\*\*\*@h; use mongodb://"):
        open_store("redis://u:secret@h")


def test_unreachable_mongodb_is_one_line_within_seconds_without_the_password() -> None:
    start = time.monotonic()
    with pytest.raises(StoreError) as error:
        open_store("mongodb://alice:s3cret@127.0.0.1:9/?directConnection=true")
    assert time.monotonic() - start < 15  # generous: the client gives up after 5 s
    message = str(error.value)
    assert "s3cret" not in message and "mongodb://alice:***@127.0.0.1:9" in message
    assert "\n" not in message


def test_redaction() -> None:
    assert redact("mongodb+srv://bob:p%40ss@cluster.example.net/db") == "mongodb+srv://bob:***@cluster.example.net/db"
    url = "https://acct.blob.core.windows.net/c/train.zip?sv=2022-11-02&sr=b&sig=abc%2Bdef%3D&se=2030"
    assert redact(url) == "https://acct.blob.core.windows.net/c/train.zip?sv=2022-11-02&sr=b&sig=***&se=2030"
    assert redact("mongodb://host:27017/db") == "mongodb://host:27017/db"


def test_store_does_not_import_torch() -> None:
    code = "import sys, mitorch.store.sqlite, mitorch.store.mongo; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
