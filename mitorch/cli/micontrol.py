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
        from mitorch.store import open_store

        store = open_store()
        if args.command == "cancel":
            _cancel(store, args.ids)
        elif args.command == "requeue":
            _requeue(store, args.ids)
        elif args.command == "set-priority":
            _set_priority(store, args.id, args.priority)
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


def _cancel(store, ids: list[str]) -> None:
    """Cancels trainings, and jobs with their trainings (a search job asks for no more trials and
    ends cancelled at the next tick once its trainings have ended)."""
    unknown: list[str] = []
    local: list = []  # this host's executor, made on first need
    for some_id in ids:
        training = store.get_training(some_id)
        if training is not None:
            _cancel_training(store, training, local)
            continue
        job = store.get_job(some_id)
        if job is None:
            unknown.append(some_id)
            continue
        if job["status"] not in ("new", "running") or job.get("cancel_requested"):
            state = job["status"] if job["status"] not in ("new", "running") else "cancelling"
            print(f"unchanged job {some_id} (already {state})")
            continue
        from mitorch.service.search import jobs_lease
        from mitorch.store import ACTIVE

        # Under the search step's lease: no tick asks for a trial of this job while it is cancelled.
        with jobs_lease(store, f"micontrol-cancel:{os.getpid()}"):
            if job.get("job_type") == "search":
                store.update_job(some_id, {"cancel_requested": True})
            else:
                store.update_job(some_id, {"status": "cancelled", "completed_at": store.clock()})
            trainings = store.list_trainings(ACTIVE, job_id=some_id)
            for training in trainings:
                _cancel_training(store, training, local)
        after = " (the next micontrol tick ends it)" if job.get("job_type") == "search" else ""
        print(f"{'cancel-requested' if after else 'cancelled'} job {some_id} with its {len(trainings)} "
              f"active training{'s' * (len(trainings) != 1)}{after}")
    _report_unknown(unknown, "training or job")


def _cancel_training(store, training: dict, local: list) -> None:
    training_id = training["id"]
    if store.update_training(training_id, {"status": "cancelled", "cancel_requested": True},
                             expected_status=["new", "queued"]):
        # A dispatched run that has not started finds its training cancelled and never trains.
        print(f"cancelled {training_id}")
    elif store.update_training(training_id, {"cancel_requested": True}, expected_status="running"):
        if not local:
            from mitorch.service.executors import LocalExecutor

            local.append(LocalExecutor(capacity=0))
        if training.get("executor") == local[0].name and local[0].state(training) == "running":
            local[0].cancel(training)  # on this host: stop it now (it checkpoints first)
            print(f"cancel-requested {training_id} (stopping its process)")
        else:
            print(f"cancel-requested {training_id} (its controller stops it at its next tick; "
                  "it also stops at the end of its current epoch)")
    else:
        print(f"unchanged {training_id} (already {store.get_training(training_id)['status']})")


def _requeue(store, ids: list[str]) -> None:
    from mitorch.store import FINISHED

    unknown = []
    for training_id in ids:
        training = store.get_training(training_id)
        if training is None:
            unknown.append(training_id)
            continue
        fields = {"status": "new", "retries": 0, "launch_failures": 0, "cancel_requested": False, "error": None}
        if training["status"] == "completed":
            # A fresh run, not a resume at the end: the earlier result moves to the history.
            earlier = {k: training.get(k) for k in ("metrics", "weights", "completed_at", "attempt")}
            fields.update({"history": [*training.get("history", []), earlier], "metrics": None, "weights": None,
                           "resume_from_attempt": training.get("attempt", 0) + 1})
        if store.update_training(training_id, fields, expected_status=FINISHED,
                                 attempt=training.get("attempt", 0)):
            fresh = " (a fresh run; the earlier result is kept in its history)" if "history" in fields else ""
            print(f"requeued {training_id}{fresh}")
        else:
            print(f"unchanged {training_id} (it is {store.get_training(training_id)['status']}; cancel it first)")
    _report_unknown(unknown)


def _report_unknown(unknown: list[str], kind: str = "training") -> None:
    if unknown:
        from mitorch.store import StoreError

        raise StoreError(f"no {kind} {', '.join(unknown)}; see miquery for the ids")


def _set_priority(store, training_id: str, priority: int) -> None:
    from mitorch.store import StoreError

    if not store.update_training(training_id, {"priority": priority}):
        raise StoreError(f"no training {training_id}; see miquery for the ids")
    print(f"priority {training_id} {priority}")


if __name__ == "__main__":
    main()
