"""What each page shows, as plain data: the HTML pages render it and the JSON API returns it."""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mitorch.store import ACTIVE, STATUSES, JobStore
from mitorch.task_types import NOT_METRICS, in_display_order
from mitorch.viewer.index import TrainingIndex, summarize
from mitorch.viewer.shown import CONFIG_VALUE_CHARS, cut_strings

_FINISHED = tuple(s for s in STATUSES if s not in ACTIVE)
_ABSENT = "\0absent"
LOG_TAIL_BYTES = 16_000


class NotFound(LookupError):
    """No training, job or dataset with that id."""


def dashboard(store: JobStore, index: TrainingIndex, queue_limit: int = 20, recent_limit: int = 15,
              running_limit: int = 25) -> dict[str, Any]:
    """Counts by status, running trainings, the queue's first page, recently finished, active jobs."""
    snapshot = index.snapshot()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update(snapshot.counts)
    running = sorted(snapshot.running, key=lambda r: (r["started_at"] or r["created_at"], r["id"]), reverse=True)
    queue = snapshot.queue
    recent = []
    for row in snapshot.ordered("completed", True):
        if len(recent) == recent_limit:
            break
        if row["status"] in _FINISHED:
            recent.append(row)
    by_job = snapshot.job_counts
    jobs = [_job_summary(job, by_job.get(job["id"], Counter())) for job in store.list_jobs(["new", "running"])]
    return {"counts": counts, "total": len(snapshot.rows), "running": running[:running_limit],
            "running_total": len(running), "queue": queue[:queue_limit],
            "queue_total": len(queue), "recent": recent, "jobs": jobs}


def _job_summary(job: dict[str, Any], counts: Counter) -> dict[str, Any]:
    total = sum(counts.values())
    finished = sum(counts[s] for s in _FINISHED)
    planned = job.get("n_trials") if job.get("job_type") == "search" else total
    return {"id": job["id"], "name": job.get("name") or "", "job_type": job.get("job_type") or "",
            "status": job.get("status") or "", "created_at": job.get("created_at"), "trainings": total,
            "finished": finished, "planned": planned or total, "counts": dict(counts), "best": job.get("best"),
            "objective": job.get("objective")}


def jobs(store: JobStore, index: TrainingIndex) -> list[dict[str, Any]]:
    by_job = index.snapshot().job_counts
    return [_job_summary(job, by_job.get(job["id"], Counter())) for job in store.list_jobs()]


def training(store: JobStore, training_id: str, log_lines: int = 60) -> dict[str, Any]:
    """One training: record, per-epoch table and curves, attempts, log tail."""
    record = store.get_training(training_id)
    if record is None:
        raise NotFound(f"no training {training_id}")
    results = store.list_results(training_id)
    metrics = metric_names(results, record.get("metrics"))
    attempts = []
    for number, attempt in enumerate(record.get("attempts") or [], 1):
        attempts.append({**attempt, "number": number, "current": number == record.get("attempt"),
                         "duration_s": _seconds(attempt.get("started_at"), attempt.get("ended_at"))})
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    # Each value cut on its own, so one long value does not hide the rest of the config.
    shown_config = cut_strings(config, CONFIG_VALUE_CHARS, f"/api/trainings/{training_id}")
    return {"training": record, "summary": summarize(record, results), "results": results, "metrics": metrics,
            "curves": curves(results, metrics), "attempts": attempts,
            "config_text": json.dumps(shown_config, indent=2, default=str),
            "live": record["status"] in ACTIVE, "log": log_tail(record.get("log"), log_lines),
            "studio_url": _https(record.get("studio_url")), "artifacts": _artifacts(record),
            "lineage": lineage(store, record)}


def lineage(store: JobStore, record: dict[str, Any]) -> dict[str, Any]:
    """Where a training came from and what came of it: its fingerprint, its parent (the training
    it was cloned from or started from the weights of) and its children, each with its status;
    tags and note as recorded (absent ones empty)."""
    children = [{"id": t["id"], "status": t["status"], "name": t.get("name") or ""}
                for t in store.list_trainings(order="recent", fields=["status", "name"], parent=record["id"])]
    parent_id = record.get("parent")
    parent = store.get_training(parent_id) if isinstance(parent_id, str) and parent_id else None
    shown_parent = None
    if parent_id:
        shown_parent = {"id": str(parent_id), "status": parent["status"] if parent else None,
                        "name": (parent or {}).get("name") or ""}
    return {"fingerprint": record.get("fingerprint"), "parent": shown_parent, "children": children,
            "tags": [str(tag) for tag in record.get("tags") or []], "note": record.get("note") or ""}


