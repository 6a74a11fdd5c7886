"""Retention (`micontrol gc`, and a controller tick when MITORCH_GC_ON_TICK=1).

Checkpoints: a failed, cancelled or pruned training's checkpoints are kept a while (DAYS) so that
a requeue can resume from them; after that they only cost space and gc frees them. Weights and
logs stay.

Attempt folders (with --keep-best N, or MITORCH_GC_KEEP_BEST=N on a tick): a training that ended
(any way) more than DAYS ago loses its attempt folders, weights, logs and checkpoints together,
unless it is one of its job's best N completed trainings (a training outside a job is a job of
its own), whose files stay. Its record stays, with `artifacts_removed_at` set and `weights` moved
to `removed_weights` (so `base=ID` is refused at submit time, not at run time).

An active training (new, queued, running) is never touched: every removal comes after a write
that is conditional on the training still having the status and attempt it was listed with.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mitorch.errors import MiTorchError

# How long a failed or cancelled training's checkpoints stay for a requeue to resume from.
GC_DAYS_VARIABLE, GC_DAYS_DEFAULT = "MITORCH_GC_AFTER_DAYS", 7.0
# On a tick: whether it collects (1) and how many of each job's best trainings keep their files
# (unset: only checkpoints are collected, as `micontrol gc` without --keep-best).
GC_ON_TICK_VARIABLE, KEEP_BEST_VARIABLE = "MITORCH_GC_ON_TICK", "MITORCH_GC_KEEP_BEST"
GC_LEASE = "gc"
_ENDED = ["failed", "cancelled", "pruned"]
_FINISHED = ["completed", "failed", "cancelled", "pruned"]
# What a training uploads to each attempt's folder when artifacts are in Blob Storage.
_PUBLISHED = ("last.pt", "model.pt", "best.pt", "train.log")


@dataclass
class Collected:
    """What a gc freed (or, in a dry run, would free)."""

    bytes: int = 0
    trainings: int = 0
    days: float = GC_DAYS_DEFAULT
    folders: int = 0  # trainings whose attempt folders were removed
    kept: int = 0  # trainings old enough whose files stay: among their job's best


def gc_days(days: float | None) -> float:
    """days, else $MITORCH_GC_AFTER_DAYS, else the default.

    Raises:
        MiTorchError: the variable is not a number of 0 or more.
    """
    from mitorch.envvars import env_float

    return env_float(GC_DAYS_VARIABLE, GC_DAYS_DEFAULT, minimum=0) if days is None else days


def collect_checkpoints(store: Any, days: float | None, dry_run: bool, say: Callable[[str], None],
                        warn: Callable[[str], None], collected: Collected | None = None,
                        skip: set[str] | frozenset[str] = frozenset()) -> Collected:
    """Frees the checkpoints of trainings that ended failed, cancelled or pruned at least `days`
    ago (on the database's clock).

    Args:
        say: called with one line per training freed.
        warn: called with one line per training whose checkpoints could not be removed.
        collected: what an earlier pass freed, added to (its days apply).
        skip: trainings an earlier pass handled (a dry run writes nothing that would say so).

    Returns:
        The total freed, for the closing line.
    """
    collected = collected or Collected(days=gc_days(days))
    now = store.clock()
    for training, ended in _ended_before(store, now - timedelta(days=collected.days)):
        if training["id"] in skip:
            continue
        freed = _free_checkpoints(store, training, dry_run, warn)
        if freed is None or not freed.removed:
            continue
        collected.bytes += freed.local_bytes
        collected.trainings += 1
        files = len(freed.removed) - freed.blobs
        parts = [f"{files} file{'s' * (files != 1)}"] if files else []
        parts += [f"{freed.blobs} blob{'s' * (freed.blobs != 1)} of unknown size"] if freed.blobs else []
        say(f"{'would free' if dry_run else 'freed'} {size_text(freed.local_bytes)} of {training['id']} "
            f"({training['status']} {(now - ended) / timedelta(days=1):.1f} days ago; {', '.join(parts)})")
    return collected


def summary(collected: Collected, dry_run: bool) -> str:
    """The closing line of a gc."""
    folders = (f"; the attempt folders of {collected.folders}, keeping those of {collected.kept} among their "
               "job's best" if collected.folders or collected.kept else "")
    return (f"{'would free' if dry_run else 'freed'} {size_text(collected.bytes)} in all, from {collected.trainings} "
            f"training{'s' * (collected.trainings != 1)} that ended more than {collected.days:g} days ago{folders}"
            + (" (a dry run: nothing was removed)" if dry_run else ""))


def _ended_before(store: Any, cutoff: datetime, statuses: list[str] = _ENDED,
                  marker: str = "checkpoints_removed_at") -> list[tuple[dict, datetime]]:
    """(training, when it ended) of the trainings with statuses that ended before cutoff, newest
    first, less those collected (marker) since they last ended."""
    fields = ["status", "attempt", "completed_at", "status_history", marker, "job_id", "metrics", "weights"]
    found = []
    for training in store.list_trainings(statuses, order="recent", fields=fields):
        # completed_at, else (a training cancelled before it ran) its last status change
        history = training.get("status_history") or [{}]
        ended = training.get("completed_at") or history[-1].get("at")
        collected = training.get(marker)
        if training.get("attempt") and ended is not None and ended < cutoff and not (collected and collected >= ended):
            found.append((training, ended))
    return found


def _free_checkpoints(store: Any, training: dict, dry_run: bool, warn: Callable[[str], None]) -> Any:
    """Frees an ended training's checkpoints; None when it was requeued since it was listed (it
    is active again and resumes from them) or when a removal failed (said through warn).

    The removal is fenced: it happens only after a write conditional on the training's status
    and attempt (checkpoints_removed_at) succeeded, so a training requeued meanwhile is left alone.
    """
    from mitorch.files import artifacts
    from mitorch.store.base import DB_NOW

    fence = {"expected_status": training["status"], "attempt": training["attempt"]}
    if not dry_run and not store.update_training(training["id"], {"checkpoints_removed_at": DB_NOW}, **fence):
        return None
    try:
        return artifacts.free_checkpoints(training["id"], training["attempt"], dry_run=dry_run)
    except MiTorchError as e:
        if not dry_run:  # so the next gc looks at it again
            store.update_training(training["id"], {"checkpoints_removed_at": None}, **fence)
        warn(f"gc: {training['id']}: {' '.join(str(e).split())}")
        return None


def size_text(count: int) -> str:
    """A byte count as people read it: 512 bytes, 1.5 kB, 94.2 MB (powers of 1000)."""
    if count < 1000:
        return f"{count} bytes"
    size, unit = count / 1000, "kB"
    for larger in ("MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, larger
    return f"{size:.1f} {unit}"


def keep_best_setting(keep_best: int | None) -> int | None:
    """keep_best, else $MITORCH_GC_KEEP_BEST (unset or empty: None, only checkpoints are collected).

    Raises:
        ConfigError: the variable is not a whole number of 0 or more (mitorch.envvars.env_int).
    """
    import os

    from mitorch.envvars import env_int

    if keep_best is not None or not os.environ.get(KEEP_BEST_VARIABLE, "").strip():
        return keep_best
    return env_int(KEEP_BEST_VARIABLE, 0, minimum=0)


def collect_attempt_folders(store: Any, collected: Collected, keep_best: int, dry_run: bool,
                            say: Callable[[str], None], warn: Callable[[str], None]) -> set[str]:
    """Removes the attempt folders (weights, logs, checkpoints; locally and in Blob Storage) of the
    trainings that ended at least collected.days ago, except each job's keep_best best completed
    trainings; adds what it freed to collected.

    Args:
        say: called with one line per training whose folders were removed.
        warn: called with one line per training whose folders could not be removed.

    Returns:
        The ids of the trainings it removed the folders of (or would have, in a dry run).
    """
    now = store.clock()
    best, handled = _best_of_each_job(store, keep_best), set()
    for training, ended in _ended_before(store, now - timedelta(days=collected.days), _FINISHED,
                                         "artifacts_removed_at"):
        if training["id"] in best:
            collected.kept += 1
            continue
        freed = _free_attempt_folders(store, training, dry_run, warn)
        if freed is None:
            continue
        handled.add(training["id"])
        collected.bytes += freed.local_bytes
        collected.trainings += 1
        collected.folders += 1
        parts = [f"{freed.files} file{'s' * (freed.files != 1)}"]
        parts += [f"{freed.blobs} blob{'s' * (freed.blobs != 1)} of unknown size"] if freed.blobs else []
        say(f"{'would free' if dry_run else 'freed'} {size_text(freed.local_bytes)} of {training['id']} "
            f"({training['status']} {(now - ended) / timedelta(days=1):.1f} days ago; attempt folders: "
            f"{', '.join(parts)})")
    return handled


def _best_of_each_job(store: Any, keep_best: int) -> set[str]:
    """The ids of each job's keep_best best completed trainings: by a search job's objective,
    else by the first main metric its trainings have (a training outside a job is a job of its
    own, so its weights stay whenever keep_best is 1 or more)."""
    from mitorch.task_types import MAIN_METRICS, direction

    if keep_best == 0:
        return set()
    by_job: dict[str, list[dict]] = {}
    for training in store.list_trainings(["completed"], order="recent", fields=["job_id", "metrics"]):
        by_job.setdefault(training.get("job_id") or training["id"], []).append(training)
    kept: set[str] = set()
    for job_id, trainings in by_job.items():
        job = store.get_job(job_id) if any(t.get("job_id") for t in trainings) else None
        metric = ((job or {}).get("objective") or {}).get("metric")
        metric = metric or next((m for m in MAIN_METRICS if any(m in (t.get("metrics") or {}) for t in trainings)),
                                None)
        if metric is None:  # no metric to rank by: the newest
            kept.update(t["id"] for t in trainings[:keep_best])
            continue
        maximize = (((job or {}).get("objective") or {}).get("direction") or direction(metric)) == "maximize"
        ranked = [t for t in trainings if isinstance((t.get("metrics") or {}).get(metric), (int, float))]
        ranked.sort(key=lambda t: t["metrics"][metric], reverse=maximize)
        kept.update(t["id"] for t in ranked[:keep_best])
    return kept


@dataclass
class _Removed:
    local_bytes: int = 0
    files: int = 0
    blobs: int = 0


def _free_attempt_folders(store: Any, training: dict, dry_run: bool, warn: Callable[[str], None]) -> _Removed | None:
    """Removes an ended training's attempt folders; None when it is active again (requeued since
    it was listed) or when a removal failed (said through warn).

    Fenced as checkpoints are: the files go only after a write conditional on the training's
    status and attempt succeeded, which also moves `weights` to `removed_weights`."""
    from mitorch.store.base import DB_NOW

    fence = {"expected_status": training["status"], "attempt": training["attempt"]}
    marked = {"artifacts_removed_at": DB_NOW, "checkpoints_removed_at": DB_NOW}
    if training.get("weights"):
        marked |= {"weights": None, "removed_weights": training["weights"]}
    if not dry_run and not store.update_training(training["id"], marked, **fence):
        return None
    try:
        return _remove_attempts(training["id"], training["attempt"], dry_run)
    except (MiTorchError, OSError) as e:
        if not dry_run:  # so the next gc looks at it again
            restored = {"artifacts_removed_at": None, "checkpoints_removed_at": None}
            restored |= {"weights": training["weights"], "removed_weights": None} if training.get("weights") else {}
            store.update_training(training["id"], restored, **fence)
        warn(f"gc: {training['id']}: {' '.join(str(e).split())}")
        return None


def _remove_attempts(training_id: str, attempts: int, dry_run: bool) -> _Removed:
    """Each attempt's local folder, and what it uploaded when artifacts are in Blob Storage."""
    import shutil

    from mitorch.files import artifacts, remote

    removed = _Removed()
    for attempt in range(1, attempts + 1):
        folder = artifacts.attempt_dir(training_id, attempt)
        if not folder.is_dir():
            continue
        for file in folder.rglob("*"):
            if file.is_file() and not file.is_symlink():
                removed.local_bytes += file.stat().st_size
                removed.files += 1
        if not dry_run:
            shutil.rmtree(folder)
    folder = artifacts.training_dir(training_id)
    if not dry_run and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    for attempt in range(1, attempts + 1):
        for name in _PUBLISHED:
            url = artifacts.artifact_url(training_id, f"{artifacts.attempt_name(attempt)}/{name}")
            if url is not None and (remote.exists(url) if dry_run else remote.delete(url)):
                removed.blobs += 1
    return removed


