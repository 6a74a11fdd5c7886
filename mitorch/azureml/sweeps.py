"""The jobs of `hydra/launcher=azureml`: one AzureML command job per run of a sweep.

A job runs the launching app's command (`mitrain` by default) with its run's overrides, each
quoted for the shell, after installing MiTorch's staged wheel. An override whose value is an
`azureml://` or Azure Blob URL becomes a job input (its folder, mounted), so the job reads the
data where it lives; a path on this machine is refused, and so is any value that carries a
credential. Hydra's run directory of each job is its output `run`.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mitorch.azureml import jobs
from mitorch.azureml.settings import AzureMLSettings, require_sdk
from mitorch.errors import ConfigError, MiTorchError
from mitorch.store.uri import carries_credential

_PRIORITIES = ("low", "medium", "high")
_BLOB = re.compile(r"^https://[a-z0-9]+\.blob\.core\.windows\.net/", re.IGNORECASE)


def launch(config: Any, options: dict[str, Any], job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
           compose: Callable[[list[str]], Any]) -> list[Any]:
    """Composes every run's config and builds its job (so a mistake stops the batch before
    anything is sent), then writes (dry run) or submits each job.

    Args:
        compose: a run's overrides -> its config, with its `hydra` node (Hydra's sweep config).

    Returns:
        One Hydra JobReturn per run: its config, and as return_value the job's name.

    Raises:
        ConfigError: a bad option or override (nothing was sent).
    """
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf, open_dict

    from mitorch.azureml.package import staged_code

    require_sdk()
    dry_run = bool(options.get("dry_run"))
    settings = _settings(options, dry_run)
    app = _app(options.get("app"))
    priority = options.get("priority")
    if priority is not None and str(priority).lower() not in _PRIORITIES:
        raise ConfigError(f"hydra.launcher.priority must be one of {', '.join(_PRIORITIES)}, "
                          f"got {str(priority)[:40]!r}")
    code = staged_code()
    environment = jobs.job_environment(settings)
    batch = uuid.uuid4().hex[:10]
    configs = [compose(list(overrides)) for overrides in job_overrides]
    built = [_job(app, list(overrides), initial_job_idx + i, batch, settings, code, environment, priority)
             for i, overrides in enumerate(job_overrides)]  # every run is checked before any is sent
    sweep_dir = Path(str(config.hydra.sweep.dir))
    returns = []
    client = None if dry_run else settings.ml_client()
    for job, overrides, run_config in zip(built, job_overrides, configs):
        if dry_run:
            path = sweep_dir / "azureml" / f"{job.name}.yml"
            path.parent.mkdir(parents=True, exist_ok=True)
            job._to_job().dump(str(path))
            print(f"{job.name} {path}", flush=True)
        else:
            try:
                sent = client.jobs.create_or_update(job)
            except Exception as e:  # noqa: BLE001 - authentication, quota, a bad setting, ...
                raise MiTorchError(f"cannot submit AzureML job {job.name}: {settings.reason(e)}") from None
            print(f"{sent.name} {sent.studio_url or settings.studio_url(sent.name)}", flush=True)
        hydra_cfg = OmegaConf.create({"hydra": run_config.hydra})
        with open_dict(run_config):
            del run_config["hydra"]
        result = JobReturn(overrides=list(overrides), cfg=run_config, hydra_cfg=hydra_cfg,
                           status=JobStatus.COMPLETED)
        result.return_value = job.name
        returns.append(result)
    return returns


def _settings(options: dict[str, Any], dry_run: bool) -> AzureMLSettings:
    from dataclasses import replace

    settings = AzureMLSettings.from_env(compute=options.get("compute"), offline=dry_run)
    changes = {"experiment": options.get("experiment_name"), "instance_count": options.get("instance_count"),
               "processes_per_instance": options.get("processes_per_instance"),
               "shm_size": options.get("shm_size"), "timeout_s": options.get("timeout_s"),
               "environment": options.get("environment")}
    for name in ("instance_count", "processes_per_instance", "timeout_s"):
        if changes[name] is not None and (not isinstance(changes[name], int) or changes[name] < 1):
            raise ConfigError(f"hydra.launcher.{name} must be a whole number of 1 or more, got {changes[name]!r}")
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})


def _app(app: str | None) -> list[str]:
    """The command that runs the launching app in the job's environment, as words."""
    words = shlex.split(app) if app else [Path(sys.argv[0]).name]
    if not words or words[0].endswith(".py") or words[0] in ("", "-c", "python"):
        raise ConfigError("set hydra.launcher.app to the command that runs this app where it is installed in the job's "
                          f"environment (got {' '.join(words)[:80]!r})")
    return words


def _job(app: list[str], overrides: list[str], index: int, batch: str, settings: AzureMLSettings, code: Path,
         environment: Any, priority: str | None) -> Any:
    from azure.ai.ml import Input, Output, PyTorchDistribution, command

    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments, inputs = [], {}
    parser = OverridesParser.create()
    for override in overrides:
        if "${{" in override:
            raise ConfigError(f"override {override.partition('=')[0][:80]}: '${{{{' is AzureML's binding syntax and "
                              "cannot be sent")
        parsed = parser.parse_overrides([override])[0]  # the overrides come in Hydra's escaped form
        key, value = parsed.get_key_element(), parsed.value()
        value = value if isinstance(value, str) else ""
        sep = parsed.value_type is not None
        if carries_credential(override):
            raise ConfigError(f"override {key[:80]} holds a credential (the value is not shown); AzureML shows a job's "
                              "command to anyone who can read it: use a URL without a token (the compute's identity "
                              "reads it)")
        if sep and (value.startswith("azureml://") or _BLOB.match(value)):
            name = f"input_{len(inputs)}"
            if value.endswith("/"):
                inputs[name] = Input(type="uri_folder", path=value)
                override = f"{key}=${{{{inputs.{name}}}}}"
            else:  # the file's folder: a text-format file's images and labels lie beside it
                folder, _, leaf = value.rpartition("/")
                inputs[name] = Input(type="uri_folder", path=folder + "/")
                override = f"{key}=${{{{inputs.{name}}}}}/{leaf}"
        elif sep and "://" not in value and "/" in value and os.path.exists(value):
            raise ConfigError(f"override {key[:80]}={value[:200]}: an AzureML job cannot read this machine's files; "
                              "upload them and give an azureml:// or Azure Blob URL")
        arguments.append(override)
    wheel = sorted(p.name for p in code.glob("*.whl"))[0]
    install = jobs.install_command(wheel)
    run = " ".join(shlex.quote(word) for word in [*app, *arguments])
    slug = re.sub(r"[^a-z0-9]+", "-", Path(app[0]).name.lower()).strip("-") or "hydra"
    job = command(
        name=f"{slug}-{batch}-{index}",
        display_name=f"{app[0]} #{index} {' '.join(overrides)}"[:200],
        experiment_name=settings.experiment,
        tags={"hydra_job_idx": str(index), "hydra_sweep": batch},
        code=str(code),
        command=f"{install} && {run} 'hydra.run.dir=${{{{outputs.run}}}}'",
        environment=environment,
        inputs=inputs,
        outputs={"run": Output(type="uri_folder")},
        compute=settings.compute,
        instance_count=settings.instance_count,
        distribution=PyTorchDistribution(process_count_per_instance=settings.processes_per_instance),
        shm_size=settings.shm_size,
        timeout=settings.timeout_s,
        priority=str(priority).lower() if priority is not None else None,
    )
    job._validate(raise_error=True)
    return job
