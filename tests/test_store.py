"""The store's conformance suite (mitorch.testing.store) on every JobStore backend, and what is
particular to each backend.

The suite runs on the embedded SQLite backend, on the MongoDB backend over mongomock, and on a real
MongoDB server whenever MITORCH_TEST_MONGODB_URI is set (each test in a database of its own,
dropped afterwards), e.g.  MITORCH_TEST_MONGODB_URI=mongodb://localhost:27017 pytest tests/test_store.py
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mitorch.store import DuplicateError, StoreError, open_store, redact
from mitorch.store.base import DB_NOW
from mitorch.store.mongo import MongoStore
from mitorch.store.sqlite import SQLiteStore
from mitorch.testing.store import StoreConformance
from tests.helpers import mongodb_server_store, mongomock_store, needs_mongodb, sqlite_store


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path):
        with sqlite_store(tmp_path) as store:
            yield store


class TestMongoStoreOnMongomock(StoreConformance):
    @pytest.fixture
    def store(self):
        with mongomock_store() as store:
            yield store

    # mongomock's collections are not thread-safe. The skips are new functions of this class
    # alone: marking the inherited function would skip it on every backend.
    @pytest.mark.skip(reason="mongomock is not thread-safe; runs on a real server (MITORCH_TEST_MONGODB_URI)")
    def test_racing_claims_take_each_training_once(self, store) -> None:
        pass

    @pytest.mark.skip(reason="mongomock is not thread-safe; runs on a real server (MITORCH_TEST_MONGODB_URI)")
    def test_racing_lease_acquisitions_have_one_winner(self, store) -> None:
        pass

    @pytest.mark.skip(reason="mongomock is not thread-safe; runs on a real server (MITORCH_TEST_MONGODB_URI)")
    def test_racing_journal_appends_keep_every_log_once(self, store) -> None:
        pass


def test_mongodb_stamps_the_servers_clock_not_this_machines(monkeypatch) -> None:
    mongomock = pytest.importorskip("mongomock")
    ahead = timedelta(hours=3)  # the server's clock runs 3 hours ahead of this machine's
    monkeypatch.setattr(mongomock, "utcnow", lambda: datetime.now(timezone.utc).replace(tzinfo=None) + ahead)
    store = MongoStore(client=mongomock.MongoClient(tz_aware=True))
    training_id = store.add_training({})
    store.claim_training({}, new_attempt={})
    store.update_training(training_id, {"heartbeat_at": DB_NOW, "attempts.0.started_at": DB_NOW})
    training = store.get_training(training_id)
    server_now = datetime.now(timezone.utc) + ahead
    for stamp in (store.clock(), training["heartbeat_at"], training["attempts"][0]["started_at"]):
        assert abs(stamp - server_now) < timedelta(minutes=5)


def _refuse_indexes(monkeypatch, mongomock, error) -> None:
    def create_index(collection, keys, **options):
        raise error

    monkeypatch.setattr(mongomock.collection.Collection, "create_index", create_index)


@pytest.mark.parametrize("code, server_says, cause, remedy", [
    (13, "not authorized on mitorch to execute command { createIndexes: \"trainings\" }",
     "the database user lacks the privilege to create indexes", "grant it the readWrite role"),
    (67, "Error in specification { unique: true }: index option not supported",
     "the server refuses an option of this index", "use a server that supports plain and unique indexes"),
    (85, "Index already exists with a different name: status_priority",
     "an index on the same keys exists with other options or another name", "drop that index"),
    (86, "An existing index has the same name as the requested index",
     "an index named status_1_priority_1_created_at_1__id_1 exists with other keys or options",
     "drop it (db.trainings.dropIndex('status_1_priority_1_created_at_1__id_1'))"),
])
def test_mongodb_index_refusals_name_their_cause(monkeypatch, code, server_says, cause, remedy) -> None:
    mongomock = pytest.importorskip("mongomock")
    from pymongo.errors import OperationFailure

    details = {"ok": 0.0, "errmsg": server_says, "code": code}
    _refuse_indexes(monkeypatch, mongomock, OperationFailure(server_says, code=code, details=details))
    with pytest.raises(StoreError) as error:
        MongoStore(client=mongomock.MongoClient(tz_aware=True))
    message = str(error.value)
    assert message.startswith("cannot create the index status_1_priority_1_created_at_1__id_1 on mitorch.trainings: ")
    assert cause in message and remedy in message and f"({server_says}, code {code})" in message
    assert "cannot reach" not in message and "full error" not in message and "\n" not in message


def test_mongodb_lost_connection_while_creating_indexes_says_cannot_reach(monkeypatch) -> None:
    mongomock = pytest.importorskip("mongomock")
    from pymongo.errors import AutoReconnect

    _refuse_indexes(monkeypatch, mongomock, AutoReconnect("connection closed"))
    with pytest.raises(StoreError, match=r"^cannot reach the database at  \(connection closed\); check MITORCH_DB_URI"):
        MongoStore(client=mongomock.MongoClient(tz_aware=True))


def test_mongodb_refused_credentials_are_not_an_unreachable_server(monkeypatch) -> None:
    mongomock = pytest.importorskip("mongomock")
    import pymongo
    from pymongo.errors import OperationFailure

    def ping(database, command, *args, **kwargs):
        details = {"ok": 0.0, "errmsg": "Authentication failed.", "code": 18}
        raise OperationFailure("Authentication failed.", code=18, details=details)

    monkeypatch.setattr(pymongo, "MongoClient", mongomock.MongoClient)
    monkeypatch.setattr(mongomock.database.Database, "command", ping)
    with pytest.raises(StoreError) as error:
        open_store("mongodb://alice:s3cret@db.example.net/mitorch")
    assert str(error.value) == ("the database at mongodb://alice:***@db.example.net/mitorch refused the credentials "
                                "(Authentication failed., code 18); check the user name and password in MITORCH_DB_URI")


def test_mongodb_store_needs_no_partial_or_sparse_index(monkeypatch) -> None:
    mongomock = pytest.importorskip("mongomock")
    from pymongo.errors import OperationFailure

    create_index = mongomock.collection.Collection.create_index

    def plain_indexes_only(collection, keys, **options):  # as FerretDB and Azure Cosmos DB for MongoDB
        if "partialFilterExpression" in options or "sparse" in options:
            raise OperationFailure("unsupported index option", code=67)
        return create_index(collection, keys, **options)

    monkeypatch.setattr(mongomock.collection.Collection, "create_index", plain_indexes_only)
    store = MongoStore(client=mongomock.MongoClient(tz_aware=True))
    job_id, _ = store.add_job({"job_type": "search", "status": "running"}, [{"trial_number": 0}, {}])
    with pytest.raises(DuplicateError, match=f"trial 0 of job {job_id} already has a training"):
        store.add_training({"job_id": job_id, "trial_number": 0})
    store.add_trainings([{"job_id": job_id}, {"trial_number": 0}, {"trial_number": 0}])  # no trial of a job
    assert len(store.list_trainings()) == 5


def _old_database(client, job_id: str) -> None:
    """A database as MiTorch kept it before trial_key: a partial unique index on (job_id, trial_number)."""
    trainings = client.mitorch.trainings
    trainings.create_index([("job_id", 1), ("trial_number", 1)], unique=True, name="one_training_per_trial",
                           partialFilterExpression={"trial_number": {"$type": "number"}})
    common = {"status": "new", "priority": 100, "created_at": datetime.now(timezone.utc)}
    trainings.insert_many([{**common, "_id": "a" * 24, "job_id": job_id, "trial_number": 0},
                           {**common, "_id": "b" * 24, "job_id": job_id, "trial_number": 1},
                           {**common, "_id": "c" * 24}])


def test_mongodb_database_of_an_older_version_moves_to_trial_keys() -> None:
    mongomock = pytest.importorskip("mongomock")
    client = mongomock.MongoClient(tz_aware=True)
    _old_database(client, "j" * 24)
    store = MongoStore(client=client)
    indexes = client.mitorch.trainings.index_information()
    assert "one_training_per_trial" not in indexes
    assert indexes["one_training_per_trial_key"]["key"] == [("trial_key", 1)]
    assert indexes["one_training_per_trial_key"]["unique"]
    assert {t["id"]: t["trial_key"] for t in store.list_trainings()} == {
        "a" * 24: f"{'j' * 24}:0", "b" * 24: f"{'j' * 24}:1", "c" * 24: "c" * 24}
    with pytest.raises(DuplicateError, match="trial 1 of job j+ already has a training"):
        store.add_training({"job_id": "j" * 24, "trial_number": 1})
    store.add_trainings([{"job_id": "j" * 24, "trial_number": 2}, {}])
    MongoStore(client=client)  # every process runs it: a second time changes nothing
    assert client.mitorch.trainings.index_information() == indexes
    assert len(store.list_trainings()) == 5


def test_mongodb_move_to_trial_keys_by_two_processes_at_once(monkeypatch) -> None:
    mongomock = pytest.importorskip("mongomock")
    from pymongo.errors import OperationFailure

    client = mongomock.MongoClient(tz_aware=True)
    _old_database(client, "j" * 24)
    drop_index = mongomock.collection.Collection.drop_index

    def dropped_first_by_another(collection, name, **kwargs):
        drop_index(collection, name, **kwargs)  # the other process's drop, after both listed the indexes
        raise OperationFailure(f"index not found with name [{name}]", code=27)

    monkeypatch.setattr(mongomock.collection.Collection, "drop_index", dropped_first_by_another)
    store = MongoStore(client=client)
    assert "one_training_per_trial" not in client.mitorch.trainings.index_information()
    assert len(store.list_trainings()) == 3


def test_mongodb_clock_survives_a_racing_first_upsert(monkeypatch) -> None:
    mongomock = pytest.importorskip("mongomock")
    from pymongo.errors import DuplicateKeyError

    client = mongomock.MongoClient(tz_aware=True)
    mine, theirs = MongoStore(client=client), MongoStore(client=client)
    upsert = mongomock.collection.Collection.find_one_and_update
    to_race, raced = [mine], []

    def racing_upsert(collection, query, update, **options):
        if query == {"_id": "$clock"} and to_race:
            to_race.pop()
            # The other process's upsert inserts the clock's record between this one's miss of
            # the filter and its insert, which then meets the _id index, as on a server.
            raced.append(theirs.clock())
            raise DuplicateKeyError("E11000 duplicate key error collection: mitorch.leases index: _id_", code=11000)
        return upsert(collection, query, update, **options)

    monkeypatch.setattr(mongomock.collection.Collection, "find_one_and_update", racing_upsert)
    moment = mine.clock()
    assert raced and isinstance(moment, datetime) and moment >= raced[0]


def test_mongodb_journal_append_after_a_stale_read_keeps_both_writers_logs(monkeypatch) -> None:
    mongomock = pytest.importorskip("mongomock")
    client = mongomock.MongoClient(tz_aware=True)
    mine, theirs = MongoStore(client=client), MongoStore(client=client)
    mine.append_logs("study", [{"by": "mine", "i": 0}])
    find = mongomock.collection.Collection.find
    stale = []

    def stale_find(collection, *args, **kwargs):
        if collection.name == "optuna_journal" and not stale:
            # This writer reads the last number, then the other appends before this one inserts.
            stale.append(list(find(collection, *args, **kwargs)))
            theirs.append_logs("study", [{"by": "theirs", "i": 0}, {"by": "theirs", "i": 1}])
            return stale[0]
        return find(collection, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "find", stale_find)
    mine.append_logs("study", [{"by": "mine", "i": 1}, {"by": "mine", "i": 2}])
    assert stale and stale[0][0]["number"] == 0  # the read was stale: number 1 was taken after it
    logs = mine.read_logs("study")
    assert [(log["by"], log["i"]) for log in logs] == [("mine", 0), ("theirs", 0), ("theirs", 1), ("mine", 1),
                                                       ("mine", 2)]
    assert theirs.read_logs("study") == logs
    numbers = [d["number"] for d in client.mitorch.optuna_journal.find({"journal": "study"}, sort=[("number", 1)])]
    assert numbers == list(range(5))  # dense: no number skipped or taken twice


@pytest.mark.parametrize("uri, database", [
    ("mongodb://db.example.net/mydb", "mydb"),
    ("mongodb://u:p%2Fw@h1:27017,h2:27018/team%5Fruns?replicaSet=rs0&authSource=admin", "team_runs"),
    ("mongodb+srv://u:p@cluster0.example.mongodb.net/mydb?retryWrites=true&w=majority", "mydb"),
    ("mongodb://db.example.net/", None),
    ("mongodb://db.example.net", None),
    ("mongodb://db.example.net/?tls=true", None),
    ("mongodb://db.example.net/runs.trainings", "runs"),  # the older db.collection form
])
def test_database_named_in_the_uri(uri, database) -> None:
    from pymongo.uri_parser import parse_uri

    from mitorch.store.mongo import database_in_uri

    assert database_in_uri(uri) == database
    if uri.startswith("mongodb://"):  # MongoDB's own reading (a +srv URI would need DNS)
        assert parse_uri(uri)["database"] == database


def test_open_store_uses_the_database_the_uri_names(monkeypatch) -> None:
    mongomock = pytest.importorskip("mongomock")
    import pymongo

    monkeypatch.setattr(pymongo, "MongoClient", mongomock.MongoClient)
    assert open_store("mongodb://db.example.net/team_runs?authSource=admin")._db.name == "team_runs"
    assert open_store("mongodb://db.example.net/")._db.name == "mitorch"
    assert open_store("mongodb://db.example.net")._db.name == "mitorch"
    with pytest.raises(StoreError, match=r"malformed database URI .*database name 'my runs' has a character MongoDB "
                                         r"refuses.*; check MITORCH_DB_URI"):
        open_store("mongodb://db.example.net/my%20runs")


@pytest.mark.mongodb
@needs_mongodb
class TestMongoStoreOnServer(StoreConformance):
    @pytest.fixture
    def store(self):
        with mongodb_server_store() as store:
            yield store


def _claim_in_process(path: str, rounds: int, start, queue) -> None:
    store = SQLiteStore(path)
    taken = []
    for _ in range(rounds):
        start.wait()  # every round, the processes claim at the same moment
        training = store.claim_training({"pid": os.getpid()}, new_attempt={})
        taken.append(training["id"] if training else None)
    queue.put(taken)


def test_sqlite_claims_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    processes, rounds = 4, 80
    ids = SQLiteStore(path).add_trainings([{"n": i} for i in range(processes * rounds)])
    context = multiprocessing.get_context("spawn")
    queue, start = context.Queue(), context.Barrier(processes)
    workers = [context.Process(target=_claim_in_process, args=(path, rounds, start, queue)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    taken = [i for _ in workers for i in queue.get(timeout=60)]
    for worker in workers:
        worker.join()
    assert sorted(taken) == sorted(ids)  # each training claimed once, none twice, none missed
    store = SQLiteStore(path)
    assert {store.get_training(i)["attempt"] for i in ids} == {1}


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
