"""The Optuna journal backend over the job store passes Optuna's own storage suite, on SQLite
and on mongomock (and on a real server when MITORCH_TEST_MONGODB_URI is set)."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from optuna.testing.pytest_storages import StorageTestCase

from mitorch.service.search.journal import forget_study_storage, kept_study_storage, study_storage
from mitorch.store.sqlite import SQLiteStore
from tests.helpers import mongodb_server_store, mongomock_store, needs_mongodb


class TestJournalOnSQLite(StorageTestCase):
    @pytest.fixture
    def storage(self, tmp_path: Path):
        store = SQLiteStore(tmp_path / "db.sqlite")
        yield study_storage(store, "job", uri=f"sqlite:///{tmp_path / 'db.sqlite'}")
        store.close()


class TestJournalOnMongomock(StorageTestCase):
    @pytest.fixture
    def storage(self):
        with mongomock_store() as store:
            yield study_storage(store, "job")

    # A mongomock client cannot be reopened from a URI in another process. A new function of
    # this class alone: marking the inherited one would skip it on every backend.
    @pytest.mark.skip(reason="a mongomock database cannot be reopened from a URI; runs on SQLite")
    def test_pickle_storage(self, storage) -> None:
        pass


@needs_mongodb
class TestJournalOnServer(StorageTestCase):
    @pytest.fixture
    def storage(self):
        with mongodb_server_store() as store:
            yield study_storage(store, "job")

    @pytest.mark.skip(reason="open_store always opens the database `mitorch`, not this test's own")
    def test_pickle_storage(self, storage) -> None:
        pass


def _create_trials(path: str, start: multiprocessing.Barrier, count: int) -> None:
    import optuna

    store = SQLiteStore(path)
    study = optuna.load_study(study_name="shared", storage=study_storage(store, "job"),
                              sampler=optuna.samplers.RandomSampler())
    start.wait()
    for _ in range(count):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 1))


def test_several_processes_share_one_study(tmp_path: Path) -> None:
    import optuna

    path = str(tmp_path / "db.sqlite")
    store = SQLiteStore(path)
    optuna.create_study(study_name="shared", storage=study_storage(store, "job"))
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    workers = [context.Process(target=_create_trials, args=(path, start, 5)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    trials = optuna.load_study(study_name="shared", storage=study_storage(store, "job")).trials
    assert sorted(t.number for t in trials) == list(range(15))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_a_kept_storage_sees_what_others_wrote_and_does_not_keep_its_store(tmp_path: Path) -> None:
    import gc
    import weakref

    import optuna

    path = tmp_path / "db.sqlite"
    store, other = SQLiteStore(path), SQLiteStore(path)
    kept = kept_study_storage(store, "job")
    study = optuna.create_study(study_name="s", storage=kept, direction="maximize")
    study.tell(study.ask(), 1.0)
    assert kept_study_storage(store, "job") is kept
    # Another controller (another store object, as another process) tells a better trial.
    elsewhere = optuna.load_study(study_name="s", storage=study_storage(other, "job"))
    elsewhere.tell(elsewhere.ask(), 3.0)
    assert [t.value for t in optuna.load_study(study_name="s", storage=kept).trials] == [1.0, 3.0]
    assert optuna.load_study(study_name="s", storage=kept).best_value == 3.0
    forget_study_storage(store, "job")
    assert kept_study_storage(store, "job") is not kept
    held = weakref.ref(store)
    store.close()
    del store, kept, study
    gc.collect()
    assert held() is None
    other.close()


def test_a_database_of_the_previous_schema_gains_the_journal_table(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "db.sqlite"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE optuna_journal")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    store.append_logs("job", [{"op_code": 0}])
    assert store.read_logs("job") == [{"op_code": 0}]
    store.close()
