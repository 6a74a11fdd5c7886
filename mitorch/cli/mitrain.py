"""mitrain: train a model; the last stdout line is the final validation metrics as JSON.

    mitrain [key=value ...] [-m]
    mitrain CONFIG TRAIN VAL [-w WEIGHTS] [-o OUTPUT] [-d] [key=value ...]
    mitrain --training-id ID [--attempt N]   (run a training queued with misubmit)
"""
from __future__ import annotations

import argparse
import os
import sys

from omegaconf import DictConfig

from mitorch.cli._common import CommandParser, check_overrides, fail, parse, training_parser
from mitorch.cli._parsing import command_line
from mitorch.errors import MiTorchError, UsageError
from mitorch.files.secrets import redact

PROG = "mitrain"
USAGE = """\
mitrain [key=value ...]                       the Hydra form
       mitrain -m key=a,b [key=value ...]            a local sweep, one run directory each
       mitrain CONFIG TRAIN VAL [-w WEIGHTS] [-o OUTPUT] [-d] [key=value ...]
       mitrain --cfg job [key=value ...]             print the resolved config
       mitrain --training-id ID [--attempt N]        run a training queued with misubmit"""
EPILOG = """\
CONFIG is a JSON or YAML training config ({"model": {"name": ..., ...}, "batch_size": 32, ...}).
TRAIN, VAL, -w, -o, -d stand for data.train=, data.val=, weights=, output=, fast_dev_run=true.
Precedence: group defaults < CONFIG < command-line overrides.
The last line on stdout is a JSON object of the final validation metrics.
"""
_QUEUED_USAGE = "--training-id takes one id and, from a controller, --attempt N: mitrain --training-id ID [--attempt N]"
# The process that read the command line. A launcher may run a sweep's runs in other processes
# (hydra/launcher=submitit_slurm: Slurm jobs), where _train hands an error back instead of exiting.
_command_process: int | None = None
_SUBMITIT_PLUGIN = "hydra_plugins.hydra_submitit_launcher"


def _parser() -> CommandParser:
    parser = training_parser(PROG, "Train an image model from composable configs.", USAGE, EPILOG + _groups())
    queued = parser.add_argument_group("a training queued with misubmit")
    queued.add_argument("--training-id", metavar="ID", help="run this queued training (a controller starts it)")
    queued.add_argument("--attempt", type=_attempt, metavar="N", help="the attempt this process runs")
    return parser


def _attempt(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number from 1, got {text[:40]!r}")
    return int(text)


def _groups() -> str:
    """The options of each config group, as `mitrain --help` lists them."""
    from mitorch.config import GROUPS, group_options

    lines = [f"  {group}: {', '.join(group_options(group))}" for group in GROUPS]
    return "\nConfig groups (group=option):\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    global _command_process
    args = parse(_parser(), argv, intermixed=True)
    _command_process = os.getpid()
    if args.training_id is not None or args.attempt is not None:
        _run_queued(args)
        return
    try:
        command = command_line(args)
        _check_launcher(command.overrides)
        if command.multirun:
            _register_launchers()
        if not command.informational:
            check_overrides(command.overrides, command.multirun)
    except MiTorchError as e:
        fail(PROG, e)
    import hydra

    from mitorch.config.compose import task_defaults

    run = hydra.main(version_base=None, config_path="pkg://mitorch.conf", config_name="train")(_train)
    overrides = task_defaults(command.overrides)
    if os.environ.get("RANK", "0") != "0":
        # Under torchrun only rank 0 keeps a run directory; the others write nothing there.
        overrides = [*overrides, "hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=disabled"]
    sys.argv = [PROG, *command.hydra_flags, *overrides]
    if command.multirun:
        # A run's error that a launcher brings back from another process reaches this process as
        # an exception: Hydra passes it on (instead of printing a traceback) and it ends as one line.
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        run()
    except KeyboardInterrupt:
        fail(PROG, MiTorchError("interrupted"), code=130)
    except MiTorchError as e:
        fail(PROG, e)


def _register_launchers() -> None:
    """MiTorch's launchers (hydra/launcher=azureml, mitorch_queue), also where Hydra's plugin
    discovery cannot list the hydra_plugins namespace (an editable install). Importing a module
    also stores its config node; heavy imports wait for launch()."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.mitorch_launchers.azureml_launcher import AzureMLLauncher
    from hydra_plugins.mitorch_launchers.queue_launcher import QueueLauncher

    for launcher in (AzureMLLauncher, QueueLauncher):
        Plugins.instance().register(launcher)


def _check_launcher(overrides: list[str]) -> None:
    """Refuses hydra/launcher=submitit_* without Hydra's submitit plugin, which the slurm extra brings."""
    from mitorch.config.overrides import override_key

    chosen = [o.split("=", 1)[1].strip() for o in overrides if override_key(o) == "hydra/launcher" and "=" in o]
    if not any(choice.startswith("submitit_") for choice in chosen):
        return
    try:
        __import__(_SUBMITIT_PLUGIN)
    except ImportError:
        raise UsageError(f"hydra/launcher={chosen[-1]} needs Hydra's submitit launcher: "
                         "pip install 'mitorch[slurm]'") from None


def _run_queued(args: argparse.Namespace) -> None:
    """mitrain --training-id ID [--attempt N]: run a training that misubmit queued."""
    if args.training_id is None or args.words or args.hydra_flags or args.weights or args.output \
            or args.fast_dev_run:
        fail(PROG, UsageError(_QUEUED_USAGE))
    from mitorch import api
    from mitorch.service.runner import run_training

    try:
        metrics = run_training(args.training_id, args.attempt)
    except MiTorchError as e:
        fail(PROG, e)
    if metrics:  # another rank than 0 of a stopped distributed attempt has none
        api.print_metrics(metrics)


def _train(cfg: DictConfig) -> dict | None:
    """One run; its metrics are also its return value, which a launcher that runs it in another
    process (submitit) hands back to Hydra."""
    from hydra.core.hydra_config import HydraConfig

    from mitorch import api

    try:
        metrics = api.train(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    except MiTorchError as e:
        if os.getpid() == _command_process:
            fail(PROG, e)
        # A launcher ran this run in its own process (submitit: a Slurm job). Exiting would leave
        # it no result to read, and without Slurm accounting it would wait for one forever: the
        # error goes back as the run's outcome, and as one line in the run's log.
        message = redact(" ".join(str(e).split()) or type(e).__name__)
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        raise MiTorchError(message) from None
    if os.environ.get("RANK", "0") == "0":
        api.print_metrics(metrics)
    return metrics


if __name__ == "__main__":
    main()
