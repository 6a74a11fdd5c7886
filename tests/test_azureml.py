"""The AzureML executor over a fake `ml_client` (jobs, compute, workspaces): every job MiTorch
builds is checked with the SDK's own classes, holds no secret, and is what the fake records as
sent. AzureML itself cannot be reached from here; nothing else is faked."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("azure.ai.ml", reason="the AzureML tests need the azure extra: pip install -e '.[test]'")

from azure.ai.ml import load_job  # noqa: E402
from azure.ai.ml._restclient.arm_ml_service.models import JobStatus  # noqa: E402
from azure.ai.ml.entities import AmlCompute, JobService, SystemData, Workspace  # noqa: E402
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceExistsError  # noqa: E402
from azure.core.exceptions import ResourceNotFoundError, ServiceRequestError  # noqa: E402

from mitorch.azureml import jobs, keyvault  # noqa: E402
from mitorch.azureml.settings import AzureMLSettings  # noqa: E402
from mitorch.errors import ConfigError, MiTorchError  # noqa: E402
from mitorch.service.executors.azureml import AzureMLExecutor  # noqa: E402
from mitorch.service.controller import Settings, tick  # noqa: E402
from mitorch.service.executors import LaunchError  # noqa: E402
from mitorch.store.sqlite import SQLiteStore  # noqa: E402
from mitorch.testing.executors import ExecutorConformance, ExecutorHarness  # noqa: E402
from tests.conftest import QUICK, make_text_dataset, run  # noqa: E402
from tests.test_remote import _container, azurite  # noqa: E402, F401 - azurite: the Blob emulator fixture

CLIENT_SECRET = "Cl1entSecretValue~xyz"
DB_PASSWORD = "DbPassw0rdValue"
SAS_SIG = "c2FzU2lnbmF0dXJlVmFsdWU%3D"
VAULT_ID = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.KeyVault/vaults/kv-mitorch"
ENV = {
    "MITORCH_AZURE_SUBSCRIPTION_ID": "sub-1", "MITORCH_AZURE_RESOURCE_GROUP": "rg-1",
    "MITORCH_AZURE_TENANT_ID": "tenant-1", "MITORCH_AML_WORKSPACE": "ws-1", "MITORCH_AML_COMPUTE": "gpu-cluster",
    "MITORCH_AML_AUTH": f"client-1:{CLIENT_SECRET}", "MITORCH_AML_ENVIRONMENT": "azureml:mitorch-env:3",
}
SECRETS = (CLIENT_SECRET, DB_PASSWORD, SAS_SIG, "sig=")


class FakeJobs:
    """`ml_client.jobs`: records every call; a job's status is what the test sets (or, with a
    node, what its process does); its creation time is the clock's when it was sent."""

    def __init__(self, node: FakeNode | None = None, clock: Callable[[], float] = time.time) -> None:
        self.sent: dict[str, Any] = {}
        self.statuses: dict[str, Any] = {}
        self.created: dict[str, datetime] = {}
        self.clock = clock
        self.calls: list[tuple[str, str]] = []
        self.submit_error: Exception | None = None
        self.get_error: Exception | None = None
        self.cancel_error: Exception | None = None
        self.node = node

    def create_or_update(self, job: Any) -> Any:
        self.calls.append(("create_or_update", job.name))
        if self.submit_error is not None:
            raise self.submit_error
        self.sent[job.name] = job
        self.statuses[job.name] = JobStatus.QUEUED
        self.created[job.name] = datetime.fromtimestamp(self.clock(), timezone.utc)
        if self.node is not None:
            self.node.start(job)
        return self._returned(job.name)

    def get(self, name: str) -> Any:
        self.calls.append(("get", name))
        if self.get_error is not None:
            raise self.get_error
        if name not in self.sent:
            raise ResourceNotFoundError(f"(UserError) Job {name} not found")
        if self.node is not None:
            self.statuses[name] = self.node.status(name)
        return self._returned(name)

    def download(self, name: str, download_path: str = ".", output_name: str | None = None, all: bool = False) -> None:
        """As the SDK lays it out: the output OUTPUT under download_path/named-outputs/OUTPUT."""
        self.calls.append(("download", name))
        status = self.get(name).status
        if str(getattr(status, "value", status)) not in ("Completed", "Failed", "Canceled"):
            raise RuntimeError(f"This job is in state {status}. Download is allowed only in terminal states")
        assert output_name is not None and self.node is not None, "only named outputs of jobs run on a node"
        shutil.copytree(self.node.output(name, output_name), Path(download_path) / "named-outputs" / output_name,
                        dirs_exist_ok=True)

    def begin_cancel(self, name: str) -> Any:
        self.calls.append(("begin_cancel", name))
        if self.cancel_error is not None:
            raise self.cancel_error
        self.statuses[name] = JobStatus.CANCEL_REQUESTED
        return SimpleNamespace(result=lambda: None)

    def _returned(self, name: str) -> Any:
        # What the service answers: the job as an SDK entity, with its status, studio link and
        # creation time.
        job = self.sent[name]._to_job()
        job._status = self.statuses[name]
        job._creation_context = SystemData(created_at=self.created.get(name))
        job.services = {"Studio": JobService(endpoint=f"https://ml.azure.com/runs/{name}?wsid=fake")}
        return job


