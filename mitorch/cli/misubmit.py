"""misubmit: queue a training; prints its id.

    misubmit [CONFIG] [--priority N] [key=value ...]
    misubmit [CONFIG] [--priority N] -m key=a,b [key=value ...]     (one training per combination)
"""
from __future__ import annotations

import sys

from mitorch.cli._common import UsageError, fail, parse_command_line
from mitorch.errors import MiTorchError

PROG = "misubmit"
USAGE = """\
misubmit: queue a training in the job store (MITORCH_DB_URI); prints the new training's id.

Usage:
  misubmit [CONFIG] [--priority N] [key=value ...]
  misubmit [CONFIG] [--priority N] -m key=a,b [key=c,d ...]

With -m, one training per combination of the sweep values is queued under one job; the
output is "job JOB_ID", then one "TRAINING_ID overrides" line per training.

The config is composed and checked as mitrain would (unknown keys, types, allowed _target_)
before anything is stored; paths are made absolute. Lower priority runs first (default 100).
micontrol dispatches queued trainings; miquery shows them.
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return
    try:
        priority, rest = _priority(argv)
        command = parse_command_line(rest, PROG)
        if command.informational or set(command.hydra_flags) - {"-m", "--multirun"}:
            raise UsageError("misubmit takes CONFIG, --priority, -m and key=value overrides")
        from mitorch.cli._common import check_overrides
        from mitorch.config import compose
        from mitorch.service.submit import submission
        from mitorch.store import DEFAULT_PRIORITY, open_store

        if command.multirun:
            check_overrides(command.overrides, multirun=True)
            open_store().close()  # an unreachable database fails here, before Hydra starts
            _queue_sweep(command.overrides, DEFAULT_PRIORITY if priority is None else priority)
            return
        store = open_store()
        config = submission(compose(command.overrides), store)
        training_id = store.add_training({"config": config, "priority": DEFAULT_PRIORITY
                                          if priority is None else priority})
    except MiTorchError as e:
        fail(PROG, e)
    print(training_id)


def _queue_sweep(overrides: list[str], priority: int) -> None:
    """Hydra's multirun with the mitorch_queue launcher: it stores the runs instead of running them."""
    import tempfile

    import hydra

    from hydra.core.plugins import Plugins
    from hydra_plugins.mitorch_launchers.queue_launcher import QueueLauncher

    # Registered here too, for where Hydra's plugin discovery cannot list the hydra_plugins
    # namespace (an editable install); importing the module also stores its config node.
    Plugins.instance().register(QueueLauncher)

    def not_run(cfg: object) -> None:
        raise RuntimeError("the queue launcher stores trainings; it never runs them here")

    with tempfile.TemporaryDirectory() as sweep_dir:
        sys.argv = [PROG, "-m", "hydra/launcher=mitorch_queue", f"hydra.launcher.priority={priority}",
                    f"hydra.sweep.dir={sweep_dir}", *overrides]
        hydra.main(version_base=None, config_path="pkg://mitorch.conf", config_name="train")(not_run)()


def _priority(argv: list[str]) -> tuple[int | None, list[str]]:
    rest, priority = [], None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--priority" or arg.startswith("--priority="):
            value = arg.partition("=")[2] or (args.pop(0) if args else "")
            try:
                priority = int(value)
            except ValueError:
                raise UsageError(f"--priority needs a whole number, got {value!r}") from None
        else:
            rest.append(arg)
    return priority, rest


if __name__ == "__main__":
    main()
