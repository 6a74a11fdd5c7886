"""`mitrain -m hydra/launcher=azureml`: every run of a sweep is one AzureML command job, written as
YAML (dry run) or sent to a fake `ml_client.jobs`; a job's command, run on a fake node, trains."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="the AzureML tests need the azure extra: pip install -e '.[test]'")

from azure.ai.ml import load_job  # noqa: E402
from hydra.core.plugins import Plugins  # noqa: E402
from hydra.test_utils.launcher_common_tests import LauncherTestSuite  # noqa: E402

from hydra_plugins.mitorch_launchers.azureml_launcher import AzureMLLauncher  # noqa: E402
from mitorch.azureml.settings import AzureMLSettings  # noqa: E402
from tests.conftest import QUICK, make_text_dataset  # noqa: E402
from tests.test_azureml import CLIENT_SECRET, ENV, SAS_SIG, FakeMLClient, image  # noqa: E402, F401

# Registered here too, for where Hydra's discovery cannot list the hydra_plugins namespace (an
# editable install); a wheel install finds it by itself.
Plugins.instance().register(AzureMLLauncher)

DATA = "azureml://datastores/shapes/paths/v1/"


@pytest.fixture
def workspace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _mitrain(*args: str) -> tuple[int, str, str]:
    """mitrain's main in this process (the fake client is patched in here)."""
    import contextlib
    import io

    from mitorch.cli.mitrain import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def test_dry_run_writes_each_jobs_yaml_under_the_sweep_dir(workspace: Path, hydra_restore_singletons: None) -> None:
    code, out, err = _mitrain("-m", "hydra/launcher=azureml", "hydra.launcher.dry_run=true",
                              f"hydra.sweep.dir={workspace / 'sweep'}", "hydra.launcher.priority=high",
                              "optimizer.lr=0.1,0.01", f"data.train={DATA}train.txt", f"data.val={DATA}val.txt",
                              "max_epochs=1", "hydra.launcher.instance_count=2",
                              "hydra.launcher.processes_per_instance=4")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for index, (line, lr) in enumerate(zip(lines, ("0.1", "0.01"))):
        name, path = line.split()
        assert re.fullmatch(rf"mitrain-[0-9a-f]{{10}}-{index}", name)
        assert Path(path) == workspace / "sweep" / "azureml" / f"{name}.yml"
        job = load_job(path)
        assert job._validate().passed and job.name == name
        assert job.compute == "gpu-cluster" and job.environment.endswith("mitorch-env:3")  # load_job drops "azureml:"
        assert job.resources.instance_count == 2 and job.distribution.process_count_per_instance == 4
        assert job.queue_settings.priority == "high" and str(job.outputs["run"].type) == "uri_folder"
        assert {k: (v.type, v.path) for k, v in job.inputs.items()} == {
            "input_0": ("uri_folder", DATA), "input_1": ("uri_folder", DATA)}
        assert job.command.endswith(f"&& mitrain optimizer.lr={lr} 'data.train=${{{{inputs.input_0}}}}/train.txt' "
                                    "'data.val=${{inputs.input_1}}/val.txt' max_epochs=1 "
                                    "'hydra.run.dir=${{outputs.run}}'")
        assert [p.name for p in Path(job.code).iterdir()] == ["mitorch-0.1.0-py3-none-any.whl"]
        text = Path(path).read_text()
        assert CLIENT_SECRET not in text and "client-1" not in text


@pytest.mark.parametrize("overrides, message", [
    (["data.train={path}", f"data.val={DATA}val.txt"], "an AzureML job cannot read this machine's files"),
    ([f"data.train={DATA}train.txt", f"data.val={DATA}val.txt", "hydra.launcher.priority=urgent"],
     "hydra.launcher.priority must be one of low, medium, high"),
    ([f"data.train='https://acct.blob.core.windows.net/d/train.txt?sv=1&sig={SAS_SIG}'", f"data.val={DATA}val.txt"],
     "credential"),  # mitrain refuses it itself
])
def test_bad_runs_are_refused_before_anything_is_written(workspace: Path, hydra_restore_singletons: None,
                                                         overrides: list[str], message: str) -> None:
    local = make_text_dataset(workspace / "data", num_train=4, num_val=2)
    code, out, err = _mitrain("-m", "hydra/launcher=azureml", "hydra.launcher.dry_run=true",
                              f"hydra.sweep.dir={workspace / 'sweep'}", "optimizer.lr=0.1,0.01",
                              *(o.format(path=local.train) for o in overrides))
    assert code != 0 and message in err + out, err
    assert SAS_SIG not in err + out and "Traceback" not in err
    assert not (workspace / "sweep" / "azureml").exists()


@pytest.mark.parametrize("override, message", [
    ("+note=${{inputs.x}}", "'${{' is AzureML's binding syntax"),
    (f"+data='https://acct.blob.core.windows.net/d/x.txt?sv=1&sig={SAS_SIG}'", "holds a credential"),
])
def test_any_apps_overrides_are_checked_too(workspace: Path, override: str, message: str) -> None:
    from mitorch.azureml import sweeps
    from mitorch.errors import ConfigError

    settings = AzureMLSettings.from_env()
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        sweeps._job(["my_app"], ["+a=1", override], 0, "b", settings, workspace, "azureml:e:1", None)
    assert SAS_SIG not in str(refused.value)


