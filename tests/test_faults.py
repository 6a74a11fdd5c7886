"""The service under faults, across real processes on the embedded store: fenced attempts,
stopped runs, several controller hosts, launch failures, crashes, store outages."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mitorch.service.executors import LocalExecutor
from mitorch.store.base import DB_NOW
from tests.test_service import Service

pytestmark = pytest.mark.slow


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return Service(tmp_path)


def wait_for(condition, what: str, timeout: float = 300, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return value


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_refused_epoch_write_stops_the_process(service: Service) -> None:
    from mitorch.store import open_store

    training_id = service.submit_slow_training(epochs=20)
    store = open_store(service.env["MITORCH_DB_URI"])
    executor = {"executor": "local:host-a", "dispatched_at": DB_NOW}
    assert store.claim_training(executor, new_attempt=executor)["attempt"] == 1
    # Started as an executor starts it, but as this test's child, so its exit status can be read;
    # its heartbeat never beats, so an epoch-end write is the first to be refused.
    env = {**os.environ, **service.env, "MITORCH_HEARTBEAT_S": "3600"}
    log = service.root / "attempt-1.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "mitorch.cli.mitrain", "--training-id", training_id,
                                    "--attempt", "1"], stdout=output, stderr=subprocess.STDOUT, env=env,
                                   cwd=service.root)
    try:
        wait_for(lambda: store.list_results(training_id) or process.poll() is not None, "its first epoch")
        # Another controller takes the training over (as after an expired lease): attempt 2 runs.
        assert store.update_training(training_id, {"status": "new"}, attempt=1)
        executor = {"executor": "local:host-b", "dispatched_at": DB_NOW}
        assert store.claim_training(executor, new_attempt=executor)["attempt"] == 2
        assert store.update_training(training_id, {"status": "running"}, expected_status="queued", attempt=2)
        replaced = store.get_training(training_id)
        recorded = len(store.list_results(training_id))  # attempt 1 can record no more from here on
        assert process.wait(timeout=300) == 75, log.read_text()
    finally:
        process.kill()
        process.wait()
    text = log.read_text()
    # Its next epoch-end write (the epoch after the last it recorded, or that epoch's check for
    # requests) was refused, and it trained no epoch after that one.
    assert f"epoch {recorded}/20 done" in text and f"epoch {recorded + 2}/20 done" not in text
    assert text.splitlines()[-1].endswith("refused, attempt 2 replaced it; this process stops and writes nothing more")
    assert [(r["epoch"], r["attempt"]) for r in store.list_results(training_id)] == [(e, 1) for e in
                                                                                   range(1, recorded + 1)]
    assert store.get_training(training_id) == replaced
    assert not list(service.root.glob(f"art/{training_id}/attempt-1/model.pt"))


def test_a_silent_live_run_is_stopped_before_its_training_runs_again(service: Service) -> None:
    training_id = service.start_slow_training(epochs=3)
    pid = service.training(training_id)["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive but silent: no heartbeat, no epoch
    time.sleep(2.5)
    env = {"MITORCH_HEARTBEAT_TIMEOUT_S": "2", "MITORCH_KILL_GRACE_S": "1"}
    actions = service("micontrol", **env).stdout.splitlines()
    assert actions == [f"stopping {training_id} (no heartbeat for 0:00:02)"]  # stopped, not re-dispatched
    assert service.status(training_id) == "running" and alive(pid)
    time.sleep(1.5)
    actions = service("micontrol", **env).stdout.splitlines()
    assert actions[0].startswith(f"killed {training_id}")
    wait_for(lambda: not alive(pid), "the killed process to end", timeout=30)
    actions = service.tick_until(lambda: service.status(training_id) == "completed")
    assert any(a.startswith(f"requeued {training_id} (retry 1 of 2: its process is gone") for a in actions)
    attempts = service.training(training_id)["attempts"]
    assert [a["outcome"] for a in attempts] == ["lost", "completed"]
    assert attempts[0]["ended_at"] <= attempts[1]["started_at"]
    assert [r["epoch"] for r in service.query(training_id)["results"]] == [1, 2, 3]


def test_cancel_stops_a_stale_run_and_a_dispatched_run_never_starts(service: Service) -> None:
    training_id = service.start_slow_training(epochs=20)
    pid = service.training(training_id)["pid"]
    # Its heartbeat is stale from the controller's point of view; cancel must still stop it.
    result = service("micontrol", "cancel", training_id, MITORCH_HEARTBEAT_TIMEOUT_S="1")
    assert result.stdout.strip() == f"cancel-requested {training_id} (stopping its process)"
    wait_for(lambda: not alive(pid), "the cancelled process to stop", timeout=60)
    training = service.training(training_id)
    assert training["status"] == "cancelled" and training["attempts"][0]["outcome"] == "cancelled"

    queued = service.submit("max_epochs=1")
    # Its heartbeat never beats, so its refused start alone must stop it before it trains.
    dispatched = service("micontrol", MITORCH_HEARTBEAT_S="3600").stdout.strip()
    assert dispatched.startswith(f"dispatched {queued}")
    assert service("micontrol", "cancel", queued).stdout.strip() == f"cancelled {queued}"
    run_pid = int(service.training(queued)["run_id"].rsplit(":", 2)[1])
    wait_for(lambda: not alive(run_pid), "the dispatched run to exit", timeout=120)
    training = service.training(queued)
    assert training["status"] == "cancelled" and service.query(queued)["results"] == []
    assert "running" not in [h["status"] for h in training["status_history"]] and training.get("pid") is None
    log = Path(service.root / "art" / queued / "attempt-1" / "train.log").read_text()
    assert f"training {queued} attempt 1: start refused, it is cancelled" in log
    assert "epoch 1/1 done" not in log  # it stopped at its start, before training


def test_the_liveness_check_matches_the_training_and_attempt_not_just_the_pid(tmp_path: Path) -> None:
    executor = LocalExecutor(capacity=1)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--training-id", "other",
                              "--attempt", "1"])
    try:
        run_id = f"{executor.name}:{other.pid}:"
        assert executor.state({"id": "other", "attempt": 1, "run_id": run_id}) == "running"
        # The same pid seen from a training whose process it is not (a reused pid): gone.
        assert executor.state({"id": "mine", "attempt": 1, "run_id": run_id}) == "gone"
        assert executor.state({"id": "other", "attempt": 2, "run_id": run_id}) == "gone"
        assert executor.state({"id": "other", "attempt": 1, "run_id": run_id + "1"}) == "gone"  # start time
        executor.cancel({"id": "mine", "attempt": 1, "run_id": run_id})
        assert other.poll() is None  # an unrelated process is never signalled
        assert executor.state({"id": "other", "attempt": 1, "run_id": f"local:elsewhere:{other.pid}:"}) == "unknown"
    finally:
        other.kill()
        other.wait()


def test_two_hosts_share_one_database_each_with_its_own_capacity(service: Service) -> None:
    ids = [service.submit("max_epochs=2", "--allow-duplicate") for _ in range(2)]
    first = service("micontrol", MITORCH_HOSTNAME="host-a").stdout.splitlines()
    second = service("micontrol", MITORCH_HOSTNAME="host-b").stdout.splitlines()
    assert len(first) == 1 and first[0].startswith(f"dispatched {ids[0]} to local:host-a:")
    assert len(second) == 1 and second[0].startswith(f"dispatched {ids[1]} to local:host-b:")
    # Each host reconciles only its own runs: host-b never requeues host-a's training.
    for _ in range(3):
        assert not [a for a in service("micontrol", MITORCH_HOSTNAME="host-b").stdout.splitlines()
                    if ids[0] in a]
    wait_for(lambda: all(service.status(t) == "completed" for t in ids), "both trainings", timeout=300)
    assert [service.training(t)["executor"] for t in ids] == ["local:host-a", "local:host-b"]


def test_a_lost_hosts_training_is_taken_over_after_its_lease_and_fenced(service: Service) -> None:
    env_a = {"MITORCH_HOSTNAME": "host-a", "MITORCH_HEARTBEAT_TIMEOUT_S": "4"}
    env_b = {"MITORCH_HOSTNAME": "host-b", "MITORCH_HEARTBEAT_TIMEOUT_S": "4"}
    training_id = service.start_slow_training(epochs=3, **env_a)
    old = service.training(training_id)
    os.kill(old["pid"], signal.SIGSTOP)  # host-a's machine freezes: its controller stops ticking too
    assert service("micontrol", **env_b).stdout.strip() == ""  # not yet: the lease has time left
    time.sleep(4.5)
    actions = service("micontrol", **env_b).stdout.splitlines()
    assert actions[0].startswith(f"requeued {training_id} (retry 1 of 2: its executor local:host-a stopped ticking")
    assert actions[1].startswith(f"dispatched {training_id} to local:host-b:")
    recorded = len(service.query(training_id)["results"])
    # Attempt 2 runs before the old process wakes up: only the attempt, not the status, refuses its writes.
    wait_for(lambda: (t := service.training(training_id))["status"] == "running" and t["attempt"] == 2,
             "attempt 2 to start")
    os.kill(old["pid"], signal.SIGCONT)
    wait_for(lambda: not alive(old["pid"]), "the old attempt to exit", timeout=60)
    assert "refused, attempt 2 replaced it" in Path(old["log"]).read_text()
    service.tick_until(lambda: service.status(training_id) == "completed", MITORCH_HOSTNAME="host-b")
    training = service.training(training_id)
    assert [a["executor"] for a in training["attempts"]] == ["local:host-a", "local:host-b"]
    assert training["attempts"][1]["outcome"] == "completed"
    results = service.query(training_id)["results"]
    assert [r["epoch"] for r in results] == [1, 2, 3]
    assert {r["attempt"] for r in results[recorded:]} == {2}  # nothing from the old process once replaced


def test_the_heartbeat_and_the_training_ride_out_a_locked_database(service: Service) -> None:
    env = {"MITORCH_SQLITE_BUSY_TIMEOUT_S": "0.5", "MITORCH_HEARTBEAT_S": "0.5"}
    # More epochs than the test waits for, so the training is still running while the lock is
    # held however fast this machine trains; the lock is held until a heartbeat has failed.
    training_id = service.start_slow_training(epochs=50, **env)
    log = Path(service.training(training_id)["log"])
    lock = sqlite3.connect(service.root / "db.sqlite", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    wait_for(lambda: "heartbeat failed" in log.read_text(), "a failed heartbeat", timeout=60)
    time.sleep(2)  # longer than the busy timeout and several heartbeats
    lock.execute("ROLLBACK")
    lock.close()
    wait_for(lambda: "heartbeat back after" in log.read_text(), "the heartbeat to come back", timeout=60)
    # The training goes on: it records another epoch, then stops when asked.
    epochs = len(service.query(training_id)["results"])
    wait_for(lambda: len(service.query(training_id)["results"]) > epochs, "another epoch", timeout=300)
    assert service.status(training_id) == "running"
    service("micontrol", "cancel", training_id)
    wait_for(lambda: service.status(training_id) == "cancelled", "the training to stop", timeout=300)


def test_a_claim_whose_tick_died_is_requeued_within_the_grace_period(service: Service) -> None:
    from mitorch.service.executors import local_host
    from mitorch.store import open_store

    training_id = service.submit("max_epochs=1")
    store = open_store(service.env["MITORCH_DB_URI"])
    executor = f"local:{local_host()}"
    # A tick's claim, as _dispatch makes it; then the tick died before launching.
    assert store.claim_training({"executor": executor, "dispatched_at": DB_NOW}, new_attempt={"executor": executor})
    time.sleep(1.5)
    actions = service("micontrol", MITORCH_START_GRACE_S="1").stdout.splitlines()
    assert actions[0] == f"requeued {training_id} (it was claimed but never launched (its tick stopped); no retry used)"
    assert actions[1].startswith(f"dispatched {training_id}")
    service.tick_until(lambda: service.status(training_id) == "completed")
    assert service.training(training_id).get("retries", 0) == 0


def test_the_loop_survives_a_failing_tick(service: Service) -> None:
    env = {**os.environ, **service.env, "MITORCH_LOCAL_CAPACITY": "many"}
    loop = subprocess.Popen([str(Path(sys.executable).parent / "micontrol"), "--loop", "--interval", "0.3"],
                            cwd=service.root, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert loop.poll() is None, "the loop stopped after a failing tick"
    loop.terminate()
    lines = loop.communicate(timeout=30)[1].splitlines()
    assert len(lines) >= 2
    assert set(lines) == {"micontrol: tick failed: MITORCH_LOCAL_CAPACITY must be a whole number, got 'many'"}


def test_requeue_of_a_completed_training_is_a_fresh_run(service: Service) -> None:
    training_id = service.submit("max_epochs=1")
    service.tick_until(lambda: service.status(training_id) == "completed")
    first = service.training(training_id)
    assert service("micontrol", "requeue", training_id).stdout.startswith(f"requeued {training_id} (a fresh run")
    service.tick_until(lambda: service.status(training_id) == "completed")
    training = service.training(training_id)
    assert training["history"][0]["metrics"] == first["metrics"] and training["metrics"]
    assert training["attempt"] == 2 and Path(training["weights"]).is_file()
    assert "starts from the checkpoint" not in Path(training["log"]).read_text()
    assert not list(service.root.glob("art/*/attempt-*/last.pt"))  # stored weights: checkpoints removed


def test_miquery_pages_a_long_queue_and_escapes_stored_strings(service: Service) -> None:
    from mitorch.store import open_store

    store = open_store(service.env["MITORCH_DB_URI"])
    config = {"model": {"_target_": "mitorch.models.resnet"}, "optimizer": {"lr": 0.1}, "max_epochs": 1}
    ids = store.add_trainings([{"config": config} for _ in range(10_000)])
    failed = store.add_training({"config": config, "status": "failed", "error": "bad [/red] name [bold]x"})
    result = service("miquery", COLUMNS="200")
    assert result.returncode == 0, result.stderr
    assert ids[0] in result.stdout and ids[19] in result.stdout and ids[20] not in result.stdout
    assert "and 9980 more" in result.stdout
    assert failed in result.stdout and "bad [/red] name [bold]x" in result.stdout
    one = service("miquery", failed)
    assert one.returncode == 0 and "bad [/red] name [bold]x" in one.stdout


def test_a_newer_database_is_refused_in_one_line(service: Service) -> None:
    path = service.root / "db.sqlite"
    assert service("miquery").returncode == 0
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    for prog in ("miquery", "micontrol", "misubmit"):
        result = service(prog)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert "written by a newer MiTorch (schema 99" in result.stderr.strip().splitlines()[-1]