# The record's fields a live training's page refreshes on each poll; the rest changes with the
# status, and the page reads it again then.
_LIVE_FIELDS = ("id", "status", "priority", "attempt", "retries", "cancel_requested", "heartbeat_at")


def training_update(store: JobStore, training_id: str, after: int, log_lines: int = 60) -> dict[str, Any]:
    """What changed on a training since a page showed its epochs up to `after`: its live fields,
    the newer results with their metric names and chart points, the log tail; its artifacts only
    once it has ended (a live page polls this, and listing a folder on each poll would be waste)."""
    record = store.get_training(training_id)
    if record is None:
        raise NotFound(f"no training {training_id}")
    results = store.list_results(training_id, after=after)
    metrics = metric_names(results, record.get("metrics"))
    live = record["status"] in ACTIVE
    update = {"training": {key: record.get(key) for key in _LIVE_FIELDS}, "live": live, "after": after,
              "results": results, "metrics": metrics, "curves": curves(results, metrics),
              "heartbeat_s": _seconds(record.get("heartbeat_at"), datetime.now(timezone.utc)),
              "log": log_tail(record.get("log"), log_lines)}
    return update if live else {**update, "artifacts": _artifacts(record)}


def metric_names(results: Sequence[dict[str, Any]], final: dict[str, Any] | None = None) -> list[str]:
    names = {n for r in results for n in (r.get("val") or {}) if n not in NOT_METRICS}
    names |= {n for n in (final or {}) if n not in NOT_METRICS}
    return in_display_order(names)