def test_without_a_dry_run_each_job_is_sent_and_named_with_its_studio_url(
        workspace: Path, monkeypatch: pytest.MonkeyPatch, hydra_restore_singletons: None) -> None:
    client = FakeMLClient()
    monkeypatch.setattr(AzureMLSettings, "ml_client", lambda self: client)
    code, out, err = _mitrain("-m", "hydra/launcher=azureml", f"hydra.sweep.dir={workspace / 'sweep'}",
                              "model=resnet,mobilenet_v3", f"data.train={DATA}train.txt", f"data.val={DATA}val.txt")
    assert code == 0, err
    assert [c[0] for c in client.jobs.calls] == ["create_or_update", "create_or_update"]
    sent = list(client.jobs.sent.values())
    assert out.strip().splitlines() == [f"{job.name} https://ml.azure.com/runs/{job.name}?wsid=fake" for job in sent]
    assert [job.command.split("&& mitrain ")[1].split()[0] for job in sent] == ["model=resnet", "model=mobilenet_v3"]
    for job in sent:
        assert job._validate().passed and job.tags["hydra_sweep"] == sent[0].tags["hydra_sweep"]


@pytest.mark.slow
def test_a_jobs_command_trains_on_a_node(workspace: Path, hydra_restore_singletons: None, image: Path) -> None:
    """The command of a dry run's job, with its inputs and output bound as AzureML would bind
    them (mounted folders), runs on a node that has the image's packages but not MiTorch."""
    data = make_text_dataset(workspace / "mounted" / "shapes", num_train=16, num_val=8)
    code, out, err = _mitrain("-m", "hydra/launcher=azureml", "hydra.launcher.dry_run=true",
                              f"hydra.sweep.dir={workspace / 'sweep'}", *QUICK,
                              f"data.train={DATA}train.txt", f"data.val={DATA}val.txt")
    assert code == 0, err
    job = load_job(out.split()[1])
    node = workspace / "node"
    shutil.copytree(job.code, node / "code")
    command = job.command.replace("${{inputs.input_0}}", str(data.root)).replace(
        "${{inputs.input_1}}", str(data.root)).replace("${{outputs.run}}", str(node / "outputs" / "run"))
    done = subprocess.run(["bash", "-c", command], cwd=node / "code", capture_output=True, text=True, timeout=600,
                          env={"PATH": f"{image / 'bin'}:/usr/bin:/bin", "HOME": str(node / "home"),
                               **{k: v for k, v in (job.environment_variables or {}).items()}})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["num_samples"] == 8 and "top1_accuracy" in metrics
    assert (node / "outputs" / "run" / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize("launcher_name, overrides", [
    ("azureml", ["hydra.launcher.dry_run=true", "hydra.launcher.app=my_app", "hydra.launcher.compute=cpu"])])
class TestAzureMLLauncherSuite(LauncherTestSuite):
    """Hydra's own launcher suite, over dry runs. The launcher is fire-and-forget: a run's task
    executes on AzureML, not here, so the tests that read a run's return value or its local
    working directory cannot apply; the others run."""

    _REMOTE = {"test_sweep_1_job", "test_sweep_2_jobs", "test_sweep_1_job_strict", "test_sweep_2_optimizers",
               "test_sweep_over_unspecified_mandatory_default", "test_sweep_and_override",
               "test_sweep_with_custom_resolver"}

    @pytest.fixture(autouse=True)
    def _fire_and_forget(self, request: pytest.FixtureRequest, workspace: Path) -> None:
        if request.node.originalname in self._REMOTE:
            pytest.skip("fire-and-forget: the task runs on AzureML, so there is no local return value or working "
                        "directory to check")


def test_the_launcher_suite_still_checks_what_it_can(hydra_sweep_runner, workspace: Path,
                                                    hydra_restore_singletons: None) -> None:
    """A dry run through Hydra's sweep runner: each JobReturn carries the run's composed config."""
    sweep = hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=None,
                               config_path="configs", config_name="compose.yaml",
                               overrides=["hydra/launcher=azureml", "hydra.launcher.dry_run=true",
                                          "hydra.launcher.app=my_app", "+a=0,1"],
                               temp_dir=workspace / "sweep")
    with sweep:
        returns = sweep.returns[0]
        assert [r.overrides for r in returns] == [["+a=0"], ["+a=1"]]
        assert [dict(r.cfg) for r in returns] == [{"foo": 10, "bar": 100, "a": 0}, {"foo": 10, "bar": 100, "a": 1}]
        jobs = [load_job(workspace / "sweep" / "azureml" / f"{r.return_value}.yml") for r in returns]
        assert [j.command.split(" && ")[1] for j in jobs] == [
            "my_app +a=0 'hydra.run.dir=${{outputs.run}}'", "my_app +a=1 'hydra.run.dir=${{outputs.run}}'"]
        assert jobs[0].compute == "gpu-cluster" and jobs[0].environment.endswith("mitorch-env:3")


def test_a_refused_submit_is_one_line_without_the_secret(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                         hydra_restore_singletons: None) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    client = FakeMLClient()
    client.jobs.submit_error = ClientAuthenticationError(f"AADSTS7000215: Invalid client secret ({CLIENT_SECRET})")
    monkeypatch.setattr(AzureMLSettings, "ml_client", lambda self: client)
    code, out, err = _mitrain("-m", "hydra/launcher=azureml", f"hydra.sweep.dir={workspace / 'sweep'}",
                              "optimizer.lr=0.1,0.01", f"data.train={DATA}train.txt", f"data.val={DATA}val.txt")
    assert code != 0 and CLIENT_SECRET not in err + out
    assert "cannot submit AzureML job mitrain-" in err and "ClientAuthenticationError: AADSTS7000215" in err
    assert "Traceback" not in err, err
