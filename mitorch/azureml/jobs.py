"""The AzureML command job of one attempt of a queued training.

A job carries no secret, not even in its environment variables (AzureML shows them to anyone who
can read the job): it holds the *names* of the Key Vault and of the secret with the database URI,
and reads the value at start-up through the compute's managed identity (see keyvault.py).
"""
from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mitorch.azureml.settings import AzureMLSettings

# The SDK warns on every use that queue settings are "experimental": not news to a user, and
# micontrol's output is one line per action.
for _logger in ("azure.ai.ml._utils._experimental", "azure.ai.ml._schema.core.fields"):
    logging.getLogger(_logger).setLevel(logging.ERROR)

# MiTorch's priority (lower runs first, default 100) -> AzureML's queue priority.
DEFAULT_PRIORITY = 100
# Only these end a job; NotResponding and Paused can come back.
TERMINAL = frozenset({"completed", "failed", "canceled"})
# Not running the command yet (waiting for nodes, building or pulling its image): no heartbeat is due.
WAITING = frozenset({"notstarted", "queued", "provisioning", "preparing", "starting"})
RUNNING = "running"


def status_value(status: Any) -> str:
    """A job status as its value: the SDK's JobStatus enum prints as `JobStatus.RUNNING`."""
    return str(getattr(status, "value", status) or "")


def state_of(status: Any) -> str:
    """"gone" for Completed, Failed and Canceled; "running" for every other status."""
    return "gone" if status_value(status).lower() in TERMINAL else "running"


def artifacts_location(uri: str) -> str:
    """MITORCH_ARTIFACTS_URI as a job may carry it: scheme, host and path only. A job writes
    through its compute's managed identity, and AzureML shows a job's environment to anyone who
    can read the job, so a SAS token (the query), a user:password@ and a #fragment are dropped."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")


def job_name(training_id: str, attempt: int) -> str:
    """The job's name, the same for every try of one attempt: a retried launch finds it."""
    return f"mitorch-{training_id}-{attempt}"


def queue_priority(priority: int) -> str:
    """"high" below MiTorch's default priority of 100, "medium" at it, "low" above it."""
    return "high" if priority < DEFAULT_PRIORITY else "medium" if priority == DEFAULT_PRIORITY else "low"


def job_environment(settings: AzureMLSettings) -> Any:
    """MITORCH_AML_ENVIRONMENT, else MiTorch's own anonymous environment, which AzureML names by
    its content (so it is built once and reused)."""
    if settings.environment:
        return settings.environment
    from azure.ai.ml.entities import BuildContext, Environment

    from mitorch.azureml.package import environment_context

    return Environment(build=BuildContext(path=str(environment_context())),
                       description="MiTorch: a curated PyTorch image plus MiTorch's requirements")


def processes_per_instance(training: dict[str, Any], settings: AzureMLSettings) -> int:
    """The DDP processes on each node of a training's job: its config's `num_processes` when it
    asks for more than one (as it would on one machine), else MITORCH_AML_PROCESSES_PER_INSTANCE.

    The node count stays the executor's (MITORCH_AML_INSTANCE_COUNT), the same for every job, so
    the cluster's capacity in trainings is its max_instances over it.
    """
    wanted = (training.get("config") or {}).get("num_processes")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 1:
        return wanted
    return settings.processes_per_instance


def install_command(wheel: str) -> str:
    """Installs the staged wheel without dependencies (the processes of one node take turns)."""
    return f"flock /tmp/mitorch-install.lock python -m pip install --quiet --no-deps --no-index {shlex.quote(wheel)}"


def training_command(training_id: str, attempt: int, wheel: str) -> str:
    """Installs the staged wheel, then runs the attempt."""
    return f"{install_command(wheel)} && mitrain --training-id {shlex.quote(training_id)} --attempt {int(attempt)}"


def training_job(training: dict[str, Any], settings: AzureMLSettings, code: Path, environment: Any,
                 key_vault_url: str, artifacts_uri: str) -> Any:
    """The command job of the training's current attempt.

    Args:
        training: the training record (id, attempt, priority, job_id, config).
        code: the staged folder with MiTorch's wheel (package.staged_code()).
        environment: job_environment(settings).
        key_vault_url: the workspace's Key Vault, which holds the database URI as a secret.
        artifacts_uri: MITORCH_ARTIFACTS_URI, an Azure Blob container URL; any credential in
            it is dropped (see artifacts_location).

    Returns:
        An azure.ai.ml Command, validated.
    """
    from azure.ai.ml import PyTorchDistribution, command

    training_id, attempt = training["id"], int(training["attempt"])
    job = command(
        name=job_name(training_id, attempt),
        display_name=f"mitorch {training_id} attempt {attempt}",
        experiment_name=settings.experiment,
        description=f"MiTorch training {training_id}, attempt {attempt}",
        tags=_tags(training),
        code=str(code),
        command=training_command(training_id, attempt, _one_wheel(code)),
        environment=environment,
        environment_variables={
            # Names and locations only; the values behind them are read at start-up.
            "MITORCH_KEY_VAULT_URL": key_vault_url,
            "MITORCH_DB_SECRET_NAME": settings.db_secret,
            "MITORCH_ARTIFACTS_URI": artifacts_location(artifacts_uri),
        },
        compute=settings.compute,
        instance_count=settings.instance_count,
        # AzureML starts instance_count x processes processes and sets RANK, LOCAL_RANK,
        # WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each; the runner records from rank 0 alone.
        distribution=PyTorchDistribution(process_count_per_instance=processes_per_instance(training, settings)),
        shm_size=settings.shm_size,
        timeout=settings.timeout_s,
        priority=queue_priority(int(training.get("priority", DEFAULT_PRIORITY))),
        job_tier=settings.job_tier,
    )
    job._validate(raise_error=True)  # the SDK's own checks, before anything is sent
    return job


def _one_wheel(code: Path) -> str:
    wheels = sorted(p.name for p in code.glob("*.whl"))
    if len(wheels) != 1:
        raise ValueError(f"{code} must hold exactly one wheel, found {wheels}")
    return wheels[0]


def _tags(training: dict[str, Any]) -> dict[str, str]:
    """What the job is of, as tags: a job found in AzureML leads back to its training."""
    tags = {"mitorch_training_id": training["id"], "mitorch_attempt": str(int(training["attempt"]))}
    if training.get("job_id"):
        tags["mitorch_job_id"] = str(training["job_id"])
    return tags


def key_vault_url(resource_id: str) -> str:
    """https://NAME.vault.azure.net/ of a Key Vault's ARM id (as the workspace reports it) or URL."""
    if resource_id.startswith("https://"):
        return resource_id.rstrip("/") + "/"
    name = resource_id.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise ValueError(f"not a Key Vault id: {resource_id!r}")
    return f"https://{name}.vault.azure.net/"
