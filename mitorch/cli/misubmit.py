"""misubmit: queue a training; prints its id.

    misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] [key=value ...]
    misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] -m key=a,b [key=value ...]
    misubmit JOB.yaml|JOB.json [--priority N] [--dataset NAME[:VERSION]]     (job_type: search)
    misubmit --search 'key=SWEEP' [key=SWEEP ...] [--trials N] [--parallel N] [--sampler S] [--pruner P] [key=value ...]
    misubmit --add-trials N JOB_ID
"""
from __future__ import annotations

import sys

from mitorch.cli._common import UsageError, check_id, fail, help_requested, parse_command_line, take_options
from mitorch.errors import MiTorchError
from mitorch.store.base import DEFAULT_PRIORITY

PROG = "misubmit"
USAGE = """\
misubmit: queue a training in the job store (MITORCH_DB_URI); prints the new training's id.

Usage:
  misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] [key=value ...]
  misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] -m key=a,b [key=c,d ...]

  misubmit JOB.yaml|JOB.json [--priority N] [--dataset NAME[:VERSION]]
  misubmit [CONFIG] --search 'key=SWEEP' [key=SWEEP ...] [--trials N] [--parallel N]
           [--sampler NAME] [--pruner NAME] [--dataset NAME[:VERSION]] [key=value ...]
  misubmit --add-trials N JOB_ID

A job file with job_type: search, or --search, stores a hyper-parameter search job (see the
README, "Search jobs"): micontrol keeps up to --parallel (default 2) of its --trials (default 20)
trials training, asks Optuna for new ones and prunes hopeless ones. A SWEEP is Hydra's sweeper
syntax: a,b,c | choice(a, b) | range(start, stop[, step]) (stop excluded) | interval(low, high),
optionally tag(log, ...). Prints "job JOB_ID". --add-trials N extends a running or completed
search job by N trials of the same study.

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
        options, rest = take_options(argv, {"--priority": ("priority", "a value"), "--dataset": ("dataset", "a value"),
                                            "--add-trials": ("add_trials", "a number of trials"),
                                            **{f"--{name}": (name, "a value") for name in _SEARCH_OPTIONS}})
        if options["add_trials"] is not None:
            _add_trials(options, rest)
            return
        if options["dataset"] is not None:
            from mitorch.files.datasets import parse_reference

            parse_reference(options["dataset"])  # before the store is asked
        priority = DEFAULT_PRIORITY if options["priority"] is None else _whole_number(options["priority"])
        job = _search_job(options, rest)
        if job is not None:
            print(f"job {_queue_search(*job, options)}")
            return
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
            # Every value of every sweep is checked as its training would be stored (its data
            # paths, its base training), so the queue launcher refuses nothing half-way.
            check_overrides(command.overrides, multirun=True, check=lambda cfg: submission(cfg, store, dataset))
            store.close()
            _queue_sweep(command.overrides, priority, dataset)
            return
        config = submission(compose(command.overrides), store, dataset)
        training_id = store.add_training({"config": config, "priority": priority, "dataset": dataset})
    except MiTorchError as e:
        fail(PROG, e)
    print(training_id)


_SEARCH_OPTIONS = ("search", "trials", "parallel", "sampler", "pruner")


def _search_job(options: dict, rest: list[str]) -> tuple[dict, str] | None:
    """(the search job, the folder its relative paths start from), from a job file or --search;
    None for a training."""
    import os

    from mitorch.service.search.job import read_job_file

    positionals = [a for a in rest if "=" not in a and not a.startswith("-")]
    job = read_job_file(positionals[0]) if len(positionals) == 1 else None
    asked = {name: options[name] for name in _SEARCH_OPTIONS if options[name] is not None}
    if job is not None:
        if asked or len(rest) > 1:
            raise UsageError("a job file takes only --priority and --dataset; put overrides in the file")
        return job, os.path.dirname(os.path.abspath(positionals[0]))
    if "search" not in asked:
        if asked:
            raise UsageError(f"--{next(iter(asked))} belongs to a search: add --search 'key=SWEEP'")
        return None
    from mitorch.config.screen import shorten

    for arg in rest:
        if arg in ("-m", "--multirun"):
            raise UsageError("--search queues one Optuna search job and -m one training per combination; use one of "
                             "them")
        if arg.startswith("-"):
            raise UsageError(f"unknown option {shorten(arg)} for a search; see misubmit --help")
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    space, overrides = {}, []
    for override in [asked["search"], *(a for a in rest if "=" in a)]:
        try:
            sweep = parser.parse_overrides([override])[0].is_sweep_override()
        except HydraException:
            sweep = False  # compose names what is wrong with it
        key, _, value = override.partition("=")
        if sweep or override is asked["search"]:
            space[key] = value
        else:
            overrides.append(override)
    job = {"job_type": "search", "search_space": space, "overrides": overrides,
           "n_trials": _whole_number(asked.get("trials", "20"), "--trials"),
           "max_concurrent": _whole_number(asked.get("parallel", "2"), "--parallel")}
    for name in ("sampler", "pruner"):
        if name in asked:
            job[name] = {"name": asked[name]}
    config = [a for a in positionals]
    if len(config) > 1:
        raise UsageError(f"--search takes one CONFIG at most, got {' '.join(config)}")
    if config:
        job["config"] = os.path.abspath(config[0])
    return job, os.getcwd()


def _add_trials(options: dict, rest: list[str]) -> None:
    if len(rest) != 1 or rest[0].startswith("-") or any(options[k] is not None for k in options if k != "add_trials"):
        raise UsageError("--add-trials takes a number and one search job's id: misubmit --add-trials N JOB_ID")
    from mitorch.service.search.job import MAX_TRIALS

    job_id = check_id(rest[0], "JOB_ID")
    count = _whole_number(options["add_trials"], "--add-trials")
    if count > MAX_TRIALS:
        raise UsageError(f"--add-trials adds at most {MAX_TRIALS} trials at once, got {count}")
    from mitorch.service.search.step import add_trials
    from mitorch.store import open_store

    before, after = add_trials(open_store(), job_id, count)
    print(f"job {job_id}: n_trials {before} -> {after}")


def _queue_search(job: dict, base_dir: str, options: dict) -> str:
    from mitorch.service.search.job import prepare
    from mitorch.store import open_store

    store = open_store()
    priority = None if options["priority"] is None else _whole_number(options["priority"])
    record = prepare(job, store, base_dir, priority, options["dataset"])
    job_id, _ = store.add_job(record)
    return job_id


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


def _whole_number(value: str, flag: str = "--priority") -> int:
    from mitorch.store.base import parse_priority

    try:
        return parse_priority(value, flag)
    except ValueError as e:
        raise UsageError(str(e)) from None


if __name__ == "__main__":
    main()
