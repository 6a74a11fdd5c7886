"""The controller's guarantees one at a time: leases that fence, takeover that honours a cancel or
a pruning, a tick that survives one training's failing write, settings refused before anything is
claimed. The commands run in this process, on the embedded store (their runs are still processes):
the process boundary is not what these tests are about."""
from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from mitorch.service.search import step as search
from mitorch.service.controller import Settings, tick
from mitorch.service.executors import Executor, LocalExecutor
from mitorch.service.leases import JOBS_LEASE, Lease
from mitorch.store import LeaseLost, StoreError
from mitorch.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The embedded store, which the commands run in this process open too."""
    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "art"))
    monkeypatch.setenv("MITORCH_TICK_WAIT_S", "0")
    store = SQLiteStore(tmp_path / "db.sqlite")
    yield store
    store.close()


def _lost_training(store: SQLiteStore, **fields) -> str:
    """A running training of a host that stopped ticking, whose heartbeat is about to expire."""
    training_id = store.add_training({"config": {"max_epochs": 1}, **fields})
    store.claim_training({"executor": "local:gone-host", "dispatched_at": "x", "run_id": "local:gone-host:1:1"},
                         new_attempt={"executor": "local:gone-host"})
    store.update_training(training_id, {"status": "running", "heartbeat_at": store.clock()})
    return training_id


@pytest.mark.parametrize("request_field, status", [("cancel_requested", "cancelled"), ("prune_requested", "pruned")])
def test_a_takeover_records_a_cancel_or_pruning_asked_while_the_host_was_down(store, tmp_path: Path,
                                                                              request_field: str, status: str) -> None:
    training_id = _lost_training(store)
    store.update_training(training_id, {request_field: True})  # asked while its host is down
    time.sleep(1.2)
    actions = _local_tick(store, capacity=1, heartbeat_timeout=timedelta(seconds=1))
    training = store.get_training(training_id)
    # Recorded as asked, not requeued: no retry used, no new attempt, nothing runs it again.
    assert training["status"] == status and training["attempt"] == 1 and training.get("retries", 0) == 0, actions
    assert training["attempts"][0]["outcome"] == status
    assert any(line.startswith(f"{status} {training_id}") for line in actions), actions


def test_a_training_that_may_be_alive_is_not_taken_over_while_its_executor_ticks(store, tmp_path: Path) -> None:
    training_id = _lost_training(store)
    store.acquire_lease("executor:local:gone-host", "local:gone-host", 60)  # its controller still ticks
    time.sleep(1.2)
    assert _local_tick(store, capacity=0, heartbeat_timeout=timedelta(seconds=1)) == []
    assert store.get_training(training_id)["status"] == "running"


def test_one_trainings_failing_write_does_not_stop_the_tick(store) -> None:
    broken, fine = (_lost_training(store) for _ in range(2))
    real = store.update_training

    def update(training_id, fields, **kwargs):
        if training_id == broken:
            raise StoreError("write refused by the server")
        return real(training_id, fields, **kwargs)

    store.update_training = update
    time.sleep(0.2)
    lines = tick(store, LocalExecutor(capacity=0), say=lambda line: None,
                 settings=Settings(heartbeat_timeout=__import__("datetime").timedelta(seconds=0.1), tick_wait_s=0))
    assert any(line.startswith(f"skipped {broken} this tick (write refused by the server)") for line in lines), lines
    assert any(line.startswith(f"requeued {fine}") for line in lines), lines
    assert store.get_training(fine)["status"] == "new" and store.get_training(broken)["status"] == "running"


class _SlowExecutor(Executor):
    """Local in name only: each launch takes longer than the tick's lease, and records nothing."""

    def __init__(self, store: SQLiteStore) -> None:
        self.name, self.capacity, self.store, self.launched = "local:slow", 3, store, []

    def launch(self, training, gpu=None) -> str:
        time.sleep(0.5)
        # Meanwhile another tick of this executor took the expired lease over.
        self.store.acquire_lease("tick:local:slow", "another-tick", 60)
        self.launched.append(training["id"])
        return f"run-{len(self.launched)}"

    def state(self, training) -> str:
        return "running"

    def cancel(self, training, force=False) -> bool:
        return True


