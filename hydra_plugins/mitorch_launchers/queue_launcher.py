"""A Hydra launcher that queues each run of a sweep as a training, under one job.

`misubmit -m ...` selects it (`hydra/launcher=mitorch_queue`). Heavy imports wait for launch().
Hydra's plugin discovery loads this module without registering it in sys.modules, so its
config dataclass needs real annotations: no `from __future__ import annotations` here.
"""
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher


@dataclass
class QueueLauncherConf:
    _target_: str = "hydra_plugins.mitorch_launchers.queue_launcher.QueueLauncher"
    priority: int = 100
    # A registered dataset, NAME:VERSION, for every training of the sweep.
    dataset: Optional[str] = None


ConfigStore.instance().store(group="hydra/launcher", name="mitorch_queue", node=QueueLauncherConf,
                             provider="mitorch")


class QueueLauncher(Launcher):
    """Stores every job of a sweep as a `new` training of one `jobs` record (job_type "sweep")."""

    def __init__(self, priority: int = 100, dataset: Optional[str] = None) -> None:
        self.priority = priority
        self.dataset = dataset
        self.job_id: str | None = None
        self.config = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config = config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from omegaconf import OmegaConf

        from mitorch.config import compose
        from mitorch.service.submit import find_dataset, submission
        from mitorch.store import open_store

        store = open_store()
        dataset = find_dataset(self.dataset, store)
        # Every run is checked before anything is stored.
        configs = [submission(compose(list(overrides)), store, dataset) for overrides in job_overrides]
        trainings = [{"config": config, "priority": self.priority, "dataset": dataset,
                      "trial_number": initial_job_idx + i, "overrides": list(overrides)}
                     for i, (config, overrides) in enumerate(zip(configs, job_overrides))]
        if self.job_id is None:
            # The job and its first trainings are stored together: all or nothing.
            sweep = [o for o in OmegaConf.to_container(self.config.hydra.overrides.task)]
            self.job_id, ids = store.add_job({"job_type": "sweep", "status": "running", "overrides": sweep,
                                              "priority": self.priority, "dataset": dataset}, trainings)
            print(f"job {self.job_id}", flush=True)
        else:
            ids = store.add_trainings([{**t, "job_id": self.job_id} for t in trainings])
        returns = []
        for training_id, overrides in zip(ids, job_overrides):
            print(f"{training_id} {' '.join(overrides)}", flush=True)
            result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            result.return_value = training_id
            returns.append(result)
        return returns
