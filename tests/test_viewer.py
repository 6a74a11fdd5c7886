"""miviewer over a seeded embedded store, in-process through Starlette's TestClient: every page
and API route, filters and sorting, compare, the search job's study, actions, and security
(CSRF, read-only, the token, escaping, redaction)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from mitorch.store import open_store
from mitorch.store.base import now

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
SECRET = "S3CRETSIG"


def _config(model: str, depth: int | None, lr: float, epochs: int = 3) -> dict[str, Any]:
    model_config = {"_target_": f"mitorch.models.{model}", **({"depth": depth} if depth else {})}
    return {"task_type": "multiclass_classification", "model": model_config, "max_epochs": epochs, "batch_size": 32,
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": lr, "momentum": 0.9},
            "data": {"train": None, "val": None, "num_workers": 2}}


def _epochs(store, training_id: str, accuracies: list[float]) -> None:
    for epoch, accuracy in enumerate(accuracies, 1):
        store.put_result(training_id, {"epoch": epoch, "train_loss": 1.5 / epoch, "lr": 0.1 / epoch, "duration_s": 3.5,
                                       "val": {"top1_accuracy": accuracy, "top5_accuracy": 1.0,
                                               "loss": 1.2 - accuracy, "num_samples": 50}})


def seed(store, artifacts: Path) -> dict[str, str]:
    """A small store a team would have: finished, running, failed and queued trainings, a sweep,
    a search job with its Optuna study, datasets. Returns the ids by role."""
    import optuna

    from mitorch.service.search.journal import study_storage

    store.put_datasets([
        {"name": "shapes", "version": 1,
         "train": {"path": f"https://acct.blob.core.windows.net/d/train.txt?sv=1&sig={SECRET}", "support_files": []},
         "val": {"path": "/data/shapes/val.txt", "support_files": []}},
        {"name": "shapes", "version": 2, "train": {"path": "/data/shapes2/train.txt", "support_files": []},
         "val": {"path": "/data/shapes2/val.txt", "support_files": []}}])
    ids: dict[str, str] = {}
    started = now() - timedelta(minutes=30)
    log = artifacts / "a" / "attempt-1" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"epoch {i} done\n" for i in range(1, 4))
                   + f"fetching https://x.blob.core.windows.net/c?sig={SECRET}\n")
    (log.parent / "model.pt").write_bytes(b"0" * 2048)
    ids["best"] = store.add_training({"name": "resnet baseline", "config": _config("resnet", 18, 0.1),
                                      "dataset": {"name": "shapes", "version": 1}, "overrides": ["optimizer.lr=0.1"]})
    _epochs(store, ids["best"], [0.5, 0.7, 0.9])
    store.update_training(ids["best"], {
        "status": "completed", "attempt": 1, "metrics": {"top1_accuracy": 0.9, "top5_accuracy": 1.0, "loss": 0.3,
                                                         "num_samples": 50},
        "started_at": started, "completed_at": now(), "log": str(log), "artifacts": str(log.parent.parent),
        "weights": str(log.parent / "model.pt"), "studio_url": "https://ml.azure.com/runs/abc?wsid=/x",
        "azureml_job": "mitorch-abc",
        "attempts": [{"executor": "local:host", "run_id": "local:host:1:2", "host": "host", "started_at": started,
                      "ended_at": now(), "outcome": "completed"}]})
    ids["other"] = store.add_training({"name": "mobilenet try", "config": _config("mobilenet_v3", None, 0.01),
                                       "dataset": {"name": "shapes", "version": 2}})
    _epochs(store, ids["other"], [0.4, 0.6, 0.55])
    store.update_training(ids["other"], {"status": "completed", "metrics": {"top1_accuracy": 0.55, "loss": 0.65},
                                         "completed_at": now()})
    ids["running"] = store.add_training({"name": "resnet running", "config": _config("resnet", 34, 0.05, epochs=5),
                                         "dataset": {"name": "shapes", "version": 1}})
    _epochs(store, ids["running"], [0.3, 0.45])
    store.update_training(ids["running"], {"status": "running", "attempt": 1, "started_at": started,
                                           "heartbeat_at": now(), "executor": "local:otherhost"})
    ids["failed"] = store.add_training({"name": XSS, "config": _config("resnet", 50, 0.5)})
    store.update_training(ids["failed"], {"status": "failed", "error": f"RuntimeError: {XSS}",
                                          "traceback": f"Traceback (most recent call last):\n  File x\n{XSS}",
                                          "completed_at": now()})
    ids["queued_first"] = store.add_training({"name": "urgent", "priority": 5, "config": _config("resnet", 18, 0.2)})
    ids["queued_later"] = store.add_training({"name": "later", "priority": 50, "config": _config("resnet", 18, 0.3)})
    ids["sweep"], sweep_ids = store.add_job({"job_type": "sweep", "name": "lr sweep", "status": "running"},
                                            [{"config": _config("resnet", 18, lr), "overrides": [f"optimizer.lr={lr}"]}
                                             for lr in (0.1, 0.01)])
    ids["sweep_training"], ids["sweep_trainings"] = sweep_ids[0], ",".join(sweep_ids)
    ids["search"] = _search_job(store, optuna, study_storage)
    return ids


def _search_job(store, optuna, study_storage) -> str:
    """A search job with four trials told to its study: two complete, one pruned, one running."""
    job_id, _ = store.add_job({"job_type": "search", "name": "lr search", "status": "running", "n_trials": 6,
                               "max_concurrent": 2, "max_failed": 5,
                               "objective": {"metric": "top1_accuracy", "direction": "maximize"},
                               "sampler": {"name": "random"}, "pruner": {"name": "median"},
                               "search_space": {"optimizer.lr": "interval(0.001, 0.1)", "batch_size": "16,32"}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=job_id, storage=study_storage(store, job_id), direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"optimizer.lr": optuna.distributions.FloatDistribution(0.001, 0.1),
             "batch_size": optuna.distributions.CategoricalDistribution([16, 32])}
    plan = [("complete", [0.5, 0.7, 0.8]), ("complete", [0.6, 0.75, 0.85]), ("pruned", [0.2]), ("running", [0.4])]
    for number, (state, values) in enumerate(plan):
        trial = study.ask(space)
        for step, value in enumerate(values, 1):
            trial.report(value, step)
        training = {"config": _config("resnet", 18, trial.params["optimizer.lr"]), "job_id": job_id,
                    "trial_number": trial.number, "params": trial.params,
                    "overrides": [f"optimizer.lr={trial.params['optimizer.lr']}"]}
        training_id = store.add_training(training)
        _epochs(store, training_id, values)
        if state == "complete":
            study.tell(trial, values[-1])
            store.update_training(training_id, {"status": "completed", "metrics": {"top1_accuracy": values[-1]}})
        elif state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            store.update_training(training_id, {"status": "cancelled", "prune_requested": True, "pruned": True})
        else:
            store.update_training(training_id, {"status": "running"})
    # What the controller's step records in the job (mitorch.service.search).
    store.update_job(job_id, {"importances": {"trials": 2, "params": {"optimizer.lr": 0.8, "batch_size": 0.2}}})
    return job_id


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(artifacts))
    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = open_store()
    ids = seed(store, artifacts)
    yield store, ids
    store.close()


def _client(store, **settings):
    from starlette.testclient import TestClient

    from mitorch.viewer import Settings, create_app

    return TestClient(create_app(store, Settings(refresh_s=0, store_label="sqlite:///db", **settings)),
                      base_url="http://127.0.0.1:8080", follow_redirects=False)


@pytest.fixture
def client(seeded):
    return _client(seeded[0])


def test_every_page_renders_the_seeded_store(seeded, client) -> None:
    store, ids = seeded
    dashboard = client.get("/")
    assert dashboard.status_code == 200
    assert 'data-status="completed"><span class="n">4</span>' in dashboard.text  # 2 + 2 complete trials
    assert 'data-status="running"><span class="n">2</span>' in dashboard.text
    queue = dashboard.text.split('id="queue"')[1].split("</table>")[0]
    assert queue.index(ids["queued_first"]) < queue.index(ids["queued_later"])  # dispatch order
    assert "lr search" in dashboard.text and "lr sweep" in dashboard.text  # active jobs
    assert 'hx-trigger="every 5.0s"' in dashboard.text

    page = client.get(f"/trainings/{ids['best']}").text
    for shown in ("resnet-18", "shapes:1", "optimizer.lr=0.1", "epoch 3 done", "model.pt", "2.0 KB",
                  'href="https://ml.azure.com/runs/abc?wsid=/x"', "local:host:1:2", "0.9"):
        assert shown in page, shown
    assert 'id="curves-data"' in page and 'data-live="0"' in page and 'hx-trigger' not in page.split("<main>")[1][:600]
    running = client.get(f"/trainings/{ids['running']}").text
    assert 'data-live="1"' in running and f'hx-get="/trainings/{ids["running"]}"' in running
    failed = client.get(f"/trainings/{ids['failed']}").text
    assert 'id="training-error"' in failed and 'id="traceback"' in failed
    assert client.get("/jobs").status_code == 200 and "lr sweep" in client.get("/jobs").text
    sweep = client.get(f"/jobs/{ids['sweep']}").text
    assert ids["sweep_training"] in sweep and "optimizer.lr=0.1" in sweep
    datasets = client.get("/datasets").text
    assert "version 1" in datasets and "version 2" in datasets and ids["best"] in datasets
    assert "/api/trainings/{training_id}" in client.get("/api").text
    assert client.get("/trainings/" + "f" * 24).status_code == 404
    assert client.get("/jobs/nope").status_code == 404


def test_every_api_route_answers_json(seeded, client) -> None:
    store, ids = seeded
    spec = client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/api/actions/{action}" in spec["paths"]
    fill = {"{training_id}": ids["best"], "{job_id}": ids["search"]}
    for path, operations in spec["paths"].items():
        if "get" not in operations:
            continue
        url = path
        for key, value in fill.items():
            url = url.replace(key, value)
        if path == "/api/compare":
            url += f"?id={ids['best']}&id={ids['other']}"
        answer = client.get(url)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json", path
    assert client.get("/api/dashboard").json()["counts"]["new"] == 4
    detail = client.get(f"/api/trainings/{ids['best']}").json()
    assert [r["epoch"] for r in detail["results"]] == [1, 2, 3] and detail["training"]["status"] == "completed"
    live = client.get(f"/api/trainings/{ids['running']}/results?after=1").json()
    assert live["live"] and [r["epoch"] for r in live["results"]] == [2] and live["curves"]["epochs"] == [1, 2]
    assert client.get("/api/trainings/nope").status_code == 404
    assert client.get("/api/trainings?sort=bogus!").status_code == 400
    assert client.get("/api/compare?id=x").status_code == 400


def test_trainings_table_filters_sorts_and_pages(seeded, client) -> None:
    store, ids = seeded

    def listed(query: str) -> list[str]:
        return [t["id"] for t in client.get(f"/api/trainings?{query}").json()["trainings"]]

    queued = {ids["queued_first"], ids["queued_later"], *ids["sweep_trainings"].split(",")}
    assert set(listed("status=new")) == queued
    assert set(listed("status=failed,new")) == {ids["failed"], *queued}
    assert set(listed("dataset=shapes:1")) == {ids["best"], ids["running"]}
    assert set(listed("dataset=shapes")) == {ids["best"], ids["running"], ids["other"]}
    assert listed("model=mobilenet") == [ids["other"]]
    assert len(listed(f"job={ids['search']}")) == 4
    assert listed("q=baseline") == [ids["best"]]
    assert listed("q=lr%3D0.01") == [ids["sweep_trainings"].split(",")[1]]
    # best top-1 first; trainings without the metric last
    by_best = client.get("/api/trainings?sort=top1_accuracy&per_page=3").json()
    assert by_best["dir"] == "desc" and by_best["trainings"][0]["id"] == ids["best"]
    assert [t["metrics"]["top1_accuracy"]["best"] for t in by_best["trainings"]] == [0.9, 0.85, 0.8]
    other = next(t for t in client.get("/api/trainings?sort=top1_accuracy:last&dir=asc").json()["trainings"]
                 if t["id"] == ids["other"])
    assert other["metrics"]["top1_accuracy"] == {"best": 0.6, "last": 0.55}
    assert listed("sort=top1_accuracy&dir=asc")[-1] not in (ids["best"],)
    assert listed("sort=loss")[0] == ids["best"]  # lower is better
    assert listed("sort=priority")[0] == ids["queued_first"]
    page1, page2 = listed("per_page=5&page=1"), listed("per_page=5&page=2")
    assert len(page1) == 5 and not set(page1) & set(page2) and client.get("/api/trainings").json()["total"] == 12
    html = client.get("/trainings?status=new&sort=priority").text
    assert html.index(ids["queued_first"]) < html.index(ids["queued_later"]) and ids["best"] not in html
    assert client.get("/trainings?page=0").status_code == 400
    partial = client.get("/trainings?status=failed", headers={"HX-Request": "true"}).text
    assert "<html" not in partial and ids["failed"] in partial


def test_column_picker_is_remembered(seeded, client) -> None:
    picked = client.get("/trainings?col=name&col=priority&col=m:top5_accuracy")
    assert picked.cookies.get("miviewer_cols") or "miviewer_cols" in picked.headers["set-cookie"]
    header = picked.text.split("<thead>")[1].split("</thead>")[0]
    assert "top5_accuracy" in header and "dataset" not in header
    again = client.get("/trainings").text.split("<thead>")[1].split("</thead>")[0]
    assert "top5_accuracy" in again and "priority" in again and ">model<" not in again


def test_compare_overlays_curves_and_shows_only_what_differs(seeded, client) -> None:
    store, ids = seeded
    data = client.get(f"/api/compare?id={ids['best']}&id={ids['other']}").json()
    keys = {d["key"]: d["values"] for d in data["diff"]}
    assert keys["config.optimizer.lr"] == [0.1, 0.01]
    assert keys["config.model._target_"] == ["mitorch.models.resnet", "mitorch.models.mobilenet_v3"]
    assert keys["config.model.depth"] == [18, "(absent)"]
    assert "config.batch_size" not in keys and data["same"] > 0
    chart = next(c for c in data["curves"]["charts"] if c["name"] == "top1_accuracy")
    assert data["curves"]["epochs"] == [1, 2, 3] and chart["series"][ids["other"]] == [0.4, 0.6, 0.55]
    page = client.get(f"/compare?id={ids['best']},{ids['other']}").text
    assert "config.optimizer.lr" in page and "config.batch_size" not in page
    assert client.get(f"/compare?id={ids['best']}").status_code == 400


def test_search_job_page_reads_the_study_without_writing_to_it(seeded, client) -> None:
    store, ids = seeded
    logs_before = len(store.read_logs(ids["search"]))
    study = client.get(f"/api/jobs/{ids['search']}").json()["study"]
    assert [t["state"] for t in study["trials"]] == ["complete", "complete", "pruned", "running"]
    assert [t["value"] for t in study["trials"][:2]] == [0.85, 0.8]  # sorted by objective, best first
    assert study["best"]["value"] == 0.85 and study["best"]["training_id"]
    assert [(h["value"], h["best"]) for h in study["history"]] == [(0.8, 0.8), (0.85, 0.85)]
    pruned = next(t for t in study["intermediate"] if t["state"] == "pruned")
    assert pruned["steps"] == [1] and pruned["values"] == [0.2] and len(study["intermediate"]) == 4
    assert study["importances"] == {"optimizer.lr": 0.8, "batch_size": 0.2}
    assert study["importances_note"] == "from 2 complete trials"
    page = client.get(f"/jobs/{ids['search']}").text
    assert 'id="study-data"' in page and "trial-pruned" in page and 'id="importances"' in page
    assert len(store.read_logs(ids["search"])) == logs_before
    store.update_job(ids["search"], {"importances": None})
    page = client.get(f"/jobs/{ids['search']}").text
    assert "the controller computes them from" in page and 'id="importances"' in page


def _csrf(client) -> str:
    return client.get("/api/csrf").json()["csrf_token"]


def test_actions_do_what_micontrol_does(seeded, client) -> None:
    store, ids = seeded
    token = _csrf(client)
    cancelled = client.get("/api/dashboard").json()["counts"]["cancelled"]
    answer = client.post("/api/actions/cancel", json={"ids": [ids["queued_first"], "nope"]},
                         headers={"X-CSRF-Token": token})
    assert answer.status_code == 200
    assert answer.json()["lines"] == [f"cancelled {ids['queued_first']}", "no training or job nope; see miquery for "
                                      "the ids"] or answer.json()["lines"][0] == f"cancelled {ids['queued_first']}"
    assert store.get_training(ids["queued_first"])["status"] == "cancelled"
    assert client.get("/api/dashboard").json()["counts"]["cancelled"] == cancelled + 1  # seen at once
    form = {"csrf_token": token, "action": "requeue", "id": [ids["failed"], ids["queued_first"]], "back": "/trainings"}
    done = client.post("/actions", data=form)
    assert done.status_code == 200 and f"requeued {ids['failed']}" in done.text
    assert store.get_training(ids["failed"])["status"] == "new"
    done = client.post("/actions", data={"csrf_token": token, "action": "set-priority", "priority": "-7",
                                         "id": f"{ids['queued_later']},{ids['best']}"})
    assert f"priority {ids['queued_later']} -7" in done.text and store.get_training(ids["best"])["priority"] == -7
    assert client.post("/actions", data={"csrf_token": token, "action": "set-priority", "priority": "high",
                                         "id": ids["best"]}).status_code == 400
    assert 'id="cancel-job"' in client.get(f"/jobs/{ids['sweep']}").text
    job = client.post("/actions", data={"csrf_token": token, "action": "cancel", "id": ids["sweep"]})
    assert f"cancelled job {ids['sweep']} with its 2 active trainings" in job.text  # micontrol cancel JOB_ID
    assert {t["status"] for t in store.list_trainings(job_id=ids["sweep"])} == {"cancelled"}
    running = client.post("/api/actions/cancel", json={"ids": [ids["running"]]}, headers={"X-CSRF-Token": token})
    assert running.json()["lines"][0].startswith(f"cancel-requested {ids['running']}")
    assert store.get_training(ids["running"])["cancel_requested"] is True


def test_csrf_and_cross_site_posts_are_refused(seeded, client) -> None:
    store, ids = seeded
    target = ids["queued_later"]
    assert client.post("/actions", data={"action": "cancel", "id": target}).status_code == 403
    assert client.post("/actions", data={"action": "cancel", "id": target, "csrf_token": "guess"}).status_code == 403
    assert client.post("/api/actions/cancel", json={"ids": [target]}).status_code == 403
    cross = client.post("/actions", data={"action": "cancel", "id": target, "csrf_token": _csrf(client)},
                        headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert store.get_training(target)["status"] == "new"


def test_read_only_serves_no_actions(seeded) -> None:
    store, ids = seeded
    client = _client(store, read_only=True)
    page = client.get("/trainings").text
    assert 'value="cancel"' not in page and "Compare ticked" in page
    assert client.get("/api/csrf").json() == {"csrf_token": None, "read_only": True}
    assert "/api/actions/{action}" not in client.get("/api/openapi.json").json()["paths"]
    assert client.post("/actions", data={"action": "cancel", "id": ids["queued_later"]}).status_code == 403
    assert client.post("/api/actions/cancel", json={"ids": [ids["queued_later"]]},
                       headers={"X-CSRF-Token": "x"}).status_code == 403
    assert store.get_training(ids["queued_later"])["status"] == "new"


def test_stored_markup_renders_as_text_and_secrets_never_reach_a_page(seeded, client) -> None:
    store, ids = seeded
    pages = ["/", "/trainings", f"/trainings/{ids['failed']}", f"/trainings/{ids['best']}", "/datasets",
             f"/compare?id={ids['failed']}&id={ids['best']}", "/trainings?q=script"]
    for url in pages:
        text = client.get(url).text
        assert "<script>window.__xss" not in text and "<img src=x" not in text, url
        assert SECRET not in text, url
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in client.get(f"/trainings/{ids['failed']}").text
    assert "sig=***" in client.get("/datasets").text and "sig=***" in client.get(f"/trainings/{ids['best']}").text
    for url in ["/api/datasets", f"/api/trainings/{ids['best']}", "/api/trainings"]:
        assert SECRET not in client.get(url).text, url


def test_the_log_tail_is_read_only_under_the_artifacts_folder(seeded, client, tmp_path: Path) -> None:
    store, ids = seeded
    outside = tmp_path / "elsewhere.log"
    outside.write_text("private\n")
    store.update_training(ids["other"], {"log": str(outside)})
    page = client.get(f"/trainings/{ids['other']}").text
    assert "private" not in page and "not a log under this machine" in page


def test_token_when_bound_beyond_loopback(seeded) -> None:
    store, _ = seeded
    client = _client(store, token="t0ken", loopback_only=False)
    assert client.get("/").status_code == 401
    assert client.get("/api/dashboard").json()["error"].startswith("this viewer needs its token")
    assert client.get("/?token=wrong").status_code == 401
    entered = client.get("/trainings?status=new&token=t0ken")
    assert entered.status_code == 303 and entered.headers["location"] == "/trainings?status=new"
    assert "HttpOnly" in entered.headers["set-cookie"] and "SameSite=Strict" in entered.headers["set-cookie"]
    assert client.get("/trainings?status=new").status_code == 200  # the cookie from now on
    fresh = _client(store, token="t0ken", loopback_only=False)
    assert fresh.get("/api/dashboard", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    assert fresh.get("/static/app.js").status_code == 401


def test_loopback_server_refuses_foreign_host_names_and_sends_strict_headers(seeded, client) -> None:
    assert client.get("/", headers={"Host": "evil.example:8080"}).status_code == 403
    assert client.get("/", headers={"Host": "localhost:8080"}).status_code == 200
    headers = client.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"


def test_live_parts_stop_refreshing_once_a_training_ends(seeded, client) -> None:
    store, ids = seeded
    assert client.get(f"/trainings/{ids['running']}", headers={"HX-Request": "true"}).status_code == 200
    store.put_result(ids["running"], {"epoch": 3, "train_loss": 0.2, "val": {"top1_accuracy": 0.5}})
    running = {t["id"]: t for t in client.get("/api/dashboard").json()["running"]}
    assert running[ids["running"]]["last_epoch"] == 3
    store.update_training(ids["running"], {"status": "completed", "metrics": {"top1_accuracy": 0.5}})
    ended = client.get(f"/trainings/{ids['running']}", headers={"HX-Request": "true"})
    assert ended.status_code == 286 and "<html" not in ended.text
    completed = client.get("/api/trainings?status=completed").json()["trainings"]
    row = next(t for t in completed if t["id"] == ids["running"])
    assert row["epochs"] == 3 and row["metrics"]["top1_accuracy"] == {"best": 0.5, "last": 0.5}


def test_index_follows_the_store_through_a_background_refresh(seeded) -> None:
    from mitorch.viewer.index import TrainingIndex

    store, ids = seeded
    index = TrainingIndex(store, refresh_s=0.05)
    assert len(index.rows()) == 12
    added = store.add_training({"name": "late", "config": {}})
    store.update_training(ids["other"], {"status": "failed", "error": "boom"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (added not in index.rows()
                                           or index.rows()[ids["other"]]["status"] != "failed"):
        time.sleep(0.05)
    index.refresh_s = 3600
    index.wait()  # no refresh may outlive the store
    assert index.rows()[added]["name"] == "late" and index.rows()[ids["other"]]["error"] == "boom"


def test_miviewer_starts_fast_without_torch() -> None:
    started = time.monotonic()
    helped = subprocess.run([str(Path(sys.executable).parent / "miviewer"), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--read-only" in helped.stdout
    assert time.monotonic() - started < 5  # typically about 0.1 s
    code = ("import sys, mitorch.cli.miviewer, mitorch.viewer, mitorch.viewer.pages, mitorch.viewer.api, "
            "mitorch.viewer.actions, mitorch.viewer.views, mitorch.cli.micontrol; print(sorted(m for m in ('torch', "
            "'optuna', 'torchvision') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_miviewer_refuses_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(Path(sys.executable).parent / "miviewer"), "--port", str(port)], capture_output=True,
                              text=True, timeout=30, env={"MITORCH_DB_URI": f"sqlite:///{tmp_path / 'db'}",
                                                          "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "miviewer: error: cannot listen on 127.0.0.1" in done.stderr
    assert "Traceback" not in done.stderr


def test_json_api_never_leaks_the_search_text(seeded, client) -> None:
    row = client.get("/api/trainings").json()["trainings"][0]
    assert "text" not in row and json.dumps(row)


def test_a_failing_store_is_a_503_with_its_reason(seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.store import StoreError

    store, ids = seeded
    client = _client(store)

    def fail(*args, **kwargs):
        raise StoreError("database request failed: disk I/O error (mongodb://u:pw@db)")

    monkeypatch.setattr(store, "training_states", fail)
    monkeypatch.setattr(store, "get_training", fail)
    page = client.get("/trainings")
    assert page.status_code == 503 and "disk I/O error" in page.text and "pw@" not in page.text
    assert client.get(f"/api/trainings/{ids['best']}").json() == {
        "error": "database request failed: disk I/O error (mongodb://u:***@db)"}


def test_the_pages_over_mongodb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same pages over the MongoDB backend (mongomock): the viewer uses only the store's API."""
    mongomock = pytest.importorskip("mongomock")
    from mitorch.store.mongo import MongoStore

    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "artifacts"))
    store = MongoStore(client=mongomock.MongoClient(tz_aware=True))
    ids = seed(store, tmp_path / "artifacts")
    client = _client(store)
    assert client.get("/api/dashboard").json()["counts"]["completed"] == 4
    assert [t["id"] for t in client.get("/api/trainings?sort=top1_accuracy&per_page=1").json()["trainings"]] == \
        [ids["best"]]
    assert "epoch 3 done" in client.get(f"/trainings/{ids['best']}").text
    assert client.get(f"/api/jobs/{ids['search']}").json()["study"]["best"]["value"] == 0.85
    assert client.get(f"/compare?id={ids['best']}&id={ids['other']}").status_code == 200


