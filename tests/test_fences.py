"""Each fence of the service alone, in a test where no other fence can act first.

A training's attempt is protected by several fences (its heartbeat, its fenced epoch writes, its
fenced final status, the controller's conditional requeue, the executor marker lease); a test
that lets one of them act first cannot tell whether another works. Here the heartbeat never
beats unless it is the fence under test, and each test waits for the outcome it claims: the
runner stopped (exit status 75), and nothing was written after the refusal.

The runner runs in this process on the embedded store, with its training loop replaced by a
script of the loop's contract (each epoch: write last.pt, then call the epoch callbacks with the
epoch's record), so that a test decides exactly when the attempt is replaced; the real loop's
stop on a refused write is tests/test_faults.py's test_a_refused_epoch_write_stops_the_process.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import mitorch
from mitorch.service import runner
from mitorch.service.executors import Executor
from mitorch.store.base import DB_NOW
from mitorch.store.sqlite import SQLiteStore

# A container URL with a SAS token (the signature is not a secret: nothing checks it).
BLOB_ARTIFACTS = "https://acct.blob.core.windows.net/art?sv=2024-01-01&sr=c&sp=rwdl&sig=c2lnbmF0dXJl"
HANG_GUARD_S = 120


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "art"))
    monkeypatch.setenv("MITORCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MITORCH_CREDENTIALS", str(tmp_path / "credentials.json"))
    monkeypatch.setenv("MITORCH_HEARTBEAT_S", "3600")  # the heartbeat never beats: another fence must act
    store = SQLiteStore(tmp_path / "db.sqlite")
    yield store
    store.close()


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(mitorch.compose(["max_epochs=3", "image_size=32", "batch_size=8"]))


def dispatched(store: SQLiteStore, config: dict[str, Any], executor: str = "local:host-a") -> str:
    """A queued training dispatched as attempt 1, as a controller's claim leaves it."""
    training_id = store.add_training({"config": config})
    claimed = store.claim_training({"executor": executor, "dispatched_at": DB_NOW},
                                   new_attempt={"executor": executor, "dispatched_at": DB_NOW})
    assert claimed["id"] == training_id and claimed["attempt"] == 1
    return training_id


def take_over(store: SQLiteStore, training_id: str) -> dict[str, Any]:
    """Another controller requeues the training and its attempt 2 starts running (so a write of
    attempt 1 that expects `running` is refused by its attempt alone); returns the record."""
    attempt = store.get_training(training_id)["attempt"]
    assert store.update_training(training_id, {"status": "new"}, attempt=attempt)
    claimed = store.claim_training({"executor": "local:host-b", "dispatched_at": DB_NOW},
                                   new_attempt={"executor": "local:host-b", "dispatched_at": DB_NOW})
    assert claimed["attempt"] == attempt + 1
    assert store.update_training(training_id, {"status": "running", "host": "host-b", "heartbeat_at": DB_NOW},
                                 expected_status="queued", attempt=attempt + 1)
    return store.get_training(training_id)


class ScriptedTraining:
    """Stands in for mitorch.train: each epoch writes last.pt then calls the epoch callbacks;
    `before_callbacks` maps an epoch to what happens before its callbacks, `before_weights` runs
    after the last epoch, before the final weights are written."""

    def __init__(self, before_callbacks: dict[int, Callable[[], None]] | None = None,
                 before_weights: Callable[[], None] | None = None) -> None:
        self.before_callbacks = before_callbacks or {}
        self.before_weights = before_weights
        self.trained: list[int] = []

    def __call__(self, cfg: Any, run_dir: Any = None, epoch_callbacks: list | None = None,
                 progress: Any = None, lineage: Any = None) -> dict[str, Any]:
        metrics = {"top1_accuracy": 0.5, "loss": 1.0}
        for epoch in range(1, cfg.max_epochs + 1):
            self.trained.append(epoch)
            Path(cfg.checkpoint_dir, "last.pt").write_bytes(f"checkpoint of epoch {epoch}".encode())
            self.before_callbacks.get(epoch, lambda: None)()
            for callback in epoch_callbacks or []:
                callback({"epoch": epoch, "train_loss": 1.0, "lr": 0.1, "val": metrics})
        if self.before_weights is not None:
            self.before_weights()
        Path(cfg.output).write_bytes(b"weights")
        return metrics


