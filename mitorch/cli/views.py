"""What miquery and midataset show: tables and lines, rendered as Rich tables on a terminal and
as plain tab-separated text elsewhere (a pipe, a file), where nothing is wrapped or cut.

Plain layout: a table is a `# title` line, one header line, then one line per row, its cells
separated by tabs (tabs and newlines inside a value become spaces), and a `# caption` line when
it has one; a blank line comes before and after each table. No colour.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from mitorch.task_types import MAIN_METRICS


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""
    numbers: bool = False  # every column holds a count: right-aligned on a terminal

    def add(self, *cells: Any) -> None:
        self.rows.append(["" if cell is None else str(cell) for cell in cells])


@dataclass
class Line:
    """A line of text; a label ("error:") is shown in red on a terminal."""

    text: str
    label: str = ""


Section = Table | Line


def show(view: dict[str, Any], out: TextIO | None = None) -> None:
    """Prints a view of miquery: Rich tables on a terminal, tab-separated text elsewhere."""
    render(sections(view), out)


def render(parts: list[Section], out: TextIO | None = None) -> None:
    """Prints tables and lines: Rich tables on a terminal, tab-separated text elsewhere."""
    out = sys.stdout if out is None else out
    if out.isatty():
        _render_rich(parts, out)
    else:
        _render_plain(parts, out)


def sections(view: dict[str, Any]) -> list[Section]:
    """The tables and lines of a view that miquery built (the overview, a search job, another
    job, or a training)."""
    if "counts" in view:
        return _overview(view)
    if "tagged" in view:
        return [_listing(f"trainings tagged {view['tag']}", view["tagged"])]
    if "trials" in view:
        return _search_job(view)
    if "job" in view:
        return _job(view)
    return _training(view)


def _overview(view: dict[str, Any]) -> list[Section]:
    counts = Table("trainings by status", list(view["counts"]), numbers=True)
    counts.add(*view["counts"].values())
    running = Table("running", ["id", "status", "attempt", "run", "started", "heartbeat"])
    for t in view["running"]:
        running.add(t["id"], t["status"], t.get("attempt", ""), t.get("run_id") or "", _when(t.get("started_at")),
                    _when(t.get("heartbeat_at")))
    queue = Table("queue (dispatch order)", ["id", "priority", "submitted", "config"])
    for t in view["queue"]:
        queue.add(t["id"], t["priority"], _when(t["created_at"]), _summary(t))
    if view.get("queue_more"):
        queue.caption = f"and {view['queue_more']} more (miquery --limit N shows more)"
    recent = Table("recently finished", ["id", "status", "finished", "result"])
    for t in view["recent"]:
        recent.add(t["id"], t["status"], _when(t.get("completed_at")),
                   _main_metric(t.get("metrics")) or (t.get("error") or "")[:80])
    shown: list[Section] = [counts, running, queue, recent]
    if view.get("searches"):
        shown.append(_searches(view["searches"]))
    return shown


def _searches(jobs: list[dict[str, Any]]) -> Table:
    searches = Table("search jobs", ["id", "name", "trials", "best"])
    for job in jobs:
        best = job.get("best")
        states = ", ".join(f"{n} {s}" for s, n in (job.get("counts") or {}).items() if n)
        searches.add(job["id"], job.get("name") or "",
                     f"{job.get('trials_created') or 0}/{job['n_trials']}" + (f" ({states})" if states else "")
                     + (" cancelling" if job.get("cancel_requested") else ""),
                     f"{job['objective']['metric']} {best['value']:.6g} (trial {best['number']})" if best else "")
    return searches


def _listing(title: str, trainings: list[dict[str, Any]]) -> Table:
    """Trainings as rows of id, status, result, tags and note (a listing by tag, or children)."""
    listed = Table(title, ["id", "status", "result", "tags", "note"])
    for t in trainings:
        listed.add(t["id"], t["status"], _main_metric(t.get("metrics")), ", ".join(map(str, t.get("tags") or [])),
                   t.get("note") or "")
    if not trainings:
        listed.caption = "none"
    return listed


def _search_job(view: dict[str, Any]) -> list[Section]:
    job = view["job"]
    objectives = job.get("objectives") or [job["objective"]]
    status = job["status"] + (" (cancelling)" if job.get("cancel_requested") and job["status"] == "running" else "")
    counts = job.get("counts") or {}
    shown: list[Section] = [
        Line(f"search job {job['id']}{' ' + job['name'] if job.get('name') else ''}: {status}  "
             + ", ".join(f"{o['direction']} {o['metric']}" for o in objectives)
             + f"  sampler {job['sampler']['name']}  pruner {job['pruner']['name']}  {job['n_trials']} trials, "
             f"{job['max_concurrent']} at once, max_failed {job['max_failed']}"),
        Line("trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) if counts else "trials: none yet")]
    if job.get("constraints"):
        shown.append(Line("constraints: " + ", ".join(f"{c['metric']} {c['op']} {c['bound']:g}"
                                                      for c in job["constraints"])))
    if job.get("objectives"):
        shown.append(Line(f"pareto front: {len(job.get('pareto') or [])} feasible trials no other trial dominates "
                          f"(trials marked pareto below)"))
    elif job.get("best"):
        best = job["best"]
        shown.append(Line(f"best: trial {best['number']} {objectives[0]['metric']} {best['value']:.6g} "
                          f"{json.dumps(best['params'])} (training {best['training_id']})"))
    if job.get("importances"):
        importances = job["importances"]
        shown.append(Line(f"parameter importances ({importances['trials']} complete trials): " + ", ".join(
            f"{name} {value:.2f}" for name, value in importances["params"].items())))
    if job.get("error"):
        shown.append(Line(job["error"], label="error:"))
    return [*shown, _trial_table(job, objectives, view["trials"])]


def _trial_table(job: dict[str, Any], objectives: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Table:
    """A search job's trials: one column per objective; a multi-objective job's trials marked
    pareto, dominated or infeasible; a constrained job's marked feasible or not."""
    multi, constrained = bool(job.get("objectives")), bool(job.get("constraints"))
    marks = ["front"] if multi else ["feasible"] if constrained else []
    title = f"trials (by {objectives[0]['metric']}, best first)" if multi else "trials (best first)"
    trials = Table(title, ["trial", "params", *(o["metric"] for o in objectives), *marks, "state", "epochs", "id"])
    for r in rows:
        values = (r.get("values") or [r["value"]] + [None] * (len(objectives) - 1)) if multi else [r["value"]]
        mark = [r.get("front", "")] if multi else [_yes_no(r.get("feasible"))] if constrained else []
        trials.add(r["number"], " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in r["params"].items()),
                   *("" if value is None else f"{value:.6g}" for value in values), *mark,
                   "reused" if r.get("reused_from") else r["state"], r["epochs"], r["training_id"])
    return trials


