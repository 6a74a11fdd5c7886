"""A Hydra launcher that queues each run of a sweep as a training, under one job.

`misubmit -m ...` selects it (`hydra/launcher=mitorch_queue`). Heavy imports wait for launch().
Hydra's plugin discovery loads this module without registering it in sys.modules, so its
config dataclass needs real annotations: no `from __future__ import annotations` here.
"""
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher


@dataclass
class QueueLauncherConf:
    _target_: str = "hydra_plugins.mitorch_launchers.queue_launcher.QueueLauncher"
    priority: int = 100
    # A registered dataset, NAME:VERSION, for every training of the sweep.
    dataset: Optional[str] = None
    # Queue runs whose fingerprint matches an active or completed training (misubmit --allow-duplicate).
    allow_duplicate: bool = False
    # Tags of every training of the sweep (misubmit --tag), checked by misubmit.
    tags: Optional[List[str]] = None


ConfigStore.instance().store(group="hydra/launcher", name="mitorch_queue", node=QueueLauncherConf,
                             provider="mitorch")


class QueueLauncher(Launcher):
    """Stores every job of a sweep as a `new` training of one `jobs` record (job_type "sweep").

    A run whose fingerprint matches an active or completed training, or an earlier run of the
    sweep, is named on stderr and not queued; when no run is left, nothing is stored and the
    process exits with status 3 (as misubmit does for one duplicate training).
    """

    def __init__(self, priority: int = 100, dataset: Optional[str] = None, allow_duplicate: bool = False,
                 tags: Optional[List[str]] = None) -> None:
        self.priority = priority
        self.dataset = dataset
        self.allow_duplicate = allow_duplicate
        self.tags = list(tags or [])
        self.job_id: str | None = None
        self.config = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config = config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from mitorch.config import compose
        from mitorch.service.fingerprint import fingerprint
        from mitorch.service.submit import check_tags, find_dataset, fingerprints_held, lineage, submission
        from mitorch.store import open_store

        store = open_store()
        dataset = find_dataset(self.dataset, store)
        # Every run is checked before anything is stored.
        configs = [submission(compose(list(overrides)), store, dataset) for overrides in job_overrides]
        labels = {"tags": check_tags(self.tags)} if self.tags else {}
        trainings = [{"config": config, "priority": self.priority, "dataset": dataset, **lineage(config), **labels,
                      "fingerprint": fingerprint(config, dataset), "trial_number": initial_job_idx + i,
                      "overrides": list(overrides)}
                     for i, (config, overrides) in enumerate(zip(configs, job_overrides))]
        # While the sweep's fingerprints are held, no other submission can queue one of its runs.
        with fingerprints_held(store, [] if self.allow_duplicate else [t["fingerprint"] for t in trainings]):
            if not self.allow_duplicate:
                trainings = self._without_duplicates(store, trainings)
                job_overrides = [t["overrides"] for t in trainings]
                if not trainings and self.job_id is None:
                    sys.exit(3)  # every run repeats a training: nothing stored
            ids = self._store(store, trainings, dataset)
        returns = []
        if not trainings:
            return returns
        for training_id, overrides in zip(ids, job_overrides):
            print(f"{training_id} {' '.join(overrides)}", flush=True)
            result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            result.return_value = training_id
            returns.append(result)
        return returns

    def _store(self, store: Any, trainings: list, dataset: Any) -> list:
        """Stores trainings (the first time, with the sweep's job: all or nothing); their ids."""
        from omegaconf import OmegaConf

        if self.job_id is not None:
            return store.add_trainings([{**t, "job_id": self.job_id} for t in trainings])
        sweep = [o for o in OmegaConf.to_container(self.config.hydra.overrides.task)]
        self.job_id, ids = store.add_job({"job_type": "sweep", "status": "running", "overrides": sweep,
                                          "priority": self.priority, "dataset": dataset}, trainings)
        print(f"job {self.job_id}", flush=True)
        return ids

    @staticmethod
    def _without_duplicates(store: Any, trainings: list) -> list:
        """The runs that repeat no active or completed training and no earlier run of the sweep;
        each other one is named on stderr."""
        from mitorch.service.submit import duplicate_line, duplicate_of

        kept, seen = [], {}
        for training in trainings:
            shown = " ".join(training["overrides"])
            earlier = seen.get(training["fingerprint"])
            found = None if earlier is not None else duplicate_of(store, training["fingerprint"])
            if earlier is not None:
                print(f"misubmit: {shown}: duplicate of this sweep's run {earlier}; use --allow-duplicate to queue it "
                      "again", file=sys.stderr, flush=True)
            elif found is not None:
                print(f"misubmit: {shown}: {duplicate_line(found)}", file=sys.stderr, flush=True)
            else:
                seen[training["fingerprint"]] = shown
                kept.append(training)
        return kept
