"""A Hydra launcher that submits each run of a sweep as an AzureML command job.

`mitrain -m hydra/launcher=azureml optimizer.lr=0.1,0.01 data.train=azureml://...`: each run is a
job that runs the launching app's own command with that run's overrides, so it works for any
Hydra app installed in the job's environment. Fire-and-forget by default: one line per job (its
name and studio URL), then Hydra returns. `hydra.launcher.wait=true` polls until every job ends,
brings each run's output directory back into the sweep directory and returns its final metrics
(the JSON line) as the run's value. `hydra.launcher.dry_run=true` writes each job's YAML
(loadable by `azure.ai.ml.load_job`) under the sweep directory and contacts nothing.

Heavy imports wait for launch(). Hydra's plugin discovery loads this module without registering
it in sys.modules, so its config dataclass needs real annotations: no
`from __future__ import annotations` here.
"""
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


@dataclass
class AzureMLLauncherConf:
    """Options of `hydra/launcher=azureml` (`hydra.launcher.NAME=VALUE`).

    The workspace comes from MITORCH_AZURE_SUBSCRIPTION_ID, MITORCH_AZURE_RESOURCE_GROUP,
    MITORCH_AML_WORKSPACE and MITORCH_AML_AUTH (or DefaultAzureCredential), as for `micontrol`.
    """

    _target_: str = "hydra_plugins.mitorch_launchers.azureml_launcher.AzureMLLauncher"
    # The compute cluster; None: $MITORCH_AML_COMPUTE.
    compute: Optional[str] = None
    instance_count: int = 1
    # DDP processes per node (PyTorchDistribution); mitrain reads the RANK/WORLD_SIZE AzureML sets.
    processes_per_instance: int = 1
    # A registered environment (azureml:NAME:VERSION or a registry URI); None:
    # $MITORCH_AML_ENVIRONMENT, else MiTorch's own (a curated PyTorch image + its requirements).
    environment: Optional[str] = None
    experiment_name: str = "mitorch"
    timeout_s: int = 3 * 24 * 3600
    shm_size: str = "16g"
    # A dataset registered with midataset (NAME or NAME:VERSION, from MITORCH_DB_URI's store) whose
    # splits are Azure Blob or azureml:// files: data.train and data.val of every run, mounted.
    dataset: Optional[str] = None
    # AzureML queue priority: low, medium or high; None: the workspace's default.
    priority: Optional[str] = None
    # The command that runs this app in the job's environment, taken as it is (add Hydra flags
    # such as --config-name here); None: the launching program's name (mitrain).
    app: Optional[str] = None
    # Poll until every job ends, download each run's output directory into its sweep subdirectory,
    # and return its final metrics (the JSON object on its stdout's last line); a job that ended
    # Failed or Canceled fails its run.
    wait: bool = False
    # Seconds between two status reads of the jobs while waiting.
    poll_interval_s: float = 30.0
    # Write each job's YAML under the sweep directory and print the paths; contact nothing.
    dry_run: bool = False


ConfigStore.instance().store(group="hydra/launcher", name="azureml", node=AzureMLLauncherConf, provider="mitorch")


class AzureMLLauncher(Launcher):
    """Submits every run of a sweep as an AzureML command job (see mitorch.azureml.sweeps)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.config: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import sys
        from pathlib import Path

        from mitorch.azureml.sweeps import launch
        from mitorch.files.secrets import fail
        from mitorch.errors import MiTorchError

        def compose(overrides: list[str]) -> Any:  # each run's config, as the job will compose it
            return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

        try:
            return launch(self.config, self.options, job_overrides, initial_job_idx, compose)
        except MiTorchError as e:
            # A user's mistake, or AzureML's refusal: one line, as the app's own errors are
            # (Hydra would print a traceback).
            fail(Path(sys.argv[0]).name, e)
