"""misubmit: queue a training; prints its id.

    misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] [key=value ...]
    misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] -m key=a,b [key=value ...]
    misubmit JOB.yaml|JOB.json [--priority N] [--dataset NAME[:VERSION]]     (job_type: search)
    misubmit --search 'key=SWEEP' [key=SWEEP ...] [--trials N] [--parallel N] [--sampler S] [--pruner P] [key=value ...]
    misubmit --add-trials N JOB_ID
"""
from __future__ import annotations

import argparse
import sys

from mitorch.cli._common import CommandParser, check_id, fail, parse, training_parser
from mitorch.cli._parsing import command_line, is_override
from mitorch.errors import MiTorchError, UsageError
from mitorch.store.base import DEFAULT_PRIORITY

PROG = "misubmit"
USAGE = """\
misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] [--tag NAME] [key=value ...]
       misubmit --from ID [--priority N] [--tag NAME] [key=value ...]
       misubmit [CONFIG] [--priority N] [--dataset NAME[:VERSION]] -m key=a,b [key=c,d ...]
       misubmit JOB.yaml|JOB.json [--priority N] [--dataset NAME[:VERSION]]
       misubmit [CONFIG] --search 'key=SWEEP' [key=SWEEP ...] [--trials N] [--parallel N]
                [--sampler NAME] [--pruner NAME] [--dataset NAME[:VERSION]] [key=value ...]
       misubmit --add-trials N JOB_ID"""
EPILOG = """\
Prints the new training's id. A job file with job_type: search, or --search, stores a
hyper-parameter search job (see the README, "Search jobs"): micontrol keeps up to --parallel
(default 2) of its --trials (default 20) trials training, asks Optuna for new ones and prunes
hopeless ones. A SWEEP is Hydra's sweeper syntax: a,b,c | choice(a, b) | range(start, stop[, step])
(stop excluded) | interval(low, high), optionally tag(log, ...). Prints "job JOB_ID".
--add-trials N extends a running or completed search job by N trials of the same study.

With -m, one training per combination of the sweep values is queued under one job; the
output is "job JOB_ID", then one "TRAINING_ID overrides" line per training.

The config is composed and checked as mitrain would (unknown keys, types, allowed _target_)
before anything is stored; paths are made absolute. Lower priority runs first (default 100).
--dataset trains on a dataset registered with midataset (its highest version unless one is
given; the training is pinned to that version) instead of data.train/data.val.
A training whose fingerprint (its config without loggers, workers and output paths, its data
and MiTorch's version) matches an active or completed training is refused with exit status 3,
naming that training; --allow-duplicate queues it anyway (to measure another seed's variance).
A -m sweep names its duplicates on stderr and queues the rest.
--from ID queues a copy of training ID's stored config with the key=value overrides applied;
the new training records ID as its parent (as base=ID does). --tag NAME labels a training
(repeatable; one line of text, no credentials).
micontrol dispatches queued trainings; miquery shows them.
"""
_SEARCH_OPTIONS = ("search", "trials", "parallel", "sampler", "pruner")


