"""The jobs of `hydra/launcher=azureml`: one AzureML command job per run of a sweep.

A job runs the launching app's command (`mitrain` by default) with its run's overrides, each
quoted for the shell, after installing MiTorch's staged wheel; the sweep's own Hydra overrides
that shape a run (`hydra.job.*`, logging, verbosity) go with them, and the run keeps the local
job name. An override whose value is an `azureml://` or Azure Blob URL becomes a job input (its
folder, mounted), so the job reads the data where it lives; a path on this machine is refused,
and so is any value that carries a credential. Hydra's run directory of each job is its output
`run`, which also keeps the app's stdout (`stdout-rank0.txt`: the JSON line of final metrics).

With `wait`, the launcher polls every job until it ends, downloads each output `run` into the
run's local sweep subdirectory (as a local multirun would have left it), and returns each run's
final metrics as its JobReturn's value.
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

from mitorch.azureml import jobs, waiting
from mitorch.azureml.settings import AzureMLSettings, require_sdk
from mitorch.errors import ConfigError, MiTorchError
from mitorch.files.secrets import carries_credential

_PRIORITIES = ("low", "medium", "high")
_BLOB = re.compile(r"^https://[a-z0-9]+\.blob\.core\.windows\.net/", re.IGNORECASE)


def launch(config: Any, options: dict[str, Any], job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
           compose: Callable[[list[str]], Any]) -> list[Any]:
    """Composes every run's config and builds its job (so a mistake stops the batch before
    anything is sent), then writes (dry run) or submits each job; with `wait`, waits for them.

    Args:
        compose: a run's overrides -> its config, with its `hydra` node (Hydra's sweep config).

    Returns:
        One Hydra JobReturn per run: its config, and as return_value the job's name (dry run,
        fire-and-forget) or, with `wait`, the run's final metrics (the JSON object on the last
        line of its stdout; None when it printed none). A job that ended Failed or Canceled is a
        FAILED JobReturn whose return_value raises.

    Raises:
        ConfigError: a bad option or override (nothing was sent).
        MiTorchError: AzureML refused a job, or could not be read while waiting.
    """
    from mitorch.azureml.package import staged_code

    require_sdk()
    dry_run, wait = bool(options.get("dry_run")), bool(options.get("wait"))
    settings = _settings(options, dry_run)
    app = _app(options.get("app"))
    priority, poll_s = _priority(options.get("priority")), _poll_interval(options.get("poll_interval_s", 30))
    code, environment = staged_code(), jobs.job_environment(settings)
    batch = uuid.uuid4().hex[:10]
    registered = _dataset_overrides(options.get("dataset"))
    job_overrides = [[*registered, *overrides] for overrides in job_overrides]  # the run's own win
    configs = _composed(compose, job_overrides, initial_job_idx)
    shared = _hydra_overrides(config)
    built = [_job(app, [*overrides, *shared, f"hydra.job.name={run_config.hydra.job.name}"], initial_job_idx + i,
                  batch, settings, code, environment, priority, task_overrides=len(overrides),
                  job_name=str(run_config.hydra.job.name))
             for i, (overrides, run_config) in enumerate(zip(job_overrides, configs))]  # all checked before any is sent
    client = None if dry_run else settings.ml_client()
    links = [_send(job, client, settings, Path(str(config.hydra.sweep.dir))) for job in built]
    ended = waiting.wait(client, [job.name for job in built], settings, float(poll_s)) if wait and not dry_run else {}
    return [_job_return(job, overrides, run_config, link, ended.get(job.name), client, settings)
            for job, overrides, run_config, link in zip(built, job_overrides, configs, links)]


def _priority(priority: Any) -> str | None:
    if priority is not None and str(priority).lower() not in _PRIORITIES:
        raise ConfigError(f"hydra.launcher.priority must be one of {', '.join(_PRIORITIES)}, "
                          f"got {str(priority)[:40]!r}")
    return priority


def _poll_interval(poll_s: Any) -> float:
    if not isinstance(poll_s, (int, float)) or isinstance(poll_s, bool) or poll_s <= 0:
        raise ConfigError(f"hydra.launcher.poll_interval_s must be a positive number of seconds, got {poll_s!r}")
    return float(poll_s)


def _composed(compose: Callable[[list[str]], Any], job_overrides: Sequence[Sequence[str]],
              initial_job_idx: int) -> list[Any]:
    """Each run's config, numbered as Hydra numbers the jobs of a sweep."""
    from omegaconf import open_dict

    configs = [compose(list(overrides)) for overrides in job_overrides]
    for i, run_config in enumerate(configs):
        with open_dict(run_config):
            run_config.hydra.job.num = initial_job_idx + i
    return configs