def _yes_no(value: bool | None) -> str:
    return "" if value is None else "yes" if value else "no"


def _job(view: dict[str, Any]) -> list[Section]:
    """A sweep (misubmit -m) or another job: its trainings, with each run's overrides."""
    job = view["job"]
    trainings = Table("trainings", ["id", "status", "result", "overrides"])
    for t in view["trainings"]:
        trainings.add(t["id"], t["status"], _main_metric(t.get("metrics")), " ".join(t.get("overrides") or []))
    return [Line(f"job {job['id']} ({job.get('job_type', '')}): {job['status']}"), trainings]


def _training(view: dict[str, Any]) -> list[Section]:
    t = view["training"]
    history = Table("history", ["status", "at"])
    for entry in t.get("status_history", []):
        history.add(entry["status"], _when(entry["at"]))
    shown: list[Section] = [Line(f"training {t['id']}: {t['status']}  priority {t['priority']}  {_summary(t)}"),
                            history]
    if t.get("attempts"):
        attempts = Table("attempts", ["attempt", "executor", "run", "host", "started", "ended", "outcome"])
        for number, a in enumerate(t["attempts"], 1):
            attempts.add(number, a.get("executor", ""), a.get("run_id") or "", a.get("host") or "",
                         _when(a.get("started_at")), _when(a.get("ended_at")),
                         a.get("outcome") or ("current" if number == t.get("attempt") else ""))
        shown.append(attempts)
    if view["results"]:
        shown.append(_epochs(view["results"]))
    if view.get("children"):
        shown.append(_listing("children (cloned from it or started from its weights)", view["children"]))
    return shown + _lineage_lines(t) + _training_lines(t)


