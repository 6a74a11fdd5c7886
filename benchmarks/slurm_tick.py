"""The Slurm executor's figures, on a private single-node Slurm cluster started for the run (as the
suite's fixture does: tests/slurm_cluster.py; as root, with Debian's slurmctld, slurmd and munge).

1. A controller tick with 100 of the executor's jobs in Slurm's queue, against one with 1: the
   jobs are sent held (--hold), so they stay PENDING and every tick asks squeue about each.
   Printed as the median of several ticks and their ratio.
2. The time from a tick that dispatches a tiny queued training (generated data, image_size=32,
   one epoch) to its first epoch's result in the store: sbatch, Slurm's start of the job,
   mitrain's imports and one epoch.

    python benchmarks/slurm_tick.py [--jobs 100] [--ticks 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers and cluster

from mitorch.service.controller import Settings, tick  # noqa: E402
from mitorch.service.executors.slurm import SlurmExecutor  # noqa: E402
from mitorch.service.executors.slurm_settings import SlurmSettings  # noqa: E402
from mitorch.store.sqlite import SQLiteStore  # noqa: E402
from tests.helpers import BIN, make_text_dataset  # noqa: E402
from tests.slurm_cluster import start_cluster  # noqa: E402


def _tick_seconds(store: SQLiteStore, executor: SlurmExecutor, ticks: int) -> float:
    times = []
    for _ in range(ticks):
        began = time.perf_counter()
        tick(store, executor, say=lambda line: None, settings=Settings())
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _held_queue(folder: Path, jobs: int, ticks: int) -> float:
    """Median tick time with `jobs` held jobs of the executor in Slurm's queue."""
    store = SQLiteStore(folder / "db.sqlite")
    executor = SlurmExecutor(replace(SlurmSettings.from_env(), capacity=jobs, extra_args=["--hold"]))
    for _ in range(jobs):
        store.add_training({"config": {"max_epochs": 1}})
    tick(store, executor, say=lambda line: None, settings=Settings())  # sends them all
    seconds = _tick_seconds(store, executor, ticks)
    subprocess.run(["scancel", "--name", ",".join(f"mitorch-{t['id']}-1" for t in store.list_trainings())],
                   check=False, capture_output=True)
    store.close()
    return seconds


def _first_epoch(folder: Path) -> float:
    data = make_text_dataset(folder / "data", num_train=16, num_val=8)
    os.environ["MITORCH_DB_URI"] = f"sqlite:///{folder / 'db.sqlite'}"
    done = subprocess.run([str(BIN / "misubmit"), f"data.train={data.train}", f"data.val={data.val}",
                           "image_size=32", "batch_size=8", "data.num_workers=0", "max_epochs=1"],
                          capture_output=True, text=True, check=True)
    training_id = done.stdout.strip()
    store = SQLiteStore(folder / "db.sqlite")
    executor = SlurmExecutor()
    began = time.perf_counter()
    tick(store, executor, say=lambda line: None, settings=Settings())
    while not store.list_results(training_id):
        if time.perf_counter() - began > 300:
            raise SystemExit(f"no epoch result in 300 s; see {folder / 'art'}")
        time.sleep(0.05)
    seconds = time.perf_counter() - began
    while store.get_training(training_id)["status"] == "running":
        time.sleep(0.2)
    store.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=5)
    args = parser.parse_args()
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix="mitorch-slurm-")))
    try:
        for key in [key for key in os.environ if key.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))]:
            del os.environ[key]
        with tempfile.TemporaryDirectory(prefix="mitorch-slurm-bench-") as scratch:
            work = Path(scratch)
            os.environ.update(SLURM_CONF=str(cluster.conf), MITORCH_ARTIFACTS_URI=str(work / "art"),
                              MITORCH_SLURM_PYTHON=sys.executable, OMP_NUM_THREADS="1")
            for name in ("one", "many", "train"):
                (work / name).mkdir()
            one = _held_queue(work / "one", 1, args.ticks)
            many = _held_queue(work / "many", args.jobs, args.ticks)
            print(f"tick with 1 job in Slurm's queue:    {one:.3f} s (median of {args.ticks})")
            print(f"tick with {args.jobs} jobs in Slurm's queue: {many:.3f} s ({many / one:.0f}x; "
                  f"{(many - one) / (args.jobs - 1) * 1000:.0f} ms a job)")
            print(f"tick -> first epoch's result in the store: {_first_epoch(work / 'train'):.1f} s")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
