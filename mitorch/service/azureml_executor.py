"""The AzureML executor: each attempt of a training is one command job on a compute cluster.

Chosen with `micontrol --executor azureml` or MITORCH_EXECUTOR=azureml. Its identity is
`azureml:<workspace>/<compute>`. A job's name is `mitorch-<training id>-<attempt>`, so its
status is read with one `jobs.get(name)`, and a launch that finds its job already there does not
submit it twice.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitorch.azureml import jobs
from mitorch.azureml.jobs import WAITING, state_of, status_value
from mitorch.azureml.settings import AzureMLSettings, require_sdk
from mitorch.errors import ConfigError, MiTorchError
from mitorch.service import artifacts
from mitorch.service.executors import Executor, LaunchError
from mitorch.store.base import JobStore

__all__ = ["AzureMLExecutor", "state_of", "status_value"]


class AzureMLExecutor(Executor):
    """Runs attempts as AzureML command jobs; see mitorch.azureml.jobs for what a job holds.

    Args:
        settings: default AzureMLSettings.from_env().
        client: makes the MLClient (default settings.ml_client); called once, on first use.
        store: where the job's name and studio URL are recorded on the training.

    Raises:
        ConfigError: a setting is missing, or MITORCH_ARTIFACTS_URI is not an Azure Blob
            container (a job on another machine could neither resume nor keep its weights).
    """

    def __init__(self, settings: AzureMLSettings | None = None, client: Callable[[], Any] | None = None,
                 store: JobStore | None = None) -> None:
        require_sdk()
        self.settings = settings or AzureMLSettings.from_env()
        if artifacts.remote_root() is None:
            raise ConfigError("the AzureML executor needs MITORCH_ARTIFACTS_URI to be an Azure Blob container URL "
                              "(https://ACCOUNT.blob.core.windows.net/CONTAINER): its jobs resume and keep weights "
                              "there, not in a local folder")
        self.name = f"azureml:{self.settings.workspace}/{self.settings.compute}"
        self._make_client = client or self.settings.ml_client
        self._client: Any = None
        self._store = store
        self._capacity: int | None = None
        self._key_vault: str | None = self.settings.key_vault_url
        self._code_dir: Path | None = None
        self._statuses: dict[str, str] = {}  # job name -> the status state() last read

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    @property
    def capacity(self) -> int:
        """Trainings at once: the cluster's max_instances over the instances of one job (the
        controller subtracts the trainings this executor already runs)."""
        if self._capacity is None:
            try:
                cluster = self.client.compute.get(self.settings.compute)
            except Exception as e:  # noqa: BLE001 - any SDK or network error: one line
                raise MiTorchError(f"cannot read compute {self.settings.compute} of workspace "
                                   f"{self.settings.workspace}: {self._reason(e)}") from None
            max_instances = getattr(cluster, "max_instances", None)
            if not isinstance(max_instances, int):
                raise ConfigError(f"compute {self.settings.compute} is not a compute cluster with max_instances "
                                  f"(it is {type(cluster).__name__}); set MITORCH_AML_COMPUTE to a cluster")
            self._capacity = max_instances // self.settings.instance_count
        return self._capacity

    def launch(self, training: dict[str, Any], gpu: int | None = None) -> str:
        name = jobs.job_name(training["id"], training["attempt"])
        existing = self._get(name)
        if existing is None:
            try:
                job = jobs.training_job(training, self.settings, self._code(), self._environment(),
                                        self._key_vault_url(), self._artifacts_uri())
                sent = self.client.jobs.create_or_update(job)
            except LaunchError:
                raise
            except Exception as e:  # noqa: BLE001 - authentication, quota, a bad setting, ...
                if not _conflict(e):
                    raise LaunchError(f"cannot submit AzureML job {name}: {self._reason(e)}") from None
                sent = self._get(name)  # a conflict: an earlier try of this launch submitted it
        else:
            sent = existing
        self._record(training, name, getattr(sent, "studio_url", None) or self.settings.studio_url(name))
        return name

    def state(self, training: dict[str, Any]) -> str:
        name = jobs.job_name(training["id"], training.get("attempt", 0))
        try:
            job = self.client.jobs.get(name)
        except Exception as e:  # noqa: BLE001
            if _not_found(e):
                return "gone"
            return "unknown"  # a network or service error: the controller waits for the lease
        self._statuses[name] = status_value(job.status)
        return state_of(job.status)

    def waiting(self, training: dict[str, Any]) -> bool:
        """Whether the training's job waits for nodes or its image (as state() last read it):
        the controller counts no heartbeat timeout for it."""
        status = self._statuses.get(jobs.job_name(training["id"], training.get("attempt", 0)), "")
        return status.lower() in WAITING

    def cancel(self, training: dict[str, Any], force: bool = False) -> None:
        # AzureML has one way to stop a job: the command gets SIGTERM, then is killed.
        name = jobs.job_name(training["id"], training.get("attempt", 0))
        try:
            self.client.jobs.begin_cancel(name)
        except Exception:  # noqa: BLE001
            # A job in Finalizing refuses cancels, and one that ended cannot be cancelled: read
            # its status again; the controller asks once more after its kill grace if it runs on.
            self.state(training)

    # Helpers -----------------------------------------------------------------------------------

    def _get(self, name: str) -> Any | None:
        try:
            return self.client.jobs.get(name)
        except Exception as e:  # noqa: BLE001
            if _not_found(e):
                return None
            raise LaunchError(f"cannot read AzureML job {name}: {self._reason(e)}") from None

    def _code(self) -> Path:
        """The staged wheel, built once per executor: every job this controller sends runs the
        MiTorch it runs itself."""
        if self._code_dir is None:
            from mitorch.azureml.package import staged_code

            try:
                self._code_dir = staged_code()
            except MiTorchError as e:
                raise LaunchError(str(e)) from None
        return self._code_dir

    def _environment(self) -> Any:
        return jobs.job_environment(self.settings)

    def _key_vault_url(self) -> str:
        if self._key_vault is None:
            workspace = self.client.workspaces.get(self.settings.workspace)
            if not getattr(workspace, "key_vault", None):
                raise LaunchError(f"workspace {self.settings.workspace} reports no Key Vault; "
                                  "set MITORCH_AML_KEY_VAULT_URL")
            self._key_vault = jobs.key_vault_url(workspace.key_vault)
        return self._key_vault

    @staticmethod
    def _artifacts_uri() -> str:
        return artifacts.remote_root() or ""

    def _record(self, training: dict[str, Any], name: str, studio_url: str) -> None:
        if self._store is None:
            return
        attempt = training["attempt"]
        self._store.update_training(training["id"], {"azureml_job": name, "studio_url": studio_url,
                                                     f"attempts.{attempt - 1}.studio_url": studio_url},
                                    attempt=attempt)

    def _reason(self, error: Exception) -> str:
        return self.settings.reason(error)


def _conflict(error: Exception) -> bool:
    from azure.core.exceptions import ResourceExistsError

    return isinstance(error, ResourceExistsError) or getattr(error, "status_code", None) == 409


def _not_found(error: Exception) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    return isinstance(error, ResourceNotFoundError) or getattr(error, "status_code", None) == 404
