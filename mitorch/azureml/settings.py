"""Where MiTorch's AzureML jobs go and how they run, from MITORCH_* variables."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mitorch.envvars import env_float, env_int
from mitorch.errors import ConfigError

DEFAULT_DB_SECRET = "mitorch-db-uri"
_SIZE_UNITS = ("b", "k", "m", "g")


@dataclass(frozen=True)
class AzureMLSettings:
    """One workspace and compute cluster, and the shape of every job sent there.

    Attributes:
        subscription_id, resource_group, workspace, compute: where jobs run.
        tenant_id: the service principal's tenant (MITORCH_AZURE_TENANT_ID), or None.
        auth: `<client id>:<secret>` of a service principal (MITORCH_AML_AUTH), or None for
            DefaultAzureCredential. Never shown, never put in a job.
        environment: a registered environment (`azureml:NAME:VERSION`, a registry URI), or None
            for MiTorch's own (a curated PyTorch image plus MiTorch's requirements).
        db_secret: the workspace Key Vault secret that holds MITORCH_DB_URI.
        key_vault_url: the Key Vault's URL, or None to ask the workspace for it.
        stuck_s: how long a job may stay in a status that is neither running, waiting nor an
            end (NotResponding, CancelRequested, Finalizing, ...) before the executor cancels
            it and gives its training back to the controller (MITORCH_AML_STUCK_S).
        queued_max_s: the same for a job still waiting to start (Queued, Preparing, ...);
            0: it may wait for ever (MITORCH_AML_QUEUED_MAX_S).
    """

    subscription_id: str
    resource_group: str
    workspace: str
    compute: str
    tenant_id: str | None = None
    auth: str | None = None
    environment: str | None = None
    db_secret: str = DEFAULT_DB_SECRET
    key_vault_url: str | None = None
    experiment: str = "mitorch"
    instance_count: int = 1
    processes_per_instance: int = 1
    shm_size: str = "16g"
    timeout_s: int = 3 * 24 * 3600
    job_tier: str | None = None
    stuck_s: float = 3600.0
    queued_max_s: float = 24 * 3600.0

    def __repr__(self) -> str:  # the dataclass repr would show auth
        return f"AzureMLSettings(workspace={self.workspace!r}, compute={self.compute!r})"

    @classmethod
    def from_env(cls, compute: str | None = None, offline: bool = False) -> AzureMLSettings:
        """Reads the MITORCH_AZURE_* / MITORCH_AML_* variables.

        Args:
            compute: the compute cluster, in place of MITORCH_AML_COMPUTE.
            offline: only build jobs (a dry run): the workspace's variables may be missing.

        Raises:
            ConfigError: a required variable is missing, or a value is malformed; the message
                names the variable.
        """
        auth = _optional("MITORCH_AML_AUTH")
        if auth is not None and (":" not in auth or not all(auth.partition(":")[::2])):
            raise ConfigError("MITORCH_AML_AUTH must be '<client id>:<secret>' of a service principal "
                              "(the value is not shown); unset it to use DefaultAzureCredential")
        shm_size = (_optional("MITORCH_AML_SHM_SIZE") or cls.shm_size).lower()
        if not (shm_size[:-1].isdigit() and shm_size[-1] in _SIZE_UNITS):
            raise ConfigError(f"MITORCH_AML_SHM_SIZE must be a size like 16g or 512m, got {shm_size[:40]!r}")
        job_tier = _optional("MITORCH_AML_JOB_TIER")
        if job_tier is not None and job_tier.lower() not in ("spot", "basic", "standard", "premium"):
            raise ConfigError(f"MITORCH_AML_JOB_TIER must be Spot, Basic, Standard or Premium, got {job_tier[:40]!r}")
        return cls(
            subscription_id=_required("MITORCH_AZURE_SUBSCRIPTION_ID", "the Azure subscription id", offline),
            resource_group=_required("MITORCH_AZURE_RESOURCE_GROUP", "the workspace's resource group", offline),
            workspace=_required("MITORCH_AML_WORKSPACE", "the AzureML workspace name", offline),
            compute=compute or _required("MITORCH_AML_COMPUTE", "the compute cluster name"),
            tenant_id=_optional("MITORCH_AZURE_TENANT_ID"),
            auth=auth,
            environment=_optional("MITORCH_AML_ENVIRONMENT"),
            db_secret=_optional("MITORCH_AML_DB_SECRET") or DEFAULT_DB_SECRET,
            key_vault_url=_optional("MITORCH_AML_KEY_VAULT_URL"),
            experiment=_optional("MITORCH_AML_EXPERIMENT") or cls.experiment,
            instance_count=env_int("MITORCH_AML_INSTANCE_COUNT", cls.instance_count, minimum=1),
            processes_per_instance=env_int("MITORCH_AML_PROCESSES_PER_INSTANCE", cls.processes_per_instance,
                                           minimum=1),
            shm_size=shm_size,
            timeout_s=env_int("MITORCH_AML_TIMEOUT_S", cls.timeout_s, minimum=1),
            job_tier=job_tier,
            stuck_s=env_float("MITORCH_AML_STUCK_S", cls.stuck_s, minimum=1),
            queued_max_s=env_float("MITORCH_AML_QUEUED_MAX_S", cls.queued_max_s, minimum=0),
        )

    def credential(self) -> Any:
        """The service principal of MITORCH_AML_AUTH, else DefaultAzureCredential."""
        if self.auth is None:
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential()
        if self.tenant_id is None:
            raise ConfigError("MITORCH_AML_AUTH needs MITORCH_AZURE_TENANT_ID (the service principal's tenant)")
        from azure.identity import ClientSecretCredential

        client_id, _, secret = self.auth.partition(":")
        return ClientSecretCredential(self.tenant_id, client_id, secret)

    def ml_client(self) -> Any:
        """An MLClient for the workspace (it contacts nothing until it is used)."""
        from azure.ai.ml import MLClient

        return MLClient(self.credential(), self.subscription_id, self.resource_group, self.workspace)

    def reason(self, error: Exception) -> str:
        """One line about an SDK error, with every credential (the client secret too) hidden."""
        from mitorch.files.secrets import redact

        text = str(getattr(error, "message", None) or error).strip()
        line = text.splitlines()[0] if text else ""
        secret = (self.auth or "").partition(":")[2]
        if secret:
            line = line.replace(secret, "***")
        return redact(f"{type(error).__name__}: {line}"[:300])

    def studio_url(self, job_name: str) -> str:
        """The job's page in AzureML studio."""
        url = (f"https://ml.azure.com/runs/{job_name}?wsid=/subscriptions/{self.subscription_id}"
               f"/resourcegroups/{self.resource_group}/workspaces/{self.workspace}")
        return url + (f"&tid={self.tenant_id}" if self.tenant_id else "")


def require_sdk() -> None:
    """Raises a one-line ConfigError when the azure extra is not installed."""
    from importlib.util import find_spec

    packages = ("azure.ai.ml", "azure.identity", "azure.keyvault.secrets")
    missing = [name for name in packages if not _found(find_spec, name)]
    if missing:
        raise ConfigError(f"MiTorch's AzureML jobs need {', '.join(missing)}: pip install 'mitorch[azure]'")


def _found(find_spec: Any, name: str) -> bool:
    try:
        return find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _optional(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def _required(name: str, what: str, offline: bool = False) -> str:
    value = _optional(name)
    if value is None and not offline:
        raise ConfigError(f"{name} is not set; MiTorch's AzureML jobs need {what} in it")
    return value or ""
