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
from hydra.test_utils.launcher_common_tests import (  # noqa: E402
    BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite)

from hydra_plugins.mitorch_launchers.azureml_launcher import AzureMLLauncher  # noqa: E402
from mitorch.azureml.settings import AzureMLSettings  # noqa: E402
from tests.conftest import QUICK, make_text_dataset  # noqa: E402
from tests.test_azureml import CLIENT_SECRET, ENV, SAS_SIG, FakeMLClient, FakeNode, image  # noqa: E402, F401

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
                                    "'data.val=${{inputs.input_1}}/val.txt' max_epochs=1 hydra.job.name=mitrain "
                                    "'hydra.run.dir=${{outputs.run}}' "
                                    "> \"${{outputs.run}}/stdout-rank${RANK:-0}.txt\"; "
                                    "status=$?; cat \"${{outputs.run}}/stdout-rank${RANK:-0}.txt\"; exit $status")
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
    (node / "outputs" / "run").mkdir(parents=True)  # AzureML mounts an output's folder before the command runs
    command = job.command.replace("${{inputs.input_0}}", str(data.root)).replace(
        "${{inputs.input_1}}", str(data.root)).replace("${{outputs.run}}", str(node / "outputs" / "run"))
    done = subprocess.run(["bash", "-c", command], cwd=node / "code", capture_output=True, text=True, timeout=600,
                          env={"PATH": f"{image / 'bin'}:/usr/bin:/bin", "HOME": str(node / "home"),
                               **{k: v for k, v in (job.environment_variables or {}).items()}})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["num_samples"] == 8 and "top1_accuracy" in metrics
    assert (node / "outputs" / "run" / ".hydra" / "config.yaml").is_file()


# The app Hydra's launcher suites sweep, as a job runs it on the node: their configs, its config as
# the JSON line.
SUITE_APP = Path(__file__).with_name("azureml_hydra_app.py")
# The suites' tests that compose another config than compose.yaml.
_SUITE_CONFIGS = {"test_sweep_over_unspecified_mandatory_default": "unspecified_mandatory_default",
                  "test_sweep_and_override": "db_conf", "test_sweep_with_custom_resolver": "custom_resolver"}


@pytest.fixture
def node_client(workspace: Path, monkeypatch: pytest.MonkeyPatch, image: Path) -> FakeMLClient:
    """A fake `ml_client` whose jobs run their commands on a FakeNode."""
    (workspace / "node").mkdir()
    node = FakeNode(workspace / "node", image, {}, {}, datastores={})
    client = FakeMLClient(node=node)
    monkeypatch.setattr(AzureMLSettings, "ml_client", lambda self: client)
    yield client
    node.kill()


def _waiting(config_name: str) -> list[str]:
    return ["hydra.launcher.wait=true", "hydra.launcher.poll_interval_s=0.2",
            f"hydra.launcher.app='python {SUITE_APP} --config-name {config_name}'"]


@pytest.mark.slow
class TestAzureMLLauncherSuite(LauncherTestSuite):
    """Hydra's own launcher suite, with `wait=true`: each run is a job whose command runs the
    suite's app on a FakeNode, and the launcher brings its run directory back."""

    @pytest.fixture
    def launcher_name(self) -> str:
        return "azureml"

    @pytest.fixture
    def overrides(self, request: pytest.FixtureRequest, node_client: FakeMLClient) -> list[str]:
        return _waiting(_SUITE_CONFIGS.get(request.node.originalname, "compose"))

    def test_sweep_with_custom_resolver(self) -> None:
        pytest.skip("its task function returns the value of a resolver registered in the test process; an AzureML "
                    "job runs the app's command elsewhere, where no such resolver exists")


@pytest.mark.slow
class TestAzureMLBatchedSweeperSuite(BatchedSweeperTestSuite):
    """Hydra's batched-sweeper suite: three launches of two jobs each, waited for."""

    @pytest.fixture
    def launcher_name(self) -> str:
        return "azureml"

    @pytest.fixture
    def overrides(self, node_client: FakeMLClient) -> list[str]:
        return ["hydra.sweeper.max_batch_size=2", *_waiting("compose")]


