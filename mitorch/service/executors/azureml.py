"""The AzureML executor: each attempt of a training is one command job on a compute cluster.

Chosen with `micontrol --executor azureml` or MITORCH_EXECUTOR=azureml. Its identity is
`azureml:<workspace>/<compute>`. A job's name is `mitorch-<training id>-<attempt>`, so its
status is read with one `jobs.get(name)`, and a launch that finds its job already there does not
submit it twice.

What state() reports, by the job's status (mitorch.azureml.watch keeps the phases' clocks):
    Completed, Failed, Canceled; no such job: "gone".
    NotStarted, Queued, Provisioning, Preparing, Starting: "waiting".
        The controller renews the training's `waiting_at` at each tick that sees it so, so no
        heartbeat timeout ends a wait: MITORCH_AML_QUEUED_MAX_S does (default 86400 s; 0: none).
    Running: "running"; the training's heartbeats count.
    NotResponding, CancelRequested, Finalizing, Paused, Unknown, any other: "running" for up to
        MITORCH_AML_STUCK_S (default 3600 s); meanwhile the controller's heartbeat or start
        timeout may ask for a cancel, which such a job may never act on.
    Past either limit the job is cancelled and is "gone" from then on, with the reason in
    gone_reason(): the controller requeues its training (using a retry), or fails it when no
    retry is left.
    A job that cannot be read (network, service): "unknown".
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitorch.azureml import jobs
from mitorch.azureml.jobs import WAITING, state_of, status_value
from mitorch.azureml.settings import AzureMLSettings, require_sdk
from mitorch.azureml.watch import JobWatch
from mitorch.errors import ConfigError, MiTorchError
from mitorch.paths import data_dir
from mitorch.files import artifacts
from mitorch.service.executors.base import Executor, LaunchError, Launched, RunState
from mitorch.files.secrets import redact

__all__ = ["AzureMLExecutor", "state_of", "status_value"]


class AzureMLExecutor(Executor):
    """Runs attempts as AzureML command jobs; see mitorch.azureml.jobs for what a job holds.

    Args:
        settings: default AzureMLSettings.from_env().
        client: makes the MLClient (default settings.ml_client); called once, on first use.
        clock: seconds since the epoch (default time.time), on which the waiting and stuck
            limits are judged.

    Raises:
        ConfigError: the azure extra or a setting is missing (MITORCH_ARTIFACTS_URI is checked
            by check_ready).
    """

    def __init__(self, settings: AzureMLSettings | None = None, client: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        require_sdk()
        self.settings = settings or AzureMLSettings.from_env()
        self.name = f"azureml:{self.settings.workspace}/{self.settings.compute}"
        self._make_client = client or self.settings.ml_client
        self._client: Any = None
        self._capacity: int | None = None
        self._key_vault: str | None = self.settings.key_vault_url
        self._code_dir: Path | None = None
        self._gone: dict[str, str] = {}  # job name -> why state() last said "gone"
        self._watch = JobWatch(_clocks_file(self.settings), self.settings.stuck_s, self.settings.queued_max_s,
                               clock)

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

    def launch(self, training: dict[str, Any], gpu: int | None = None) -> Launched:
        """Submits the attempt's command job, or finds it already submitted by an earlier try.

        Returns:
            The job's name as the run id, its studio URL as the link, and the name as `azureml_job`.
        """
        name = jobs.job_name(training["id"], training["attempt"])
        existing = self._get(name)
        if existing is None:
            try:
                job = jobs.training_job(training, self.settings, self._code(), self._environment(),
                                        self._key_vault_url(), self._artifacts_root())
                sent = self.client.jobs.create_or_update(job)
            except LaunchError:
                raise
            except Exception as e:  # noqa: BLE001 - authentication, quota, a bad setting, ...
                if not _conflict(e):
                    raise LaunchError(f"cannot submit AzureML job {name}: {self._reason(e)}") from None
                sent = self._get(name)  # a conflict: an earlier try of this launch submitted it
        else:
            sent = existing
        link = getattr(sent, "studio_url", None) or self.settings.studio_url(name)
        return Launched(run_id=name, link=link, details={"azureml_job": name})

    def state(self, training: dict[str, Any]) -> RunState:
        """"gone", "waiting", "running" or "unknown" as the module's docstring maps the job's status; a job
        waiting or stuck past its limit is cancelled here and is "gone" from then on."""
        name = jobs.job_name(training["id"], training.get("attempt", 0))
        self._gone.pop(name, None)
        given_up = self._watch.escalated(name)
        if given_up is not None:
            self._gone[name] = given_up
            return "gone"
        try:
            job = self.client.jobs.get(name)
        except Exception as e:  # noqa: BLE001
            if _not_found(e):
                self._gone[name] = f"AzureML has no job {name}"
                return "gone"
            return "unknown"  # a network or service error: the controller waits for the lease
        status = status_value(job.status)
        overdue = self._watch.see(name, status, getattr(job.creation_context, "created_at", None))
        if overdue is not None:
            self._gone[name] = self._give_up(name, overdue)
            return "gone"
        if state_of(status) == "gone":
            self._gone[name] = f"AzureML job {name} ended {status}"
            return "gone"
        return "waiting" if status.lower() in WAITING else "running"

    def gone_reason(self, training: dict[str, Any]) -> str | None:
        """Why state() last said "gone": the job's end status, its absence, or why it was given up
        (e.g. "AzureML job X was stuck in NotResponding for 1:00:05, longer than
        MITORCH_AML_STUCK_S=3600; cancelled")."""
        return self._gone.get(jobs.job_name(training["id"], training.get("attempt", 0)))

    def cancel(self, training: dict[str, Any], force: bool = False) -> bool:
        """Asks AzureML to cancel the job (its command gets SIGTERM, then is killed: AzureML has
        one way to stop a job, so force changes nothing).

        Returns:
            True when AzureML took the request, or the job is gone already (ended, or given up
            past its limit); False when AzureML refused (a job in Finalizing does): the
            controller asks again at a later tick.
        """
        name = jobs.job_name(training["id"], training.get("attempt", 0))
        try:
            self.client.jobs.begin_cancel(name)
        except Exception:  # noqa: BLE001
            return self.state(training) == "gone"
        return True

    def check_ready(self) -> None:
        """Checks MITORCH_ARTIFACTS_URI before a tick claims anything: jobs run on other machines,
        so they resume and keep weights only in an Azure Blob container.

        Raises:
            ConfigError: one line that names the URI (without its credentials) and the fix.
        """
        self._artifacts_root()

    # Helpers -----------------------------------------------------------------------------------

    def _give_up(self, name: str, overdue: str) -> str:
        """Cancels a job past its limit; returns the reason its training is given back, which
        later ticks read again (the job is not asked twice)."""
        try:
            self.client.jobs.begin_cancel(name)
            reason = f"{overdue}; cancelled"
        except Exception as e:  # noqa: BLE001 - its writes are fenced off once its training moves on
            reason = f"{overdue}; AzureML refused to cancel it ({self._reason(e)})"
        self._watch.escalate(name, reason)
        return reason

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
    def _artifacts_root() -> str:
        """The Blob container URL of MITORCH_ARTIFACTS_URI (a job gets it without credentials)."""
        uri = os.environ.get("MITORCH_ARTIFACTS_URI", "").strip()
        try:
            root = artifacts.remote_root()
        except ConfigError:
            root = None
        if root is None:
            shown = repr(redact(uri)[:200]) if uri else "unset (a local folder)"
            raise ConfigError("the AzureML executor needs MITORCH_ARTIFACTS_URI to be an Azure Blob container URL "
                              f"(https://ACCOUNT.blob.core.windows.net/CONTAINER), got {shown}: its jobs run on other "
                              "machines and resume and keep weights there")
        return root

    def _reason(self, error: Exception) -> str:
        return self.settings.reason(error)


def _clocks_file(settings: AzureMLSettings) -> Path:
    """Where the executor's job clocks live between ticks: one file per executor identity."""
    identity = "__".join(re.sub(r"[^A-Za-z0-9-]", "_", part) for part in (settings.workspace, settings.compute))
    return data_dir() / "azureml" / f"jobs-{identity}.json"


def _conflict(error: Exception) -> bool:
    from azure.core.exceptions import ResourceExistsError

    return isinstance(error, ResourceExistsError) or getattr(error, "status_code", None) == 409


def _not_found(error: Exception) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    return isinstance(error, ResourceNotFoundError) or getattr(error, "status_code", None) == 404
