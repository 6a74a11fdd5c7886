"""The Slurm executor on a real (private, single-node) Slurm cluster: the executor conformance suite,
what only Slurm does (its requeue, its signals, its settings), and the service end to end: a queued
training -> a controller tick with the Slurm executor -> sbatch -> mitrain on the cluster -> the store.

In the conformance suite a shell script stands in for `mitrain --training-id ID --attempt N` (as
for the local executor), and every job is submitted held (--hold), so the harness decides when
Slurm starts it. The end-to-end tests run real trainings, tiny ones."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mitorch.errors import ConfigError, MiTorchError
from mitorch.files.artifacts import attempt_dir
from mitorch.service import transitions
from mitorch.service.controller import Settings, tick
from mitorch.service.executors.slurm import SlurmExecutor, batch_script, job_name
from mitorch.service.executors.slurm_settings import SlurmSettings
from mitorch.store.sqlite import SQLiteStore
from mitorch.testing.executors import ExecutorConformance, ExecutorHarness
from tests.conftest import BIN, make_text_dataset
from tests.slurm_cluster import SlurmCluster, job_fields, slurm_cluster, use_cluster, wait_for  # noqa: F401

# Called as `RUN -m mitorch.cli.mitrain --training-id ID --attempt N` (the batch script execs it):
# notes its start and any SIGTERM in its marker, and runs until its end file appears (on SIGTERM it
# exits, after 3 s when the file `linger` exists).
_RUN = """#!/bin/sh
trap 'echo TERM >> "{ends}/$4-$6.marker"; [ -e "{ends}/linger" ] && sleep 3; exit 143' TERM
echo "started $SLURM_JOB_ID" >> "{ends}/$4-$6.marker"
while [ ! -e "{ends}/$4-$6" ]; do sleep 0.05; done
"""


def job_of(training: dict[str, Any]) -> str:
    return training["run_id"].rsplit(":", 1)[1]


class SlurmHarness(ExecutorHarness):
    def __init__(self, cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cluster = cluster
        self.ends = tmp_path / "ends"
        self.ends.mkdir()
        run = tmp_path / "run.sh"
        run.write_text(_RUN.format(ends=self.ends))
        run.chmod(run.stat().st_mode | stat.S_IXUSR)
        use_cluster(cluster, monkeypatch)
        monkeypatch.setenv("MITORCH_SLURM_PYTHON", str(run))
        monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "art"))
        self.settings = replace(SlurmSettings.from_env(), extra_args=["--hold"])
        self.store = SQLiteStore(tmp_path / "db.sqlite")
        self.executor = SlurmExecutor(self.settings)

    def marker(self, training: dict[str, Any]) -> list[str]:
        path = self.ends / f"{training['id']}-{training['attempt']}.marker"
        return path.read_text().splitlines() if path.exists() else []

    def held(self, training: dict[str, Any]) -> bool:
        return True  # every job is sent with --hold

    def start(self, training: dict[str, Any]) -> None:
        self.cluster.run("scontrol", "release", job_of(training))
        wait_for(lambda: self.marker(training), 30, f"job {job_of(training)} to start")

    def end(self, training: dict[str, Any], killed: bool = False) -> None:
        if job_fields(self.cluster, job_of(training)).get("JobState") == "PENDING":
            self.start(training)
        if killed:  # every process of the job dies at once, as on a lost node or an out-of-memory kill
            self.cluster.run("scancel", "--full", "--signal=KILL", job_of(training))
        else:
            (self.ends / f"{training['id']}-{training['attempt']}").touch()

    def out_of_sight(self, training: dict[str, Any]) -> dict[str, Any]:
        return {**training, "run_id": "slurm:another-cluster:4242"}

    @contextmanager
    def failing_launch(self) -> Iterator[None]:
        executor = self.executor
        self.executor = SlurmExecutor(replace(self.settings, partition="no-such-partition"))
        try:
            yield
        finally:
            self.executor = executor


@pytest.fixture
def harness(slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlurmHarness]:
    harness = SlurmHarness(slurm_cluster, tmp_path, monkeypatch)
    yield harness
    for training in harness.store.list_trainings():  # no job outlives its test
        if training.get("run_id"):
            slurm_cluster.run("scancel", job_of(training), check=False)
    harness.store.close()


@pytest.mark.slow
class TestSlurmExecutor(ExecutorConformance):
    """The conformance suite; then what only Slurm does."""

    def test_cancel_sends_term_to_mitrain_alone_and_stops_a_running_job(self, harness: SlurmHarness) -> None:
        training = _launched(harness)
        harness.start(training)
        assert harness.executor.cancel(training) is True
        wait_for(lambda: harness.executor.state(training) == "gone", 30, "the cancelled job to end")
        assert harness.marker(training)[-1] == "TERM"  # it got SIGTERM and ended on its own (its trap)
        assert job_fields(harness.cluster, job_of(training)).get("JobState") in ("FAILED", "")  # exit 143, not killed
        assert "ended FAILED" in (harness.executor.gone_reason(training) or "")

    def test_slurm_never_requeues_a_job_by_default(self, harness: SlurmHarness) -> None:
        training = _launched(harness)
        harness.start(training)
        refused = harness.cluster.run("scontrol", "requeue", job_of(training), check=False)
        assert refused.returncode != 0 and "disabled" in refused.stderr
        fields = job_fields(harness.cluster, job_of(training))
        assert fields["Requeue"] == "0" and fields["Restarts"] == "0" and fields["JobState"] == "RUNNING"
        harness.end(training)

    def test_a_job_on_a_node_set_down_ends_and_is_gone(self, harness: SlurmHarness) -> None:
        training = _launched(harness)
        harness.start(training)
        cluster = harness.cluster
        try:
            cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=down", "reason=test-down")
            wait_for(lambda: harness.executor.state(training) == "gone", 30, "the job to be gone")
        finally:
            cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=resume")
        assert harness.executor.gone_reason(training).startswith(f"Slurm job {job_of(training)} ended NODE_FAIL")
        assert job_fields(cluster, job_of(training)).get("Restarts") in ("0", None)  # not requeued by Slurm
        cluster.wait_node("idle", timeout=30)

    def test_a_job_slurm_requeued_is_gone_and_cancelled(self, harness: SlurmHarness) -> None:
        harness.executor = SlurmExecutor(replace(harness.settings, extra_args=["--hold", "--requeue"]))
        training = _launched(harness)
        harness.start(training)
        (harness.ends / "linger").touch()  # its first run takes 3 s to end: the job is COMPLETING meanwhile
        harness.cluster.run("scontrol", "requeue", job_of(training))
        wait_for(lambda: job_fields(harness.cluster, job_of(training)).get("JobState") == "COMPLETING", 30,
                 "the requeue")
        assert harness.executor.state(training) == "running"  # its first run is still ending
        wait_for(lambda: job_fields(harness.cluster, job_of(training)).get("JobState") == "PENDING", 30,
                 "the requeued job to wait for its rerun")
        assert harness.executor.state(training) == "gone"
        assert re.fullmatch(rf"Slurm requeued job {job_of(training)} \(restart 1, .*\): attempt 1 runs once; "
                            r"cancelled", harness.executor.gone_reason(training))
        assert job_fields(harness.cluster, job_of(training)).get("JobState") in ("CANCELLED", "")
        assert [line for line in harness.marker(training) if line.startswith("started")] == [
            f"started {job_of(training)}"]  # its rerun never started

    def test_a_launch_sends_the_settings_and_the_training_s_processes(self, harness: SlurmHarness) -> None:
        harness.executor = SlurmExecutor(replace(harness.settings, partition="main", time="7", cpus=1, mem="64M",
                                                 term_before_s=90, extra_args=["--hold", "--comment=from-settings"]))
        harness.store.add_training({"config": {"max_epochs": 1, "num_processes": 2}})
        training = transitions.claim(harness.store, harness.executor.name)
        job = job_of({"run_id": harness.executor.launch(training).run_id})
        fields = job_fields(harness.cluster, job)
        assert fields["JobName"] == job_name(training["id"], 1) == f"mitorch-{training['id']}-1"
        assert (fields["Partition"], fields["TimeLimit"], fields["CPUs/Task"], fields["NumTasks"]) == (
            "main", "00:07:00", "1", "2")
        assert (fields["MinMemoryNode"], fields["Comment"], fields["Requeue"]) == ("64M", "from-settings", "0")
        assert fields["StdOut"] == str(attempt_dir(training["id"], 1) / "train.log")
        script = harness.cluster.run("scontrol", "write", "batch_script", job, "-").stdout
        assert script.splitlines()[-1].startswith("exec srun ")  # one srun task per training process
        assert script.splitlines()[-1].endswith(f" {harness.settings.python} -m mitorch.cli.mitrain --training-id "
                                                f"{training['id']} --attempt 1")
        harness.cluster.run("scancel", job)

    def test_identity_is_the_cluster_s_name_unless_set(self, harness: SlurmHarness,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        assert harness.executor.name == "slurm:mitorchtest"  # ClusterName of the test cluster's slurm.conf
        monkeypatch.setenv("MITORCH_SLURM_CLUSTER_NAME", "gpu-west")
        monkeypatch.setenv("MITORCH_SLURM_CAPACITY", "9")
        assert (SlurmExecutor().name, SlurmExecutor().capacity) == ("slurm:gpu-west", 9)

    def test_a_job_slurm_does_not_know_is_gone(self, harness: SlurmHarness) -> None:
        # As a job Slurm purged MinJobAge seconds after it ended: squeue says "Invalid job id specified".
        training = {**_launched(harness), "run_id": "slurm:mitorchtest:999999"}
        assert harness.executor.state(training) == "gone"
        assert harness.executor.gone_reason(training) == ("Slurm no longer knows job 999999 (it ended longer ago "
                                                          "than MinJobAge)")
        assert harness.executor.cancel(training) is True and harness.executor.cancel(training, force=True) is True

    def test_a_slurmctld_that_does_not_answer_is_unknown_never_gone(self, harness: SlurmHarness, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        training = _launched(harness)
        # The same cluster as seen by a client whose slurmctld does not answer (a port nobody listens on).
        conf = re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=9", harness.cluster.conf.read_text())
        (tmp_path / "down.conf").write_text(conf + "MessageTimeout=1\n")
        monkeypatch.setenv("SLURM_CONF", str(tmp_path / "down.conf"))
        with pytest.raises(MiTorchError, match=r"^slurmctld of Slurm cluster mitorchtest does not answer "
                                               r"\(Slurmctld\(primary\) at .* is DOWN\); no training is claimed"):
            harness.executor.check_ready()
        assert harness.executor.state(training) == "unknown"
        assert harness.executor.cancel(training) is False
        assert harness.executor.cancel(training, force=True) is False
        monkeypatch.setenv("SLURM_CONF", str(harness.cluster.conf))
        assert harness.executor.state(training) == "waiting"


def _launched(harness: SlurmHarness) -> dict[str, Any]:
    training = harness.training()
    transitions.record_launch(harness.store, training, harness.executor.launch(training), None)
    return harness.store.get_training(training["id"])


# Settings and readiness, without a cluster ---------------------------------------------------------


def test_settings_become_sbatch_options(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"PARTITION": "gpu", "ACCOUNT": "vision", "QOS": "high", "TIME": "1-00:00:00", "CPUS": "8",
                        "MEM": "64G", "GPUS": "4", "CONSTRAINT": "a100|h100", "TERM_BEFORE_S": "300", "NODES": "2",
                        "SBATCH_ARGS": "--exclusive --comment='two words'"}.items():
        monkeypatch.setenv(f"MITORCH_SLURM_{name}", value)
    options = SlurmSettings.from_env().resources({"config": {"num_processes": 4}})
    assert options == ["--nodes=2", "--ntasks-per-node=4", "--partition=gpu", "--account=vision", "--qos=high",
                       "--time=1-00:00:00", "--cpus-per-task=8", "--mem=64G", "--gpus-per-node=4",
                       "--constraint=a100|h100", "--signal=B:TERM@300", "--exclusive", "--comment=two words"]
    assert SlurmSettings().resources({"config": {}}) == ["--nodes=1", "--ntasks-per-node=1", "--signal=B:TERM@120"]


def test_one_process_is_the_batch_shell_and_several_are_srun_tasks() -> None:
    command = ["/py", "-m", "mitorch.cli.mitrain", "--training-id", "t1", "--attempt", "2"]
    assert batch_script("mitorch-t1-2", command, 1).splitlines()[-1] == "exec " + " ".join(command)
    script = batch_script("mitorch-t1-2", command, 8)
    assert script.splitlines()[-1].startswith("exec srun --kill-on-bad-exit=1 ")
    assert script.splitlines()[-1].endswith(" mitorch-t1-2 " + " ".join(command))
    assert 'RANK="$SLURM_PROCID" WORLD_SIZE="$SLURM_NTASKS" LOCAL_RANK="$SLURM_LOCALID"' in script


def test_micontrol_chooses_the_slurm_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.cli.micontrol import _executor

    monkeypatch.setenv("MITORCH_SLURM_CLUSTER_NAME", "lab")
    assert _executor("slurm").name == "slurm:lab"
    monkeypatch.setenv("MITORCH_EXECUTOR", "slurm")
    assert isinstance(_executor(None), SlurmExecutor)


@pytest.mark.parametrize(("name", "value", "says"), [
    ("MITORCH_SLURM_NODES", "0", "MITORCH_SLURM_NODES must be 1 or more, got 0"),
    ("MITORCH_SLURM_CAPACITY", "0", "MITORCH_SLURM_CAPACITY must be 1 or more, got 0"),
    ("MITORCH_SLURM_CPUS", "many", "MITORCH_SLURM_CPUS must be a whole number, got 'many'"),
    ("MITORCH_SLURM_SBATCH_ARGS", "--comment='open", "MITORCH_SLURM_SBATCH_ARGS must split as shell words"),
])
def test_a_wrong_setting_is_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        SlurmSettings.from_env()
    assert str(raised.value).startswith(says) and "\n" not in str(raised.value)


def test_check_ready_names_missing_clients_and_an_unwritable_folder(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clients = tmp_path / "bin"
    clients.mkdir()
    for name in ("sbatch", "squeue", "scontrol"):  # scancel is missing; scontrol ping answers
        (clients / name).write_text("#!/bin/sh\n")
        (clients / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(clients))
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "art"))
    executor = SlurmExecutor(SlurmSettings(cluster_name="here"))
    with pytest.raises(ConfigError, match=r"^the Slurm executor needs sbatch, squeue, scancel, scontrol on PATH; missing: "
                                          r"scancel \(run micontrol on a Slurm login node\)$"):
        executor.check_ready()
    (clients / "scancel").write_text("#!/bin/sh\n")
    (clients / "scancel").chmod(0o755)
    executor.check_ready()
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "a-file" / "art"))  # unwritable, even for root
    with pytest.raises(ConfigError, match=r"^the Slurm executor cannot write the trainings' folder .*a-file/art "
                                          r"\(Not a directory\); set MITORCH_ARTIFACTS_URI to a folder the login"):
        executor.check_ready()