def _parser() -> CommandParser:
    parser = training_parser(PROG, "Queue a training, a sweep or a search job in the job store ($MITORCH_DB_URI).",
                             USAGE, EPILOG, hydra_flags=("--multirun",))
    parser.add_argument("--priority", metavar="N", help=f"lower runs first (default {DEFAULT_PRIORITY})")
    parser.add_argument("--dataset", metavar="NAME[:VERSION]", help="train on a dataset registered with midataset")
    parser.add_argument("--from", dest="from_", metavar="ID", help="queue a copy of training ID's config with the "
                        "key=value overrides given (its parent)")
    parser.add_argument("--tag", action="append", metavar="NAME", help="label the training (repeatable)")
    parser.add_argument("--allow-duplicate", action="store_true",
                        help="queue it even when an active or completed training has the same fingerprint "
                        "(another seed's variance)")
    search = parser.add_argument_group("a search job")
    search.add_argument("--search", metavar="key=SWEEP", help="queue an Optuna search over this key (and every "
                        "further key=SWEEP)")
    search.add_argument("--trials", metavar="N", help="trials in all (20)")
    search.add_argument("--parallel", metavar="N", help="trials training at once (2)")
    search.add_argument("--sampler", metavar="NAME", help="Optuna's sampler (tpe)")
    search.add_argument("--pruner", metavar="NAME", help="Optuna's pruner")
    search.add_argument("--add-trials", metavar="N", help="extend the search job JOB_ID by N trials")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse(_parser(), argv, intermixed=True)
    try:
        if args.add_trials is not None:
            _add_trials(args)
            return
        if args.dataset is not None:
            from mitorch.files.datasets import parse_reference

            parse_reference(args.dataset)  # before the store is asked
        priority = DEFAULT_PRIORITY if args.priority is None else _whole_number(args.priority)
        job = _search_job(args)
        if job is not None and (args.allow_duplicate or args.from_ or args.tag):
            flag = "--allow-duplicate" if args.allow_duplicate else "--from" if args.from_ else "--tag"
            raise UsageError(f"{flag} is for trainings, not a search job")
        if args.from_ is not None and (_older_form(args) or any(not is_override(w) for w in args.words)):
            raise UsageError("--from copies one stored training's config: give it key=value overrides only, "
                             "without CONFIG, -m, -w, -o or -d")
        if job is not None:
            print(f"job {_queue_search(*job, args)}")
            return
        training_id = _queue_training(args, priority)
    except MiTorchError as e:
        fail(PROG, e)
    if training_id is not None:
        print(training_id)


def _queue_training(args: argparse.Namespace, priority: int) -> str | None:
    """Queues one training (its id), or a -m sweep's trainings (None: the launcher printed them)."""
    from mitorch.cli._common import check_overrides
    from mitorch.config import compose
    from mitorch.service.submit import check_tags, find_dataset, submission
    from mitorch.store import open_store

    command = command_line(args)
    store = open_store()  # an unreachable database fails here, before anything is composed
    dataset = find_dataset(args.dataset, store)
    if command.multirun:
        # Every value of every sweep is checked as its training would be stored (its data
        # paths, its base training), so the queue launcher refuses nothing half-way.
        check_overrides(command.overrides, multirun=True, check=lambda cfg: submission(cfg, store, dataset))
        store.close()
        _queue_sweep(command.overrides, priority, dataset, args.allow_duplicate, check_tags(args.tag or []))
        return None
    from mitorch.service.fingerprint import fingerprint
    from mitorch.service.submit import add_unless_duplicate, cloned, lineage

    tags = check_tags(args.tag or [])
    parent = None if args.from_ is None else check_id(args.from_, "--from")
    if parent is None:
        config = submission(compose(command.overrides), store, dataset)
    else:
        cfg, parent_dataset = cloned(store, parent, command.overrides)
        dataset = dataset if args.dataset is not None else parent_dataset
        config = submission(cfg, store, dataset)
    training = {"config": config, "priority": priority, "dataset": dataset, "fingerprint": fingerprint(config, dataset),
                **lineage(config, parent), **({"tags": tags} if tags else {})}
    # A duplicate exits with status 3, naming the training it repeats.
    return add_unless_duplicate(store, training, args.allow_duplicate)


def _older_form(args: argparse.Namespace) -> list[str]:
    """The flags of a training's command line that were given: -m, -w, -o, -d."""
    given = [flag for flag, value in (("-w", args.weights), ("-o", args.output), ("-d", args.fast_dev_run)) if value]
    return ["-m"] * ("--multirun" in args.hydra_flags) + given