class FakeMLClient:
    def __init__(self, max_instances: int = 4, node: FakeNode | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.jobs = FakeJobs(node, clock)
        self.compute = SimpleNamespace(get=lambda name: AmlCompute(name=name, size="Standard_NC6s_v3",
                                                                   max_instances=max_instances))
        self.workspaces = SimpleNamespace(get=lambda name: Workspace(name=name, key_vault=VAULT_ID))


@pytest.fixture
def aml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """AzureML settings, a job store and Blob artifacts (with a SAS token) in the environment; the
    session's cache keeps the staged wheel between tests. `now` is the clock of the executor and
    of AzureML's job creation times (a test moves it on)."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MITORCH_DB_URI", f"mongodb://mitorch:{DB_PASSWORD}@db.example.com/mitorch")
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", f"https://acct.blob.core.windows.net/art?sv=2024&sig={SAS_SIG}")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # where the executor keeps its job clocks
    store = SQLiteStore(str(tmp_path / "db.sqlite"))
    now = [float(int(time.time()))]  # whole seconds: AzureML's timestamps keep microseconds
    client = FakeMLClient(clock=lambda: now[0])
    executor = AzureMLExecutor(client=lambda: client, clock=lambda: now[0])
    return SimpleNamespace(store=store, client=client, executor=executor, tmp=tmp_path, now=now)


def _next_process(aml: SimpleNamespace) -> AzureMLExecutor:
    """A new executor, as the next micontrol process makes: it shares only the disk and AzureML."""
    aml.executor = AzureMLExecutor(client=lambda: aml.client, clock=lambda: aml.now[0])
    return aml.executor


def _tick(aml: SimpleNamespace, **settings: Any) -> list[str]:
    return tick(aml.store, aml.executor, say=lambda line: None, settings=Settings(tick_wait_s=0, **settings))


def _yaml(job: Any, path: Path) -> str:
    job._to_job().dump(str(path))
    return path.read_text()


# -- the job ---------------------------------------------------------------------------------


def test_each_job_validates_round_trips_and_holds_no_secret(aml: SimpleNamespace) -> None:
    urgent = aml.store.add_training({"config": {"max_epochs": 1}, "priority": 5, "job_id": "sweep-1"})
    usual = aml.store.add_training({"config": {"max_epochs": 1}})
    actions = _tick(aml)
    assert sorted(actions) == sorted([f"dispatched {urgent} to mitorch-{urgent}-1",
                                      f"dispatched {usual} to mitorch-{usual}-1"])
    for training_id, priority in ((urgent, "high"), (usual, "medium")):
        sent = aml.client.jobs.sent[f"mitorch-{training_id}-1"]
        assert sent._validate().passed
        text = _yaml(sent, aml.tmp / f"{training_id}.yml")
        loaded = load_job(aml.tmp / f"{training_id}.yml")
        assert loaded._to_job()._to_dict() == sent._to_job()._to_dict()
        wire = json.dumps(sent._to_job()._to_rest_object().as_dict(), default=str)  # the body create_or_update sends
        for secret in SECRETS:
            assert secret not in text and secret not in wire
        assert "mongodb" not in text and "db.example.com" not in wire

        assert sent.compute == "gpu-cluster" and sent.experiment_name == "mitorch"
        assert sent.environment == "azureml:mitorch-env:3"
        assert sent.resources.instance_count == 1 and sent.resources.shm_size == "16g"
        assert sent.distribution.type == "pytorch" and sent.distribution.process_count_per_instance == 1
        assert sent.limits.timeout == 3 * 24 * 3600 and sent.queue_settings.priority == priority
        assert sent.tags["mitorch_training_id"] == training_id and sent.tags["mitorch_attempt"] == "1"
        assert sent.environment_variables == {
            "MITORCH_KEY_VAULT_URL": "https://kv-mitorch.vault.azure.net/", "MITORCH_DB_SECRET_NAME": "mitorch-db-uri",
            "MITORCH_ARTIFACTS_URI": "https://acct.blob.core.windows.net/art"}
        code = Path(sent.code)
        assert [p.name for p in code.iterdir()] == ["mitorch-0.1.0-py3-none-any.whl"]
        assert sent.command.endswith(f"--no-deps --no-index mitorch-0.1.0-py3-none-any.whl && "
                                     f"mitrain --training-id {training_id} --attempt 1")
        record = aml.store.get_training(training_id)
        assert record["azureml_job"] == f"mitorch-{training_id}-1" and record["run_id"] == record["azureml_job"]
        assert record["studio_url"].startswith(f"https://ml.azure.com/runs/mitorch-{training_id}-1")
        assert record["executor"] == "azureml:ws-1/gpu-cluster"
    assert aml.client.jobs.sent[f"mitorch-{urgent}-1"].tags["mitorch_job_id"] == "sweep-1"


URI_PASSWORD, FRAGMENT = "Art1factsPassw0rd", "fragmentSecretValue"


@pytest.mark.parametrize("uri", [
    f"https://mitorch:{URI_PASSWORD}@acct.blob.core.windows.net/art/team#{FRAGMENT}",
    f"https://acct.blob.core.windows.net/art/team/?sv=2024&sig={SAS_SIG}#{FRAGMENT}",
    f"https://mitorch:{URI_PASSWORD}@acct.blob.core.windows.net/art/team#{FRAGMENT}?sig={SAS_SIG}",
])
def test_the_job_holds_the_artifacts_uri_without_its_credentials(aml: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                                                  uri: str) -> None:
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", uri)
    training_id = aml.store.add_training({"config": {}})
    assert _tick(aml) == [f"dispatched {training_id} to mitorch-{training_id}-1"]
    sent = aml.client.jobs.sent[f"mitorch-{training_id}-1"]
    assert sent.environment_variables["MITORCH_ARTIFACTS_URI"] == "https://acct.blob.core.windows.net/art/team"
    wire = json.dumps(sent._to_job()._to_rest_object().as_dict(), default=str)  # the body create_or_update sends
    text = _yaml(sent, aml.tmp / "job.yml")
    for secret in (URI_PASSWORD, FRAGMENT, SAS_SIG, "mitorch@", "#"):
        assert secret not in wire and secret not in text and secret not in sent.command


@pytest.mark.parametrize("uri", ["s3://AKIAKEY:S3cretKey@bucket/artifacts", "ftp://files.example.com/artifacts",
                                 "https://files.example.com/artifacts", "LOCAL", None])
def test_artifacts_the_executor_cannot_use_are_refused_before_a_training_is_claimed(
        aml: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, uri: str | None) -> None:
    if uri is None:
        monkeypatch.delenv("MITORCH_ARTIFACTS_URI")
    else:
        monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(aml.tmp / "art") if uri == "LOCAL" else uri)
    with pytest.raises(MiTorchError) as refused:
        aml.executor.check_ready()
    message = str(refused.value)
    assert message.startswith("the AzureML executor needs MITORCH_ARTIFACTS_URI to be an Azure Blob container URL "
                              "(https://ACCOUNT.blob.core.windows.net/CONTAINER), got ")
    assert "\n" not in message and "S3cretKey" not in message
    # The tick stops there: the queued training stays unclaimed.
    training_id = aml.store.add_training({"config": {}})
    with pytest.raises(MiTorchError):
        _tick(aml)
    assert aml.store.get_training(training_id)["status"] == "new" and not aml.client.jobs.calls
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", f"https://acct.blob.core.windows.net/art?sv=2024&sig={SAS_SIG}")
    assert aml.executor.check_ready() is None


def test_mitorchs_own_environment_and_multi_node_jobs(aml: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"MITORCH_AML_ENVIRONMENT": "", "MITORCH_AML_INSTANCE_COUNT": "2",
                       "MITORCH_AML_PROCESSES_PER_INSTANCE": "4", "MITORCH_AML_SHM_SIZE": "64g",
                       "MITORCH_AML_TIMEOUT_S": "3600", "MITORCH_AML_JOB_TIER": "Standard"}.items():
        monkeypatch.setenv(key, value)
    settings = AzureMLSettings.from_env()
    from mitorch.azureml.package import staged_code

    sent = [jobs.training_job({"id": training_id, "attempt": 3, "priority": 500}, settings, staged_code(),
                              jobs.job_environment(settings), "https://kv.vault.azure.net/",
                              f"https://acct.blob.core.windows.net/art?sig={SAS_SIG}") for training_id in ("a1", "b2")]
    for job in sent:
        assert job._validate().passed and job.name in ("mitorch-a1-3", "mitorch-b2-3")
        text = _yaml(job, aml.tmp / "job.yml")
        assert load_job(aml.tmp / "job.yml")._to_job()._to_dict() == job._to_job()._to_dict()
        assert SAS_SIG not in text and "sig=" not in text
        assert job.resources.instance_count == 2 and job.distribution.process_count_per_instance == 4
        assert job.resources.shm_size == "64g" and job.limits.timeout == 3600
        assert job.queue_settings.priority == "low" and job.queue_settings.job_tier.lower() == "standard"
    # One environment, the same content for every job: AzureML builds its image once.
    contexts = {Path(job.environment.build.path) for job in sent}
    assert len(contexts) == 1
    context = contexts.pop()
    assert (context / "Dockerfile").read_text().startswith("FROM mcr.microsoft.com/azureml/curated/acpt-pytorch")
    requirements = (context / "requirements.txt").read_text().splitlines()
    assert "azure-keyvault-secrets>=4.7" in requirements and any(r.startswith("torch>=") for r in requirements)
    assert sent[0].environment.name == sent[1].environment.name  # anonymous, named by its content
    # The wheel lives in the cache, never in the user's working directory.
    assert Path(sent[0].code).is_relative_to(os.environ["MITORCH_CACHE_DIR"])
    # The nodes are the executor's; a training's config may ask for its own processes per node.
    aml.executor = AzureMLExecutor(client=lambda: aml.client)
    assert aml.executor.capacity == 4 // 2
    ids = [aml.store.add_training({"config": {"num_processes": n}}) for n in (1, 8)]
    _tick(aml)
    assert [aml.client.jobs.sent[f"mitorch-{i}-1"].distribution.process_count_per_instance for i in ids] == [4, 8]
    assert {aml.client.jobs.sent[f"mitorch-{i}-1"].resources.instance_count for i in ids} == {2}


@pytest.mark.parametrize("priority, expected", [(-3, "high"), (99, "high"), (100, "medium"), (101, "low")])
def test_priority_maps_to_azureml_queue_priority(priority: int, expected: str) -> None:
    assert jobs.queue_priority(priority) == expected


@pytest.mark.parametrize("missing", ["MITORCH_AZURE_SUBSCRIPTION_ID", "MITORCH_AZURE_RESOURCE_GROUP",
                                     "MITORCH_AML_WORKSPACE", "MITORCH_AML_COMPUTE"])
def test_a_missing_setting_is_one_line_naming_it(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigError, match=f"^{missing} is not set"):
        AzureMLSettings.from_env()


def test_malformed_auth_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MITORCH_AML_AUTH", CLIENT_SECRET)
    with pytest.raises(ConfigError) as refused:
        AzureMLSettings.from_env()
    assert "MITORCH_AML_AUTH" in str(refused.value) and CLIENT_SECRET not in str(refused.value)
    monkeypatch.setenv("MITORCH_AML_AUTH", f"client-1:{CLIENT_SECRET}")
    assert CLIENT_SECRET not in repr(AzureMLSettings.from_env())


def test_without_the_azure_extra_the_executor_is_a_one_line_error(aml: SimpleNamespace,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "azure.ai.ml" else real(name))
    expected = r"^MiTorch's AzureML jobs need azure\.ai\.ml: pip install 'mitorch\[azure\]'$"
    with pytest.raises(ConfigError, match=expected):
        AzureMLExecutor(client=lambda: aml.client)


def test_local_artifacts_are_a_one_line_error_at_the_first_tick(tmp_path: Path) -> None:
    env = {**os.environ, **ENV, "MITORCH_DB_URI": f"sqlite:///{tmp_path / 'db.sqlite'}",
           "MITORCH_ARTIFACTS_URI": str(tmp_path / "art"), "MITORCH_EXECUTOR": "azureml"}
    done = subprocess.run([str(Path(sys.executable).parent / "micontrol")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith("micontrol: error: the AzureML executor needs MITORCH_ARTIFACTS_URI")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [["micontrol"], ["micontrol", "--help"], ["miquery"], ["misubmit", "--help"]])
def test_service_commands_import_neither_torch_nor_azure_ml(argv: list[str], tmp_path: Path) -> None:
    code = (f"import sys; sys.argv = {argv!r}\n"
            f"from mitorch.cli.{argv[0]} import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'azure.ai.ml', 'azure.identity') if m in sys.modules))")
    env = {**os.environ, "MITORCH_DB_URI": f"sqlite:///{tmp_path / 'db.sqlite'}",
           "MITORCH_ARTIFACTS_URI": str(tmp_path / "art"), "MITORCH_LOCAL_CAPACITY": "0"}
    env.pop("MITORCH_EXECUTOR", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr


# -- state, waiting, cancel, capacity, launch failures ------------------------------------------


@pytest.mark.parametrize("status", list(JobStatus))
def test_every_status_maps_to_running_waiting_or_gone(aml: SimpleNamespace, status: JobStatus) -> None:
    training_id = aml.store.add_training({"config": {}})
    _tick(aml)
    training = aml.store.get_training(training_id)
    terminal = status.value in ("Completed", "Failed", "Canceled")
    for shown in (status, status.value):  # the enum (str() is "JobStatus.RUNNING") and the plain string
        aml.client.jobs.statuses[training["run_id"]] = shown
        waits = status.value in ("NotStarted", "Queued", "Provisioning", "Preparing", "Starting")
        assert aml.executor.state(training) == ("gone" if terminal else "waiting" if waits else "running")
        ended = f"AzureML job {training['run_id']} ended {status.value}" if terminal else None
        assert aml.executor.gone_reason(training) == ended


def test_state_when_the_job_is_missing_or_azureml_cannot_be_reached(aml: SimpleNamespace) -> None:
    training = {"id": "t-1", "attempt": 1}
    assert aml.executor.state(training) == "gone"
    assert aml.executor.gone_reason(training) == "AzureML has no job mitorch-t-1-1"
    aml.client.jobs.get_error = ServiceRequestError("connection reset")
    assert aml.executor.state(training) == "unknown"
    aml.client.jobs.get_error = HttpResponseError("(InternalServerError) try again")
    assert aml.executor.state(training) == "unknown"


def test_a_job_queued_for_capacity_is_not_stale(aml: SimpleNamespace) -> None:
    training_id = aml.store.add_training({"config": {}})
    _tick(aml)
    name = f"mitorch-{training_id}-1"
    impatient = {"heartbeat_timeout": timedelta(seconds=1)}
    for _ in range(2):  # hours in the queue, as far as the heartbeat timeout can tell
        _backdate(aml.store, training_id, seconds=3600)
        assert _tick(aml, **impatient) == []
        assert aml.store.get_training(training_id)["waiting_at"] is not None
    assert ("begin_cancel", name) not in aml.client.jobs.calls
    # Once it runs, a silent job is stale again: it is stopped through AzureML.
    aml.client.jobs.statuses[name] = JobStatus.RUNNING
    _backdate(aml.store, training_id, seconds=3600)
    stopped = _tick(aml, **impatient)
    assert len(stopped) == 1 and stopped[0].startswith(f"stopping {training_id} (")
    assert ("begin_cancel", name) in aml.client.jobs.calls


def test_job_clocks_that_cannot_be_kept_are_a_one_line_error(aml: SimpleNamespace,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    training_id = aml.store.add_training({"config": {}})
    _tick(aml)
    (aml.tmp / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_DATA_HOME", str(aml.tmp / "not-a-folder"))
    expected = (r"^cannot keep the AzureML job clocks in .*not-a-folder.*; set XDG_DATA_HOME to a writable folder that "
                "lasts between ticks$")
    with pytest.raises(MiTorchError, match=expected):
        _next_process(aml).state(aml.store.get_training(training_id))


# A controller patient enough that only the executor's own limits can end a job here.
PATIENT = {"heartbeat_timeout": timedelta(days=900), "start_timeout": timedelta(days=900)}


@pytest.mark.parametrize("status", ["NotResponding", "CancelRequested", "Finalizing", "Paused", "Unknown",
                                    "Rebooting"])  # the last: a status MiTorch does not know
def test_a_job_stuck_past_its_limit_is_cancelled_and_its_training_requeued(
        aml: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, status: str) -> None:
    monkeypatch.setenv("MITORCH_AML_STUCK_S", "1800")
    stuck_id, running_id = (aml.store.add_training({"config": {}}) for _ in range(2))
    _tick(aml)
    stuck, running = f"mitorch-{stuck_id}-1", f"mitorch-{running_id}-1"
    aml.client.jobs.statuses.update({stuck: status, running: JobStatus.RUNNING})
    start = aml.now[0]
    for elapsed in (0, 900, 1800):  # each tick a new process: the job's clock is kept on disk
        aml.now[0] = start + elapsed
        _next_process(aml)
        assert _tick(aml, **PATIENT) == []
    assert not [c for c in aml.client.jobs.calls if c[0] == "begin_cancel"]
    aml.now[0] = start + 1801
    _next_process(aml)
    assert _tick(aml, **PATIENT) == [
        f"requeued {stuck_id} (retry 1 of 2: AzureML job {stuck} was stuck in {status} for 0:30:01, longer than "
        "MITORCH_AML_STUCK_S=1800; cancelled)",
        f"dispatched {stuck_id} to mitorch-{stuck_id}-2"]  # its slot is free again
    assert [c for c in aml.client.jobs.calls if c[0] == "begin_cancel"] == [("begin_cancel", stuck)]
    assert aml.store.get_training(running_id)["status"] == "queued"  # Running for as long: left alone


def test_a_job_waiting_past_its_limit_is_cancelled_and_its_training_fails_without_retries(
        aml: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MITORCH_AML_QUEUED_MAX_S", "7200")
    training_id = aml.store.add_training({"config": {}})
    _tick(aml)
    name, start = f"mitorch-{training_id}-1", aml.now[0]
    for elapsed, status in ((0, JobStatus.QUEUED), (3600, JobStatus.PREPARING), (7200, JobStatus.QUEUED)):
        aml.now[0] = start + elapsed
        aml.client.jobs.statuses[name] = status
        _next_process(aml)
        waited_at = aml.store.get_training(training_id).get("waiting_at")
        assert _tick(aml, max_retries=0) == []
        assert aml.store.get_training(training_id)["waiting_at"] != waited_at  # the controller's sign of life
    aml.now[0] = start + 7202
    aml.client.jobs.statuses[name] = JobStatus.STARTING
    _next_process(aml)
    assert _tick(aml, max_retries=0) == [
        f"failed {training_id} (AzureML job {name} was waiting to start (Queued, Preparing, Starting) for 2:00:02, "
        "longer than MITORCH_AML_QUEUED_MAX_S=7200; cancelled; no retries left)"]
    assert ("begin_cancel", name) in aml.client.jobs.calls
    assert aml.store.get_training(training_id)["status"] == "failed"


def test_a_job_first_seen_waiting_counts_its_wait_from_its_creation(aml: SimpleNamespace) -> None:
    """A controller on another machine, or one whose clocks file was lost: AzureML's creation time
    bounds the wait (the default limit, a day)."""
    training_id = aml.store.add_training({"config": {}})
    _tick(aml)  # launched now; no tick has seen it waiting yet
    aml.now[0] += 24 * 3600 + 5
    _next_process(aml)
    [requeued, _] = _tick(aml)
    assert requeued == (f"requeued {training_id} (retry 1 of 2: AzureML job mitorch-{training_id}-1 was waiting to "
                        "start (Queued) for 1 day, 0:00:05, longer than MITORCH_AML_QUEUED_MAX_S=86400; cancelled)")


def test_with_no_queued_limit_a_job_may_wait_for_ever(aml: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MITORCH_AML_QUEUED_MAX_S", "0")
    training_id = aml.store.add_training({"config": {}})
    _tick(aml)
    aml.now[0] += 400 * 24 * 3600
    _next_process(aml)
    assert _tick(aml) == [] and aml.executor.state(aml.store.get_training(training_id)) == "waiting"
    assert not [c for c in aml.client.jobs.calls if c[0] == "begin_cancel"]


def test_a_job_given_up_stays_gone_with_its_reason_and_is_cancelled_once(aml: SimpleNamespace) -> None:
    training_id = aml.store.add_training({"config": {}})
    _tick(aml)
    training = aml.store.get_training(training_id)
    name = training["run_id"]
    aml.client.jobs.statuses[name] = JobStatus.NOT_RESPONDING
    assert aml.executor.state(training) == "running"
    aml.now[0] += 3601
    assert _next_process(aml).state(training) == "gone"
    reason = aml.executor.gone_reason(training)
    assert reason == (f"AzureML job {name} was stuck in NotResponding for 1:00:01, longer than "
                      "MITORCH_AML_STUCK_S=3600; cancelled")
    # The next tick (its training was not moved on, say): the same answer, even if the job came back.
    aml.client.jobs.statuses[name] = JobStatus.RUNNING
    assert _next_process(aml).state(training) == "gone" and aml.executor.gone_reason(training) == reason
    assert [c for c in aml.client.jobs.calls if c[0] == "begin_cancel"] == [("begin_cancel", name)]


def test_a_job_past_its_limit_is_gone_even_when_azureml_refuses_to_cancel_it(aml: SimpleNamespace) -> None:
    training_id = aml.store.add_training({"config": {}})
    _tick(aml)
    name = f"mitorch-{training_id}-1"
    aml.client.jobs.statuses[name] = JobStatus.FINALIZING
    aml.client.jobs.cancel_error = HttpResponseError("(UserError) cannot cancel a job in Finalizing")
    assert _tick(aml, **PATIENT) == []
    aml.now[0] += 3601
    _next_process(aml)
    requeued = _tick(aml, **PATIENT)[0]
    assert requeued == (f"requeued {training_id} (retry 1 of 2: AzureML job {name} was stuck in Finalizing for "
                        "1:00:01, longer than MITORCH_AML_STUCK_S=3600; AzureML refused to cancel it "
                        "(HttpResponseError: (UserError) cannot cancel a job in Finalizing))")


def _backdate(store: SQLiteStore, training_id: str, seconds: float) -> None:
    training = store.get_training(training_id)
    earlier = store.clock() - timedelta(seconds=seconds)
    fields = {key: earlier for key in ("dispatched_at", "waiting_at", "heartbeat_at") if training.get(key)}
    assert store.update_training(training_id, fields)


def test_cancel_says_whether_azureml_took_the_request(aml: SimpleNamespace) -> None:
    training_id = aml.store.add_training({"config": {}})
    _tick(aml)
    training = aml.store.get_training(training_id)
    name = training["run_id"]
    assert aml.executor.cancel(training) is True
    assert aml.client.jobs.calls[-1] == ("begin_cancel", name)
    assert aml.executor.state(training) == "running"  # CancelRequested is not an end
    aml.client.jobs.statuses[name] = JobStatus.FINALIZING
    aml.client.jobs.cancel_error = HttpResponseError("(UserError) cannot cancel a job in Finalizing")
    assert aml.executor.cancel(training, force=True) is False
    assert aml.client.jobs.calls[-2:] == [("begin_cancel", name), ("get", name)]
    # A job that ended (or that AzureML no longer has) cannot be cancelled: it counts as stopped.
    aml.client.jobs.statuses[name] = JobStatus.CANCELED
    assert aml.executor.cancel(training) is True
    assert aml.executor.cancel({"id": "t-none", "attempt": 1}) is True


def test_capacity_is_the_clusters_max_instances_less_the_running_jobs(aml: SimpleNamespace) -> None:
    aml.client = FakeMLClient(max_instances=2)
    aml.executor = AzureMLExecutor(client=lambda: aml.client)
    ids = [aml.store.add_training({"config": {}}) for _ in range(3)]
    assert len(_tick(aml)) == 2 and len(aml.client.jobs.sent) == 2 and aml.executor.capacity == 2
    assert _tick(aml) == []  # both instances in use
    first = next(t for t in ids if f"mitorch-{t}-1" in aml.client.jobs.sent)
    aml.client.jobs.statuses[f"mitorch-{first}-1"] = JobStatus.FAILED  # preempted, or a node lost
    actions = _tick(aml)
    assert actions[0].startswith(f"requeued {first} (retry 1 of 2") and actions[1].startswith("dispatched ")
    assert len(aml.client.jobs.sent) == 3


def test_a_retried_launch_never_submits_twice(aml: SimpleNamespace) -> None:
    training = {"id": aml.store.add_training({"config": {}}), "attempt": 1, "priority": 100}
    aml.store.update_training(training["id"], {"attempt": 1})
    assert aml.executor.launch(training).run_id == f"mitorch-{training['id']}-1"
    assert aml.executor.launch(training).run_id == f"mitorch-{training['id']}-1"
    assert [c for c in aml.client.jobs.calls if c[0] == "create_or_update"] == [("create_or_update",
                                                                                  f"mitorch-{training['id']}-1")]
    # A job that appeared between the read and the submit (another try): the conflict means launched.
    other = {"id": aml.store.add_training({"config": {}}), "attempt": 1, "priority": 100}
    name = f"mitorch-{other['id']}-1"
    real_get = aml.client.jobs.get
    reads = []

    def late_get(job_name: str) -> Any:
        reads.append(job_name)
        if len(reads) == 1:
            raise ResourceNotFoundError("not yet")
        return real_get(job_name)

    aml.client.jobs.get = late_get
    aml.client.jobs.sent[name] = aml.client.jobs.sent[f"mitorch-{training['id']}-1"]
    aml.client.jobs.statuses[name] = JobStatus.RUNNING
    aml.client.jobs.submit_error = ResourceExistsError("(Conflict) job exists")
    assert aml.executor.launch(other).run_id == name


def test_a_failed_submit_is_recorded_on_the_training_without_the_credential(aml: SimpleNamespace) -> None:
    training_id = aml.store.add_training({"config": {}})
    aml.client.jobs.submit_error = ClientAuthenticationError(
        f"AADSTS7000215: Invalid client secret provided for client-1 ({CLIENT_SECRET})\nTrace ID: x")
    actions = _tick(aml)
    assert len(actions) == 1 and actions[0].startswith(f"launch failed {training_id} (1 of 3: cannot submit AzureML "
                                                       f"job mitorch-{training_id}-1: ClientAuthenticationError: "
                                                       "AADSTS7000215")
    training = aml.store.get_training(training_id)
    assert training["status"] == "new" and training["launch_failures"] == 1
    assert training["attempts"][0]["outcome"].startswith("launch failed: cannot submit AzureML job")
    assert CLIENT_SECRET not in json.dumps(training, default=str) and CLIENT_SECRET not in actions[0]
    aml.client.jobs.submit_error = HttpResponseError("(QuotaExceeded) not enough quota for Standard_NC6s_v3")
    assert "QuotaExceeded" in _tick(aml)[0]


# -- the job's start-up: the database URI from Key Vault ----------------------------------------


def test_the_job_reads_the_database_uri_from_key_vault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MITORCH_KEY_VAULT_URL", "https://kv-mitorch.vault.azure.net/")
    monkeypatch.setenv("MITORCH_DB_SECRET_NAME", "my-db")
    monkeypatch.setenv("DEFAULT_IDENTITY_CLIENT_ID", "identity-1")
    monkeypatch.setenv("AZURE_CLIENT_ID", "")  # unset for the lookup, and restored afterwards
    asked = []

    def vault(url: str, credential: Any) -> Any:
        asked.append((url, type(credential).__name__))
        values = {"my-db": f"mongodb://mitorch:{DB_PASSWORD}@db.example.com/mitorch"}
        return SimpleNamespace(get_secret=lambda name: SimpleNamespace(value=values[name]))

    assert keyvault.wanted()
    assert keyvault.db_uri(vault) == f"mongodb://mitorch:{DB_PASSWORD}@db.example.com/mitorch"
    assert asked == [("https://kv-mitorch.vault.azure.net/", "DefaultAzureCredential")]
    assert os.environ["AZURE_CLIENT_ID"] == "identity-1"  # Blob artifacts use the same identity

    def refused(url: str, credential: Any) -> Any:
        return SimpleNamespace(get_secret=lambda name: (_ for _ in ()).throw(
            HttpResponseError("(Forbidden) The user does not have secrets get permission")))

    with pytest.raises(ConfigError, match="cannot read secret my-db from Key Vault https://kv-mitorch.vault.azure.net/ "
                                          r"\(HttpResponseError: .*Key Vault Secrets User"):
        keyvault.db_uri(refused)


# -- end to end: misubmit -> micontrol (AzureML executor) -> the job's own command -> the store --


class FakeNode:
    """A node of the compute cluster: runs a job's command with bash in a copy of its code folder,
    with the environment variables the job declares plus what AzureML adds (the compute's
    identity), on an interpreter that has the image's packages but not MiTorch: the job must
    install its wheel. Two stand-ins for what the compute's managed identity would open: the
    Key Vault secret is answered from a file, and the Blob container by a SAS token kept in the
    node's own credentials file. Nothing else of the job's start-up path is bypassed."""

    IDENTITY = "node-identity-client-id"

    def __init__(self, root: Path, python_env: Path, vaults: dict[str, dict[str, str]], container_sas: dict,
                 datastores: dict[str, Path] | None = None) -> None:
        self.root, self.python_env = root, python_env
        self.datastores = datastores or {}  # an input's azureml:// or Blob folder -> where it is "mounted"
        self.vault_file = root / "vaults.json"
        self.vault_file.write_text(json.dumps(vaults))
        self.identity_file = root / "identity-credentials.json"
        self.identity_file.write_text(json.dumps({"sas": container_sas}))
        self.processes: dict[str, list[subprocess.Popen]] = {}
        self.environments: dict[str, dict[str, str]] = {}

    def start(self, job: Any) -> None:
        """Starts the job's processes: instance_count x process_count_per_instance of them, each
        with the variables AzureML's PyTorch distribution sets (RANK, LOCAL_RANK, NODE_RANK,
        WORLD_SIZE, MASTER_ADDR, MASTER_PORT); every node here is this machine."""
        workdir = self.root / job.name
        shutil.copytree(job.code, workdir)
        command = job.command
        for name, output in (job.outputs or {}).items():  # mounted read-write, as AzureML mounts them
            command = command.replace(f"${{{{outputs.{name}}}}}", str(_made(self.output(job.name, name))))
        for name, given in (job.inputs or {}).items():
            command = command.replace(f"${{{{inputs.{name}}}}}", str(self.datastores[given.path]))
        assert "${{" not in command, command
        nodes = job.resources.instance_count or 1
        per_node = job.distribution.process_count_per_instance if job.distribution is not None else 1
        # Each job gets a fresh home (and so cache), as a job's container on another node would.
        env = {"PATH": f"{self.python_env / 'bin'}:/usr/bin:/bin", "HOME": str(workdir / "home"),
               **(job.environment_variables or {}), "DEFAULT_IDENTITY_CLIENT_ID": self.IDENTITY,
               "AZUREML_RUN_ID": job.name, "FAKE_KEY_VAULT": str(self.vault_file),
               "MITORCH_CREDENTIALS": str(self.identity_file)}
        if nodes * per_node > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(nodes * per_node))
        self.environments[job.name] = env
        self.processes[job.name] = []
        (workdir / "user_logs").mkdir()
        for rank in range(nodes * per_node):
            ranks = {"RANK": str(rank), "LOCAL_RANK": str(rank % per_node), "NODE_RANK": str(rank // per_node)}
            with open(workdir / "user_logs" / f"std_log_process_{rank}.txt", "wb") as log:
                self.processes[job.name].append(subprocess.Popen(
                    ["bash", "-c", command], cwd=workdir, env={**env, **(ranks if nodes * per_node > 1 else {})},
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def status(self, name: str) -> JobStatus:
        codes = [process.poll() for process in self.processes[name]]
        if None in codes:
            return JobStatus.RUNNING
        return JobStatus.COMPLETED if not any(codes) else JobStatus.FAILED

    def output(self, name: str, output: str) -> Path:
        """Where the job's output folder lives on the node."""
        return self.root / name / "outputs" / output

    def preempt(self, name: str) -> None:
        """What a low-priority node's eviction does: SIGTERM to every process of the job."""
        import signal

        for process in self.processes[name]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)

    def kill(self) -> None:
        """Stops what still runs (a test that failed half-way)."""
        for processes in self.processes.values():
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, 9)  # the job's whole process group, as a node's teardown would
                    process.wait()

    def log(self, name: str) -> str:
        return "\n".join(path.read_text() for path in sorted((self.root / name / "user_logs").iterdir()))


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_FAKE_KEY_VAULT = '''"""Answers SecretClient.get_secret from $FAKE_KEY_VAULT, and logs what was asked."""
import json, os, types
if os.environ.get("FAKE_KEY_VAULT"):
    from azure.keyvault.secrets import SecretClient

    def _get_secret(self, name, version=None, **kwargs):
        with open(os.environ["FAKE_KEY_VAULT"]) as f:
            value = json.load(f)[self.vault_url.rstrip("/") + "/"][name]
        with open(os.environ["FAKE_KEY_VAULT"] + ".log", "a") as log:
            log.write(json.dumps({"vault": self.vault_url, "name": name,
                                  "identity": os.environ.get("AZURE_CLIENT_ID")}) + "\\n")
        return types.SimpleNamespace(name=name, value=value)

    SecretClient.get_secret = _get_secret
'''


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter with this test environment's packages (the image's) but without MiTorch."""
    import sysconfig

    root = tmp_path_factory.mktemp("image") / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = Path(subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path("
                                "'purelib'))"], check=True, capture_output=True, text=True).stdout.strip())
    # The packages as a plain path: their .pth files (MiTorch's editable finder) are not run.
    (site / "_image.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (site / "_fake_key_vault.py").write_text(_FAKE_KEY_VAULT)
    (site / "zz_fake_key_vault.pth").write_text("import _fake_key_vault\n")
    found = subprocess.run([str(root / "bin" / "python"), "-c", "import mitorch"], capture_output=True, cwd=root)
    assert found.returncode != 0, "MiTorch must come from the job's wheel"
    return root


def _run_queued_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image: Path, azurite: str,
                         *overrides: str, num_train: int = 16, between_ticks: Any = None) -> SimpleNamespace:
    """misubmit, then micontrol ticks (AzureML executor) until the training ends; its jobs'
    commands run on a FakeNode. between_ticks(store, node, training_id) runs after each tick."""
    artifacts = _container(azurite, f"artifacts-{os.urandom(6).hex()}")  # the emulator is shared by the module
    container, sas = artifacts.split("?")
    db_uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = {**ENV, "MITORCH_DB_URI": db_uri, "MITORCH_ARTIFACTS_URI": artifacts,
           "MITORCH_CACHE_DIR": str(tmp_path / "cache"), "MITORCH_CREDENTIALS": str(tmp_path / "creds.json"),
           "XDG_DATA_HOME": str(tmp_path / "data")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = make_text_dataset(tmp_path / "data", num_train=num_train, num_val=8)
    submitted = run("misubmit", f"data.train={data.train}", f"data.val={data.val}", *QUICK, *overrides, cwd=tmp_path,
                    env=env)
    assert submitted.returncode == 0, submitted.stderr
    training_id = submitted.stdout.strip()

    node_root = tmp_path / "node"
    node_root.mkdir()
    node = FakeNode(node_root, image, {"https://kv-mitorch.vault.azure.net/": {"mitorch-db-uri": db_uri}},
                    {container: sas})
    client = FakeMLClient(max_instances=2, node=node)
    monkeypatch.setattr(AzureMLSettings, "ml_client", lambda self: client)
    from mitorch.cli import micontrol

    store = SQLiteStore(db_uri.removeprefix("sqlite:///"))
    deadline = time.monotonic() + 600
    try:
        while (training := store.get_training(training_id))["status"] not in ("completed", "failed"):
            name = f"mitorch-{training_id}-{training.get('attempt', 1)}"
            assert time.monotonic() < deadline, node.log(name)
            exits = [process.poll() for process in node.processes.get(name, [])]
            assert not any(exits) or None not in exits, f"a process of {name} failed: {exits}\n{node.log(name)}"
            micontrol.main(["--executor", "azureml"])
            if between_ticks is not None:
                between_ticks(store, node, training_id)
            time.sleep(1)
        name = f"mitorch-{training_id}-{training['attempt']}"
        for process in node.processes[name]:
            process.wait(timeout=60)
    finally:
        node.kill()
    return SimpleNamespace(training=store.get_training(training_id), store=store, node=node, client=client,
                           name=name, env=env, container=container, sas=sas, db_uri=db_uri)


@pytest.mark.slow
def test_misubmit_micontrol_azureml_job_runs_its_command_and_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image: Path, azurite: str) -> None:
    done = _run_queued_training(tmp_path, monkeypatch, image, azurite)
    training, node, client, name, container, sas = (done.training, done.node, done.client, done.name, done.container,
                                                    done.sas)
    training_id = training["id"]
    assert training["status"] == "completed", node.log(name)
    assert set(training["metrics"]) >= {"top1_accuracy", "loss", "num_samples"}
    assert training["weights"].startswith(container + "/" + training_id + "/attempt-1/")
    assert list(client.jobs.sent) == [name] and training["executor"] == "azureml:ws-1/gpu-cluster"
    # The job read the database URI from Key Vault through the compute's identity; its spec and its
    # environment held no secret.
    asked = [json.loads(line) for line in Path(str(node.vault_file) + ".log").read_text().splitlines()]
    assert asked and {a["name"] for a in asked} == {"mitorch-db-uri"}
    assert {a["identity"] for a in asked} == {FakeNode.IDENTITY}
    job_env = json.dumps(node.environments[name])
    assert "db.sqlite" not in job_env and sas not in job_env and CLIENT_SECRET not in job_env
    assert "sig=" not in _yaml(client.jobs.sent[name], tmp_path / "sent.yml")
    shown = run("miquery", training_id, cwd=tmp_path, env={**done.env, "COLUMNS": "300"})
    assert f"azureml job: {name}  https://ml.azure.com/runs/{name}" in shown.stdout, shown.stderr


@pytest.mark.slow
def test_a_distributed_job_records_its_training_from_rank_0_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image: Path, azurite: str) -> None:
    """A training whose config asks for 2 processes is one job of 2 DDP processes (gloo, CPU):
    both train, and the store shows one attempt, one result per epoch and one outcome."""
    done = _run_queued_training(tmp_path, monkeypatch, image, azurite, "num_processes=2", "max_epochs=2")
    training, node, name = done.training, done.node, done.name
    sent = done.client.jobs.sent[name]
    assert sent.resources.instance_count == 1 and sent.distribution.process_count_per_instance == 2
    assert training["status"] == "completed", node.log(name)
    assert [p.returncode for p in node.processes[name]] == [0, 0], node.log(name)
    rank_0, rank_1 = node.processes[name]
    assert training["attempt"] == 1 and len(training["attempts"]) == 1
    assert training["pid"] == rank_0.pid and training["attempts"][0]["pid"] == rank_0.pid  # rank 0's heartbeat
    assert [r["epoch"] for r in done.store.list_results(training["id"])] == [1, 2]
    assert training["metrics"]["num_samples"] == 8  # the validation set, each image once across both ranks
    logs = [(node.root / name / "user_logs" / f"std_log_process_{rank}.txt").read_text() for rank in (0, 1)]
    assert "rank 1 trains beside rank 0, which records it" in logs[1] and "started on" not in logs[1]
    assert "ended: completed" in logs[0] and "ended:" not in logs[1]
    assert json.loads(logs[1].strip().splitlines()[-1])["num_samples"] == 8  # rank 1 trained to the end too


@pytest.mark.slow
def test_a_preempted_job_goes_back_to_the_queue_and_resumes_from_its_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image: Path, azurite: str) -> None:
    """A low-priority node is evicted during epoch 2 (SIGTERM): the training goes back to the queue
    without using a retry, and its next job resumes from the checkpoint taken at SIGTERM, in Blob."""
    evicted = []

    def evict_in_epoch_2(store: SQLiteStore, node: FakeNode, training_id: str) -> None:
        name = f"mitorch-{training_id}-1"
        if evicted or name not in node.processes:
            return
        while not store.list_results(training_id):  # epoch 1 recorded (its checkpoint was uploaded first)
            assert node.status(name) == JobStatus.RUNNING, node.log(name)
            time.sleep(0.05)
        node.preempt(name)
        evicted.append(name)

    done = _run_queued_training(tmp_path, monkeypatch, image, azurite, "max_epochs=2", num_train=48,
                                between_ticks=evict_in_epoch_2)
    training, node = done.training, done.node
    first, second = f"mitorch-{training['id']}-1", f"mitorch-{training['id']}-2"
    assert evicted == [first] and list(done.client.jobs.sent) == [first, second]
    assert node.status(first) == JobStatus.FAILED  # what AzureML shows for an evicted job
    assert training["status"] == "completed" and training["attempt"] == 2, node.log(second)
    assert [a["outcome"] for a in training["attempts"]] == ["preempted", "completed"]
    assert training.get("preemptions") == 1 and not training.get("retries")
    assert "stopped by SIGTERM at epoch 2" in node.log(first)
    # From Blob storage: the second job's node (its own home and cache) never saw the first's files.
    restored = re.search(r"attempt 2 starts from the checkpoint of (\S+)", node.log(second))
    assert restored and restored[1] == f"{done.container}/{training['id']}/attempt-1/last.pt"
    # The checkpoint taken at SIGTERM was uploaded: the resume starts inside epoch 2, not at its start.
    assert re.search(r"resuming from \S+ at epoch 2, batch \d+", node.log(second)), node.log(second)
    assert [r["epoch"] for r in done.store.list_results(training["id"])] == [1, 2]


# -- the executor conformance suite ------------------------------------------------------------


class AzureMLHarness(ExecutorHarness):
    """The AzureML executor over the fake client; AzureML's side of a run is set on the fake."""

    def __init__(self, aml: SimpleNamespace) -> None:
        self.store, self.executor, self.jobs = aml.store, aml.executor, aml.client.jobs
        asked = self.jobs.begin_cancel

        def cancel(name: str) -> Any:  # AzureML carries a cancel out: the job ends Canceled
            answer = asked(name)
            self.jobs.statuses[name] = JobStatus.CANCELED
            return answer

        self.jobs.begin_cancel = cancel

    def _job(self, training: dict[str, Any]) -> str:
        return self.store.get_training(training["id"])["azureml_job"]

    def end(self, training: dict[str, Any], killed: bool = False) -> None:
        self.jobs.statuses[self._job(training)] = JobStatus.FAILED if killed else JobStatus.COMPLETED

    def start(self, training: dict[str, Any]) -> None:
        self.jobs.statuses[self._job(training)] = JobStatus.RUNNING  # a node took it

    def held(self, training: dict[str, Any]) -> bool:
        self.jobs.statuses[self._job(training)] = JobStatus.QUEUED  # waiting for nodes
        return True

    def out_of_sight(self, training: dict[str, Any]) -> dict[str, Any]:
        self.jobs.get_error = ServiceRequestError("the workspace does not answer")
        return training

    @contextmanager
    def failing_launch(self) -> Iterator[None]:
        self.jobs.submit_error = HttpResponseError("(QuotaExceeded) the workspace's quota is used up")
        try:
            yield
        finally:
            self.jobs.submit_error = None


class TestAzureMLExecutorConformance(ExecutorConformance):
    @pytest.fixture
    def harness(self, aml: SimpleNamespace) -> AzureMLHarness:
        return AzureMLHarness(aml)