def collect_on_tick(store: Any, holder: str, say: Callable[[str], None]) -> None:
    """A controller tick's gc when $MITORCH_GC_ON_TICK is 1, at most once an hour across hosts
    (the first tick to take the store lease "gc" for an hour runs it): checkpoints after
    $MITORCH_GC_AFTER_DAYS, and attempt folders when $MITORCH_GC_KEEP_BEST is set; one line per
    training freed. A bad setting is one line too: the tick's other work is done by then."""
    import os

    if os.environ.get(GC_ON_TICK_VARIABLE, "").strip() != "1" or not store.acquire_lease(GC_LEASE, holder, 3600):
        return
    try:
        collect(store, None, keep_best_setting(None), False, say, say)
    except MiTorchError as e:
        say(f"gc: {' '.join(str(e).split())}")


def collect(store: Any, days: float | None, keep_best: int | None, dry_run: bool, say: Callable[[str], None],
            warn: Callable[[str], None]) -> Collected:
    """Attempt folders (keep_best not None), then the checkpoints of the failed, cancelled and
    pruned trainings left: what `micontrol gc` does."""
    collected = Collected(days=gc_days(days))
    handled = set() if keep_best is None else collect_attempt_folders(store, collected, keep_best, dry_run, say, warn)
    return collect_checkpoints(store, days, dry_run, say, warn, collected, handled)