def test_a_refresh_reads_again_only_what_changed(seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.viewer.index import TrainingIndex

    store, ids = seeded
    index = TrainingIndex(store, refresh_s=0)
    index.rows()
    asked: list[str] = []
    results_of = store.results_of
    monkeypatch.setattr(store, "results_of", lambda ids_asked: asked.extend(ids_asked) or results_of(ids_asked))
    index.rows()
    assert asked == []  # running trainings between two epochs: their results are not read again
    store.put_result(ids["running"], {"epoch": 3, "val": {"top1_accuracy": 0.7}})
    store.update_training(ids["other"], {"priority": 1})
    assert index.rows()[ids["running"]]["metrics"]["top1_accuracy"]["best"] == 0.7
    assert sorted(asked) == sorted([ids["running"], ids["other"]])


# -- hostile input and secrets -----------------------------------------------------------------


def test_a_uri_password_and_a_sas_token_in_an_error_reach_no_page_and_no_api_answer(seeded, client) -> None:
    store, ids = seeded
    # Short and on the first line, so that neither the list's cut nor a page's cut hides them:
    # only redaction does.
    error = (f"OSError: cannot open mongodb://bob:{SECRET}@db.example/m and sv=2024-01-01&sr=b&sig={SECRET}; "
             f"AccountKey={SECRET}")
    shown = "OSError: cannot open mongodb://bob:***@db.example/m and sv=2024-01-01&sr=b&sig=***; AccountKey=***"
    store.update_training(ids["sweep_training"], {"status": "failed", "error": error})
    store.update_job(ids["sweep"], {"error": error})
    pages = {f"/trainings/{ids['sweep_training']}": True, "/trainings?col=name&col=error&status=failed": True,
             f"/jobs/{ids['sweep']}": True, "/": False, "/jobs": False}
    for url, shows_the_error in pages.items():
        page = client.get(url)
        assert page.status_code == 200 and SECRET not in page.text, url
        if shows_the_error:
            assert shown.replace("&", "&amp;") in page.text, url  # the rest of the error is shown as it is
    for url in [f"/api/trainings/{ids['sweep_training']}", "/api/trainings?status=failed", f"/api/jobs/{ids['sweep']}",
                "/api/jobs", "/api/dashboard"]:
        answer = client.get(url)
        assert answer.status_code == 200 and SECRET not in answer.text, url
    assert client.get(f"/api/trainings/{ids['sweep_training']}").json()["training"]["error"] == shown


def test_an_api_post_with_a_wrong_csrf_token_is_refused_when_all_else_is_right(seeded) -> None:
    store, ids = seeded
    client = _client(store, token="t0ken", loopback_only=False)
    right = {"Authorization": "Bearer t0ken", "Origin": "http://127.0.0.1:8080"}
    csrf = client.get("/api/csrf", headers=right).json()["csrf_token"]
    target = ids["queued_later"]
    refused = client.post("/api/actions/cancel", json={"ids": [target]}, headers={**right, "X-CSRF-Token": csrf[:-1]})
    assert refused.status_code == 403 and refused.json()["error"].startswith("the X-CSRF-Token header is missing")
    assert store.get_training(target)["status"] == "new"
    # The same request with the right CSRF token passes every other check.
    done = client.post("/api/actions/cancel", json={"ids": [target]}, headers={**right, "X-CSRF-Token": csrf})
    assert done.status_code == 200 and store.get_training(target)["status"] == "cancelled"


def test_a_read_only_viewer_refuses_a_post_with_its_real_csrf_token(seeded) -> None:
    from starlette.testclient import TestClient

    from mitorch.viewer import Settings, create_app

    store, ids = seeded
    app = create_app(store, Settings(read_only=True, refresh_s=0))
    real = app.app.state.csrf  # what a viewer's own pages would hold: the CSRF check would pass
    client = TestClient(app, base_url="http://127.0.0.1:8080", follow_redirects=False)
    origin = {"Origin": "http://127.0.0.1:8080"}
    answer = client.post("/api/actions/cancel", json={"ids": [ids["queued_later"]]},
                         headers={**origin, "X-CSRF-Token": real})
    assert answer.status_code == 403 and answer.json()["error"].startswith("this viewer is read-only")
    form = client.post("/actions", data={"csrf_token": real, "action": "cancel", "id": ids["queued_later"]},
                       headers=origin)
    assert form.status_code == 403 and "this viewer is read-only" in form.text
    assert store.get_training(ids["queued_later"])["status"] == "new"


def test_markup_in_a_job_name_is_escaped_on_the_jobs_pages(seeded, client) -> None:
    store, _ = seeded
    job_id, _ = store.add_job({"job_type": "sweep", "name": XSS, "status": "running"},
                              [{"config": _config("resnet", 18, 0.1)}])
    for url in ["/jobs", f"/jobs/{job_id}"]:
        page = client.get(url).text
        assert "<script>window.__xss" not in page and "<img src=x" not in page, url
        assert "&lt;script&gt;window.__xss=1&lt;/script&gt;&lt;img src=x onerror=" in page, url


def test_a_long_stored_value_is_cut_on_the_page_and_whole_in_the_api(seeded, client) -> None:
    store, _ = seeded
    long_value = "note=" + "x" * 15_000
    config = {**_config("resnet", 18, 0.1), "note": long_value}
    training_id = store.add_training({"name": "long", "config": config})
    store.update_training(training_id, {"status": "failed", "error": f"ValueError: {long_value}"})
    page = client.get(f"/trainings/{training_id}").text
    assert len(page) < 20_000 and "x" * 5000 not in page
    where = f"/api/trainings/{training_id} returns the whole value"
    assert page.count(f"characters in all; {where}") == 2  # the error, and the config's value
    assert "&#34;max_epochs&#34;: 3" in page  # the rest of the config is shown
    whole = client.get(f"/api/trainings/{training_id}").json()["training"]
    assert whole["config"]["note"] == long_value and whole["error"] == f"ValueError: {long_value}"


def test_a_deeply_nested_json_body_is_a_400_with_one_line(seeded, client) -> None:
    store, ids = seeded
    body = '{"ids": ' + "[" * 100_000 + "]" * 100_000 + "}"
    answer = client.post("/api/actions/cancel", content=body, headers={"X-CSRF-Token": _csrf(client),
                                                                        "Content-Type": "application/json"})
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert message.startswith("the body is nested too deeply") and "\n" not in message


@pytest.mark.parametrize("path", ["//evil.example", "/%09/evil.example", "/%5Cevil.example", "/%2F%2Fevil.example",
                                  "/%252F%252Fevil.example", "/%5C%5Cevil.example"])
def test_the_token_login_redirects_only_within_the_site(seeded, path: str) -> None:
    store, _ = seeded
    client = _client(store, token="t0ken", loopback_only=False)
    entered = client.get(f"http://127.0.0.1:8080{path}?token=t0ken")
    assert entered.status_code == 303 and entered.headers["location"] == "/"


@pytest.mark.parametrize("back", ["//evil.example", "/%09/evil.example", "/\t/evil.example", "/\\evil.example",
                                  "https://evil.example", "/%2F%2Fevil.example", "/%252F%252Fevil.example",
                                  "%2F%2Fevil.example", "/%5Cevil.example", "javascript:alert(1)"])
def test_a_back_link_never_leaves_the_site(seeded, client, back: str) -> None:
    form = {"csrf_token": _csrf(client), "action": "cancel", "id": "nope", "back": back}
    done = client.post("/actions", data=form)
    assert done.status_code == 200 and '<a href="/" id="back">' in done.text
    redirected = client.post("/actions", data=form, headers={"HX-Request": "true"})
    assert redirected.status_code == 303 and redirected.headers["location"] == "/"


def test_a_back_link_within_the_site_is_followed(seeded, client) -> None:
    form = {"csrf_token": _csrf(client), "action": "cancel", "id": "nope", "back": "/trainings?status=new&q=%25"}
    redirected = client.post("/actions", data=form, headers={"HX-Request": "true"})
    assert redirected.headers["location"] == "/trainings?status=new&q=%25"


def test_host_names_compare_case_insensitively(seeded, client) -> None:
    store, ids = seeded
    assert client.get("/", headers={"Host": "LocalHost:8080"}).status_code == 200
    answer = client.post("/api/actions/cancel", json={"ids": [ids["queued_later"]]},
                         headers={"Host": "LOCALHOST:8080", "Origin": "http://localhost:8080",
                                  "X-CSRF-Token": _csrf(client)})
    assert answer.status_code == 200 and store.get_training(ids["queued_later"])["status"] == "cancelled"


def test_a_live_poll_reads_only_the_new_epochs_and_lists_artifacts_once_the_training_ends(
        seeded, client, monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.viewer import views

    store, ids = seeded
    listed: list[str] = []
    list_artifacts = views._artifacts
    monkeypatch.setattr(views, "_artifacts", lambda record: listed.append(record["id"]) or list_artifacts(record))
    page = client.get(f"/trainings/{ids['running']}").text
    assert 'hx-trigger="every' not in page.split('id="live"')[1][:300]  # no timer beside the page script's poll
    store.put_result(ids["running"], {"epoch": 3, "train_loss": 0.4, "lr": 0.02, "val": {"top1_accuracy": 0.61}})
    listed.clear()
    update = client.get(f"/api/trainings/{ids['running']}?after=2").json()
    assert update["live"] and update["training"]["status"] == "running" and "config" not in update["training"]
    assert [r["epoch"] for r in update["results"]] == [3] and update["curves"]["epochs"] == [3]
    assert update["curves"]["charts"][0]["series"]["train_loss"] == [0.4]
    assert "artifacts" not in update and listed == []
    assert client.get(f"/api/trainings/{ids['running']}?after=3").json()["results"] == []
    store.update_training(ids["running"], {"status": "completed", "metrics": {"top1_accuracy": 0.61}})
    ended = client.get(f"/api/trainings/{ids['running']}?after=3").json()
    assert not ended["live"] and "artifacts" in ended and listed == [ids["running"]]
    refreshed = client.get(f"/trainings/{ids['running']}", headers={"HX-Request": "true"}).text
    assert 'id="details" hx-swap-oob="true"' in refreshed and 'id="live-state"' in refreshed
    wrong = client.get(f"/api/trainings/{ids['running']}?after=last")
    assert wrong.status_code == 400 and "after must be an epoch number" in wrong.json()["error"]
