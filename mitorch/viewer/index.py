"""The viewer's in-memory table of trainings: one small summary per training, kept fresh by
comparing the store's (id, status, priority) list with the last one seen.

A training's summary changes only when its status or priority does, or while it is queued or
running (new epochs). So a refresh reads every training's state (one cheap query), then whole
records and per-epoch results only for the trainings that changed or are active. Pages filter,
sort and page this table in memory: their time hardly grows with the number of trainings.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mitorch.store import JobStore
from mitorch.task_types import NOT_METRICS, in_display_order, lower_is_better

# Results keep coming only for these statuses.
_LIVE = ("queued", "running")
# Sortable columns besides the metrics, with the direction a click on them starts from.
SORT_KEYS = {"created": "desc", "priority": "asc", "status": "asc", "name": "asc", "epochs": "desc",
             "started": "desc", "completed": "desc", "model": "asc", "dataset": "asc", "job": "asc"}


def model_name(config: dict[str, Any] | None) -> str:
    """A config's model as a short name: `resnet-18` for mitorch.models.resnet with depth 18."""
    model = (config or {}).get("model") or {}
    if not isinstance(model, dict):
        return str(model)
    name = str(model.get("name") or model.get("_target_") or "").rsplit(".", 1)[-1]
    depth = model.get("depth")
    return f"{name}-{depth}" if depth is not None and name else name


def dataset_name(dataset: Any) -> str:
    if isinstance(dataset, dict):
        return f"{dataset.get('name')}:{dataset.get('version')}"
    return str(dataset) if dataset else ""


