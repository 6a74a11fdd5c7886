"""mitrain: train a model; the last stdout line is the final validation metrics as JSON.

    mitrain [key=value ...] [-m]
    mitrain CONFIG TRAIN VAL [-w WEIGHTS] [-o OUTPUT] [-d] [key=value ...]
    mitrain --training-id ID [--attempt N]   (run a training queued with misubmit)
"""
from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from mitorch.cli._common import check_overrides, fail, parse_command_line
from mitorch.errors import MiTorchError

PROG = "mitrain"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--training-id" in argv:
        _run_queued(argv)
        return
    try:
        command = parse_command_line(argv, PROG)
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
    try:
        run()
    except KeyboardInterrupt:
        fail(PROG, MiTorchError("interrupted"), code=130)


def _register_launchers() -> None:
    """MiTorch's launchers (hydra/launcher=azureml, mitorch_queue), also where Hydra's plugin
    discovery cannot list the hydra_plugins namespace (an editable install). Importing a module
    also stores its config node; heavy imports wait for launch()."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.mitorch_launchers.azureml_launcher import AzureMLLauncher
    from hydra_plugins.mitorch_launchers.queue_launcher import QueueLauncher

    for launcher in (AzureMLLauncher, QueueLauncher):
        Plugins.instance().register(launcher)


def _run_queued(argv: list[str]) -> None:
    """mitrain --training-id ID [--attempt N]: run a training that misubmit queued."""
    usage = "--training-id takes one id and, from a controller, --attempt N: mitrain --training-id ID [--attempt N]"
    attempt = None
    if len(argv) == 4 and argv[2] == "--attempt" and argv[3].isdigit() and int(argv[3]) >= 1:
        attempt = int(argv[3])
    elif len(argv) != 2:
        fail(PROG, MiTorchError(usage), code=2)
    if argv[0] != "--training-id":
        fail(PROG, MiTorchError(usage), code=2)
    from mitorch import api
    from mitorch.service.runner import run_training

    try:
        metrics = run_training(argv[1], attempt)
    except MiTorchError as e:
        fail(PROG, e)
    api.print_metrics(metrics)


def _train(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mitorch import api

    try:
        metrics = api.train(cfg, run_dir=HydraConfig.get().runtime.output_dir)
    except MiTorchError as e:
        fail(PROG, e)
    if os.environ.get("RANK", "0") == "0":
        api.print_metrics(metrics)


if __name__ == "__main__":
    main()
