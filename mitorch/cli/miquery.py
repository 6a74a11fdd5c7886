"""miquery: where trainings stand, as Rich tables or JSON.

    miquery [--json] [--limit N]   running, queue (dispatch order, first N), recent results, counts
    miquery ID [--json]            one training (config, history, attempts, epochs, result, lineage, tags,
                                   note) or one job
    miquery --tag NAME [--json]    the trainings with a tag, newest first
"""
from __future__ import annotations

import argparse
import functools
from typing import Any

from mitorch.cli._common import CommandParser, check_id, fail, parse, to_json
from mitorch.errors import MiTorchError, UsageError

PROG = "miquery"
EPILOG = """\
On a terminal the views are tables; piped or written to a file they are plain tab-separated
text: per table a '# title' line, a header line and one line per row, with full ids and paths
(miquery | grep -v '^#' | cut -f1). --json prints everything for scripts.
"""


def _parser() -> CommandParser:
    parser = CommandParser(PROG, "Show trainings and jobs in the job store ($MITORCH_DB_URI).", epilog=EPILOG)
    parser.add_argument("id", nargs="?", metavar="ID", help="a training or job id (none: the overview)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--tag", metavar="NAME", help="list the trainings with this tag (micontrol tag adds one)")
    parser.add_argument("--recent", type=_count, default=10, metavar="N",
                        help="how many finished trainings to list (10)")
    parser.add_argument("--limit", type=_count, default=20, metavar="N", help="how many queued trainings to list (20)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse(_parser(), argv)
    try:
        if args.id is not None:
            check_id(args.id, "ID")  # before the store is asked: a long id costs a query its length
        if args.tag is not None:
            if args.id is not None:
                raise UsageError("--tag lists the trainings with a tag; give it without an ID")
            from mitorch.service.labels import check_tag

            check_tag(args.tag, "--tag")
        view = _view(args)
    except MiTorchError as e:
        fail(PROG, e)
    if args.json:
        print(to_json(view))
    else:
        from mitorch.cli.views import show

        show(view)


def _view(args: argparse.Namespace) -> dict[str, Any]:
    from mitorch.store import StoreError, open_store

    store = open_store()
    if args.tag is not None:
        return _tagged(store, args.tag)
    if args.id is None:
        return _overview(store, args.recent, args.limit)
    if (training := store.get_training(args.id)) is not None:
        return {"training": training, "results": store.list_results(args.id), "children": _children(store, args.id)}
    if (job := store.get_job(args.id)) is None:
        raise StoreError(f"no training or job {args.id}")
    job.pop("watch", None)  # the controller's own bookkeeping
    view = {"job": job, "trainings": store.list_trainings(job_id=args.id)}
    if job.get("job_type") == "search":
        view["trials"] = _trials(store, job, view["trainings"])
        if job.get("objectives"):
            view["pareto"] = job.get("pareto") or []
    return view


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


# What a listing of trainings by tag or by parent reads of each: never whole configs.
_LISTED = ["status", "created_at", "completed_at", "metrics", "tags", "note", "parent", "name"]


def _tagged(store, tag: str) -> dict[str, Any]:
    """The trainings with a tag, newest first."""
    found = [t for t in store.list_trainings(order="recent", fields=_LISTED) if tag in (t.get("tags") or [])]
    return {"tag": tag, "tagged": found}


def _children(store, training_id: str) -> list[dict[str, Any]]:
    """The trainings whose parent is training_id (cloned from it, or started from its weights)."""
    return [{key: t.get(key) for key in ("id", "status", "metrics", "tags")}
            for t in store.list_trainings(order="recent", fields=_LISTED, parent=training_id)]


def _trials(store, job: dict[str, Any], trainings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A search job's trials from its trainings (miquery reads the store, never Optuna), best first
    (in the first objective of a multi-objective job)."""
    from mitorch.service.search.trials import reused_trials, trial_state
    from mitorch.task_types import direction

    metric = job["objective"]["metric"]
    maximize = (job["objective"].get("direction") or direction(metric)) == "maximize"
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
                       "epochs": len(results), "training_id": t["id"], **_judged(job, t)})
    trials += reused_trials(job)  # told another training's value: no training of their own
    _mark_front(job, trials)
    return sorted(trials, key=functools.cmp_to_key(lambda a, b: _best_first(a, b, maximize)))


def _judged(job: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """A complete trial's every objective value (a multi-objective job) and whether it meets the
    job's constraints (a job with constraints), from its training's metrics."""
    from mitorch.service.search.trials import constraint_values, is_feasible

    metrics = training.get("metrics") or {}
    if training["status"] != "completed":
        return {}
    judged: dict[str, Any] = {}
    if job.get("objectives"):
        judged["values"] = [metrics.get(o["metric"]) for o in job["objectives"]]
    if job.get("constraints"):
        values = constraint_values(job["constraints"], metrics)
        judged["feasible"] = values is not None and is_feasible(values)
    return judged


def _mark_front(job: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    """Marks each complete trial of a multi-objective job `pareto` (no feasible complete trial
    dominates it), `dominated` or `infeasible` (it breaks a constraint), as its `front`."""
    from mitorch.service.search.trials import pareto_front

    if not job.get("objectives"):
        return
    judged = [t for t in trials if t.get("values") and all(isinstance(v, (int, float)) for v in t["values"])
              and t.get("feasible", True)]
    front = {judged[i]["number"] for i in pareto_front([t["values"] for t in judged],
                                                       [o["direction"] for o in job["objectives"]])}
    for trial in trials:
        if trial.get("feasible") is False:
            trial["front"] = "infeasible"
        elif trial.get("values"):
            trial["front"] = "pareto" if trial["number"] in front else "dominated"


def _best_first(a: dict[str, Any], b: dict[str, Any], maximize: bool) -> int:
    """Trials with a value first, the better one first; then the rest by number."""
    from mitorch.task_types import is_better

    if (a["value"] is None) != (b["value"] is None):
        return -1 if b["value"] is None else 1
    if a["value"] is not None and a["value"] != b["value"]:
        return -1 if is_better(a["value"], b["value"], maximize) else 1
    return a["number"] - b["number"]


if __name__ == "__main__":
    main()
