"""A search job across real processes: misubmit -> micontrol ticks -> mitrain -> miquery."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_service import Service

pytestmark = pytest.mark.slow


def test_a_tiny_search_runs_to_completion(tmp_path: Path) -> None:
    service = Service(tmp_path)
    service.env["MITORCH_LOCAL_CAPACITY"] = "2"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps({
        "job_type": "search", "name": "tiny", "overrides": [*service.data, "max_epochs=1"],
        "search_space": {"optimizer.lr": "tag(log, interval(1e-3, 1e-1))", "batch_size": "4,8"},
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
        "n_trials": 6, "max_concurrent": 2}))
    submitted = service("misubmit", str(job_file))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    in_flight = []

    def done() -> bool:
        view = service.query(job_id)
        in_flight.append(sum(t["status"] in ("queued", "running") for t in view["trainings"]))
        return view["job"]["status"] != "running"

    actions = service.tick_until(done, timeout=400)
    view = service.query(job_id)
    job, trials = view["job"], view["trials"]
    assert job["status"] == "completed", actions
    assert sorted(t["number"] for t in trials) == list(range(6)) and {t["state"] for t in trials} == {"complete"}
    assert job["counts"] == {"complete": 6, "pruned": 0, "failed": 0, "running": 0} and max(in_flight) <= 2
    best = max(trials, key=lambda t: t["value"])
    assert job["best"]["value"] == best["value"] and job["best"]["training_id"] == best["training_id"]
    assert trials[0] == best and all(t["epochs"] == 1 for t in trials)
    assert job["importances"]["trials"] == 6 and set(job["importances"]["params"]) == {"optimizer.lr", "batch_size"}
    for trial in trials:
        training = service.training(trial["training_id"])
        assert training["job_id"] == job_id and training["config"]["optimizer"]["lr"] == trial["params"]["optimizer.lr"]
    queued = [a for a in actions if a.startswith("queued trial")]
    assert len(queued) == 6 and any(a.startswith(f"completed search job {job_id}") for a in actions)
    shown = service("miquery", job_id).stdout
    assert f"search job {job_id} tiny: completed" in shown and "parameter importances (6 complete trials)" in shown


def test_a_stop_request_ends_a_training_as_pruned_after_its_epoch(tmp_path: Path) -> None:
    service = Service(tmp_path)
    training_id = service.submit("max_epochs=3")
    from mitorch.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "db.sqlite")
    store.update_training(training_id, {"prune_requested": True})  # as a search job's controller does
    store.close()
    service.tick_until(lambda: service.status(training_id) not in ("new", "queued", "running"), timeout=300)
    view = service.query(training_id)
    assert view["training"]["status"] == "pruned"
    assert view["training"]["attempts"][-1]["outcome"] == "pruned"
    assert [r["epoch"] for r in view["results"]] == [1]  # it stopped at its first epoch end