def _search_job(args: argparse.Namespace) -> tuple[dict, str] | None:
    """(the search job, the folder its relative paths start from), from a job file or --search;
    None for a training."""
    import os

    from mitorch.service.search.job import read_job_file

    positionals = [w for w in args.words if not is_override(w)]
    job = read_job_file(positionals[0]) if len(positionals) == 1 else None
    asked = {name: getattr(args, name) for name in _SEARCH_OPTIONS if getattr(args, name) is not None}
    if job is not None:
        if asked or len(args.words) > 1 or _older_form(args):
            raise UsageError("a job file takes only --priority and --dataset; put overrides in the file")
        return job, os.path.dirname(os.path.abspath(positionals[0]))
    if "search" not in asked:
        if asked:
            raise UsageError(f"--{next(iter(asked))} belongs to a search: add --search 'key=SWEEP'")
        return None
    if "-m" in _older_form(args):
        raise UsageError("--search queues one Optuna search job and -m one training per combination; use one of them")
    if _older_form(args):
        raise UsageError(f"{_older_form(args)[0]} is for a training; a search takes CONFIG and key=value overrides "
                         "(weights=PATH, fast_dev_run=true)")
    if len(positionals) > 1:
        raise UsageError(f"--search takes one CONFIG at most, got {' '.join(positionals)}")
    job = _search_settings(asked, [w for w in args.words if is_override(w)])
    if positionals:
        job["config"] = os.path.abspath(positionals[0])
    return job, os.getcwd()


def _search_settings(asked: dict[str, str], words: list[str]) -> dict:
    """A search job from --search and its options: swept keys form the space, the others are overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    space, overrides = {}, []
    for override in [asked["search"], *words]:
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
    return job


def _add_trials(args: argparse.Namespace) -> None:
    others = [args.priority, args.dataset, *(getattr(args, name) for name in _SEARCH_OPTIONS)]
    others += [args.from_, args.tag, True if args.allow_duplicate else None]
    if len(args.words) != 1 or _older_form(args) or any(value is not None for value in others):
        raise UsageError("--add-trials takes a number and one search job's id: misubmit --add-trials N JOB_ID")
    from mitorch.service.search.job import MAX_TRIALS

    job_id = check_id(args.words[0], "JOB_ID")
    count = _whole_number(args.add_trials, "--add-trials")
    if count > MAX_TRIALS:
        raise UsageError(f"--add-trials adds at most {MAX_TRIALS} trials at once, got {count}")
    from mitorch.service.search.job import add_trials
    from mitorch.store import open_store

    before, after = add_trials(open_store(), job_id, count)
    print(f"job {job_id}: n_trials {before} -> {after}")


def _queue_search(job: dict, base_dir: str, args: argparse.Namespace) -> str:
    from mitorch.service.search.job import prepare
    from mitorch.store import open_store

    store = open_store()
    priority = None if args.priority is None else _whole_number(args.priority)
    record = prepare(job, store, base_dir, priority, args.dataset)
    job_id, _ = store.add_job(record)
    return job_id


def _queue_sweep(overrides: list[str], priority: int, dataset: dict | None, allow_duplicate: bool,
                 tags: list[str]) -> None:
    """Hydra's multirun with the mitorch_queue launcher: it stores the runs instead of running them."""
    import tempfile

    import hydra

    from hydra.core.plugins import Plugins

    from mitorch.config.overrides import format_value
    from hydra_plugins.mitorch_launchers.queue_launcher import QueueLauncher

    # Registered here too, for where Hydra's plugin discovery cannot list the hydra_plugins
    # namespace (an editable install); importing the module also stores its config node.
    Plugins.instance().register(QueueLauncher)

    def not_run(cfg: object) -> None:
        raise RuntimeError("the queue launcher stores trainings; it never runs them here")

    with tempfile.TemporaryDirectory() as sweep_dir:
        pinned = [] if dataset is None else [f"hydra.launcher.dataset={dataset['name']}:{dataset['version']}"]
        pinned += ["hydra.launcher.allow_duplicate=true"] * allow_duplicate
        pinned += [f"hydra.launcher.tags={format_value(tags)}"] * bool(tags)
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