def test_a_tick_that_lost_its_lease_dispatches_nothing_more(store) -> None:
    for _ in range(3):
        store.add_training({"config": {"max_epochs": 1}})
    executor = _SlowExecutor(store)
    lines = tick(store, executor, say=lambda line: None, settings=Settings(tick_lease_s=0.3, tick_wait_s=0))
    assert len(executor.launched) == 1 and lines[-1].startswith("stopped: "), lines
    assert [t["status"] for t in store.list_trainings()].count("queued") == 1


def test_a_step_whose_lease_was_taken_over_writes_nothing_even_without_renewing(store, tmp_path: Path) -> None:
    from tests.test_search_faults import _job

    job_id = _job(store, tmp_path, n_trials=2, max_concurrent=2)

    class NoRenewal(Lease):
        def keep(self) -> None:  # only the store's fence can stop it
            pass

    late = NoRenewal(store, JOBS_LEASE, "late-step", 0.2)
    assert late.take()
    time.sleep(0.3)
    assert store.acquire_lease(JOBS_LEASE, "another-tick", 60)
    with pytest.raises(LeaseLost):
        search.step(store, lambda line: None, late)
    assert store.read_logs(job_id) == [] and store.list_trainings() == []
    assert store.get_job(job_id).get("watch") is None


def test_a_lease_lost_once_is_never_taken_back_by_a_renewal(store) -> None:
    lease = Lease(store, JOBS_LEASE, "slow-step", 0.2)
    assert lease.take()
    time.sleep(0.3)
    other = Lease(store, JOBS_LEASE, "other-step", 60)
    assert other.take()
    other.release()  # free again, but what the slow step knew may be stale
    with pytest.raises(LeaseLost):
        lease.keep()
    assert store.get_lease(JOBS_LEASE) is None