# Imported at start-up by the Python that IntegrationTestSuite's apps run on (PYTHONPATH): the
# launcher plugin, and the fake `ml_client` whose jobs run on a FakeNode, in place of AzureML's.
_LAUNCHING_HOOK = """import os
if os.environ.get("FAKE_AZUREML_NODE"):
    import sys
    from pathlib import Path

    sys.path.insert(0, {root!r})
    from hydra.core.plugins import Plugins
    from hydra_plugins.mitorch_launchers.azureml_launcher import AzureMLLauncher
    from mitorch.azureml.settings import AzureMLSettings
    from tests.test_azureml import FakeMLClient, FakeNode

    Plugins.instance().register(AzureMLLauncher)
    _root = Path(os.environ["FAKE_AZUREML_NODE"]) / str(os.getpid())
    _root.mkdir(parents=True)
    _client = FakeMLClient(node=FakeNode(_root, Path(os.environ["FAKE_AZUREML_IMAGE"]), {{}}, {{}}))
    AzureMLSettings.ml_client = lambda self: _client
"""


@pytest.mark.slow
class TestAzureMLLauncherIntegration(IntegrationTestSuite):
    """Hydra's integration suite: each test's app runs as a script with the launcher; its job runs
    the same script on a FakeNode (`hydra.launcher.app=python SCRIPT`), and the task writes what
    it sees to the suite's output file."""

    @pytest.fixture
    def task_launcher_cfg(self) -> dict:
        return {}

    @pytest.fixture
    def extra_flags(self) -> list[str]:
        return ["hydra/launcher=azureml", "hydra.launcher.wait=true", "hydra.launcher.poll_interval_s=0.2"]

    @pytest.fixture(autouse=True)
    def _launching_python(self, workspace: Path, monkeypatch: pytest.MonkeyPatch, image: Path) -> None:
        hook = workspace / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(_LAUNCHING_HOOK.format(root=str(Path(__file__).resolve().parent.parent)))
        monkeypatch.setenv("PYTHONPATH", str(hook))
        monkeypatch.setenv("FAKE_AZUREML_NODE", str(workspace / "node"))
        monkeypatch.setenv("FAKE_AZUREML_IMAGE", str(image))

    def generate_custom_cmd(self):
        def command(cmd: list[str], filename: str) -> list[str]:
            return [*cmd, "-m", f"hydra.launcher.app='python {cmd[1]}'"]

        return command

    _ELSEWHERE = ("the job runs on another machine, in the job's output folder (hydra.run.dir=${{outputs.run}}): "
                  "its working directory and original directory are not this machine's sweep directory")

    def test_custom_sweeper_run_workdir(self) -> None:
        pytest.skip(self._ELSEWHERE)

    def test_get_orig_dir_multirun(self) -> None:
        pytest.skip(self._ELSEWHERE)

    def test_to_absolute_path_multirun(self) -> None:
        pytest.skip(self._ELSEWHERE)


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
        assert [j.command.split(" && ")[1].split(" > ")[0] for j in jobs] == [
            "my_app +a=0 hydra.job.name=a_module 'hydra.run.dir=${{outputs.run}}'",
            "my_app +a=1 hydra.job.name=a_module 'hydra.run.dir=${{outputs.run}}'"]
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


@pytest.mark.slow
def test_mitrain_sweep_waits_for_its_jobs_and_brings_back_each_run(
        workspace: Path, node_client: FakeMLClient, hydra_restore_singletons: None) -> None:
    """`mitrain -m hydra/launcher=azureml hydra.launcher.wait=true`: the job's command trains on
    the node from its mounted input; the sweep directory ends as a local multirun's would."""
    data = make_text_dataset(workspace / "datastore" / "shapes", num_train=16, num_val=8)
    node_client.jobs.node.datastores[DATA] = data.root
    code, out, err = _mitrain("-m", "hydra/launcher=azureml", "hydra.launcher.wait=true",
                              "hydra.launcher.poll_interval_s=0.2", f"hydra.sweep.dir={workspace / 'sweep'}", *QUICK,
                              "optimizer.lr=0.05", f"data.train={DATA}train.txt", f"data.val={DATA}val.txt")
    assert code == 0, err
    [name] = list(node_client.jobs.sent)
    assert out.strip().splitlines()[0].split()[0] == name and f"{name} Completed" in err.splitlines()
    assert ("download", name) in node_client.jobs.calls
    run = workspace / "sweep" / "0"
    metrics = json.loads((run / "stdout-rank0.txt").read_text().strip().splitlines()[-1])
    assert metrics["num_samples"] == 8 and "top1_accuracy" in metrics
    assert "optimizer.lr=0.05" in (run / ".hydra" / "overrides.yaml").read_text()
    assert (run / "mitrain.log").exists()


