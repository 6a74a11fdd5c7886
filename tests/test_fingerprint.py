"""Training fingerprints: what they cover, how misubmit refuses a duplicate, and their index."""
from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from mitorch.service import fingerprint as fingerprints
from mitorch.service.fingerprint import fingerprint
from mitorch.store.sqlite import SQLiteStore


@functools.cache
def _composed() -> str:
    from omegaconf import OmegaConf

    from mitorch.config import compose

    return json.dumps(OmegaConf.to_container(compose(["max_epochs=1"]), resolve=False))


def _config(**changes) -> dict:
    config = json.loads(_composed())
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def test_a_fingerprint_covers_what_changes_a_result_and_nothing_else(monkeypatch) -> None:
    base = fingerprint(_config())
    assert base == fingerprint(_config()) and len(base) == 32
    for unchanged in ({"data__num_workers": 7}, {"data__persistent_workers": True}, {"data__prefetch_factor": 4},
                      {"logger": {"_target_": "mitorch.loggers.csv"}}, {"output": "/elsewhere/w.pt"},
                      {"checkpoint_dir": "/elsewhere"}, {"resume": False}, {"log_every_n_steps": 1}):
        assert fingerprint(_config(**unchanged)) == base, unchanged
    for changed in ({"optimizer__lr": 0.051}, {"seed": 1}, {"max_epochs": 2}, {"batch_size": 31}):
        assert fingerprint(_config(**changed)) != base, changed
    assert fingerprint(_config(), {"name": "shapes", "version": 1}) != base
    assert fingerprint(_config(), {"name": "shapes", "version": 1}) != fingerprint(_config(), {"name": "shapes",
                                                                                                "version": 2})
    monkeypatch.setattr("mitorch.__version__", "99.0")
    assert fingerprint(_config()) != base


def test_local_data_counts_by_content_when_small_and_by_size_and_time_when_large(tmp_path: Path, monkeypatch) -> None:
    listing = tmp_path / "train.txt"
    listing.write_text("a.png 0\n")
    config = _config(data__train=str(listing))
    first = fingerprint(config)
    os.utime(listing, ns=(1, 1))
    assert fingerprint(config) == first  # a small file: its content, not its time
    listing.write_text("a.png 1\n")
    assert fingerprint(config) != first
    monkeypatch.setattr(fingerprints, "CONTENT_HASH_MAX_BYTES", 0)
    large = fingerprint(config)
    os.utime(listing, ns=(2, 2))
    assert fingerprint(config) != large  # a large file: its size and modification time
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"x")
    in_folder = fingerprint(_config(data__train=str(folder)))
    (folder / "cat" / "2.png").write_bytes(b"y")
    assert fingerprint(_config(data__train=str(folder))) != in_folder


def _main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from mitorch.cli import misubmit

    code = 0
    try:
        misubmit.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "db.sqlite")


