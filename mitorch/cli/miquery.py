"""miquery: where trainings stand, as Rich tables or JSON.

    miquery [--json]          running, queue (dispatch order), recent results, counts
    miquery ID [--json]       one training (config, history, epochs, result) or one job
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from mitorch.cli._common import fail, to_json
from mitorch.errors import MiTorchError

PROG = "miquery"
_MAIN_METRICS = ("top1_accuracy", "accuracy_50", "mAP")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description="Show trainings and jobs in the job store.")
    parser.add_argument("id", nargs="?", help="a training or job id")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--recent", type=int, default=10, help="how many finished trainings to list (10)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from mitorch.store import StoreError, open_store

        store = open_store()
        if args.id is None:
            view = _overview(store, args.recent)
        elif (training := store.get_training(args.id)) is not None:
            view = {"training": training, "results": store.list_results(args.id)}
        elif (job := store.get_job(args.id)) is not None:
            view = {"job": job, "trainings": store.list_trainings(job_id=args.id)}
        else:
            raise StoreError(f"no training or job {args.id}")
    except MiTorchError as e:
        fail(PROG, e)
    if args.json:
        print(to_json(view))
    else:
        _show(view)


def _overview(store, recent: int) -> dict[str, Any]:
    finished = store.list_trainings(["completed", "failed", "cancelled"], order="recent", limit=recent)
    return {"counts": store.count_trainings(), "running": store.list_trainings(["queued", "running"]),
            "queue": store.list_trainings(["new"]), "recent": finished}


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ""


def _main_metric(metrics: dict | None) -> str:
    for name in _MAIN_METRICS:
        if metrics and metrics.get(name) is not None:
            return f"{name} {metrics[name]:.4f}"
    return ""


def _summary(config: dict) -> str:
    model = (config.get("model") or {}).get("_target_", "?").rsplit(".", 1)[-1]
    optimizer = (config.get("optimizer") or {}).get("_target_", "?").rsplit(".", 1)[-1]
    data = (config.get("data") or {}).get("train") or "built-in"
    return f"{model} {optimizer} lr={(config.get('optimizer') or {}).get('lr')} epochs={config.get('max_epochs')} {data}"


def _show(view: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "counts" in view:
        counts = Table(title="trainings by status")
        for status in view["counts"]:
            counts.add_column(status, justify="right")
        counts.add_row(*map(str, view["counts"].values()))
        running = Table("id", "status", "run", "started", "heartbeat", title="running")
        for t in view["running"]:
            running.add_row(t["id"], t["status"], t.get("run_id", ""), _when(t.get("started_at")),
                            _when(t.get("heartbeat_at")))
        queue = Table("id", "priority", "submitted", "config", title="queue (dispatch order)")
        for t in view["queue"]:
            queue.add_row(t["id"], str(t["priority"]), _when(t["created_at"]), _summary(t["config"]))
        recent = Table("id", "status", "finished", "result", title="recently finished")
        for t in view["recent"]:
            recent.add_row(t["id"], t["status"], _when(t.get("completed_at")),
                           _main_metric(t.get("metrics")) or (t.get("error") or "")[:80])
        for table in (counts, running, queue, recent):
            console.print(table)
        return
    if "job" in view:
        console.print(f"job {view['job']['id']} ({view['job'].get('job_type', '')}): {view['job']['status']}")
        table = Table("id", "status", "result")
        for t in view["trainings"]:
            table.add_row(t["id"], t["status"], _main_metric(t.get("metrics")))
        console.print(table)
        return
    t = view["training"]
    console.print(f"training {t['id']}: [bold]{t['status']}[/bold]  priority {t['priority']}  {_summary(t['config'])}")
    history = Table("status", "at", title="history")
    for entry in t.get("status_history", []):
        history.add_row(entry["status"], _when(entry["at"]))
    console.print(history)
    if view["results"]:
        metric_names = sorted({k for r in view["results"] for k in (r.get("val") or {})})
        epochs = Table("epoch", "train_loss", "lr", "duration_s", *metric_names, title="epochs")
        for r in view["results"]:
            val = r.get("val") or {}
            epochs.add_row(str(r["epoch"]), f"{r.get('train_loss', 0):.4f}", f"{r.get('lr', 0):.3g}",
                           str(r.get("duration_s", "")), *(f"{val[m]:.4g}" if isinstance(val.get(m), float)
                                                          else str(val.get(m, "")) for m in metric_names))
        console.print(epochs)
    if t.get("metrics"):
        console.print("final metrics: " + json.dumps(t["metrics"]))
    if t.get("error"):
        console.print(f"[red]error:[/red] {t['error']}", markup=True)
    if t.get("artifacts"):
        console.print(f"artifacts: {t['artifacts']}")
    if t.get("log"):
        console.print(f"log: {t['log']}")


if __name__ == "__main__":
    main()