def _send(job: Any, client: Any, settings: AzureMLSettings, sweep_dir: Path) -> str:
    """Submits the job (without a client, a dry run: writes its YAML under the sweep directory)
    and prints its name with where to follow it: the studio URL, or the YAML file."""
    if client is None:
        path = sweep_dir / "azureml" / f"{job.name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        _dump(job, path)
        link = str(path)
    else:
        try:
            sent = client.jobs.create_or_update(job)
        except Exception as e:  # noqa: BLE001 - authentication, quota, a bad setting, ...
            raise MiTorchError(f"cannot submit AzureML job {job.name}: {settings.reason(e)}") from None
        link = sent.studio_url or settings.studio_url(sent.name)
    print(f"{job.name} {link}", flush=True)
    return link


def _job_return(job: Any, overrides: Sequence[str], run_config: Any, link: str, ended: str | None, client: Any,
                settings: AzureMLSettings) -> Any:
    """The run's JobReturn; for a job that was waited for (`ended`: its final status), its run
    directory downloaded and its final metrics, or a FAILED status naming where its logs are."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf, open_dict

    with open_dict(run_config):
        run_config.hydra.job.id = job.name
    hydra_cfg = OmegaConf.create({"hydra": run_config.hydra})
    with open_dict(run_config):
        del run_config["hydra"]
    result = JobReturn(overrides=list(overrides), cfg=run_config, hydra_cfg=hydra_cfg, status=JobStatus.COMPLETED,
                       task_name=hydra_cfg.hydra.job.name)
    result.return_value = job.name
    if ended is None:
        return result
    result.working_dir = str(Path(str(hydra_cfg.hydra.sweep.dir)) / str(hydra_cfg.hydra.sweep.subdir))
    completed = ended.lower() == "completed"
    try:
        waiting.download_run(client, job.name, Path(result.working_dir), settings)
    except MiTorchError:
        if completed:
            raise  # a failed job may have left no output: its failure is what to report
    if completed:
        result.return_value = waiting.final_metrics(Path(result.working_dir))
    else:
        result.status = JobStatus.FAILED
        result.return_value = MiTorchError(f"AzureML job {job.name} ended {ended}; its logs: {link}")
    return result


def _dump(job: Any, path: Path) -> None:
    """The job's YAML, as `load_job` reads it back. The SDK's dump writes a Blob URL input as
    `azureml:https://...` (an asset reference, which it is not); its REST body sends the URL as it
    is, and so does this file."""
    job._to_job().dump(str(path))
    text = path.read_text()
    for given in (job.inputs or {}).values():
        url = str(getattr(given, "path", "") or "")
        if url.startswith("https://"):
            text = text.replace(f"path: azureml:{url}\n", f"path: {url}\n")
    path.write_text(text)


def _dataset_overrides(reference: Any) -> list[str]:
    """`data.train=URL data.val=URL` of a dataset registered with midataset (NAME[:VERSION], in
    MITORCH_DB_URI's store): Blob or azureml:// files, which become the job's mounted inputs.

    Raises:
        ConfigError, StoreError: it is not registered, or a split lies where a job cannot read it
            (a path on this machine, or support files away from the split's file).
    """
    if reference is None or not str(reference).strip():
        return []
    from mitorch.files import remote
    from mitorch.files.datasets import SPLITS, parse_reference
    from mitorch.store import StoreError, open_store

    name, version = parse_reference(str(reference).strip())
    store = open_store()
    try:
        dataset = store.get_dataset(name, version)
    finally:
        store.close()
    if dataset is None:
        shown = name if version is None else f"{name}:{version}"
        raise StoreError(f"hydra.launcher.dataset: dataset {shown} is not registered; see midataset list")
    overrides = []
    for split in SPLITS:
        path = remote.bare(str(dataset[split]["path"]))
        if not (path.startswith("azureml://") or _BLOB.match(path)):
            raise ConfigError(f"dataset {name}:{dataset['version']} has its {split} split at {path[:200]}: an AzureML "
                              "job reads azureml:// or Azure Blob data only; register a copy there")
        folder = path.rpartition("/")[0]
        for support in dataset[split].get("support_files") or []:
            if remote.bare(str(support)).rpartition("/")[0] != folder:
                raise ConfigError(f"dataset {name}:{dataset['version']}: {split} support file "
                                  f"{remote.bare(str(support))[:200]} must lie beside {path[:200]} (a job mounts "
                                  "that folder)")
        overrides.append(f"data.{split}={path}")
    return overrides


# The sweep's Hydra overrides that do not go to a job: they chose and shaped this launch, or they
# name this machine's directories (a job's run directory is its output `run`).
_LOCAL_ONLY = ("hydra/launcher", "hydra.launcher.", "hydra/sweeper", "hydra.sweeper.", "hydra.sweep.", "hydra.run.",
               "hydra.mode", "hydra.job.name")


def _hydra_overrides(config: Any) -> list[str]:
    """The sweep's `hydra.*` overrides a job's run needs too (hydra.job.chdir, hydra.verbose,
    hydra/job_logging, ...), as typed."""
    typed = list(config.hydra.overrides.get("hydra", None) or [])
    return [o for o in typed if not o.lstrip("~+").startswith(_LOCAL_ONLY)]


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
    """The command that runs the launching app in the job's environment, as words: the given
    one as it is, else the launching program's name (mitrain)."""
    if app is not None and str(app).strip():
        return shlex.split(str(app))
    words = [Path(sys.argv[0]).name]
    if words[0].endswith(".py") or words[0] in ("", "-c", "python"):
        raise ConfigError("set hydra.launcher.app to the command that runs this app where it is installed in the job's "
                          f"environment (got {' '.join(words)[:80]!r})")
    return words


def _job(app: list[str], overrides: list[str], index: int, batch: str, settings: AzureMLSettings, code: Path,
         environment: Any, priority: str | None, task_overrides: int | None = None, job_name: str | None = None) -> Any:
    """The command job of one run, named after the Hydra job (else the app) and the batch;
    overrides[:task_overrides] are the run's own (its display name)."""
    from azure.ai.ml import Output, PyTorchDistribution, command

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    inputs: dict[str, Any] = {}
    arguments = [_argument(parser, override, inputs) for override in overrides]
    wheel = sorted(p.name for p in code.glob("*.whl"))[0]
    install = jobs.install_command(wheel)
    run = " ".join(shlex.quote(word) for word in [*app, *arguments])
    # The app's stdout (its last line: the JSON of final metrics) is kept in the output `run`, one
    # file per process, and shown in the job's log after it ends.
    stdout = '"${{outputs.run}}/stdout-rank${RANK:-0}.txt"'
    slug = re.sub(r"[^a-z0-9]+", "-", (job_name or Path(app[0]).name).lower()).strip("-")[:40] or "hydra"
    job = command(
        name=f"{slug}-{batch}-{index}",
        display_name=f"{app[0]} #{index} {' '.join(overrides[:task_overrides])}"[:200],
        experiment_name=settings.experiment,
        tags={"hydra_job_idx": str(index), "hydra_sweep": batch},
        code=str(code),
        command=(f"{install} && {run} 'hydra.run.dir=${{{{outputs.run}}}}' > {stdout}; status=$?; "
                 f"cat {stdout}; exit $status"),
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


def _argument(parser: Any, override: str, inputs: dict[str, Any]) -> str:
    """One override as the job's command passes it: an azureml:// or Blob URL becomes a mounted
    input (added to inputs) that the override names instead; a credential or a path on this
    machine is refused."""
    from azure.ai.ml import Input

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
            return f"{key}=${{{{inputs.{name}}}}}"
        # The file's folder: a text-format file's images and labels lie beside it.
        folder, _, leaf = value.rpartition("/")
        inputs[name] = Input(type="uri_folder", path=folder + "/")
        return f"{key}=${{{{inputs.{name}}}}}/{leaf}"
    if sep and "://" not in value and "/" in value and os.path.exists(value):
        raise ConfigError(f"override {key[:80]}={value[:200]}: an AzureML job cannot read this machine's files; "
                          "upload them and give an azureml:// or Azure Blob URL")
    return override
