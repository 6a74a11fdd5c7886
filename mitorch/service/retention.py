"""Checkpoint retention (`micontrol gc`): frees the checkpoints of trainings that ended failed,
cancelled or pruned some days ago; weights and logs stay.

A failed or cancelled training's checkpoints are kept a while so that a requeue can resume from
them; after that they only cost space.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mitorch.errors import MiTorchError

# How long a failed or cancelled training's checkpoints stay for a requeue to resume from.
GC_DAYS_VARIABLE, GC_DAYS_DEFAULT = "MITORCH_GC_AFTER_DAYS", 7.0
_ENDED = ["failed", "cancelled", "pruned"]


@dataclass
class Collected:
    """What a gc freed (or, in a dry run, would free)."""

    bytes: int = 0
    trainings: int = 0
    days: float = GC_DAYS_DEFAULT


def gc_days(days: float | None) -> float:
    """days, else $MITORCH_GC_AFTER_DAYS, else the default.

    Raises:
        MiTorchError: the variable is not a number of 0 or more.
    """
    from mitorch.envvars import env_float

    return env_float(GC_DAYS_VARIABLE, GC_DAYS_DEFAULT, minimum=0) if days is None else days


def collect_checkpoints(store: Any, days: float | None, dry_run: bool, say: Callable[[str], None],
                        warn: Callable[[str], None]) -> Collected:
    """Frees the checkpoints of trainings that ended failed, cancelled or pruned at least `days`
    ago (on the database's clock).

    Args:
        say: called with one line per training freed.
        warn: called with one line per training whose checkpoints could not be removed.

    Returns:
        The total freed, for the closing line.
    """
    collected = Collected(days=gc_days(days))
    now = store.clock()
    for training, ended in _ended_before(store, now - timedelta(days=collected.days)):
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
    return (f"{'would free' if dry_run else 'freed'} {size_text(collected.bytes)} in all, from {collected.trainings} "
            f"training{'s' * (collected.trainings != 1)} that ended more than {collected.days:g} days ago"
            + (" (a dry run: nothing was removed)" if dry_run else ""))


def _ended_before(store: Any, cutoff: datetime) -> list[tuple[dict, datetime]]:
    """(training, when it ended) of the failed, cancelled and pruned trainings that ended before
    cutoff, newest first, less those whose checkpoints were collected since they last ended."""
    fields = ["status", "attempt", "completed_at", "status_history", "checkpoints_removed_at"]
    found = []
    for training in store.list_trainings(_ENDED, order="recent", fields=fields):
        # completed_at, else (a training cancelled before it ran) its last status change
        history = training.get("status_history") or [{}]
        ended = training.get("completed_at") or history[-1].get("at")
        collected = training.get("checkpoints_removed_at")
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
