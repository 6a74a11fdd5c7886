"""How one micontrol tick's cost grows with the queue: 100 against 10,000 queued trainings.

Each store backend is filled with N `new` trainings plus 100 running ones, and one tick
(reconcile the running ones, dispatch into the one free slot) is timed several times. The
executor here starts nothing and reports every run alive, so what is measured is the store
and controller work. Target: the 10,000 tick at most 2x the 100 tick.

    python benchmarks/controller_scale.py [--ticks 7]

The MongoDB backend runs on mongomock, which scans collections instead of using indexes, so
its figure says little about a real server; set MITORCH_TEST_MONGODB_URI to measure one too.
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from mitorch.service.controller import tick
from mitorch.service.executors import Executor
from mitorch.store.mongo import MongoStore
from mitorch.store.sqlite import SQLiteStore

CONFIG = {"model": {"_target_": "mitorch.models.resnet", "depth": 18}, "batch_size": 32, "max_epochs": 10}


class IdleExecutor(Executor):
    """Launches nothing; every run it is asked about is alive."""

    name = "bench"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.launched = 0

    def launch(self, training: dict, gpu: int | None = None) -> str:
        self.launched += 1
        return f"bench:{self.launched}"

    def state(self, training: dict) -> str:
        return "running"

    def cancel(self, training: dict, force: bool = False) -> None:
        pass


def _fill(store, queued: int, running: int = 100) -> None:
    for start in range(0, queued, 1000):
        store.add_trainings([{"config": CONFIG, "priority": (start + i) % 50} for i in range(min(1000, queued - start))])
    ids = store.add_trainings([{"config": CONFIG} for _ in range(running)])
    for i, training_id in enumerate(ids):
        store.update_training(training_id, {"status": "running", "executor": "bench", "run_id": f"bench:r{i}",
                                            "heartbeat_at": None})


def _time_ticks(store, ticks: int) -> float:
    executor = IdleExecutor(capacity=101)  # 100 running + one free slot: one dispatch a tick
    times = []
    for _ in range(ticks):
        start = time.perf_counter()
        tick(store, executor, say=lambda line: None)
        times.append(time.perf_counter() - start)
        # Put the dispatched training back, so every tick sees the same queue and one free slot.
        store.update_training(store.list_trainings(["queued"])[0]["id"], {"status": "new"})
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MITORCH_ARTIFACTS_URI"] = str(Path(folder) / "artifacts")
        backends = {"sqlite": lambda n: SQLiteStore(Path(folder) / f"{n}.db")}
        try:
            import mongomock

            backends["mongomock"] = lambda n: MongoStore(client=mongomock.MongoClient(tz_aware=True))
        except ImportError:
            pass
        if os.environ.get("MITORCH_TEST_MONGODB_URI"):
            backends["mongodb"] = lambda n: MongoStore(os.environ["MITORCH_TEST_MONGODB_URI"],
                                                       database=f"mitorch_bench_{secrets.token_hex(4)}")
        for name, open_backend in backends.items():
            medians = {}
            for queued in (100, 10_000):
                store = open_backend(queued)
                _fill(store, queued)
                medians[queued] = _time_ticks(store, args.ticks)
                if name == "mongodb":
                    store._client.drop_database(store._db.name)
                store.close()
            print(f"{name:9s} tick with 100 queued {medians[100] * 1000:8.1f} ms, with 10,000 queued "
                  f"{medians[10_000] * 1000:8.1f} ms: ratio {medians[10_000] / medians[100]:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
