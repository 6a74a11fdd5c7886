"""How much sooner an asynchronous search finishes than a batch-barrier one of the same capacity.

The same search (a fixed list of trial durations, each drawn from 1x, 2x, 3x or 4x a unit, as
trials of 1 to 4 epochs; capacity 4) runs twice on simulated trainings whose durations are known:
  - by MiTorch's controller: a search job in the embedded store, `tick()` every 50 ms with an
    executor whose runs are threads that write to the store what a training writes (running,
    one epoch's result, completed with its metrics) after the trial's duration; a finished trial
    is told and its slot refilled at the next tick;
  - by a batch-barrier loop (the pattern of Hydra's Optuna sweeper): ask for 4 trials, run them,
    wait for all 4, tell them, ask for the next 4.
Prints both wall times and their ratio (target: at most 0.8), and the best any asynchronous
scheduler could do with these durations (each trial started the moment a slot frees, no
overhead), so that the controller's own overhead shows apart from the durations drawn.

    python benchmarks/search_throughput.py [--trials 40] [--unit 1.5] [--seed 0]
"""
from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import optuna

from mitorch.service.controller import Settings, tick
from mitorch.service.executors import Executor
from mitorch.service.search.job import make_sampler, prepare
from mitorch.service.search.space import distributions
from mitorch.store.base import DB_NOW
from mitorch.store.sqlite import SQLiteStore

CAPACITY = 4
SPACE = {"optimizer.lr": "tag(log, interval(1e-4, 1e-1))"}


def objective(params: dict[str, Any]) -> float:
    """A known top-1 accuracy for a learning rate: best at 1e-2."""
    return 1.0 - (math.log10(params["optimizer.lr"]) + 2) ** 2 / 9


class SimulatedExecutor(Executor):
    """Runs each trial's training as a thread that writes what a training writes to the store,
    after the trial's known duration."""

    name = "simulated"

    def __init__(self, db: Path, durations: list[float]) -> None:
        self.db, self.durations, self.capacity = db, durations, CAPACITY
        self.threads: dict[str, threading.Thread] = {}

    def launch(self, training: dict[str, Any], gpu: int | None = None) -> str:
        thread = threading.Thread(target=self._train, args=(training,), daemon=True)
        self.threads[training["id"]] = thread
        thread.start()
        return f"simulated:{training['id']}"

    def _train(self, training: dict[str, Any]) -> None:
        store, attempt, training_id = SQLiteStore(self.db), training["attempt"], training["id"]
        store.update_training(training_id, {"status": "running", "started_at": DB_NOW, "heartbeat_at": DB_NOW},
                              expected_status="queued", attempt=attempt)
        time.sleep(self.durations[training["trial_number"]])
        value = objective(training["params"])
        store.put_result(training_id, {"epoch": 1, "val": {"top1_accuracy": value}}, attempt=attempt)
        store.update_training(training_id, {"status": "completed", "metrics": {"top1_accuracy": value},
                                            "completed_at": DB_NOW}, expected_status="running", attempt=attempt)
        store.close()

    def state(self, training: dict[str, Any]) -> str:
        thread = self.threads.get(training["id"])
        return "running" if thread is not None and thread.is_alive() else "gone"

    def cancel(self, training: dict[str, Any], force: bool = False) -> None:
        pass


def asynchronous(folder: Path, durations: list[float]) -> float:
    """Wall time for MiTorch's controller to finish the search."""
    db = folder / "search.db"
    store = SQLiteStore(db)
    job = {"job_type": "search", "overrides": ["max_epochs=1"], "search_space": SPACE,
           "sampler": {"name": "random", "seed": 0}, "pruner": "none", "n_trials": len(durations),
           "max_concurrent": CAPACITY}
    job_id, _ = store.add_job(prepare(job, store))
    executor = SimulatedExecutor(db, durations)
    settings = Settings(tick_wait_s=0)
    start = time.perf_counter()
    while store.get_job(job_id)["status"] == "running":
        tick(store, executor, say=lambda line: None, settings=settings)
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    job = store.get_job(job_id)
    assert job["status"] == "completed" and job["counts"]["complete"] == len(durations), job
    store.close()
    return elapsed


def batch_barrier(durations: list[float]) -> float:
    """Wall time for a loop that asks for CAPACITY trials, waits for all of them, then tells."""
    space = distributions(SPACE)
    study = optuna.create_study(direction="maximize", sampler=make_sampler({"name": "random", "seed": 0}, space))
    start = time.perf_counter()
    while len(study.trials) < len(durations):
        batch = [study.ask(space) for _ in range(min(CAPACITY, len(durations) - len(study.trials)))]
        threads = [threading.Thread(target=time.sleep, args=(durations[trial.number],)) for trial in batch]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for trial in batch:
            study.tell(trial, objective({"optimizer.lr": trial.params["optimizer.lr"]}))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--unit", type=float, default=1.5, help="seconds of the shortest trial (1.5)")
    parser.add_argument("--seed", type=int, default=0, help="of the durations drawn (0)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(args.seed)
    durations = [args.unit * rng.choice((1, 2, 3, 4)) for _ in range(args.trials)]
    free_at = [0.0] * CAPACITY
    for duration in durations:  # each trial starts the moment a slot frees
        heapq.heappush(free_at, heapq.heappop(free_at) + duration)
    ideal = max(free_at)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MITORCH_DB_URI"] = f"sqlite:///{Path(folder) / 'search.db'}"
        os.environ["MITORCH_ARTIFACTS_URI"] = str(Path(folder) / "artifacts")
        barrier = batch_barrier(durations)
        controller = asynchronous(Path(folder), durations)
    print(f"{args.trials} trials, capacity {CAPACITY}, durations {min(durations):.2f}-{max(durations):.2f} s "
          f"(sum/capacity {sum(durations) / CAPACITY:.2f} s)")
    print(f"batch-barrier loop          {barrier:7.2f} s")
    print(f"micontrol ticks             {controller:7.2f} s")
    print(f"asynchronous, no overhead   {ideal:7.2f} s (ratio {ideal / barrier:.2f})")
    print(f"controller overhead {(controller - ideal) / args.trials * 1000:.0f} ms a trial")
    print(f"ratio {controller / barrier:.2f} (target <= 0.8)")


if __name__ == "__main__":
    main()