def _lineage_lines(t: dict[str, Any]) -> list[Section]:
    """Where a training came from and how it is labelled: what it records of these, and nothing
    for a training from before they were recorded."""
    lines: list[Section] = []
    if t.get("fingerprint"):
        lines.append(Line(f"fingerprint: {t['fingerprint']}"))
    if t.get("parent"):
        lines.append(Line(f"parent: {t['parent']}"))
    if t.get("tags"):
        lines.append(Line("tags: " + ", ".join(map(str, t["tags"]))))
    if t.get("note"):
        lines.append(Line(f"note: {t['note']}"))
    return lines


def _epochs(results: list[dict[str, Any]]) -> Table:
    metric_names = sorted({k for r in results for k in (r.get("val") or {})})
    epochs = Table("epochs", ["epoch", "train_loss", "lr", "duration_s", *metric_names])
    for r in results:
        val = r.get("val") or {}
        epochs.add(r["epoch"], f"{r.get('train_loss', 0):.4f}", f"{r.get('lr', 0):.3g}", r.get("duration_s", ""),
                   *(f"{val[m]:.4g}" if isinstance(val.get(m), float) else val.get(m, "") for m in metric_names))
    return epochs


def _training_lines(t: dict[str, Any]) -> list[Section]:
    lines: list[Section] = [Line(f"earlier run (attempt {earlier.get('attempt')}): "
                                 f"{json.dumps(earlier.get('metrics'))}") for earlier in t.get("history", [])]
    if t.get("metrics"):
        lines.append(Line("final metrics: " + json.dumps(t["metrics"])))
    if t.get("error"):
        lines.append(Line(t["error"], label="error:"))
    if t.get("azureml_job"):
        lines.append(Line(f"azureml job: {t['azureml_job']}  {t.get('studio_url') or ''}"))
    for key in ("artifacts", "log"):
        if t.get(key):
            lines.append(Line(f"{key}: {t[key]}"))
    return lines


def _render_rich(parts: list[Section], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    console = Console(file=out)
    for part in parts:
        if isinstance(part, Line):
            # Stored strings reach Rich as Text, never as markup.
            console.print(Text.assemble((part.label + " ", "red") if part.label else "", part.text), highlight=False)
            continue
        shown = RichTable(title=part.title, caption=part.caption or None)
        for column in part.columns:
            # Ids are never cut: the id column neither wraps nor shrinks; a long path or value folds.
            shown.add_column(column, no_wrap=column == "id", min_width=24 if column == "id" else None,
                             justify="right" if part.numbers else "left", overflow="fold")
        for row in part.rows:
            shown.add_row(*(Text(cell) for cell in row))
        console.print(shown)


def _render_plain(parts: list[Section], out: TextIO) -> None:
    blocks: list[list[str]] = []
    for number, part in enumerate(parts):
        if isinstance(part, Line):
            # Lines that follow each other stay together; a table is a block of its own.
            if number == 0 or not isinstance(parts[number - 1], Line):
                blocks.append([])
            blocks[-1].append(_cell(f"{part.label} {part.text}" if part.label else part.text))
            continue
        lines = [f"# {part.title}", "\t".join(map(_cell, part.columns))]
        lines += ["\t".join(map(_cell, row)) for row in part.rows]
        blocks.append(lines + ([f"# {part.caption}"] if part.caption else []))
    out.write("\n\n".join("\n".join(block) for block in blocks) + "\n")


def _cell(text: str) -> str:
    # One value per cell and one row per line, whatever a stored string holds.
    return " ".join(text.replace("\t", " ").splitlines())


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
