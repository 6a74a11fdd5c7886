"""micontrol: one controller tick (a systemd timer runs it), or manage queued trainings.

    micontrol [--loop [--interval S]]
    micontrol cancel ID...  |  requeue ID...  |  set-priority ID N
"""
from __future__ import annotations

import argparse
import sys
import time

from mitorch.cli._common import fail
from mitorch.errors import MiTorchError

PROG = "micontrol"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Reconcile running trainings, then dispatch queued "
                                     "ones to the local executor; each action prints one line.")
    parser.add_argument("--loop", action="store_true", help="tick again and again (foreground use)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between ticks with --loop (60)")
    commands = parser.add_subparsers(dest="command")
    cancel = commands.add_parser("cancel", help="cancel trainings (running ones stop at their epoch's end)")
    cancel.add_argument("ids", nargs="+")
    requeue = commands.add_parser("requeue", help="queue failed, cancelled or completed trainings again")
    requeue.add_argument("ids", nargs="+")
    priority = commands.add_parser("set-priority", help="change a training's priority (lower runs first)")
    priority.add_argument("id")
    priority.add_argument("priority", type=int)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from mitorch.store import open_store

        store = open_store()
        if args.command == "cancel":
            _cancel(store, args.ids)
        elif args.command == "requeue":
            _requeue(store, args.ids)
        elif args.command == "set-priority":
            _set_priority(store, args.id, args.priority)
        else:
            from mitorch.service.controller import tick

            while True:
                tick(store)
                if not args.loop:
                    break
                time.sleep(args.interval)
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        pass


def _get(store, training_id: str) -> dict:
    from mitorch.store import StoreError

    training = store.get_training(training_id)
    if training is None:
        raise StoreError(f"no training {training_id}; see miquery for the ids")
    return training


def _cancel(store, ids: list[str]) -> None:
    for training_id in ids:
        status = _get(store, training_id)["status"]
        if store.update_training(training_id, {"status": "cancelled"}, expected_status="new"):
            print(f"cancelled {training_id}")
        elif store.update_training(training_id, {"cancel_requested": True}, expected_status=["queued", "running"]):
            print(f"cancel-requested {training_id} (it stops at the end of its current epoch)")
        else:
            print(f"unchanged {training_id} (already {status})")


def _requeue(store, ids: list[str]) -> None:
    for training_id in ids:
        status = _get(store, training_id)["status"]
        fields = {"status": "new", "retries": 0, "cancel_requested": False, "error": None}
        if store.update_training(training_id, fields, expected_status=["failed", "cancelled", "completed"]):
            print(f"requeued {training_id}")
        else:
            print(f"unchanged {training_id} (it is {status}; cancel it first)")


def _set_priority(store, training_id: str, priority: int) -> None:
    _get(store, training_id)
    store.update_training(training_id, {"priority": priority})
    print(f"priority {training_id} {priority}")


if __name__ == "__main__":
    main()
