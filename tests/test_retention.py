"""Checkpoint retention: a pruned trial's checkpoints go when it ends; `micontrol gc` frees those
of trainings that ended failed, cancelled or pruned some days ago, never an active training's,
never weights or logs."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import mitorch
from mitorch.cli.micontrol import main as micontrol
from mitorch.service import runner
from mitorch.store.sqlite import SQLiteStore
from tests.test_fences import (BLOB_ARTIFACTS, FakeBlobService, ScriptedTraining, config,  # noqa: F401 - a fixture
                               dispatched, run_scripted, store)
from tests.test_remote import _blob, _container, azurite  # noqa: F401 - a fixture

KEPT = ("model.pt", "best.pt", "train.log")  # weights and logs: never removed


def attempt_folder(training_id: str, attempt: int) -> Path:
    from mitorch.files.artifacts import attempt_dir

    return attempt_dir(training_id, attempt)


def leave_files(training_id: str, attempt: int, checkpoint_bytes: int) -> list[Path]:
    """An attempt's folder as a run leaves it; returns its checkpoint files (last.pt and what an
    interrupted save left), checkpoint_bytes in all."""
    folder = attempt_folder(training_id, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        (folder / name).write_bytes(b"kept")
    checkpoints = [folder / "last.pt", folder / ".last.pt.4242.tmp"]
    checkpoints[0].write_bytes(b"c" * (checkpoint_bytes - 100))
    checkpoints[1].write_bytes(b"t" * 100)
    return checkpoints


def ended(store: SQLiteStore, config: dict[str, Any], status: str, days_ago: float, attempts: int = 1,
          checkpoint_bytes: int = 1000) -> tuple[str, list[Path]]:
    """A training that ended with status days_ago after attempts attempts, each leaving a
    checkpoint; a failed one records completed_at, a cancelled one only its status change (as
    micontrol cancel of a queued training leaves it)."""
    training_id = store.add_training({"config": config, "status": status})
    moment = store.clock() - timedelta(days=days_ago)
    fields: dict[str, Any] = {"attempt": attempts, "status_history": [{"status": status, "at": moment}]}
    if status != "cancelled":
        fields["completed_at"] = moment
    assert store.update_training(training_id, fields)
    files = [f for attempt in range(1, attempts + 1) for f in leave_files(training_id, attempt, checkpoint_bytes)]
    return training_id, files


def gc(capsys: pytest.CaptureFixture, *args: str) -> list[str]:
    micontrol(["gc", *args])
    return capsys.readouterr().out.splitlines()


def kept_files_are_there(training_id: str, attempts: int) -> bool:
    return all((attempt_folder(training_id, a) / name).read_bytes() == b"kept"
               for a in range(1, attempts + 1) for name in KEPT)


def test_a_pruned_trainings_checkpoints_are_removed_when_it_ends(store: SQLiteStore, config: dict,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    training_id = dispatched(store, config)
    checkpoints = leave_files(training_id, 1, 1000)
    pruned = ScriptedTraining(before_callbacks={1: lambda: store.update_training(training_id,
                                                                                 {"prune_requested": True})})
    monkeypatch.setitem(vars(mitorch), "train", pruned)
    with pytest.raises(runner.Pruned):
        runner.run_training(training_id, 1, store=store)
    assert store.get_training(training_id)["status"] == "pruned"
    assert not any(path.exists() for path in checkpoints)  # a pruned trial never runs again
    assert (attempt_folder(training_id, 1) / "train.log").read_bytes() == b"kept"


def test_gc_frees_the_checkpoints_of_trainings_ended_long_ago_and_nothing_else(
        store: SQLiteStore, config: dict, capsys: pytest.CaptureFixture) -> None:
    failed, failed_files = ended(store, config, "failed", days_ago=10, attempts=2, checkpoint_bytes=1500)
    cancelled, cancelled_files = ended(store, config, "cancelled", days_ago=9)
    pruned, pruned_files = ended(store, config, "pruned", days_ago=8)
    recent, recent_files = ended(store, config, "failed", days_ago=6)
    # A completed training's checkpoints are its runner's to remove (MITORCH_KEEP_CHECKPOINTS=1 keeps them).
    completed, completed_files = ended(store, config, "completed", days_ago=30)
    running = dispatched(store, config)  # active for ten days: still never touched
    assert store.update_training(running, {"status": "running", "started_at": store.clock() - timedelta(days=10)})
    running_files = leave_files(running, 1, 1000)
    lines = gc(capsys)
    assert lines == [f"freed 1.0 kB of {pruned} (pruned 8.0 days ago; 2 files)",
                     f"freed 1.0 kB of {cancelled} (cancelled 9.0 days ago; 2 files)",
                     f"freed 3.0 kB of {failed} (failed 10.0 days ago; 4 files)",
                     "freed 5.0 kB in all, from 3 trainings that ended more than 7 days ago"]
    assert not any(path.exists() for path in failed_files + cancelled_files + pruned_files)
    assert all(path.exists() for path in recent_files + completed_files + running_files)
    assert all(kept_files_are_there(t, n) for t, n in ((failed, 2), (cancelled, 1), (pruned, 1)))
    assert gc(capsys) == ["freed 0 bytes in all, from 0 trainings that ended more than 7 days ago"]


def test_gc_dry_run_lists_what_it_would_free_and_removes_nothing(store: SQLiteStore, config: dict,
                                                                capsys: pytest.CaptureFixture) -> None:
    training_id, files = ended(store, config, "failed", days_ago=8)
    assert gc(capsys, "--dry-run") == [
        f"would free 1.0 kB of {training_id} (failed 8.0 days ago; 2 files)",
        "would free 1.0 kB in all, from 1 training that ended more than 7 days ago (a dry run: nothing was removed)"]
    assert all(path.exists() for path in files)
    assert gc(capsys)[0] == f"freed 1.0 kB of {training_id} (failed 8.0 days ago; 2 files)"


def test_gc_keeps_checkpoints_for_the_days_asked(store: SQLiteStore, config: dict, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    training_id, files = ended(store, config, "failed", days_ago=2)
    assert gc(capsys)[-1].startswith("freed 0 bytes in all")  # 7 days by default
    monkeypatch.setenv("MITORCH_GC_AFTER_DAYS", "3")
    assert gc(capsys)[-1] == "freed 0 bytes in all, from 0 trainings that ended more than 3 days ago"
    assert gc(capsys, "--older-than", "1.5")[-1] == "freed 1.0 kB in all, from 1 training that ended more than 1.5 days ago"
    assert not any(path.exists() for path in files)
    monkeypatch.setenv("MITORCH_GC_AFTER_DAYS", "soon")
    with pytest.raises(SystemExit) as exit_status:
        micontrol(["gc"])
    assert exit_status.value.code == 1
    assert capsys.readouterr().err == "micontrol: error: MITORCH_GC_AFTER_DAYS must be a finite number, got 'soon'\n"
    with pytest.raises(SystemExit) as exit_status:
        micontrol(["gc", "--older-than", "-1"])
    assert exit_status.value.code == 2 and "--older-than takes a number of days of 0 or more, got '-1'" in \
        capsys.readouterr().err


class RequeuingStore(SQLiteStore):
    """The embedded store, where a user requeues a training just after gc listed it."""

    requeue: str = ""

    def list_trainings(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        listed = super().list_trainings(*args, **kwargs)
        if self.requeue:
            from mitorch.service import manage

            manage.requeue(self, [self.requeue], lambda line: None)
        return listed


def test_gc_leaves_a_training_requeued_after_it_was_listed(tmp_path: Path, store: SQLiteStore, config: dict,
                                                           capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    requeued, requeued_files = ended(store, config, "failed", days_ago=10)
    other, other_files = ended(store, config, "cancelled", days_ago=10)
    racing = RequeuingStore(tmp_path / "db.sqlite")
    racing.requeue = requeued
    monkeypatch.setattr("mitorch.store.open_store", lambda *args, **kwargs: racing)
    assert gc(capsys) == [f"freed 1.0 kB of {other} (cancelled 10.0 days ago; 2 files)",
                          "freed 1.0 kB in all, from 1 training that ended more than 7 days ago"]
    assert store.get_training(requeued)["status"] == "new"
    assert all(path.exists() for path in requeued_files)  # its next attempt resumes from them
    assert not any(path.exists() for path in other_files)


def test_gc_frees_checkpoints_kept_in_blob_storage(store: SQLiteStore, config: dict, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    blob = FakeBlobService()
    blob.install(monkeypatch)
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", BLOB_ARTIFACTS)
    training_id, files = ended(store, config, "cancelled", days_ago=8, attempts=2)  # this host's local copies
    root = f"https://acct.blob.core.windows.net/art/{training_id}"
    blob.blobs = {f"{root}/attempt-1/last.pt": b"1", f"{root}/attempt-1/model.pt": b"w", f"{root}/attempt-2/last.pt": b"2",
                  f"{root}/attempt-2/train.log": b"log"}
    assert gc(capsys)[0] == f"freed 2.0 kB of {training_id} (cancelled 8.0 days ago; 4 files, 2 blobs of unknown size)"
    assert blob.deleted == [f"{root}/attempt-1/last.pt", f"{root}/attempt-2/last.pt"]
    assert set(blob.blobs) == {f"{root}/attempt-1/model.pt", f"{root}/attempt-2/train.log"}
    assert not any(path.exists() for path in files)


# -- attempt folders: --keep-best N, and the controller's tick -------------------------------------


def finished(store: SQLiteStore, config: dict[str, Any], status: str, days_ago: float, job_id: str | None = None,
             accuracy: float | None = None) -> tuple[str, list[Path]]:
    """A training that ended days_ago, with its attempt folder (weights, log, checkpoints) and,
    completed, its weights recorded and metrics; returns its id and every file it left."""
    training_id, checkpoints = ended(store, config, status, days_ago)
    fields: dict[str, Any] = {"weights": str(attempt_folder(training_id, 1) / "model.pt")}
    if job_id is not None:
        fields["job_id"] = job_id
    if accuracy is not None:
        fields["metrics"] = {"top1_accuracy": accuracy, "loss": 1 - accuracy}
    assert store.update_training(training_id, fields)
    return training_id, checkpoints + [attempt_folder(training_id, 1) / name for name in KEPT]


def test_gc_keep_best_removes_old_attempt_folders_but_each_jobs_best_and_active_ones(
        store: SQLiteStore, config: dict, capsys: pytest.CaptureFixture) -> None:
    job_id, _ = store.add_job({"job_type": "sweep", "status": "completed"})
    best, best_files = finished(store, config, "completed", 10, job_id, accuracy=0.9)
    worse, worse_files = finished(store, config, "completed", 20, job_id, accuracy=0.5)
    worst, worst_files = finished(store, config, "completed", 9, job_id, accuracy=0.1)
    alone, alone_files = finished(store, config, "completed", 30, accuracy=0.2)  # a job of its own
    failed, failed_files = finished(store, config, "failed", 8, job_id)
    recent, recent_files = finished(store, config, "completed", 2, job_id, accuracy=0.3)
    running = dispatched(store, config)
    assert store.update_training(running, {"status": "running", "started_at": store.clock() - timedelta(days=40)})
    running_files = leave_files(running, 1, 1000)
    gone = worse_files + worst_files + failed_files
    dry = gc(capsys, "--keep-best", "1", "--dry-run")
    assert all(path.exists() for path in gone) and sorted(line.split()[5] for line in dry[:-1]) == sorted(
        [worse, worst, failed])
    lines = gc(capsys, "--keep-best", "1")
    assert lines[:-1] == [line.replace("would free", "freed") for line in dry[:-1]]
    assert lines[0] == f"freed 1.0 kB of {failed} (failed 8.0 days ago; attempt folders: 5 files)"
    assert lines[-1] == ("freed 3.0 kB in all, from 3 trainings that ended more than 7 days ago; the attempt "
                         "folders of 3, keeping those of 2 among their job's best")
    assert not any(path.exists() for path in gone) and not attempt_folder(worse, 1).parent.exists()
    assert all(path.exists() for path in best_files + alone_files + recent_files + running_files)
    record = store.get_training(worse)
    assert record["weights"] is None and record["removed_weights"].endswith("model.pt")
    assert store.get_training(best)["weights"] and record["artifacts_removed_at"] is not None
    assert gc(capsys, "--keep-best", "1")[-1].startswith("freed 0 bytes in all, from 0 trainings")
    assert gc(capsys, "--keep-best", "0", "--older-than", "20")[:-1] == [
        f"freed 1.0 kB of {alone} (completed 30.0 days ago; attempt folders: 5 files)"]


def test_a_tick_collects_when_told_to_at_most_once_an_hour(store: SQLiteStore, config: dict,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.service.controller import Settings, tick
    from mitorch.service.executors import LocalExecutor

    def ticked() -> list[str]:
        return tick(store, LocalExecutor(capacity=0), say=lambda line: None, settings=Settings(tick_wait_s=0))

    old, old_files = finished(store, config, "completed", 10, accuracy=0.5)
    failed, failed_files = finished(store, config, "failed", 10)
    assert ticked() == [] and all(path.exists() for path in old_files + failed_files)  # off by default
    monkeypatch.setenv("MITORCH_GC_ON_TICK", "1")
    monkeypatch.setenv("MITORCH_GC_KEEP_BEST", "0")
    assert ticked() == [f"freed 1.0 kB of {failed} (failed 10.0 days ago; attempt folders: 5 files)",
                        f"freed 1.0 kB of {old} (completed 10.0 days ago; attempt folders: 5 files)"]
    assert not any(path.exists() for path in old_files + failed_files)
    newer, newer_files = finished(store, config, "failed", 10)
    assert ticked() == [] and all(path.exists() for path in newer_files)  # the next run is due in an hour
    store.release_lease("gc", store.get_lease("gc")["holder"])
    monkeypatch.setenv("MITORCH_GC_KEEP_BEST", "many")
    assert ticked() == ["gc: MITORCH_GC_KEEP_BEST must be a whole number, got 'many'"]


def test_gc_keep_best_removes_attempt_folders_kept_in_blob_storage(store: SQLiteStore, config: dict,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    blob = FakeBlobService()
    blob.install(monkeypatch)
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", BLOB_ARTIFACTS)
    kept, _ = finished(store, config, "completed", 10, accuracy=0.9)
    gone, files = finished(store, config, "cancelled", 10)  # this host's local copies
    root = "https://acct.blob.core.windows.net/art"
    blob.blobs = {f"{root}/{gone}/attempt-1/last.pt": b"1", f"{root}/{gone}/attempt-1/model.pt": b"w",
                  f"{root}/{gone}/attempt-1/train.log": b"log", f"{root}/{kept}/attempt-1/model.pt": b"w"}
    assert gc(capsys, "--keep-best", "1")[0] == (f"freed 1.0 kB of {gone} (cancelled 10.0 days ago; attempt folders: "
                                                 "5 files, 3 blobs of unknown size)")
    assert set(blob.blobs) == {f"{root}/{kept}/attempt-1/model.pt"} and not any(path.exists() for path in files)


@pytest.mark.slow
def test_gc_keep_best_on_azurite_removes_what_should_go_and_nothing_else(
        store: SQLiteStore, config: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        azurite: str) -> None:
    from azure.storage.blob import BlobClient, ContainerClient

    container = _container(azurite, "gc-artifacts")
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", container)
    best, _ = finished(store, config, "completed", 10, accuracy=0.9)  # a job of its own: its best
    old, _ = finished(store, config, "cancelled", 10)
    recent, _ = finished(store, config, "failed", 1)
    running = dispatched(store, config)
    assert store.update_training(running, {"status": "running", "started_at": store.clock() - timedelta(days=40)})
    blobs = {training: [f"{training}/attempt-1/{name}" for name in ("last.pt", "model.pt", "train.log")]
             for training in (best, old, recent, running)}
    for name in sum(blobs.values(), []):
        BlobClient.from_blob_url(_blob(container, name)).upload_blob(b"x" * 100)

    def stored() -> set[str]:
        return {blob.name for blob in ContainerClient.from_container_url(container).list_blobs()}

    dry = gc(capsys, "--keep-best", "1", "--dry-run")
    assert [line.split()[5] for line in dry[:-1]] == [old] and stored() == set(sum(blobs.values(), []))
    gc(capsys, "--keep-best", "1")
    assert stored() == set(blobs[best] + blobs[recent] + blobs[running])
    assert store.get_training(old)["artifacts_removed_at"] is not None
