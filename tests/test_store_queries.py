"""Conformance of the store's read-only queries for viewers (training_states, get_trainings,
results_of, count_results) on every backend: SQLite, MongoDB over mongomock, and a real MongoDB server when
MITORCH_TEST_MONGODB_URI is set. The plain implementations in JobStore are the reference."""
from __future__ import annotations

from pathlib import Path

import pytest

from mitorch.store.base import JobStore
from tests.helpers import mongodb_server_store, mongomock_store, needs_mongodb, sqlite_store


class QueriesConformance:
    """What every backend's viewer queries return. Subclasses provide the `store` fixture."""

    def test_training_states(self, store) -> None:
        assert store.training_states() == []
        ids = store.add_trainings([{"priority": 5}, {}, {"status": "queued", "priority": -3}])
        store.update_training(ids[1], {"status": "running", "priority": 7})
        states = sorted(store.training_states(), key=lambda s: ids.index(s["id"]))
        assert states == [{"id": ids[0], "status": "new", "priority": 5},
                          {"id": ids[1], "status": "running", "priority": 7},
                          {"id": ids[2], "status": "queued", "priority": -3}]
        assert sorted(map(str, states)) == sorted(map(str, JobStore.training_states(store)))

    def test_get_trainings_keeps_the_order_asked_and_skips_unknown_ids(self, store) -> None:
        ids = store.add_trainings([{"name": f"t{i}", "config": {"lr": i}} for i in range(3)])
        found = store.get_trainings([ids[2], "f" * 24, ids[0], ids[2]])
        assert [t["name"] for t in found] == ["t2", "t0"]
        assert found == [store.get_training(ids[2]), store.get_training(ids[0])]
        assert store.get_trainings([]) == []

    def test_get_trainings_of_many(self, store) -> None:
        ids = store.add_trainings([{"n": i} for i in range(601)])  # more than one SQLite chunk
        assert [t["n"] for t in store.get_trainings(ids[::-1])] == list(range(600, -1, -1))

    def test_results_of(self, store) -> None:
        first, second, third = store.add_trainings([{}, {}, {}])
        for epoch in (2, 1, 3):
            store.put_result(first, {"epoch": epoch, "val": {"loss": 1 / epoch}})
        store.put_result(second, {"epoch": 1, "train_loss": 0.5})
        results = store.results_of([second, first, third, "f" * 24])
        assert list(results) == [second, first, third, "f" * 24]
        assert [r["epoch"] for r in results[first]] == [1, 2, 3]
        assert results[first] == store.list_results(first)
        assert results[second][0]["train_loss"] == 0.5 and results[second][0]["training_id"] == second
        assert results[third] == [] and results["f" * 24] == []
        assert results[first][0]["recorded_at"].tzinfo is not None

    def test_count_results(self, store) -> None:
        first, second = store.add_trainings([{}, {}])
        for epoch in (1, 3, 2):
            store.put_result(first, {"epoch": epoch, "val": {}})
        store.put_result(first, {"epoch": 3, "val": {"loss": 0.1}})  # replaces epoch 3
        counts = store.count_results([second, first, "f" * 24])
        assert counts == {second: {"count": 0, "last_epoch": None}, first: {"count": 3, "last_epoch": 3},
                          "f" * 24: {"count": 0, "last_epoch": None}}
        assert counts == JobStore.count_results(store, [second, first, "f" * 24])
        assert store.count_results([]) == {}


class TestSQLiteQueries(QueriesConformance):
    @pytest.fixture
    def store(self, tmp_path: Path):
        with sqlite_store(tmp_path) as store:
            yield store


class TestMongoQueriesOnMongomock(QueriesConformance):
    @pytest.fixture
    def store(self):
        with mongomock_store() as store:
            yield store


@needs_mongodb
class TestMongoQueriesOnServer(QueriesConformance):
    @pytest.fixture
    def store(self):
        with mongodb_server_store() as store:
            yield store
