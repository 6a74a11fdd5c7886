"""micontrol: one controller tick (a systemd timer runs it), or manage queued trainings.

    micontrol [--executor local|azureml] [--loop [--interval S]]
    micontrol cancel ID...  |  requeue ID...  |  set-priority ID N      (cancel takes job ids too)
    micontrol gc [--older-than DAYS] [--dry-run]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from datetime import datetime, timedelta

from mitorch.cli._common import check_id, fail
from mitorch.errors import MiTorchError

PROG = "micontrol"
EXECUTORS = ("local", "azureml")
# micontrol gc: a failed or cancelled training's checkpoints stay this long for a requeue to resume from.
GC_DAYS_VARIABLE, GC_DAYS_DEFAULT = "MITORCH_GC_AFTER_DAYS", 7.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Reconcile running trainings, then dispatch queued "
                                     "ones to this host's executor (local processes, or AzureML jobs); each action prints one line.")
    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="where trainings run: local processes on this host, or AzureML jobs "
                             "(default $MITORCH_EXECUTOR, else local)")
    parser.add_argument("--loop", action="store_true", help="tick again and again (foreground use)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between ticks with --loop (60)")
    commands = parser.add_subparsers(dest="command")
    cancel = commands.add_parser("cancel", help="cancel trainings, or jobs with their trainings (running ones are "
                                                "stopped, with a checkpoint)")
    cancel.add_argument("ids", nargs="+")
    requeue = commands.add_parser("requeue", help="queue failed, cancelled or completed trainings again")
    requeue.add_argument("ids", nargs="+")
    priority = commands.add_parser("set-priority", help="change a training's priority (lower runs first)")
    priority.add_argument("id")
    priority.add_argument("priority", type=_priority)
    gc = commands.add_parser("gc", help="remove the checkpoints (last.pt) of trainings that ended failed, cancelled "
                                        "or pruned more than DAYS ago; weights and logs stay")
    gc.add_argument("--older-than", type=_days, default=None, metavar="DAYS",
                    help=f"days since the training ended (default ${GC_DAYS_VARIABLE}, else {GC_DAYS_DEFAULT:g})")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    return parser


def _priority(text: str) -> int:
    from mitorch.store.base import parse_priority

    try:
        return parse_priority(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"--older-than takes a number of days of 0 or more, got {text[:40]!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.interval <= 0 or args.interval != args.interval:
        fail(PROG, MiTorchError(f"--interval must be a positive number of seconds, got {args.interval}"), code=2)
    try:
        named = getattr(args, "ids", None) or ([args.id] if getattr(args, "id", None) is not None else [])
        for some_id in named:  # before the store is opened: a 100,000-character id costs nothing
            check_id(some_id)
        from mitorch.service import manage
        from mitorch.store import open_store

        store = open_store()
        if args.command == "cancel":
            manage.cancel(store, args.ids, print)
        elif args.command == "requeue":
            manage.requeue(store, args.ids, print)
        elif args.command == "set-priority":
            manage.set_priority(store, args.id, args.priority, print)
        elif args.command == "gc":
            _collect_checkpoints(store, args.older_than, args.dry_run)
        elif args.loop:
            _loop(store, args.interval, args.executor)
        else:
            from mitorch.service.controller import tick

            tick(store, _executor(args.executor, store))
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        pass


def _collect_checkpoints(store, days: float | None, dry_run: bool) -> None:
    """micontrol gc: frees the checkpoints of trainings that ended failed, cancelled or pruned at
    least `days` ago (on the database's clock); one line per training freed, then a total."""
    from mitorch.envvars import env_float

    if days is None:
        days = env_float(GC_DAYS_VARIABLE, GC_DAYS_DEFAULT, minimum=0)
    now = store.clock()
    total, trainings = 0, 0
    for training, ended in _ended_before(store, now - timedelta(days=days)):
        freed = _free_checkpoints(store, training, dry_run)
        if freed is None or not freed.removed:
            continue
        total, trainings = total + freed.local_bytes, trainings + 1
        files = len(freed.removed) - freed.blobs
        parts = [f"{files} file{'s' * (files != 1)}"] if files else []
        parts += [f"{freed.blobs} blob{'s' * (freed.blobs != 1)} of unknown size"] if freed.blobs else []
        print(f"{'would free' if dry_run else 'freed'} {_size(freed.local_bytes)} of {training['id']} "
              f"({training['status']} {(now - ended) / timedelta(days=1):.1f} days ago; {', '.join(parts)})")
    print(f"{'would free' if dry_run else 'freed'} {_size(total)} in all, from {trainings} training"
          f"{'s' * (trainings != 1)} that ended more than {days:g} days ago"
          + (" (a dry run: nothing was removed)" if dry_run else ""))


def _ended_before(store, cutoff: datetime) -> list[tuple[dict, datetime]]:
    """(training, when it ended) of the failed, cancelled and pruned trainings that ended before
    cutoff, newest first, less those whose checkpoints were collected since they last ended."""
    fields = ["status", "attempt", "completed_at", "status_history", "checkpoints_removed_at"]
    found = []
    for training in store.list_trainings(["failed", "cancelled", "pruned"], order="recent", fields=fields):
        # completed_at, else (a training cancelled before it ran) its last status change
        history = training.get("status_history") or [{}]
        ended = training.get("completed_at") or history[-1].get("at")
        collected = training.get("checkpoints_removed_at")
        if training.get("attempt") and ended is not None and ended < cutoff and not (collected and collected >= ended):
            found.append((training, ended))
    return found


def _free_checkpoints(store, training: dict, dry_run: bool):
    """Frees an ended training's checkpoints; None when it was requeued since it was listed (it
    is active again and resumes from them) or when a removal failed (said on stderr).

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
        print(f"{PROG}: gc: {training['id']}: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return None


def _size(count: int) -> str:
    """A byte count as people read it: 512 bytes, 1.5 kB, 94.2 MB (powers of 1000)."""
    if count < 1000:
        return f"{count} bytes"
    size, unit = count / 1000, "kB"
    for larger in ("MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, larger
    return f"{size:.1f} {unit}"


def _executor(choice: str | None, store):
    """The executor of --executor, else $MITORCH_EXECUTOR, else local; azure.ai.ml is imported
    only for AzureML."""
    choice = choice or os.environ.get("MITORCH_EXECUTOR", "").strip() or "local"
    if choice == "azureml":
        from mitorch.service.executors.azureml import AzureMLExecutor

        return AzureMLExecutor(store=store)
    if choice != "local":
        raise MiTorchError(f"MITORCH_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {choice[:40]!r}")
    from mitorch.service.executors import LocalExecutor

    return LocalExecutor()


def _loop(store, interval: float, executor_choice: str | None) -> None:
    """Ticks every interval seconds; a failing tick is one line on stderr, and the next tick comes."""
    from mitorch.service.controller import tick

    executor = None
    while True:
        started = time.monotonic()
        try:
            executor = executor or _executor(executor_choice, store)
            tick(store, executor)
        except MiTorchError as e:
            print(f"{PROG}: tick failed: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - a bug in one tick must not stop the service
            print(f"{PROG}: tick failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        time.sleep(max(interval - (time.monotonic() - started), 0))


if __name__ == "__main__":
    main()
