"""misubmit: queue a training; prints its id.

    misubmit [CONFIG] [--priority N] [key=value ...]
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
        if command.multirun or command.informational or command.hydra_flags:
            raise UsageError("misubmit takes CONFIG, --priority and key=value overrides; sweeps (-m) are not "
                             "supported by misubmit yet")
        from omegaconf import OmegaConf

        from mitorch.build import check_targets
        from mitorch.config import compose, resolve_paths
        from mitorch.store import DEFAULT_PRIORITY, open_store

        cfg = compose(command.overrides)
        resolve_paths(cfg)
        check_targets(cfg)
        config = OmegaConf.to_container(cfg, resolve=False)
        training_id = open_store().add_training({"config": config, "priority": DEFAULT_PRIORITY
                                                 if priority is None else priority})
    except MiTorchError as e:
        fail(PROG, e)
    print(training_id)


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