def curves(results: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Chart data: epochs, and per series the value at each epoch (None where missing). The
    loss chart holds train_loss and the validation loss; each other metric has its own."""
    epochs = [r["epoch"] for r in results]

    def series(pick) -> list[float | None]:
        return [_number(pick(r)) for r in results]

    charts = [{"name": "loss", "series": {"train_loss": series(lambda r: r.get("train_loss")),
                                          "val loss": series(lambda r: (r.get("val") or {}).get("loss"))}}]
    charts += [{"name": m, "series": {m: series(lambda r, m=m: (r.get("val") or {}).get(m))}}
               for m in metrics if m != "loss"]
    charts += [{"name": "lr", "series": {"lr": series(lambda r: r.get("lr"))}}]
    return {"epochs": epochs, "charts": [c for c in charts if any(v is not None for s in c["series"].values()
                                                                  for v in s)]}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _seconds(start: Any, end: Any) -> float | None:
    if isinstance(start, datetime) and isinstance(end, datetime):
        return round((end - start).total_seconds(), 1)
    return None


def _https(url: Any) -> str | None:
    """A link target only when it is an https URL (never javascript: and the like)."""
    return url if isinstance(url, str) and url.startswith("https://") else None


def log_tail(path: Any, lines: int = 60) -> dict[str, Any]:
    """The last lines of a training's log when it is a local file under the artifacts folder
    (the viewer reads no other file a record may name)."""
    if not isinstance(path, str) or not path:
        return {"path": None, "text": None, "reason": "no log recorded"}
    from mitorch.files.artifacts import artifacts_root, remote_root
    from mitorch.paths import cache_dir

    try:
        roots = [artifacts_root().resolve()] if remote_root() is None else [(cache_dir() / "trainings").resolve()]
    except Exception:  # noqa: BLE001 - a malformed MITORCH_ARTIFACTS_URI: show no log rather than fail
        roots = []
    file = Path(path).resolve()
    if file.suffix != ".log" or not any(file.is_relative_to(root) for root in roots):
        return {"path": path, "text": None, "reason": "not a log under this machine's artifacts folder"}
    try:
        with open(file, "rb") as handle:
            handle.seek(max(os.fstat(handle.fileno()).st_size - LOG_TAIL_BYTES, 0))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return {"path": path, "text": None, "reason": "not on this machine"}
    return {"path": path, "text": "\n".join(text.splitlines()[-lines:]), "reason": None}


def _artifacts(record: dict[str, Any]) -> dict[str, Any]:
    """Where the training's files are, and the local ones with their sizes."""
    location = record.get("artifacts")
    files: list[dict[str, Any]] = []
    if isinstance(location, str) and location and "://" not in location:
        from mitorch.files.artifacts import artifacts_root

        try:
            folder, root = Path(location).resolve(), artifacts_root().resolve()
            if folder.is_relative_to(root) and folder.is_dir():
                for file in sorted(folder.rglob("*")):
                    if file.is_file() and len(files) < 200:
                        files.append({"name": str(file.relative_to(folder)), "bytes": file.stat().st_size})
        except (OSError, ValueError):
            files = []
    return {"location": location, "weights": record.get("weights"), "files": files}


def compare(store: JobStore, training_ids: Sequence[str]) -> dict[str, Any]:
    """Overlaid curves per metric and the config keys whose values differ."""
    trainings = store.get_trainings(training_ids)
    if not trainings:
        raise NotFound("none of these trainings exists")
    results = store.results_of([t["id"] for t in trainings])
    metrics = in_display_order({n for rs in results.values() for n in metric_names(rs)})
    epochs = sorted({r["epoch"] for rs in results.values() for r in rs})
    charts = []
    for name, pick in [("train_loss", lambda r: r.get("train_loss"))] + [
            (m, lambda r, m=m: (r.get("val") or {}).get(m)) for m in metrics]:
        series = {}
        for t in trainings:
            by_epoch = {r["epoch"]: _number(pick(r)) for r in results[t["id"]]}
            series[t["id"]] = [by_epoch.get(e) for e in epochs]
        if any(v is not None for s in series.values() for v in s):
            charts.append({"name": name, "series": series})
    flat = [flatten({"config": t.get("config") or {}, "dataset": t.get("dataset"), "overrides": t.get("overrides"),
                     "params": t.get("params")}) for t in trainings]
    keys = sorted(set().union(*flat))
    differing = []
    for key in keys:
        values = [f.get(key, _ABSENT) for f in flat]
        if len({v if v is _ABSENT else json.dumps(v, default=str, sort_keys=True) for v in values}) > 1:
            differing.append({"key": key, "values": ["(absent)" if v is _ABSENT else v for v in values]})
    rows = [summarize(t, results[t["id"]]) for t in trainings]
    return {"trainings": rows, "metrics": metrics, "curves": {"epochs": epochs, "charts": charts},
            "diff": differing, "same": len(keys) - len(differing)}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (`config.optimizer.lr`); lists and plain values as leaves."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if value is None or value == {}:
        return {}
    return {prefix: value}


def job(store: JobStore, job_id: str) -> dict[str, Any]:
    """A job with its trainings' rows and, for a search job, its study."""
    record = store.get_job(job_id)
    if record is None:
        raise NotFound(f"no job {job_id}")
    trainings = store.list_trainings(job_id=job_id)
    results = store.results_of([t["id"] for t in trainings])
    rows = [summarize(t, results[t["id"]]) for t in trainings]
    view = {"job": record, "trainings": rows, "counts": dict(Counter(r["status"] for r in rows)),
            "metrics": in_display_order({m for r in rows for m in r["metrics"]}), "study": None}
    if record.get("job_type") == "search":
        from mitorch.viewer.study import study

        view["study"] = study(store, record, trainings, results)
    return view


def datasets(store: JobStore, index: TrainingIndex) -> list[dict[str, Any]]:
    """Every registered dataset version, with the trainings that used it (newest first)."""
    used: dict[str, list[dict[str, Any]]] = {}
    for row in index.snapshot().newest_first:
        if row["dataset"]:
            used.setdefault(row["dataset"], []).append(row)
    shown = []
    for dataset in store.list_datasets():
        key = f"{dataset['name']}:{dataset['version']}"
        trainings = used.get(key, [])
        shown.append({"dataset": dataset, "key": key, "trainings": trainings[:50], "count": len(trainings)})
    return shown


__all__ = ["NotFound", "compare", "curves", "dashboard", "datasets", "flatten", "job", "jobs", "log_tail",
           "metric_names", "training", "training_update"]