class FakeBlobService:
    """Azure Blob Storage as azure.storage.blob.BlobClient shows it to MiTorch: blobs by URL
    (without the token); `uploads` lists what was sent, in order."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.uploads: list[tuple[str, bytes]] = []
        self.deleted: list[str] = []
        service = self

        class BlobClient:
            def __init__(self, url: str) -> None:
                self.url = url.split("?", 1)[0]

            @classmethod
            def from_blob_url(cls, url: str, credential: Any = None, **options: Any) -> BlobClient:
                return cls(url)

            def upload_blob(self, data: Any, overwrite: bool = False, **options: Any) -> None:
                content = data.read()
                service.blobs[self.url] = content
                service.uploads.append((self.url, content))

            def get_blob_properties(self) -> SimpleNamespace:
                return SimpleNamespace(size=len(service.blobs[self.url]))

            def exists(self) -> bool:
                return self.url in service.blobs

            def delete_blob(self) -> None:
                del service.blobs[self.url]
                service.deleted.append(self.url)

        self.client_class = BlobClient

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import azure.storage.blob

        monkeypatch.setattr(azure.storage.blob, "BlobClient", self.client_class)


def run_scripted(monkeypatch: pytest.MonkeyPatch, store: SQLiteStore, training_id: str,
                 training: ScriptedTraining) -> runner.Replaced:
    """Runs attempt 1 of the training in this process; returns the Replaced it must stop with."""
    monkeypatch.setitem(vars(mitorch), "train", training)  # setattr would import the real one (and torch)
    with pytest.raises(runner.Replaced) as stopped:
        runner.run_training(training_id, 1, store=store)
    assert stopped.value.exit_code == runner.REPLACED_EXIT == 75
    return stopped.value


# -- the runner's fences ---------------------------------------------------------------------------

_BLOCKED_TRAINING = """
import sys, threading
import mitorch
from mitorch.service.runner import run_training

def training_that_never_ends_an_epoch(cfg, run_dir=None, epoch_callbacks=None, progress=None, lineage=None):
    open(sys.argv[2], "w").close()  # it is training
    threading.Event().wait()  # no epoch write, no check for requests, no final status: only the heartbeat

mitorch.train = training_that_never_ends_an_epoch
run_training(sys.argv[1], 1)
"""


def test_the_heartbeat_alone_stops_a_replaced_attempt_with_exit_75(store: SQLiteStore, config: dict,
                                                                   tmp_path: Path) -> None:
    training_id = dispatched(store, config)
    training_started = tmp_path / "training"
    env = {**os.environ, "MITORCH_HEARTBEAT_S": "0.2"}
    with open(tmp_path / "stderr", "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", _BLOCKED_TRAINING, training_id, str(training_started)],
                                   env=env, stdout=log, stderr=log, cwd=tmp_path)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not training_started.exists():
            assert process.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "the attempt never started training"
            time.sleep(0.05)
        assert store.get_training(training_id)["pid"] == process.pid
        replaced = take_over(store, training_id)
        assert process.wait(timeout=HANG_GUARD_S) == 75, (tmp_path / "stderr").read_text()
    finally:
        process.kill()
        process.wait()
    assert store.get_training(training_id) == replaced  # its refused beat wrote nothing
    assert store.list_results(training_id) == []


def test_a_refused_epoch_write_alone_stops_the_attempt_before_anything_more(
        store: SQLiteStore, config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = FakeBlobService()
    blob.install(monkeypatch)
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", BLOB_ARTIFACTS)  # so its checkpoint upload is a visible write
    training_id = dispatched(store, config)
    replaced: dict[str, Any] = {}
    training = ScriptedTraining(before_callbacks={2: lambda: replaced.update(take_over(store, training_id))})
    stopped = run_scripted(monkeypatch, store, training_id, training)
    assert f"attempt 1: epoch 2 refused, attempt 2 replaced it" in str(stopped)
    assert training.trained == [1, 2]
    assert [(r["epoch"], r["attempt"]) for r in store.list_results(training_id)] == [(1, 1)]
    # Epoch 1's checkpoint went up; nothing after the refusal did (epoch 2's, the log).
    checkpoint = f"https://acct.blob.core.windows.net/art/{training_id}/attempt-1/last.pt"
    assert blob.uploads == [(checkpoint, b"checkpoint of epoch 1")]
    assert store.get_training(training_id) == replaced


def test_a_refused_final_status_alone_records_nothing_and_keeps_the_checkpoint(
        store: SQLiteStore, config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    training_id = dispatched(store, config)
    replaced: dict[str, Any] = {}
    training = ScriptedTraining(before_weights=lambda: replaced.update(take_over(store, training_id)))
    stopped = run_scripted(monkeypatch, store, training_id, training)
    assert "attempt 1: recording completed refused, attempt 2 replaced it" in str(stopped)
    assert training.trained == [1, 2, 3]
    record = store.get_training(training_id)
    assert record == replaced and record["status"] == "running" and "metrics" not in record
    assert "outcome" not in record["attempts"][0]
    # Attempt 2 resumes from attempt 1's checkpoint: the replaced attempt must not remove it.
    checkpoint = Path(os.environ["MITORCH_ARTIFACTS_URI"]) / training_id / "attempt-1" / "last.pt"
    assert checkpoint.read_bytes() == b"checkpoint of epoch 3"


# -- the controller's fences ---------------------------------------------------------------------


class RecordingExecutor(Executor):
    """Another host's executor whose launches are recorded instead of run."""

    def __init__(self, name: str) -> None:
        self.name, self.capacity = name, 1
        self.launched: list[tuple[str, int]] = []

    def launch(self, training: dict[str, Any], gpu: int | None = None) -> str:
        self.launched.append((training["id"], training["attempt"]))
        return f"{self.name}:run-{len(self.launched)}"

    def state(self, training: dict[str, Any]) -> str:
        return "running"

    def cancel(self, training: dict[str, Any], force: bool = False) -> bool:
        return True


