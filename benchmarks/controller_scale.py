"""How one micontrol tick's cost grows with the queue and with the search jobs.

Queue: each store backend is filled with N `new` trainings plus 100 running ones, and one tick
(reconcile the running ones, dispatch into the one free slot) is timed several times. The
executor here starts nothing and reports every run alive, so what is measured is the store
and controller work. Target: the 10,000 tick at most 2x the 100 tick.

Search jobs: one tick with 10 running search jobs of 100 trials each (98 ended, 2 training)
against one job of 10 trials (8 ended, 2 training). Before each tick one training trial of one
job records a new epoch, so each tick reports it to its study and asks the pruner; the other
jobs have nothing new. Target: at most 3x. Timed twice: ticks of one long-running controller
(`micontrol --loop`, which keeps each study's journal replayed and reads only new logs), and
first ticks of a process (a systemd timer's `micontrol`, which replays the changed job's whole
journal; imports not counted).

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


def _fill_search_jobs(store, jobs: int, trials: int) -> list[str]:
    """Search jobs with `trials` trials each: all but 2 ended (3 epochs reported each), 2 training."""
    import optuna

    from mitorch.service.search.job import prepare
    from mitorch.service.search.journal import study_storage
    from mitorch.service.search.space import distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    record = prepare({"job_type": "search", "overrides": ["max_epochs=10"], "n_trials": trials, "max_concurrent": 2,
                      "search_space": {"optimizer.lr": "tag(log, interval(1e-4, 1e-1))", "batch_size": "16,32,64"},
                      "sampler": {"name": "random", "seed": 0}}, store)
    space = distributions(record["search_space"])
    training_ids = []
    for _ in range(jobs):
        job_id, _ = store.add_job(record)
        study = optuna.create_study(study_name=job_id, storage=study_storage(store, job_id), direction="maximize")
        for number in range(trials):
            trial = study.ask(space)
            training = {"config": CONFIG, "job_id": job_id, "trial_number": number, "params": trial.params}
            for epoch in (1, 2, 3):
                trial.report(0.1 * epoch + 0.001 * number, epoch)
            if number < trials - 2:
                study.tell(trial, 0.3 + 0.001 * number)
                training.update(status="completed", metrics={"top1_accuracy": 0.3 + 0.001 * number})
            else:
                training.update(status="running", executor="bench", run_id=f"bench:{job_id}:{number}", attempt=1)
            training_id = store.add_training(training)
            for epoch in (1, 2, 3):
                store.put_result(training_id, {"epoch": epoch, "val": {"top1_accuracy": 0.1 * epoch + 0.001 * number}})
            if number == trials - 1:
                training_ids.append(training_id)
    return training_ids


def _time_search_ticks(open_store, watched: str, ticks: int) -> tuple[float, float]:
    """Median tick with one store object for every tick, and with a store opened per tick."""
    executor = IdleExecutor(capacity=1000)
    store = open_store()
    tick(store, executor, say=lambda line: None)  # each job's first step since it was filled
    epoch, medians = 3, []
    for fresh in (False, True):
        times = []
        for _ in range(ticks):
            epoch += 1
            store.put_result(watched, {"epoch": epoch, "val": {"top1_accuracy": 0.1 * epoch}})
            start = time.perf_counter()
            if fresh:
                store = open_store()
            tick(store, executor, say=lambda line: None)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return medians[0], medians[1]


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
        times = {}
        for name, jobs, trials in (("small", 1, 10), ("large", 10, 100)):
            path = Path(folder) / f"search-{name}.db"
            watched = _fill_search_jobs(SQLiteStore(path), jobs, trials)[0]
            times[name] = _time_search_ticks(lambda: SQLiteStore(path), watched, args.ticks)
        for index, kind in enumerate(("long-running micontrol --loop", "first tick of a process")):
            small, large = times["small"][index], times["large"][index]
            print(f"sqlite    {kind}: tick with 1 search job of 10 trials {small * 1000:6.1f} ms, with 10 of "
                  f"100 trials {large * 1000:6.1f} ms: ratio {large / small:.2f} (target <= 3)")


if __name__ == "__main__":
    main()