@pytest.mark.slow
def test_wait_returns_each_runs_json_line_and_fails_a_failed_job(
        hydra_sweep_runner, workspace: Path, node_client: FakeMLClient, hydra_restore_singletons: None) -> None:
    sweep = hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=None,
                               config_path="configs", config_name="compose.yaml",
                               overrides=["hydra/launcher=azureml", *_waiting("compose"), "+a=0,1"],
                               temp_dir=workspace / "sweep")
    with sweep:
        returns = sweep.returns[0]
        assert [r.return_value for r in returns] == [{"foo": 10, "bar": 100, "a": 0}, {"foo": 10, "bar": 100, "a": 1}]
        assert [r.hydra_cfg.hydra.job.id for r in returns] == list(node_client.jobs.sent)
    # A run whose app fails (no such config there): its job ends Failed, and Hydra's sweeper raises.
    failing = hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=None,
                                 config_path="configs", config_name="compose.yaml",
                                 overrides=["hydra/launcher=azureml", *_waiting("no_such_config"), "+a=2"],
                                 temp_dir=workspace / "sweep-2")
    failed = r"AzureML job a-module-[0-9a-f]{10}-0 ended Failed; its logs: https://ml.azure.com/runs/"
    with pytest.raises(Exception, match=failed):
        with failing:
            pass


def test_a_registered_dataset_becomes_each_jobs_mounted_inputs(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                               hydra_restore_singletons: None) -> None:
    from mitorch.store.sqlite import SQLiteStore

    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{workspace / 'db.sqlite'}")
    blob = "https://acct.blob.core.windows.net/data/shapes"
    SQLiteStore(str(workspace / "db.sqlite")).put_datasets([
        {"name": "shapes", "version": 0, "train": {"path": f"{blob}/train.txt", "support_files": [f"{blob}/train.zip"]},
         "val": {"path": f"{blob}/val.txt", "support_files": []}},
        {"name": "shapes", "version": 1, "train": {"path": f"{blob}/v1/train.txt", "support_files": []},
         "val": {"path": str(workspace / "val.txt"), "support_files": []}},
        {"name": "apart", "version": 0, "train": {"path": f"{blob}/train.txt",
                                                   "support_files": ["https://acct.blob.core.windows.net/other/x.zip"]},
         "val": {"path": f"{blob}/val.txt", "support_files": []}}])
    code, out, err = _mitrain("-m", "hydra/launcher=azureml", "hydra.launcher.dry_run=true",
                              f"hydra.sweep.dir={workspace / 'sweep'}", "hydra.launcher.dataset=shapes:0",
                              "optimizer.lr=0.1,0.01")
    assert code == 0, err
    for line in out.strip().splitlines():
        job = load_job(line.split()[1])
        assert {k: (v.type, v.path) for k, v in job.inputs.items()} == {
            "input_0": ("uri_folder", f"{blob}/"), "input_1": ("uri_folder", f"{blob}/")}
        assert "mitrain 'data.train=${{inputs.input_0}}/train.txt' 'data.val=${{inputs.input_1}}/val.txt' " \
               "optimizer.lr=" in job.command
    for reference, message in (("shapes", "has its val split at"), ("apart", "must lie beside"),
                               ("nothing", "dataset nothing is not registered")):
        code, out, err = _mitrain("-m", "hydra/launcher=azureml", "hydra.launcher.dry_run=true",
                                  f"hydra.sweep.dir={workspace / ('sweep-' + reference)}",
                                  f"hydra.launcher.dataset={reference}", "optimizer.lr=0.1,0.01")
        assert code != 0 and message in err and "Traceback" not in err, err


def test_waiting_on_jobs_azureml_cannot_report_is_one_line(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                            hydra_restore_singletons: None) -> None:
    from azure.core.exceptions import ServiceRequestError

    client = FakeMLClient()
    client.jobs.get_error = ServiceRequestError(f"connection reset (client secret {CLIENT_SECRET})")
    monkeypatch.setattr(AzureMLSettings, "ml_client", lambda self: client)
    code, out, err = _mitrain("-m", "hydra/launcher=azureml", "hydra.launcher.wait=true",
                              "hydra.launcher.poll_interval_s=0.01", f"hydra.sweep.dir={workspace / 'sweep'}",
                              "optimizer.lr=0.1", f"data.train={DATA}train.txt", f"data.val={DATA}val.txt")
    [name] = list(client.jobs.sent)
    assert code != 0 and [c for c in client.jobs.calls if c[0] == "get"] == [("get", name)] * 5
    assert err.strip().splitlines()[-1] == (f"mitrain: error: cannot read AzureML job {name} while waiting for it: "
                                            "ServiceRequestError: connection reset (client secret ***); it may still "
                                            "run (see its studio link)")
    assert "Traceback" not in err and CLIENT_SECRET not in err + out