def stale_on_host_a(store: SQLiteStore, config: dict) -> str:
    """A training running on host-a whose heartbeat is an hour old."""
    training_id = dispatched(store, config)
    assert store.update_training(training_id, {"status": "running", "heartbeat_at": store.clock() - timedelta(hours=1)},
                                 expected_status="queued", attempt=1)
    return training_id


class MeetingStore(SQLiteStore):
    """The embedded store, where each controller waits for the other once it has found host-a's
    marker lease, so both act on the same stale training together."""

    def __init__(self, path: Path, meeting: threading.Barrier) -> None:
        super().__init__(path)
        self.meeting = meeting

    def get_lease(self, name: str) -> dict[str, Any] | None:
        lease = super().get_lease(name)
        if name == "executor:local:host-a":
            self.meeting.wait(timeout=60)
        return lease


def test_two_controllers_taking_over_one_stale_training_requeue_it_once(store: SQLiteStore, config: dict,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.service.controller import tick

    monkeypatch.setenv("MITORCH_HEARTBEAT_TIMEOUT_S", "60")
    training_id = stale_on_host_a(store, config)
    meeting = threading.Barrier(2)
    executors = [RecordingExecutor("local:host-b"), RecordingExecutor("local:host-c")]
    actions: list[str] = []
    failures: list[BaseException] = []

    def controller(executor: RecordingExecutor) -> None:
        own = MeetingStore(tmp_path / "db.sqlite", meeting)
        try:
            tick(own, executor, actions.append)
        except BaseException as e:  # noqa: BLE001 - reported by the test's thread
            failures.append(e)
        finally:
            own.close()

    threads = [threading.Thread(target=controller, args=(executor,)) for executor in executors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=HANG_GUARD_S)
    assert not failures and not any(thread.is_alive() for thread in threads)
    assert len([a for a in actions if a.startswith(f"requeued {training_id}")]) == 1, actions
    training = store.get_training(training_id)
    assert [h["status"] for h in training["status_history"]] == ["new", "queued", "running", "new", "queued"]
    assert training["attempt"] == 2 and len(training["attempts"]) == 2 and training["retries"] == 1
    assert [launch for executor in executors for launch in executor.launched] == [(training_id, 2)]


def test_no_takeover_while_the_owners_executor_lease_is_alive(store: SQLiteStore, config: dict,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.service.controller import tick

    monkeypatch.setenv("MITORCH_HEARTBEAT_TIMEOUT_S", "60")
    training_id = stale_on_host_a(store, config)  # stale: only host-a's marker stands in the way
    assert store.acquire_lease("executor:local:host-a", "local:host-a", 3600)  # host-a's controller still ticks
    before = store.get_training(training_id)
    executor = RecordingExecutor("local:host-b")
    actions: list[str] = []
    tick(store, executor, actions.append)
    assert not [a for a in actions if training_id in a] and executor.launched == []
    assert store.get_training(training_id) == before


def test_micontrol_requeue_of_an_active_training_says_cancel_it_first_and_changes_nothing(
        store: SQLiteStore, config: dict, capsys: pytest.CaptureFixture) -> None:
    from mitorch.cli.micontrol import main

    running = stale_on_host_a(store, config)
    queued = dispatched(store, config)
    fresh = store.add_training({"config": config})
    before = {training_id: store.get_training(training_id) for training_id in (fresh, queued, running)}
    main(["requeue", fresh, queued, running])
    assert capsys.readouterr().out.splitlines() == [f"unchanged {fresh} (it is new; cancel it first)",
                                                    f"unchanged {queued} (it is queued; cancel it first)",
                                                    f"unchanged {running} (it is running; cancel it first)"]
    assert {training_id: store.get_training(training_id) for training_id in before} == before


# -- a search job's best trial ---------------------------------------------------------------------


def test_a_pruned_trial_that_reported_more_than_every_completed_trial_is_never_the_best(
        store: SQLiteStore, tmp_path: Path) -> None:
    from mitorch.service.search import step as search
    from mitorch.service.search.job import prepare

    job = {"job_type": "search", "overrides": ["max_epochs=2"], "search_space": {"optimizer.lr": "0.01,0.02"},
           "sampler": {"name": "grid"}, "pruner": {"name": "threshold", "lower": 0.5},
           "objective": {"metric": "top1_accuracy", "direction": "maximize"}, "n_trials": 2, "max_concurrent": 2}
    job_id, _ = store.add_job(prepare(job, store, str(tmp_path)))
    actions: list[str] = []
    search.step(store, actions.append)
    completed, pruned = store.list_trainings(job_id=job_id)
    store.update_training(completed["id"], {"status": "completed", "metrics": {"top1_accuracy": 0.1}})
    store.update_training(pruned["id"], {"status": "running"})
    store.put_result(pruned["id"], {"epoch": 1, "val": {"top1_accuracy": 0.3}})  # below 0.5: pruned, above 0.1
    search.step(store, actions.append)
    assert any(a.startswith(f"pruned trial {pruned['trial_number']} of job {job_id} at epoch 1") for a in actions)
    store.update_training(pruned["id"], {"status": "pruned"})  # its run stopped, as asked
    search.step(store, actions.append)
    job = store.get_job(job_id)
    assert job["status"] == "completed" and job["counts"]["pruned"] == 1 and job["counts"]["complete"] == 1
    assert (job["best"]["training_id"], job["best"]["value"]) == (completed["id"], 0.1)


# -- the table of moves ----------------------------------------------------------------------------


def test_a_move_outside_the_table_is_refused_by_name_and_writes_nothing(store: SQLiteStore, config: dict) -> None:
    from mitorch.service import transitions
    from mitorch.store import STATUSES

    for came_from in STATUSES:
        for to in STATUSES:
            if to in transitions.MOVES[came_from]:
                transitions.check_move(came_from, to)
            else:
                with pytest.raises(transitions.MoveRefused, match=f"cannot move from {came_from} to {to}; "):
                    transitions.check_move(came_from, to)
    training_id = store.add_training({"config": config, "status": "completed"})
    before = store.get_training(training_id)
    with pytest.raises(transitions.MoveRefused, match="cannot move from completed to running"):
        transitions.end_attempt(store, training_id, 0, came_from="completed", to="running", outcome="completed")
    assert store.get_training(training_id) == before


def test_a_queued_training_is_cancelled_at_once_and_its_dispatched_run_never_trains(
        store: SQLiteStore, config: dict) -> None:
    from mitorch.service import manage

    training_id = dispatched(store, config)
    said: list[str] = []
    manage.cancel(store, [training_id], said.append)
    assert said == [f"cancelled {training_id}"] and store.get_training(training_id)["status"] == "cancelled"
    with pytest.raises(runner.Replaced):  # its run, launched before the cancel, starts only to stop
        runner.run_training(training_id, 1, store=store)
    assert store.get_training(training_id)["status"] == "cancelled" and not store.list_results(training_id)


_STATUS_OWNERS = ("controller.py", "runner.py", "manage.py", "search", "executors")


def test_only_transitions_writes_a_trainings_status_or_attempts() -> None:
    import re

    service = Path(runner.__file__).parent
    sources = [p for name in _STATUS_OWNERS for p in ([service / name] if name.endswith(".py")
                                                     else sorted((service / name).glob("*.py")))]
    writes = re.compile(r"\.(update_training|claim_training)\(|[\"']attempts\.")
    # manage._write_labels writes tags and notes, never a status or an attempt (it refuses other keys).
    labels = ("manage.py", "    store.update_training(training_id, labels)")
    found = [f"{p.relative_to(service)}:{n}" for p in sources
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if writes.search(line) and (p.name, line) != labels]
    assert len(sources) > 5 and found == [], f"status or attempt writes outside service/transitions.py: {found}"