def test_misubmit_refuses_a_duplicate_naming_it_unless_allowed(tmp_path: Path, home: dict, monkeypatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    code, first, err = _main(["max_epochs=1", "data.num_workers=0"], capsys)
    assert code == 0, err
    first = first.strip()
    # The same training with other loaders: a duplicate of the new one, named with its status.
    code, out, err = _main(["max_epochs=1", "data.num_workers=3"], capsys)
    assert code == 3 and out == ""
    assert err.splitlines() == [f"misubmit: error: duplicate of {first} (new); use --allow-duplicate to queue it "
                                "again"]
    store = _store(tmp_path)
    assert [t["id"] for t in store.list_trainings()] == [first]
    store.update_training(first, {"status": "completed", "metrics": {"top1_accuracy": 0.953, "loss": 0.2}})
    code, out, err = _main(["max_epochs=1"], capsys)
    assert code == 3 and err.strip() == (f"misubmit: error: duplicate of {first} (completed, top1_accuracy 0.953); "
                                         "use --allow-duplicate to queue it again")
    code, second, err = _main(["max_epochs=1", "--allow-duplicate"], capsys)
    assert code == 0, err
    trainings = {t["id"]: t for t in store.list_trainings()}
    assert set(trainings) == {first, second.strip()}
    assert trainings[first]["fingerprint"] == trainings[second.strip()]["fingerprint"]
    # A failed training is no reason to refuse; another config is no duplicate.
    store.update_training(first, {"status": "failed"})
    store.update_training(second.strip(), {"status": "cancelled"})
    assert _main(["max_epochs=1"], capsys)[0] == 0 and _main(["max_epochs=2"], capsys)[0] == 0
    store.close()


def test_a_sweep_that_overlaps_a_finished_one_queues_only_the_new_points(tmp_path: Path, home: dict, monkeypatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["-m", "optimizer.lr=0.1,0.01", "max_epochs=1"], capsys)
    assert code == 0, err
    store = _store(tmp_path)
    done = {t["config"]["optimizer"]["lr"]: t["id"] for t in store.list_trainings()}
    for training_id in done.values():
        store.update_training(training_id, {"status": "completed", "metrics": {"top1_accuracy": 0.5}})
    code, out, err = _main(["-m", "optimizer.lr=0.1,0.01,0.001", "max_epochs=1"], capsys)
    assert code == 0, err
    assert sorted(err.splitlines()) == sorted(
        f"misubmit: optimizer.lr={lr} max_epochs=1: duplicate of {done[lr]} (completed, top1_accuracy 0.5); "
        "use --allow-duplicate to queue it again" for lr in (0.1, 0.01))
    job_id = out.split()[1]
    assert [t["config"]["optimizer"]["lr"] for t in store.list_trainings(job_id=job_id)] == [0.001]
    # Nothing new: nothing stored, status 3; --allow-duplicate queues every run again.
    jobs = len(store.list_jobs())
    code, out, err = _main(["-m", "optimizer.lr=0.1,0.001", "max_epochs=1"], capsys)
    assert code == 3 and out == "" and len(err.splitlines()) == 2 and len(store.list_jobs()) == jobs
    code, out, err = _main(["-m", "optimizer.lr=0.1,0.001", "max_epochs=1", "--allow-duplicate"], capsys)
    assert code == 0 and err == "" and len(store.list_trainings(job_id=out.split()[1])) == 2
    store.close()


class _MeetingStore(SQLiteStore):
    """A store whose duplicate look-up waits (up to 2 s) for the other submission's look-up:
    two submissions that do not hold each other off both look before either stores."""

    def __init__(self, path: Path, met: threading.Barrier) -> None:
        super().__init__(path)
        self.met = met

    def find_trainings(self, fingerprint: str, statuses=None) -> list:
        try:
            self.met.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass  # the other submission waits for this one's lease
        return super().find_trainings(fingerprint, statuses)


def test_two_submissions_of_one_training_at_the_same_moment_queue_it_once(tmp_path: Path) -> None:
    from mitorch.service.submit import DuplicateTraining, add_unless_duplicate

    met = threading.Barrier(2)
    training = {"config": _config(), "priority": 100, "fingerprint": fingerprint(_config())}
    outcomes: list[str] = []

    def submit() -> None:
        store = _MeetingStore(tmp_path / "db.sqlite", met)
        try:
            outcomes.append(add_unless_duplicate(store, dict(training)))
        except DuplicateTraining as e:
            outcomes.append(str(e))
        finally:
            store.close()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store = _store(tmp_path)
    queued = [t["id"] for t in store.list_trainings()]
    assert len(queued) == 1
    assert sorted(outcomes) == sorted([queued[0], f"duplicate of {queued[0]} (new); use --allow-duplicate to queue "
                                                  "it again"])
    store.close()


def test_misubmit_and_sweeps_wait_for_another_submission_of_their_training(
        tmp_path: Path, home: dict, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    from mitorch.service import submit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(submit, "FINGERPRINT_WAIT_S", 0.3)
    store = _store(tmp_path)
    code, out, err = _main(["-m", "optimizer.lr=0.1,0.01", "max_epochs=1", "--allow-duplicate"], capsys)
    keys = {t["config"]["optimizer"]["lr"]: t["fingerprint"] for t in store.list_trainings()}
    assert code == 0 and len(keys) == 2, err
    # Another submission holds lr=0.01's fingerprint: neither form stores anything while it does.
    assert store.acquire_lease(f"fingerprint:{keys[0.01]}", "another misubmit", 30)
    jobs, trainings = len(store.list_jobs()), len(store.list_trainings())
    for argv in (["optimizer.lr=0.01", "max_epochs=1"], ["-m", "optimizer.lr=0.01,0.001", "max_epochs=1"]):
        code, out, err = _main(argv, capsys)
        assert code != 0 and out == "", err
        assert err.strip().endswith(f"another submission of the same training has held fingerprint:{keys[0.01]} "
                                    "for 0 s; try again"), err
    assert (len(store.list_jobs()), len(store.list_trainings())) == (jobs, trainings)
    store.release_lease(f"fingerprint:{keys[0.01]}", "another misubmit")
    code, out, err = _main(["-m", "optimizer.lr=0.01,0.001", "max_epochs=1"], capsys)
    assert code == 0 and len(store.list_trainings()) == trainings + 1, err
    assert store.get_lease(f"fingerprint:{keys[0.01]}") is None  # given back once stored
    store.close()


def test_the_sqlite_index_answers_and_an_older_database_gains_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add_training({"fingerprint": "a" * 32})
    store.close()
    db = sqlite3.connect(tmp_path / "db.sqlite")
    plan = db.execute("EXPLAIN QUERY PLAN SELECT data FROM trainings WHERE json_extract(data, '$.fingerprint') = ? "
                      "ORDER BY created_at, id", ("a" * 32,)).fetchall()
    assert "trainings_fingerprint" in str(plan)
    db.execute("DROP INDEX trainings_fingerprint")  # as a database of the schema before fingerprints
    db.execute("PRAGMA user_version = 4")
    db.execute("INSERT INTO trainings VALUES ('old', 'completed', 100, '2020-01-01T00:00:00.000', NULL, "
                "'{\"id\": \"old\", \"status\": \"completed\", \"priority\": 100}')")
    db.commit()
    db.close()
    store = _store(tmp_path)
    assert len(store.find_trainings("a" * 32)) == 1 and store.get_training("old")["status"] == "completed"
    db = sqlite3.connect(tmp_path / "db.sqlite")
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'trainings_fingerprint'").fetchone()
    db.close()
    store.close()


def test_mongodb_indexes_fingerprints() -> None:
    mongomock = pytest.importorskip("mongomock")
    from mitorch.store.mongo import MongoStore

    store = MongoStore(client=mongomock.MongoClient(tz_aware=True))
    keys = [list(index["key"]) for index in store._db.trainings.index_information().values()]
    assert [("fingerprint", 1), ("created_at", 1), ("_id", 1)] in keys
    assert [("parent", 1), ("created_at", -1), ("_id", -1)] in keys  # a training's children


def test_the_sqlite_parent_index_answers_a_trainings_children(tmp_path: Path) -> None:
    store = _store(tmp_path)
    parent = store.add_training({})
    store.add_training({"parent": parent})
    store.close()
    db = sqlite3.connect(tmp_path / "db.sqlite")
    plan = db.execute("EXPLAIN QUERY PLAN SELECT data FROM trainings WHERE json_extract(data, '$.parent') = ? "
                      "ORDER BY created_at DESC, id DESC", (parent,)).fetchall()
    assert "trainings_parent" in str(plan)
    db.close()


def test_misubmit_computes_fingerprints_without_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from mitorch.service.fingerprint import fingerprint; import mitorch.cli.misubmit; "
            "fingerprint({'batch_size': 2}); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_from_queues_a_copy_with_changes_recording_its_parent(tmp_path: Path, home: dict, monkeypatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["max_epochs=1", "optimizer=adamw", "optimizer.lr=0.003"], capsys)
    assert code == 0, err
    parent = out.strip()
    code, out, err = _main(["--from", parent, "optimizer.lr=0.001", "max_epochs=2", "--tag", "clone"], capsys)
    assert code == 0, err
    store = _store(tmp_path)
    original, copy = store.get_training(parent), store.get_training(out.strip())
    assert copy["parent"] == parent and copy["tags"] == ["clone"] and "parent" not in original
    assert copy["config"]["optimizer"] == {**original["config"]["optimizer"], "lr": 0.001}
    assert {k: v for k, v in copy["config"].items() if k not in ("optimizer", "max_epochs")} == \
        {k: v for k, v in original["config"].items() if k not in ("optimizer", "max_epochs")}
    assert copy["config"]["max_epochs"] == 2 and copy["fingerprint"] != original["fingerprint"]
    # A copy without changes repeats its parent.
    code, out, err = _main(["--from", parent], capsys)
    assert code == 3 and f"duplicate of {parent} (new)" in err
    for argv, message in ((["--from", parent, "optimizer.lrr=0.1"], "--from: unknown key 'optimizer.lrr'"),
                          (["--from", parent, "batch_size=abc"], "--from: batch_size must be int as in the stored"),
                          (["--from", parent, "model=mobilenet_v3"], "--from changes values of keys the stored config"),
                          (["--from", "f" * 24], f"--from: training {'f' * 24} is not in the job store"),
                          (["--from", parent, "-m", "seed=1,2"], "--from copies one stored training's config")):
        code, out, err = _main(argv, capsys)
        assert code != 0 and len(err.splitlines()) == 1 and message in err, (argv, err)
    # base=ID records its parent too.
    store.update_training(parent, {"status": "completed", "weights": str(tmp_path / "model.pt")})
    code, out, err = _main(["max_epochs=1", f"base={parent}"], capsys)
    assert code == 0, err
    assert store.get_training(out.strip())["parent"] == parent
    store.close()


def test_tags_are_stored_once_each_and_checked_as_names(tmp_path: Path, home: dict, monkeypatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["max_epochs=1", "--tag", "baseline", "--tag", "it's v2", "--tag", "baseline"], capsys)
    assert code == 0, err
    store = _store(tmp_path)
    assert store.get_training(out.strip())["tags"] == ["baseline", "it's v2"]
    code, out, err = _main(["-m", "seed=1,2", "max_epochs=1", "--tag", "seeds"], capsys)
    assert code == 0, err
    assert [t["tags"] for t in store.list_trainings(job_id=out.split()[1])] == [["seeds"], ["seeds"]]
    for tag, message in (("AccountKey=" + "a" * 86 + "==", "--tag carries a credential"),
                         ("two\nlines", "--tag must be one line of text"), ("", "--tag must be one line of text")):
        code, out, err = _main(["max_epochs=3", "--tag", tag], capsys)
        assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    assert len(store.list_trainings()) == 3
    store.close()