def test_an_artifacts_uri_the_executor_cannot_use_is_refused_before_a_claim(store, tmp_path: Path, capsys,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.cli import micontrol

    training_id = store.add_training({"config": {"max_epochs": 1}})
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", "s3://bucket/runs")
    with pytest.raises(SystemExit) as exited:
        micontrol.main([])
    stderr = capsys.readouterr().err
    assert exited.value.code != 0 and len(stderr.strip().splitlines()) == 1, stderr
    assert "MITORCH_ARTIFACTS_URI" in stderr and "s3://bucket/runs" in stderr
    training = store.get_training(training_id)
    assert training["status"] == "new" and training.get("attempt", 0) == 0


def test_a_heartbeat_setting_that_does_not_parse_stops_mitrain_at_start(store, capsys,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.cli import mitrain

    training_id = store.add_training({"config": {"max_epochs": 1}})
    monkeypatch.setenv("MITORCH_HEARTBEAT_S", "abc")
    with pytest.raises(SystemExit) as exited:
        mitrain.main(["--training-id", training_id])
    stderr = capsys.readouterr().err
    assert exited.value.code != 0 and stderr.strip() == \
        "mitrain: error: MITORCH_HEARTBEAT_S must be a finite number, got 'abc'", stderr
    assert store.get_training(training_id)["status"] == "new"


def test_a_training_started_by_hand_is_no_controllers_run(store) -> None:
    from mitorch.service.runner import _start_by_hand

    training_id = _lost_training(store)
    store.update_training(training_id, {"status": "new"})  # requeued after its host was lost
    attempt = _start_by_hand(store, store.get_training(training_id))
    training = store.get_training(training_id)
    assert attempt == 2 and training["executor"].startswith("hand:") and training["run_id"] is None
    assert training["attempts"][1]["executor"] == training["executor"]


def test_requeue_of_a_sweeps_training_queues_it_again(store, capsys) -> None:
    from mitorch.cli import micontrol

    job_id, (first, _) = store.add_job({"job_type": "sweep", "status": "running"},
                                       [{"config": {"max_epochs": 1}, "trial_number": n} for n in range(2)])
    store.update_training(first, {"status": "failed", "error": "out of memory"})
    micontrol.main(["requeue", first])  # a failure would exit
    out, err = capsys.readouterr()
    assert out.strip() == f"requeued {first}", out + err
    assert store.get_training(first)["status"] == "new"


def test_max_concurrent_has_an_upper_bound() -> None:
    from mitorch.errors import ConfigError
    from mitorch.service.search.job import MAX_CONCURRENT, settings

    job = {"job_type": "search", "search_space": {"optimizer.lr": "interval(0.01, 0.1)"}}
    assert settings({**job, "max_concurrent": MAX_CONCURRENT}, "multiclass_classification")["max_concurrent"] == 256
    with pytest.raises(ConfigError, match="max_concurrent must be a whole number of at least 1 and at most 256"):
        settings({**job, "max_concurrent": MAX_CONCURRENT + 1}, "multiclass_classification")


def test_add_trials_keeps_a_job_within_the_trials_cap(store, tmp_path: Path) -> None:
    from mitorch.errors import ConfigError
    from mitorch.service.search.job import MAX_TRIALS, add_trials
    from tests.test_search_faults import _job

    job_id = _job(store, tmp_path, n_trials=MAX_TRIALS - 1)
    assert add_trials(store, job_id, 1) == (MAX_TRIALS - 1, MAX_TRIALS)
    with pytest.raises(ConfigError, match=f"would hold {MAX_TRIALS + 1} trials, more than {MAX_TRIALS}"):
        add_trials(store, job_id, 1)
    assert store.get_job(job_id)["n_trials"] == MAX_TRIALS


@pytest.mark.parametrize("argv", [["cancel", "x" * 100_000], ["requeue", "01a2", "a/b"], ["set-priority", "z" * 65, "1"]])
def test_micontrol_refuses_an_impossible_id_before_opening_the_store(argv: list[str], monkeypatch, capsys) -> None:
    from mitorch.cli import micontrol

    def unreachable(*args, **kwargs):
        raise AssertionError("the store was opened")

    monkeypatch.setattr("mitorch.store.open_store", unreachable)
    with pytest.raises(SystemExit) as exited:
        micontrol.main(argv)
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.startswith("micontrol: error: id must be a training or job id")
    assert len(error) < 300 and error.count("\n") == 1


def _local_tick(store: SQLiteStore, capacity: int, **settings) -> list[str]:
    """One tick with this machine's executor, in this process (its runs are still processes)."""
    return tick(store, LocalExecutor(capacity=capacity), say=lambda line: None,
                settings=Settings(tick_wait_s=0, **settings))


def test_a_failed_launch_is_recorded_and_the_others_are_dispatched(store, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "art"))
    monkeypatch.setenv("MITORCH_LOCAL_PYTHON", str(tmp_path / "no-such-python"))
    ids = [store.add_training({"config": {"max_epochs": 1}}) for _ in range(2)]
    for number in range(1, 4):
        actions = _local_tick(store, capacity=2)
        assert len(actions) == 2 and all(f"({number} of 3" in a or "launch failed 3 times" in a for a in actions)
    for training_id in ids:
        training = store.get_training(training_id)
        assert training["status"] == "failed" and training["launch_failures"] == 3
        assert "no-such-python" in training["error"] and "No such file or directory" in training["error"]
        assert [a["outcome"].split(":")[0] for a in training["attempts"]] == ["launch failed"] * 3


def test_a_crash_at_start_up_is_recorded_with_its_log(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'ImportError: libcuda.so.1 cannot be opened' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "art"))
    monkeypatch.setenv("MITORCH_LOCAL_PYTHON", str(broken))
    training_id = store.add_training({"config": {"max_epochs": 1}})
    [dispatched] = _local_tick(store, capacity=1, max_retries=0)
    assert dispatched.startswith(f"dispatched {training_id}")
    training, deadline = store.get_training(training_id), time.monotonic() + 60
    while LocalExecutor(capacity=0).state(training) != "gone":  # the crash, not a guess at its timing
        assert time.monotonic() < deadline, "the broken interpreter did not exit"
        time.sleep(0.05)
    actions = _local_tick(store, capacity=1, max_retries=0)
    assert actions[0].startswith(f"failed {training_id} (it exited before it started (log: ImportError: libcuda")
    assert "libcuda.so.1 cannot be opened" in store.get_training(training_id)["error"]


def test_cancel_and_requeue_handle_every_id_and_report_unknown_ones(store, tmp_path: Path, capsys,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.cli import micontrol

    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    ids = [store.add_training({"config": {"max_epochs": 1}}) for _ in range(2)]
    with pytest.raises(SystemExit) as exited:
        micontrol.main(["cancel", ids[0], "nope1", ids[1], "nope2"])
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"cancelled {ids[0]}", f"cancelled {ids[1]}"]
    assert exited.value.code == 1 and err.strip() == ("micontrol: error: no training or job nope1, nope2; "
                                                      "see miquery for the ids")
    with pytest.raises(SystemExit):
        micontrol.main(["requeue", "nope3", *ids])
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"requeued {ids[0]}", f"requeued {ids[1]}"]
    assert "no training nope3" in err