def rollups(training: dict[str, Any], results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per validation metric: the best value over the epochs and the last one (the final
    metrics of a completed training, else its latest epoch's)."""
    values: dict[str, list[float]] = {}
    for result in results:
        for name, value in (result.get("val") or {}).items():
            if name not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(name, []).append(float(value))
    final = training.get("metrics") or {} if training.get("status") == "completed" else {}
    summary = {}
    for name in set(values) | {k for k, v in final.items() if isinstance(v, (int, float)) and k not in NOT_METRICS}:
        series = values.get(name, [])
        last = final.get(name, series[-1] if series else None)
        candidates = series + ([float(last)] if last is not None else [])
        best = (min if lower_is_better(name) else max)(candidates) if candidates else None
        summary[name] = {"best": best, "last": None if last is None else float(last)}
    return summary


def summarize(training: dict[str, Any], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The row of one training in the trainings table."""
    config = training.get("config") if isinstance(training.get("config"), dict) else {}
    error = str(training.get("error") or "")
    last = results[-1] if results else {}
    row = {
        "id": training["id"], "name": str(training.get("name") or ""), "status": training["status"],
        "priority": training.get("priority", 0), "created_at": training.get("created_at"),
        "started_at": training.get("started_at"), "completed_at": training.get("completed_at"),
        "job_id": training.get("job_id") or "", "trial_number": training.get("trial_number"),
        "dataset": dataset_name(training.get("dataset")), "model": model_name(config),
        "task_type": str(config.get("task_type") or ""), "attempt": training.get("attempt", 0),
        "epochs": len(results), "last_epoch": last.get("epoch"), "max_epochs": config.get("max_epochs"),
        "train_loss": last.get("train_loss"), "metrics": rollups(training, results),
        "error": error.strip().splitlines()[0][:300] if error.strip() else "",
        "heartbeat_at": training.get("heartbeat_at"), "executor": training.get("executor") or "",
        "overrides": " ".join(map(str, training.get("overrides") or [])),
        "tags": [str(tag) for tag in training.get("tags") or []],
    }
    params = " ".join(f"{k}={v}" for k, v in (training.get("params") or {}).items())
    words = [row["id"], row["name"], row["model"], row["dataset"], row["job_id"], row["error"], row["executor"],
             row["overrides"], params]
    row["text"] = " ".join(words).lower()
    row["model_key"] = row["model"].lower()
    return row


@dataclass
class Query:
    """Filters, sort and page of the trainings table (every field optional)."""

    statuses: list[str] = field(default_factory=list)
    dataset: str = ""
    model: str = ""
    job: str = ""
    tag: str = ""
    text: str = ""
    sort: str = "created"
    direction: str = ""  # asc | desc; empty: the column's natural direction
    page: int = 1
    per_page: int = 50

    def natural_direction(self) -> str:
        if self.sort in SORT_KEYS:
            return SORT_KEYS[self.sort]
        metric = self.sort.split(":")[0]
        return "asc" if lower_is_better(metric) else "desc"

    def effective_direction(self) -> str:
        return self.direction if self.direction in ("asc", "desc") else self.natural_direction()


class Snapshot:
    """The table at one refresh, with what pages ask of it again and again computed once (in
    the refresh thread, not in a request): counts by status and by job, metric names, the
    queue, and each sort order (on first use)."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows
        self.newest_first = sorted(rows.values(), key=lambda r: (r["created_at"] or _EPOCH, r["id"]), reverse=True)
        self.counts = Counter(r["status"] for r in self.newest_first)
        names = {name for row in self.newest_first for name in row["metrics"]}
        self.metric_names = in_display_order(names)
        self.datasets = sorted({r["dataset"] for r in self.newest_first if r["dataset"]})
        self.running = [r for r in self.newest_first if r["status"] in _LIVE]
        # Dispatch order: priority, then oldest first.
        self.queue = sorted((r for r in self.newest_first if r["status"] == "new"),
                            key=lambda r: (r["priority"], r["created_at"], r["id"]))
        self.job_counts: dict[str, Counter] = {}
        for row in self.newest_first:
            if row["job_id"]:
                self.job_counts.setdefault(row["job_id"], Counter())[row["status"]] += 1
        self._orders: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        self.ordered("completed", True)  # the dashboard's recently finished

    def ordered(self, sort: str, descending: bool) -> list[dict[str, Any]]:
        """Every row by one column; rows without a value go last in either direction; ties:
        newest first."""
        key = (sort, descending)
        if key not in self._orders:  # two requests may both sort: the same result, stored twice
            self._orders[key] = _sorted(self.newest_first, sort, descending)
        return self._orders[key]

    def ordered_with_status(self, sort: str, descending: bool, status: str) -> list[dict[str, Any]]:
        """The rows of one status, in the order of ordered(sort, descending)."""
        key = (f"{sort}\0{status}", descending)
        if key not in self._orders:
            self._orders[key] = [r for r in self.ordered(sort, descending) if r["status"] == status]
        return self._orders[key]


class TrainingIndex:
    """Summaries of every training of a store, refreshed at most every refresh_s seconds.

    A refresh that is due runs in a background thread while requests read the last snapshot
    (at most one refresh at a time); the first one runs at once. refresh_s 0 refreshes on every
    read, in the caller's thread (tests).
    """

    def __init__(self, store: JobStore, refresh_s: float = 2.0) -> None:
        self.store, self.refresh_s = store, refresh_s
        self._snapshot = Snapshot({})
        self._states: dict[str, tuple[str, int]] = {}
        self._refreshed_at = float("-inf")
        self._lock = threading.Lock()  # one refresh at a time
        self._thread: threading.Thread | None = None
        self._live_results: dict[str, tuple[tuple, list[dict[str, Any]]]] = {}

    def snapshot(self) -> Snapshot:
        """The current table; a request reads one snapshot throughout."""
        if self.refresh_s <= 0 or self._refreshed_at == float("-inf"):
            self.refresh()
        elif time.monotonic() - self._refreshed_at >= self.refresh_s and not self._lock.locked():
            self._thread = threading.Thread(target=self._refresh_quietly, daemon=True, name="miviewer-refresh")
            self._thread.start()
        return self._snapshot

    def wait(self) -> None:
        """Waits for a background refresh to end (before the store is closed)."""
        if self._thread is not None:
            self._thread.join()

    def rows(self) -> dict[str, dict[str, Any]]:
        """The current table (id -> summary); do not modify it."""
        return self.snapshot().rows

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - a store outage: the next due request tries again
            self._refreshed_at = time.monotonic()

    def refresh(self, training_ids: Iterable[str] = ()) -> None:
        """Brings the table up to date; training_ids are read again in any case (after an action)."""
        with self._lock:
            states = {s["id"]: (s["status"], s["priority"]) for s in self.store.training_states()}
            current = self._snapshot.rows
            stale = [i for i, state in states.items()
                     if self._states.get(i) != state or state[0] in _LIVE or i not in current]
            stale += [i for i in training_ids if i in states]
            gone = set(current) - set(states)
            changed: dict[str, dict[str, Any]] = {}
            live_results: dict[str, tuple[tuple, list[dict[str, Any]]]] = {}
            for chunk in range(0, len(stale), 2000):
                trainings = self.store.get_trainings(stale[chunk:chunk + 2000])
                results = self._results(trainings, live_results)
                for training in trainings:
                    row = summarize(training, results[training["id"]])
                    states[training["id"]] = (training["status"], training.get("priority", 0))
                    if current.get(row["id"]) != row:  # a running training without a new epoch is unchanged
                        changed[row["id"]] = row
            if changed or gone:
                rows = {i: row for i, row in current.items() if i not in gone}
                rows.update(changed)
                # Swapped whole: readers never see half a refresh, and keep their sort orders
                # until something changed.
                self._snapshot = Snapshot(rows)
            self._states, self._live_results = states, live_results
            self._refreshed_at = time.monotonic()

    def sync_tags(self) -> None:
        """Reads again the trainings whose tags changed since the table last read them: tagging
        changes neither status nor priority, which is all a refresh compares (one listing of
        ids and tags, before a page filters by tag)."""
        rows = self.snapshot().rows
        stale = [t["id"] for t in self.store.list_trainings(order="recent", fields=["tags"])
                 if t["id"] in rows and [str(tag) for tag in t.get("tags") or []] != rows[t["id"]]["tags"]]
        if stale:
            self.refresh(stale)

    def _results(self, trainings: list[dict[str, Any]],
                 live_results: dict[str, tuple[tuple, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
        """The trainings' per-epoch results. Those of a queued or running training are kept
        between refreshes and read again only when its attempt, number of results or last epoch
        changed: most refreshes find most running trainings between two epochs."""
        live = [t["id"] for t in trainings if t["status"] in _LIVE]
        counts = self.store.count_results(live) if live else {}
        found, wanted = {}, []
        for training in trainings:
            if training["status"] not in _LIVE:
                wanted.append(training["id"])
                continue
            key = (training.get("attempt", 0), counts[training["id"]]["count"], counts[training["id"]]["last_epoch"])
            kept = self._live_results.get(training["id"])
            if kept is not None and kept[0] == key:
                found[training["id"]] = kept[1]
            else:
                wanted.append(training["id"])
            live_results[training["id"]] = (key, None)
        found.update(self.store.results_of(wanted))
        for training_id in live_results.keys() & found.keys():
            live_results[training_id] = (live_results[training_id][0], found[training_id])
        return found

    def metric_names(self) -> list[str]:
        """The validation metrics some training has, main metrics first, then by name."""
        return self.snapshot().metric_names

    def search(self, query: Query, snapshot: Snapshot | None = None) -> tuple[list[dict[str, Any]], int]:
        """The page of rows the query asks for, and how many rows match in all."""
        snapshot = snapshot or self.snapshot()
        descending = query.effective_direction() == "desc"
        statuses = set(query.statuses)
        if len(statuses) == 1:
            rows = snapshot.ordered_with_status(query.sort, descending, statuses.pop())
        else:
            rows = snapshot.ordered(query.sort, descending)
        # One plain pass per filter, most selective first: no per-row function calls.
        if query.job:
            rows = [r for r in rows if r["job_id"] == query.job]
        if query.tag:
            rows = [r for r in rows if query.tag in r["tags"]]
        if query.dataset:
            dataset = query.dataset
            rows = [r for r in rows if r["dataset"] == dataset or r["dataset"].partition(":")[0] == dataset]
        if statuses:
            rows = [r for r in rows if r["status"] in statuses]
        model, needles = query.model.lower(), query.text.lower().split()
        if model or needles:
            # One pass for the model and the first three words ("" is in every string).
            first, second, third = (needles + ["", "", ""])[:3]
            rows = [r for r in rows if model in r["model_key"] and first in (text := r["text"]) and second in text
                    and third in text]
            for needle in needles[3:]:
                rows = [r for r in rows if needle in r["text"]]
        start = (max(query.page, 1) - 1) * query.per_page
        return rows[start:start + query.per_page], len(rows)


_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def _sorted(newest_first: list[dict[str, Any]], sort: str, descending: bool) -> list[dict[str, Any]]:
    columns = {"created": "created_at", "started": "started_at", "completed": "completed_at", "job": "job_id"}
    if sort == "created":
        return list(newest_first) if descending else newest_first[::-1]
    if sort in SORT_KEYS:
        column = columns.get(sort, sort)
        keyed = [(row.get(column), row) for row in newest_first]
    else:
        metric, _, which = sort.partition(":")
        which = which if which in ("best", "last") else "best"
        keyed = [((row["metrics"].get(metric) or {}).get(which), row) for row in newest_first]
    present = [pair for pair in keyed if pair[0] is not None and pair[0] != ""]
    present.sort(key=lambda pair: pair[0], reverse=descending)  # stable: equal values stay newest first
    return [row for _, row in present] + [row for value, row in keyed if value is None or value == ""]
