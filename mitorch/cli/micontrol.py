"""micontrol: one controller tick (a systemd timer runs it), or manage queued trainings.

    micontrol [--executor local|azureml] [--loop [--interval S]]
    micontrol cancel ID...  |  requeue ID...  |  set-priority ID N      (cancel takes job ids too)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from mitorch.cli._common import fail
from mitorch.errors import MiTorchError

PROG = "micontrol"
EXECUTORS = ("local", "azureml")


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
    return parser


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a priority is a whole number, got {text[:40]!r}") from None
    if not -2**63 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"a priority must fit in 64 bits, got {text[:40]}")
    return value


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.interval <= 0 or args.interval != args.interval:
        fail(PROG, MiTorchError(f"--interval must be a positive number of seconds, got {args.interval}"), code=2)
    try:
        from mitorch.service import manage
        from mitorch.store import open_store

        store = open_store()
        if args.command == "cancel":
            manage.cancel(store, args.ids, print)
        elif args.command == "requeue":
            manage.requeue(store, args.ids, print)
        elif args.command == "set-priority":
            manage.set_priority(store, args.id, args.priority, print)
        elif args.loop:
            _loop(store, args.interval, args.executor)
        else:
            from mitorch.service.controller import tick

            tick(store, _executor(args.executor, store))
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        pass


def _executor(choice: str | None, store):
    """The executor of --executor, else $MITORCH_EXECUTOR, else local; azure.ai.ml is imported
    only for AzureML."""
    choice = choice or os.environ.get("MITORCH_EXECUTOR", "").strip() or "local"
    if choice == "azureml":
        from mitorch.service.azureml_executor import AzureMLExecutor

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
