"""micontrol: one controller tick (a systemd timer runs it), or manage queued trainings.

    micontrol [--executor local|azureml|slurm] [--loop [--interval S]]
    micontrol cancel ID...  |  requeue ID...  |  set-priority ID N      (cancel takes job ids too)
    micontrol tag ID NAME...  |  untag ID NAME...  |  note ID TEXT    ("" clears a note)
    micontrol gc [--older-than DAYS] [--keep-best N] [--dry-run]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from mitorch.cli._common import CommandParser, check_id, fail, parse
from mitorch.errors import MiTorchError, UsageError
from mitorch.service.retention import GC_DAYS_DEFAULT, GC_DAYS_VARIABLE, KEEP_BEST_VARIABLE

PROG = "micontrol"
EXECUTORS = ("local", "azureml", "slurm")
EPILOG = """\
Without a command: one controller tick. It reconciles running trainings, then dispatches queued
ones to this host's executor (local processes, AzureML jobs or Slurm batch jobs); each action
prints one line.
A systemd timer runs it (deploy/systemd); --loop ticks in the foreground instead.
"""


def _parser() -> CommandParser:
    parser = CommandParser(PROG, "Run one controller tick, or manage queued trainings.", epilog=EPILOG)
    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="where trainings run: local processes on this host, AzureML jobs or Slurm "
                             "batch jobs (default $MITORCH_EXECUTOR, else local)")
    parser.add_argument("--loop", action="store_true", help="tick again and again (foreground use)")
    parser.add_argument("--interval", type=float, default=60.0, metavar="S",
                        help="seconds between ticks with --loop (60)")
    commands = parser.add_subparsers(dest="command", metavar="{cancel,requeue,set-priority,tag,untag,note,gc}")
    cancel = _command(commands, "cancel", "Cancel trainings, or jobs with their trainings (running ones are stopped, "
                      "with a checkpoint).")
    cancel.add_argument("ids", nargs="+", metavar="ID", help="a training or job id")
    requeue = _command(commands, "requeue", "Queue failed, cancelled or completed trainings again.")
    requeue.add_argument("ids", nargs="+", metavar="ID", help="a training id")
    priority = _command(commands, "set-priority", "Change a training's priority (lower runs first).")
    priority.add_argument("id", metavar="ID", help="a training id")
    priority.add_argument("priority", type=_priority, metavar="N", help="the new priority")
    for name, verb in (("tag", "Add tags to"), ("untag", "Take tags off")):
        tagging = _command(commands, name, f"{verb} a training (a tag: one line of text, e.g. baseline).")
        tagging.add_argument("id", metavar="ID", help="a training id")
        tagging.add_argument("tags", nargs="+", metavar="NAME", help="a tag")
    note = _command(commands, "note", "Set a training's note, one line of text shown by miquery and miviewer.")
    note.add_argument("id", metavar="ID", help="a training id")
    note.add_argument("text", metavar="TEXT", help='the note ("" clears it)')
    gc = _command(commands, "gc", "Remove the checkpoints (last.pt) of trainings that ended failed, cancelled or "
                  "pruned more than DAYS ago; with --keep-best N, also the attempt folders (weights, logs, "
                  "checkpoints) of every training that ended more than DAYS ago, except each job's N best.")
    gc.add_argument("--older-than", type=_days, default=None, metavar="DAYS",
                    help=f"days since the training ended (default ${GC_DAYS_VARIABLE}, else {GC_DAYS_DEFAULT:g})")
    gc.add_argument("--keep-best", type=_keep_best, default=None, metavar="N",
                    help="also remove attempt folders, keeping those of each job's N best completed trainings (a "
                         f"training outside a job counts as its own job; default ${KEEP_BEST_VARIABLE}, else "
                         "folders stay)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    return parser


def _command(commands: argparse._SubParsersAction, name: str, description: str) -> CommandParser:
    """A subcommand whose --help reads as every command's does."""
    return commands.add_parser(name, help=description[0].lower() + description[1:].rstrip("."),
                               description=description)


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


def _keep_best(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"--keep-best takes a whole number of 0 or more, got {text[:40]!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    args = parse(_parser(), argv)
    if args.interval <= 0 or args.interval != args.interval:
        fail(PROG, UsageError(f"--interval must be a positive number of seconds, got {args.interval}"))
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
        elif args.command in ("tag", "untag"):
            manage.tag(store, args.id, args.tags, print, remove=args.command == "untag")
        elif args.command == "note":
            manage.note(store, args.id, args.text, print)
        elif args.command == "gc":
            _collect(store, args.older_than, args.keep_best, args.dry_run)
        elif args.loop:
            _loop(store, args.interval, args.executor)
        else:
            from mitorch.service.controller import tick

            tick(store, _executor(args.executor))
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        pass


def _collect(store, days: float | None, keep_best: int | None, dry_run: bool) -> None:
    """micontrol gc: one line per training freed, then a total."""
    from mitorch.service import retention

    collected = retention.collect(
        store, days, retention.keep_best_setting(keep_best), dry_run, say=print,
        warn=lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
    print(retention.summary(collected, dry_run))


def _executor(choice: str | None):
    """The executor of --executor, else $MITORCH_EXECUTOR, else local; azure.ai.ml is imported
    only for AzureML."""
    choice = choice or os.environ.get("MITORCH_EXECUTOR", "").strip() or "local"
    if choice == "azureml":
        from mitorch.service.executors.azureml import AzureMLExecutor

        return AzureMLExecutor()
    if choice == "slurm":
        from mitorch.service.executors.slurm import SlurmExecutor

        return SlurmExecutor()
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
            executor = executor or _executor(executor_choice)
            tick(store, executor)
        except MiTorchError as e:
            print(f"{PROG}: tick failed: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - a bug in one tick must not stop the service
            print(f"{PROG}: tick failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        time.sleep(max(interval - (time.monotonic() - started), 0))


if __name__ == "__main__":
    main()
