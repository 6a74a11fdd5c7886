"""miquery: where trainings stand, as Rich tables or JSON.

    miquery [--json] [--limit N]   running, queue (dispatch order, first N), recent results, counts
    miquery ID [--json]            one training (config, history, attempts, epochs, result) or one job
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from mitorch.cli._common import check_id, fail, to_json
from mitorch.errors import MiTorchError
from mitorch.task_types import MAIN_METRICS

PROG = "miquery"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="Show trainings and jobs in the job store.")
    parser.add_argument("id", nargs="?", help="a training or job id")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--recent", type=_count, default=10, help="how many finished trainings to list (10)")
    parser.add_argument("--limit", type=_count, default=20, help="how many queued trainings to list (20)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from mitorch.store import StoreError, open_store

        if args.id is not None:
            check_id(args.id, "ID")  # before the store is asked: a long id costs a query its length
        store = open_store()
        if args.id is None:
            view = _overview(store, args.recent, args.limit)
        elif (training := store.get_training(args.id)) is not None:
            view = {"training": training, "results": store.list_results(args.id)}
        elif (job := store.get_job(args.id)) is not None:
            job.pop("watch", None)  # the controller's own bookkeeping
            view = {"job": job, "trainings": store.list_trainings(job_id=args.id)}
            if job.get("job_type") == "search":
                view["trials"] = _trials(store, job, view["trainings"])
        else:
            raise StoreError(f"no training or job {args.id}")
    except MiTorchError as e:
        fail(PROG, e)
    if args.json:
        print(to_json(view))
    else:
        _show(view)


def _count(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"needs a whole number of 0 or more, got {text[:40]!r}")
    return int(text)


def _overview(store, recent: int, limit: int) -> dict[str, Any]:
    from mitorch.store import FINISHED

    finished = store.list_trainings(FINISHED, order="recent", limit=recent)
    counts = store.count_trainings()
    queue = store.list_trainings(["new"], limit=limit) if limit else []
    searches = [{k: job.get(k) for k in ("id", "name", "status", "n_trials", "trials_created", "counts", "best",
                                         "objective", "cancel_requested")}
                for job in store.list_jobs(["running"]) if job.get("job_type") == "search"]
    return {"counts": counts, "running": store.list_trainings(["queued", "running"]), "queue": queue,
            "queue_more": max(counts["new"] - len(queue), 0), "recent": finished, "searches": searches}


def _trials(store, job: dict[str, Any], trainings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A search job's trials from its trainings (miquery reads the store, never Optuna), best first."""
    from mitorch.service.search.step import trial_state

    metric, maximize = job["objective"]["metric"], job["objective"]["direction"] == "maximize"
    trials = []
    for t in trainings:
        if t.get("trial_number") is None:
            continue
        results = store.list_results(t["id"])
        state = trial_state(t)
        value = (t.get("metrics") or {}).get(metric) if state == "complete" else None
        if value is None and results and state in ("running", "pruned"):  # its last reported epoch
            value = (results[-1].get("val") or {}).get(metric)
        trials.append({"number": t["trial_number"], "params": t.get("params", {}), "value": value, "state": state,
                       "epochs": len(results), "training_id": t["id"]})
    # Ended trials with a value first, best first; then the rest by number.
    trials.sort(key=lambda r: (r["value"] is None, -(r["value"] or 0) if maximize else (r["value"] or 0),
                               r["number"]))
    return trials


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ""


def _main_metric(metrics: dict | None) -> str:
    for name in MAIN_METRICS:
        if metrics and metrics.get(name) is not None:
            return f"{name} {metrics[name]:.4f}"
    return ""


def _summary(training: dict) -> str:
    config = training["config"]
    model = (config.get("model") or {}).get("_target_", "?").rsplit(".", 1)[-1]
    optimizer = (config.get("optimizer") or {}).get("_target_", "?").rsplit(".", 1)[-1]
    return (f"{model} {optimizer} lr={(config.get('optimizer') or {}).get('lr')} epochs={config.get('max_epochs')} "
            f"{_data(training)}")


def _data(training: dict) -> str:
    """What a training trains on: a registered dataset (NAME:VERSION), its TRAIN path, or the
    built-in dataset."""
    dataset = training.get("dataset")
    if dataset:
        return f"dataset {dataset['name']}:{dataset['version']}"
    return ((training["config"].get("data") or {}).get("train")) or "built-in"


