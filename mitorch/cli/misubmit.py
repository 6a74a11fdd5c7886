"""misubmit: queue a training; prints its id.

    misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] [key=value ...]
    misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] -m key=a,b [key=value ...]
"""
from __future__ import annotations

import sys

from mitorch.cli._common import UsageError, fail, help_requested, parse_command_line, take_options
from mitorch.errors import MiTorchError
from mitorch.store.base import DEFAULT_PRIORITY

PROG = "misubmit"
USAGE = """\
misubmit: queue a training in the job store (MITORCH_DB_URI); prints the new training's id.

Usage:
  misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] [key=value ...]
  misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] -m key=a,b [key=c,d ...]

With -m, one training per combination of the sweep values is queued under one job; the
output is "job JOB_ID", then one "TRAINING_ID overrides" line per training.

The config is composed and checked as mitrain would (unknown keys, types, allowed _target_)
before anything is stored; paths are made absolute. Lower priority runs first (default 100).
--dataset trains on a dataset registered with midataset (its highest version unless one is
given; the training is pinned to that version) instead of data.train/data.val.
micontrol dispatches queued trainings; miquery shows them.
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if help_requested(argv, USAGE):
        return
    try:
        options, rest = take_options(argv, {"--priority": ("priority", "a value"), "--dataset": ("dataset", "a value")})
        priority = DEFAULT_PRIORITY if options["priority"] is None else _whole_number(options["priority"])
        command = parse_command_line(rest, PROG)
        if command.informational or set(command.hydra_flags) - {"-m", "--multirun"}:
            raise UsageError("misubmit takes CONFIG, --priority, --dataset, -m and key=value overrides")
        from mitorch.cli._common import check_overrides
        from mitorch.config import compose
        from mitorch.service.submit import find_dataset, submission
        from mitorch.store import open_store

        store = open_store()  # an unreachable database fails here, before anything is composed
        dataset = find_dataset(options["dataset"], store)
        if command.multirun:
            check_overrides(command.overrides, multirun=True)
            store.close()
            _queue_sweep(command.overrides, priority, dataset)
            return
        config = submission(compose(command.overrides), store, dataset)
        training_id = store.add_training({"config": config, "priority": priority, "dataset": dataset})
    except MiTorchError as e:
        fail(PROG, e)
    print(training_id)


def _queue_sweep(overrides: list[str], priority: int, dataset: dict | None) -> None:
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
        pinned = [] if dataset is None else [f"hydra.launcher.dataset={dataset['name']}:{dataset['version']}"]
        sys.argv = [PROG, "-m", "hydra/launcher=mitorch_queue", f"hydra.launcher.priority={priority}", *pinned,
                    f"hydra.sweep.dir={sweep_dir}", *overrides]
        hydra.main(version_base=None, config_path="pkg://mitorch.conf", config_name="train")(not_run)()


def _whole_number(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"--priority needs a whole number, got {value[:40]!r}") from None
    if not -2**63 <= number < 2**63:
        raise UsageError(f"--priority must fit in 64 bits, got {value[:40]}")
    return number


if __name__ == "__main__":
    main()
