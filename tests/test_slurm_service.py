"""The service end to end on a real (private, single-node) Slurm cluster: queued trainings -> a
controller tick with the Slurm executor -> sbatch -> mitrain on the cluster -> the store. Tiny real
trainings: completed, cancelled (two DDP ranks as srun tasks), preempted and resumed, a node set
down, capacity held, a search job's trials, and Slurm's own requeue fenced off."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mitorch.files.artifacts import attempt_dir
from mitorch.service import transitions
from mitorch.service.controller import Settings, tick
from mitorch.service.executors.slurm import SlurmExecutor
from mitorch.service.executors.slurm_settings import SlurmSettings
from mitorch.store.sqlite import SQLiteStore
from tests.helpers import BIN, make_text_dataset, run_in_process
from tests.slurm_cluster import SlurmCluster, job_fields, slurm_cluster, use_cluster, wait_for  # noqa: F401

pytestmark = pytest.mark.slow


def job_of(training: dict[str, Any]) -> str:
    return training["run_id"].rsplit(":", 1)[1]


@pytest.fixture(scope="module")
def queued_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A training config as misubmit stores it (tiny data, image_size=32), submitted once per module;
    each test queues copies of it."""
    root = tmp_path_factory.mktemp("submitted")
    tiny = make_text_dataset(root / "tiny", num_train=16, num_val=8)
    env = {**os.environ, "MITORCH_DB_URI": f"sqlite:///{root / 'db.sqlite'}"}
    done = subprocess.run([str(BIN / "misubmit"), f"data.train={tiny.train}", f"data.val={tiny.val}", "image_size=32",
                           "batch_size=8", "data.num_workers=0", "max_epochs=1"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    store = SQLiteStore(root / "db.sqlite")
    config = store.get_training(done.stdout.strip())["config"]
    store.close()
    slow = make_text_dataset(root / "slow", num_train=160, num_val=8)
    return {**config, "slow_data": {"train": str(slow.train), "val": str(slow.val)}}


class Service:
    """A store, the Slurm executor and the controller's tick, in this process; trainings run on the cluster."""

    def __init__(self, cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 config: dict[str, Any], **settings: Any) -> None:
        use_cluster(cluster, monkeypatch)
        for name, value in {"MITORCH_DB_URI": f"sqlite:///{tmp_path / 'db.sqlite'}", "MITORCH_HEARTBEAT_S": "1",
                            "MITORCH_ARTIFACTS_URI": str(tmp_path / "art"), "MITORCH_SLURM_PYTHON": sys.executable,
                            "OMP_NUM_THREADS": "1"}.items():
            monkeypatch.setenv(name, value)  # the jobs get this process's environment (--export=ALL)
        self.cluster, self.config = cluster, config
        self.store = SQLiteStore(tmp_path / "db.sqlite")
        self.executor = SlurmExecutor(replace(SlurmSettings.from_env(), **settings))
        self.actions: list[str] = []

    def queue(self, slow: bool = False, workers: int = 0, **config: Any) -> str:
        stored = {key: value for key, value in self.config.items() if key != "slow_data"}
        stored["data"] = {**stored["data"], "num_workers": workers}
        if slow:  # epochs long enough (a few seconds) to be stopped in
            stored["data"].update(self.config["slow_data"])
            stored["max_epochs"] = 3
        return self.store.add_training({"config": {**stored, **config}})

    def tick(self) -> list[str]:
        lines: list[str] = []
        tick(self.store, self.executor, say=lines.append, settings=Settings())
        self.actions += lines
        return lines

    def training(self, training_id: str) -> dict[str, Any]:
        return self.store.get_training(training_id)

    def log(self, training_id: str) -> str:
        path = attempt_dir(training_id, 1) / "train.log"
        return path.read_text() if path.exists() else ""

    def wait_second_epoch(self, training_id: str) -> None:
        """Waits until the training's job is in its second epoch (SIGTERM now makes it checkpoint)."""
        self.wait(lambda: self.store.list_results(training_id), "the first epoch's result")
        time.sleep(1)  # past the first epoch's end, where the run reads its cancel request itself

    def tick_until(self, predicate: Callable[[], Any], what: str, timeout: float = 120) -> Any:
        """Ticks every half second until predicate() holds."""
        def ticked() -> Any:
            self.tick()
            return predicate() or time.sleep(0.4)
        return self.wait(ticked, what, timeout)

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 120) -> Any:
        try:
            return wait_for(predicate, timeout, what)
        except AssertionError:
            logs = sorted(Path(os.environ["MITORCH_ARTIFACTS_URI"]).glob("*/attempt-*/train.log"))
            print("\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs))
            raise


@pytest.fixture
def service(slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            queued_config: dict[str, Any]) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(**settings: Any) -> Service:
        made.append(Service(slurm_cluster, tmp_path, monkeypatch, queued_config, **settings))
        return made[-1]

    yield make
    for service in made:
        for training in service.store.list_trainings():
            if training.get("run_id"):
                slurm_cluster.run("scancel", job_of(training), check=False)
        service.store.close()


def test_a_queued_training_runs_on_the_cluster_to_completed(service: Callable[..., Service]) -> None:
    svc = service()
    training_id = svc.queue()
    began = time.monotonic()
    dispatched = svc.tick()
    assert len(dispatched) == 1 and dispatched[0].startswith(f"dispatched {training_id} to slurm:mitorchtest:")
    svc.wait(lambda: svc.store.list_results(training_id), "the first epoch's result")
    first_epoch = time.monotonic() - began
    svc.wait(lambda: svc.training(training_id)["status"] == "completed", "the training to complete")
    training = svc.training(training_id)
    svc.wait(lambda: svc.executor.state(training) == "gone", "the job to end")
    assert training["executor"] == "slurm:mitorchtest" and training["slurm_job"] == job_of(training)
    assert [r["epoch"] for r in svc.store.list_results(training_id)] == [1]
    assert set(training["metrics"]) >= {"top1_accuracy", "loss"} and Path(training["weights"]).is_file()
    log = svc.log(training_id)  # the job's output, in the attempt's folder
    assert f"training {training_id} attempt 1 started on" in log and json.loads(log.strip().splitlines()[-1])
    assert svc.executor.gone_reason(training) in (f"Slurm job {job_of(training)} ended COMPLETED",
                                                  f"Slurm no longer knows job {job_of(training)} (it ended longer "
                                                  "ago than MinJobAge)")
    assert svc.tick() == []  # nothing left to do
    print(f"\ntick -> first epoch's result in the store: {first_epoch:.1f} s")


def test_cancel_of_a_running_training_stops_its_job_with_sigterm(service: Callable[..., Service]) -> None:
    """Of a training in two DDP processes, each an srun task: the SIGTERM goes to the job's steps,
    so to both ranks, which stop together (rank 0 records the training cancelled), and to their
    data-loading workers, which keep serving until their rank shuts them down."""
    svc = service()
    training_id = svc.queue(slow=True, workers=2, num_processes=2)
    svc.tick()
    svc.wait_second_epoch(training_id)
    assert transitions.cancel(svc.store, training_id) == "requested"
    assert svc.tick() == [f"stopping {training_id} (cancelled)"]  # the controller cancels its job
    svc.wait(lambda: svc.training(training_id)["status"] != "running", "the training to record how it ended")
    training = svc.training(training_id)
    assert training["status"] == "cancelled", training.get("error")
    # Stopped by the SIGTERM of the job's cancel, mid-epoch, not at an epoch end by its own check.
    assert training["error"] == "cancelled (micontrol cancel)" and len(svc.store.list_results(training_id)) == 1
    svc.wait(lambda: svc.executor.state(training) == "gone", "the job to end")
    assert svc.executor.gone_reason(training) in (f"Slurm job {job_of(training)} ended FAILED (NonZeroExitCode)",
                                                  f"Slurm no longer knows job {job_of(training)} (it ended longer "
                                                  "ago than MinJobAge)")
    log = svc.log(training_id)
    assert f"training {training_id} attempt 1: rank 1 trains beside rank 0, which records it" in log
    assert re.search(f"training {training_id} attempt 1: rank 1 stopped with rank 0 .*SIGTERM", log), log[-3000:]


def test_the_rerun_of_a_job_slurm_requeued_is_fenced_off(service: Callable[..., Service]) -> None:
    """With --requeue (not the default) and nothing else acting, Slurm's rerun of attempt 1 finds
    the attempt no longer current: its first write is refused and it exits having written nothing."""
    svc = service(extra_args=["--requeue"])
    training_id = svc.queue(slow=True)
    svc.tick()
    svc.wait_second_epoch(training_id)
    job = job_of(svc.training(training_id))
    svc.cluster.run("scontrol", "requeue", job)  # TERM to the first run, which requeues its training itself
    svc.wait(lambda: svc.training(training_id)["status"] == "new", "the first run to record its preemption")
    before = svc.training(training_id)
    assert before["attempts"][0]["outcome"] == "preempted"
    ended = svc.wait(lambda: (fields := job_fields(svc.cluster, job)).get("Restarts") == "1"
                     and fields["JobState"] in ("FAILED", "COMPLETED") and fields, "the rerun to end")
    assert ended["ExitCode"] == "75:0"  # REPLACED_EXIT: it stopped on purpose
    after = svc.training(training_id)
    assert {k: v for k, v in after.items() if k != "updated_at"} == {k: v for k, v in before.items()
                                                                      if k != "updated_at"}
    log = svc.log(training_id)  # both runs' output: the job appends to the attempt's log
    assert f"training {training_id} attempt 1 started on" in log
    assert re.search(rf"training {training_id} attempt 1: start refused, it is new .*this process stops", log)


def test_a_preempted_training_resumes_from_its_checkpoint_to_the_uninterrupted_result(
        service: Callable[..., Service]) -> None:
    """SIGTERM to the job's mitrain, as before a time limit or a preemption (--signal=B:TERM@...):
    it checkpoints mid-epoch, goes back to the queue without using a retry, and its next job resumes
    to the metrics of the same training run without a stop."""
    svc = service()
    interrupted, uninterrupted = svc.queue(slow=True), svc.queue(slow=True)
    assert len(svc.tick()) == 2
    svc.wait_second_epoch(interrupted)
    job = job_of(svc.training(interrupted))
    svc.cluster.run("scancel", "--batch", "--signal=TERM", job)
    svc.wait(lambda: svc.training(interrupted)["status"] == "new", "the training to record its preemption")
    training = svc.training(interrupted)
    assert training["preemptions"] == 1 and training.get("retries", 0) == 0
    assert training["attempts"][0]["outcome"] == "preempted" and "stopped by SIGTERM" in training["requeue_reason"]
    svc.wait(lambda: job_fields(svc.cluster, job).get("JobState") != "RUNNING", "the preempted job to end")
    svc.tick_until(lambda: svc.training(interrupted)["status"] == "running", "attempt 2 to run")
    assert svc.training(interrupted)["attempt"] == 2
    svc.wait(lambda: all(svc.training(t)["status"] == "completed" for t in (interrupted, uninterrupted)),
             "both trainings to complete")
    assert [r["epoch"] for r in svc.store.list_results(interrupted)] == [1, 2, 3]
    assert "resuming from" in (attempt_dir(interrupted, 2) / "train.log").read_text()
    resumed, reference = (svc.training(t)["metrics"] for t in (interrupted, uninterrupted))
    assert resumed["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert resumed["top1_accuracy"] == reference["top1_accuracy"]


def test_a_node_set_down_ends_the_job_and_the_training_goes_back_to_the_queue(
        service: Callable[..., Service]) -> None:
    svc = service()
    training_id = svc.queue(slow=True)
    svc.tick()
    svc.wait(lambda: svc.store.list_results(training_id), "the first epoch's result")
    job = job_of(svc.training(training_id))
    node = svc.cluster.node
    try:
        svc.cluster.run("scontrol", "update", f"nodename={node}", "state=down", "reason=mitorch-test")
        ended = svc.wait(lambda: (state := job_fields(svc.cluster, job).get("JobState")) not in ("RUNNING", None)
                         and state, "the job to end with its node")
        assert ended == "NODE_FAIL"  # sent with --no-requeue: Slurm does not run it again
        lines = svc.wait(lambda: [line for line in svc.tick() if training_id in line], "the controller to act")
        # Requeued with a retry used, and sent again at once: its new job waits for a node.
        assert lines[0] == f"requeued {training_id} (retry 1 of 2: Slurm job {job} ended NODE_FAIL (NodeDown))"
        assert lines[1].startswith(f"dispatched {training_id} to slurm:mitorchtest:") and len(lines) == 2
        training = svc.training(training_id)
        assert (training["status"], training["attempt"], training["attempts"][0]["outcome"]) == ("queued", 2, "lost")
        assert job_fields(svc.cluster, job_of(training))["JobState"] == "PENDING"
    finally:
        svc.cluster.run("scontrol", "update", f"nodename={node}", "state=resume")
    svc.cluster.wait_node("idle", timeout=30)


def test_capacity_counts_the_executor_s_own_jobs_pending_ones_included(service: Callable[..., Service]) -> None:
    svc = service(capacity=2, extra_args=["--hold"])  # held: the jobs stay PENDING as in a busy queue
    trainings = [svc.queue() for _ in range(3)]
    dispatched = svc.tick()
    assert len(dispatched) == 2 and all(line.startswith("dispatched ") for line in dispatched)
    jobs = [job_of(svc.training(t)) for t in trainings if svc.training(t).get("run_id")]
    assert [job_fields(svc.cluster, job)["JobState"] for job in jobs] == ["PENDING", "PENDING"]
    assert svc.tick() == []  # pending is waiting, not stale: nothing requeued, nothing more sent
    assert sorted(svc.training(t)["status"] for t in trainings) == ["new", "queued", "queued"]
    svc.cluster.run("scancel", jobs[0])  # one job ends: its training goes back, and one place is free again
    lines = svc.wait(lambda: [line for line in svc.tick() if line.startswith("dispatched ")], "a dispatch")
    assert len(lines) == 1 and sorted(svc.training(t)["status"] for t in trainings) == ["new", "queued", "queued"]


def test_a_search_job_s_trials_run_on_the_cluster(service: Callable[..., Service], tmp_path: Path,
                                                  queued_config: dict[str, Any]) -> None:
    svc = service()
    data = queued_config["data"]
    job_file = tmp_path / "search.yaml"
    job_file.write_text(json.dumps({
        "job_type": "search", "name": "on-slurm",
        "overrides": [f"data.train={data['train']}", f"data.val={data['val']}", "image_size=32", "batch_size=8",
                      "data.num_workers=0", "max_epochs=1"],
        "search_space": {"optimizer.lr": "0.1,0.01"}, "sampler": {"name": "grid"}, "pruner": {"name": "none"},
        "n_trials": 2, "max_concurrent": 2}))
    submitted = run_in_process("misubmit", str(job_file), cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    svc.tick_until(lambda: svc.store.get_job(job_id)["status"] != "running", "the search to end")
    trainings = svc.store.list_trainings(job_id=job_id)
    assert svc.store.get_job(job_id)["status"] == "completed" and len(trainings) == 2
    assert {t["status"] for t in trainings} == {"completed"}
    assert all(t["executor"] == "slurm:mitorchtest" and t["slurm_job"] for t in trainings)
    assert sorted(t["config"]["optimizer"]["lr"] for t in trainings) == [0.01, 0.1]