def _show(view: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()

    def table(*columns: str, title: str) -> Table:
        # Ids are never cut: the id column neither wraps nor shrinks.
        shown = Table(title=title)
        for column in columns:
            shown.add_column(column, no_wrap=column == "id", min_width=24 if column == "id" else None)
        return shown

    def row(shown: Table, *cells: Any) -> None:
        shown.add_row(*(escape(str(c)) if c is not None else "" for c in cells))

    if "counts" in view:
        counts = Table(title="trainings by status")
        for status in view["counts"]:
            counts.add_column(status, justify="right")
        counts.add_row(*map(str, view["counts"].values()))
        running = table("id", "status", "attempt", "run", "started", "heartbeat", title="running")
        for t in view["running"]:
            row(running, t["id"], t["status"], t.get("attempt", ""), t.get("run_id") or "",
                _when(t.get("started_at")), _when(t.get("heartbeat_at")))
        queue = table("id", "priority", "submitted", "config", title="queue (dispatch order)")
        for t in view["queue"]:
            row(queue, t["id"], t["priority"], _when(t["created_at"]), _summary(t))
        if view.get("queue_more"):
            queue.caption = f"and {view['queue_more']} more (miquery --limit N shows more)"
        recent = table("id", "status", "finished", "result", title="recently finished")
        for t in view["recent"]:
            row(recent, t["id"], t["status"], _when(t.get("completed_at")),
                _main_metric(t.get("metrics")) or (t.get("error") or "")[:80])
        shown_tables = [counts, running, queue, recent]
        if view.get("searches"):
            searches = table("id", "name", "trials", "best", title="search jobs")
            for job in view["searches"]:
                best = job.get("best")
                states = ", ".join(f"{n} {s}" for s, n in (job.get("counts") or {}).items() if n)
                row(searches, job["id"], job.get("name") or "",
                    f"{job.get('trials_created') or 0}/{job['n_trials']}" + (f" ({states})" if states else "")
                    + (" cancelling" if job.get("cancel_requested") else ""),
                    f"{job['objective']['metric']} {best['value']:.6g} (trial {best['number']})" if best else "")
            shown_tables.append(searches)
        for shown in shown_tables:
            console.print(shown)
        return
    if "trials" in view:
        job = view["job"]
        objective = job["objective"]
        status = job["status"] + (" (cancelling)" if job.get("cancel_requested") and job["status"] == "running" else "")
        console.print(escape(f"search job {job['id']}{' ' + job['name'] if job.get('name') else ''}: {status}"
                             f"  {objective['direction']} {objective['metric']}  sampler {job['sampler']['name']}  "
                             f"pruner {job['pruner']['name']}  {job['n_trials']} trials, {job['max_concurrent']} "
                             f"at once, max_failed {job['max_failed']}"))
        counts = job.get("counts") or {}
        console.print(escape("trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) if counts
                             else "trials: none yet"))
        if job.get("best"):
            best = job["best"]
            console.print(escape(f"best: trial {best['number']} {objective['metric']} {best['value']:.6g} "
                                 f"{json.dumps(best['params'])} (training {best['training_id']})"))
        if job.get("importances"):
            importances = job["importances"]
            console.print(escape(f"parameter importances ({importances['trials']} complete trials): " + ", ".join(
                f"{name} {value:.2f}" for name, value in importances["params"].items())))
        if job.get("error"):
            console.print("[red]error:[/red] " + escape(job["error"]))
        trials = table("trial", "params", objective["metric"], "state", "epochs", "id", title="trials (best first)")
        for r in view["trials"]:
            row(trials, r["number"], " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in r["params"].items()),
                "" if r["value"] is None else f"{r['value']:.6g}", r["state"], r["epochs"], r["training_id"])
        console.print(trials)
        return
    if "job" in view:
        job = view["job"]
        console.print(escape(f"job {job['id']} ({job.get('job_type', '')}): {job['status']}"))
        trainings = table("id", "status", "result", title="trainings")
        for t in view["trainings"]:
            row(trainings, t["id"], t["status"], _main_metric(t.get("metrics")))
        console.print(trainings)
        return
    t = view["training"]
    console.print(escape(f"training {t['id']}: {t['status']}  priority {t['priority']}  {_summary(t)}"))
    history = table("status", "at", title="history")
    for entry in t.get("status_history", []):
        row(history, entry["status"], _when(entry["at"]))
    console.print(history)
    if t.get("attempts"):
        attempts = table("attempt", "executor", "run", "host", "started", "ended", "outcome", title="attempts")
        for number, a in enumerate(t["attempts"], 1):
            row(attempts, number, a.get("executor", ""), a.get("run_id") or "", a.get("host") or "",
                _when(a.get("started_at")), _when(a.get("ended_at")),
                a.get("outcome") or ("current" if number == t.get("attempt") else ""))
        console.print(attempts)
    if view["results"]:
        metric_names = sorted({k for r in view["results"] for k in (r.get("val") or {})})
        epochs = table("epoch", "train_loss", "lr", "duration_s", *metric_names, title="epochs")
        for r in view["results"]:
            val = r.get("val") or {}
            row(epochs, r["epoch"], f"{r.get('train_loss', 0):.4f}", f"{r.get('lr', 0):.3g}", r.get("duration_s", ""),
                *(f"{val[m]:.4g}" if isinstance(val.get(m), float) else val.get(m, "") for m in metric_names))
        console.print(epochs)
    for earlier in t.get("history", []):
        console.print(escape(f"earlier run (attempt {earlier.get('attempt')}): {json.dumps(earlier.get('metrics'))}"))
    if t.get("metrics"):
        console.print(escape("final metrics: " + json.dumps(t["metrics"])))
    if t.get("error"):
        console.print("[red]error:[/red] " + escape(t["error"]))
    if t.get("azureml_job"):
        console.print(escape(f"azureml job: {t['azureml_job']}  {t.get('studio_url') or ''}"))
    if t.get("artifacts"):
        console.print(escape(f"artifacts: {t['artifacts']}"))
    if t.get("log"):
        console.print(escape(f"log: {t['log']}"))


if __name__ == "__main__":
    main()
