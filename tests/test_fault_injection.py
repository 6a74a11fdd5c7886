"""Random faults across real processes: two controller hosts on one embedded database, training
processes and ticks killed, runs frozen until their heartbeats go stale, the database locked
for longer than a heartbeat. At the end every training has completed exactly once, no two
processes of one training ever ran at the same time, and no result was lost."""
from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import make_text_dataset
from tests.helpers import validation_metrics
from tests.test_faults import alive
from tests.test_service import Service

pytestmark = pytest.mark.slow

HOSTS = ("host-a", "host-b")
EPOCHS = 2
MIN_FAULTS, MAX_FAULTS, FAULT_EVERY_S = 8, 14, 2.0
ENV = {"MITORCH_HEARTBEAT_S": "0.5", "MITORCH_HEARTBEAT_TIMEOUT_S": "6", "MITORCH_START_GRACE_S": "3",
       "MITORCH_START_TIMEOUT_S": "180",
       "MITORCH_KILL_GRACE_S": "2", "MITORCH_MAX_RETRIES": "100", "MITORCH_TICK_LEASE_S": "3",
       "MITORCH_TICK_WAIT_S": "1", "MITORCH_SQLITE_BUSY_TIMEOUT_S": "1", "MITORCH_LOCAL_CAPACITY": "1"}
_STAMP = re.compile(r"^mitrain: (\S+) training \S+ attempt (\d+) (started on|ended:)", re.MULTILINE)
_STOPPED = re.compile(r"^mitrain: (\S+) .*this process stops and writes nothing more", re.MULTILINE)


class DeathWatch(threading.Thread):
    """Notes when each training process is first seen gone (every 50 ms), for processes that
    were killed before they could log their end."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: set[int] = set()
        self.gone: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            for pid in list(self.pids - self.gone.keys()):
                if not alive(pid):
                    self.gone[pid] = time.time()


def _tick(service: Service, host: str) -> subprocess.Popen:
    env = {**os.environ, **service.env, **ENV, "MITORCH_HOSTNAME": host}
    return subprocess.Popen([str(Path(sys.executable).parent / "micontrol")], cwd=service.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _intervals(training: dict, watch: DeathWatch) -> list[tuple[int, float, float]]:
    """(attempt, start, end) of every attempt that started training, from its own log."""
    intervals = []
    for number, attempt in enumerate(training.get("attempts", []), 1):
        if not attempt.get("log") or not Path(attempt["log"]).exists():
            continue
        text = Path(attempt["log"]).read_text()
        starts = [datetime.fromisoformat(m[0]).timestamp() for m in _STAMP.findall(text) if m[2] == "started on"]
        if not starts:
            continue
        ends = [datetime.fromisoformat(m[0]).timestamp() for m in _STAMP.findall(text) if m[2] == "ended:"]
        ends += [datetime.fromisoformat(m).timestamp() for m in _STOPPED.findall(text)]
        end = min(ends) if ends else watch.gone.get(attempt["pid"])
        assert end is not None, f"attempt {number} of {training['id']} never ended"
        intervals.append((number, starts[0], end))
    return intervals


def test_random_faults_on_two_hosts_lose_nothing_and_never_run_a_training_twice(tmp_path: Path) -> None:
    service = Service(tmp_path)
    data = make_text_dataset(tmp_path / "faults", num_train=96, num_val=8)
    common = [f"data.train={data.train}", f"data.val={data.val}", "image_size=32", "batch_size=8",
              "data.num_workers=0", f"max_epochs={EPOCHS}"]
    ids = [service("misubmit", *common, "--allow-duplicate").stdout.strip() for _ in range(4)]
    assert all(len(i) == 24 for i in ids)
    rng = random.Random(1234)
    faults: Counter[str] = Counter()
    watch = DeathWatch()
    watch.start()
    frozen: list[tuple[int, float]] = []
    deadline = time.monotonic() + 900
    from mitorch.store import open_store

    store = open_store(service.env["MITORCH_DB_URI"])

    def running_pids() -> list[int]:
        trainings = store.list_trainings(["running"])
        return [t["pid"] for t in trainings if t.get("pid") and alive(t["pid"])]

    last_fault = time.monotonic()
    while True:
        trainings = {i: store.get_training(i) for i in ids}
        for training in trainings.values():
            watch.pids.update(a["pid"] for a in training.get("attempts", []) if a.get("pid"))
        if all(t["status"] == "completed" for t in trainings.values()):
            if sum(faults.values()) >= MIN_FAULTS:
                break
            # Done before enough faults (a fast machine): one more training keeps the service busy.
            ids.append(service("misubmit", *common, "--allow-duplicate").stdout.strip())
            continue
        assert time.monotonic() < deadline, f"not all completed: {[t['status'] for t in trainings.values()]}"
        # Faults come a few seconds apart, up to MAX_FAULTS; then the service is left to finish.
        inject = sum(faults.values()) < MAX_FAULTS and time.monotonic() - last_fault > FAULT_EVERY_S
        ticks = [_tick(service, host) for host in HOSTS]
        if inject and rng.random() < 0.2:  # a tick killed at a random point
            time.sleep(rng.uniform(0.0, 0.6))
            ticks[rng.randrange(2)].kill()
            faults["tick killed"] += 1
            inject, last_fault = False, time.monotonic()
        for tick in ticks:
            tick.wait(timeout=120)
        pids = running_pids()
        fault = rng.random()
        if inject and pids:
            last_fault = time.monotonic()
            if fault < 0.35:
                os.kill(rng.choice(pids), signal.SIGKILL)
                faults["training SIGKILLed"] += 1
            elif fault < 0.6:
                os.kill(rng.choice(pids), signal.SIGTERM)
                faults["training SIGTERMed (preempted)"] += 1
            elif fault < 0.75 and not frozen:
                pid = rng.choice(pids)
                os.kill(pid, signal.SIGSTOP)  # its heartbeat goes stale; its controller must stop it
                frozen.append((pid, time.monotonic()))
                faults["training frozen past its heartbeat timeout"] += 1
            else:
                lock = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
                lock.execute("BEGIN EXCLUSIVE")
                time.sleep(2.5)  # longer than the busy timeout and several heartbeats
                lock.execute("ROLLBACK")
                lock.close()
                faults["database locked for 2.5 s"] += 1
        for pid, since in list(frozen):
            if time.monotonic() - since > 15:  # thawed late, if still alive: fencing must stop it
                if alive(pid):
                    os.kill(pid, signal.SIGCONT)
                frozen.remove((pid, since))
        time.sleep(0.5)

    time.sleep(0.5)
    watch.stop.set()
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(faults.items()))
    print(f"\nfaults injected and survived: {sum(faults.values())} ({summary})")
    assert sum(faults.values()) >= MIN_FAULTS, summary
    attempts_total = 0
    for training_id in ids:
        training = store.get_training(training_id)
        history = [h["status"] for h in training["status_history"]]
        assert history.count("completed") == 1 and history[-1] == "completed", history
        assert training["metrics"] and Path(training["weights"]).is_file()
        results = store.list_results(training_id)
        assert [r["epoch"] for r in results] == list(range(1, EPOCHS + 1))
        assert results[-1]["val"] == validation_metrics(training["metrics"])
        intervals = sorted(_intervals(training, watch), key=lambda i: i[1])
        attempts_total += len(training["attempts"])
        for (a, _, end), (b, start, _) in zip(intervals, intervals[1:]):
            assert end <= start, f"{training_id}: attempts {a} and {b} ran at the same time"
    print(f"attempts: {attempts_total} for {len(ids)} trainings")
