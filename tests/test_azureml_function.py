"""deploy/azure-functions: the timer-triggered Function that runs one micontrol tick with the
AzureML executor, called through its registered handler over the fake `ml_client`."""
from __future__ import annotations

import configparser
import importlib.util
import logging
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("azure.ai.ml", reason="the AzureML tests need the azure extra: pip install -e '.[test]'")
pytest.importorskip("azure.functions", reason="the Function's tests need azure-functions: pip install -e '.[test]'")

from azure.functions.timer import TimerRequest  # noqa: E402

from mitorch.azureml.settings import AzureMLSettings  # noqa: E402
from mitorch.store.sqlite import SQLiteStore  # noqa: E402
from tests.test_azureml import CLIENT_SECRET, DB_PASSWORD, ENV, SAS_SIG, FakeMLClient  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "deploy" / "azure-functions"


def _load(folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"function_app_{abs(hash(folder))}", folder / "function_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The Function as the README's steps publish it: function_app.py with a MiTorch wheel in wheels/."""
    from mitorch.azureml.package import staged_code

    folder = tmp_path / "app"
    folder.mkdir()
    shutil.copy(APP / "function_app.py", folder)
    (folder / "wheels").mkdir()
    wheel = next(staged_code().glob("*.whl"))
    shutil.copy(wheel, folder / "wheels" / wheel.name)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MITORCH_AML_WHEEL", "")  # the Function points it at its own wheel (restored afterwards)
    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the executor's job clocks
    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", f"https://acct.blob.core.windows.net/art?sv=2024&sig={SAS_SIG}")
    return _load(folder)


def _handler(module: ModuleType):
    [function] = module.app.get_functions()
    return function


def test_the_function_is_a_timer_every_five_minutes() -> None:
    function = _handler(_load(APP))
    [binding] = function.get_bindings_dict()["bindings"]
    assert binding["type"] == "timerTrigger" and binding["schedule"] == "0 */5 * * * *"
    assert function.get_function_name() == "micontrol_tick"


def test_each_call_runs_one_tick_with_the_azureml_executor(published: ModuleType, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    client = FakeMLClient(max_instances=1)
    monkeypatch.setattr(AzureMLSettings, "ml_client", lambda self: client)
    store = SQLiteStore(str(tmp_path / "db.sqlite"))
    first, second = store.add_training({"config": {}}), store.add_training({"config": {}})
    handler = _handler(published).get_user_function()
    with caplog.at_level(logging.INFO):
        handler(TimerRequest(past_due=False))
    assert list(client.jobs.sent) == [f"mitorch-{first}-1"]  # the cluster holds one job
    sent = client.jobs.sent[f"mitorch-{first}-1"]
    assert [p.name for p in Path(sent.code).iterdir()] == ["mitorch-0.1.0-py3-none-any.whl"]
    # The job installs the wheel published with the Function (a Function has no source tree to build one).
    published_wheel = published.HERE / "wheels" / "mitorch-0.1.0-py3-none-any.whl"
    assert published.os.environ["MITORCH_AML_WHEEL"] == str(published_wheel)
    assert (Path(sent.code) / published_wheel.name).read_bytes() == published_wheel.read_bytes()
    training = store.get_training(first)
    assert training["executor"] == "azureml:ws-1/gpu-cluster" and training["run_id"] == f"mitorch-{first}-1"
    assert store.get_training(second)["status"] == "new"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("micontrol:")] == [
        f"micontrol: dispatched {first} to mitorch-{first}-1"]
    # The next call reconciles: the job ended, so the second training goes out.
    from azure.ai.ml._restclient.arm_ml_service.models import JobStatus

    client.jobs.statuses[f"mitorch-{first}-1"] = JobStatus.COMPLETED
    store.update_training(first, {"status": "completed"})
    handler(TimerRequest(past_due=True))
    assert list(client.jobs.sent) == [f"mitorch-{first}-1", f"mitorch-{second}-1"]
    logged = caplog.text
    assert CLIENT_SECRET not in logged and SAS_SIG not in logged and DB_PASSWORD not in logged


def test_a_setting_error_is_logged_in_one_line_and_fails_the_call(published: ModuleType, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from mitorch.errors import ConfigError

    monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "art"))
    with pytest.raises(ConfigError):
        _handler(published).get_user_function()(TimerRequest(past_due=False))
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith("micontrol: error: the AzureML executor needs MITORCH_ARTIFACTS_URI to be an Azure Blob")


def test_the_functions_requirements_are_mitorchs_without_the_training_ones() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    required, azure = ([line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
                       for text in (setup["options"]["install_requires"], setup["options.extras_require"]["azure"]))
    listed = {line.strip() for line in (APP / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    # MiTorch's own pins, no other package than the Functions runtime's, and all of the azure extra
    # and of what a tick uses (the store, Optuna for search jobs, configs, Blob artifacts)...
    assert listed - set(required) - set(azure) == {r for r in listed if r.startswith("azure-functions")}
    names = {re.split(r"[<>=!~\[ ]", r)[0] for r in listed}
    assert set(azure) <= listed
    assert {"pymongo", "optuna", "hydra-core", "omegaconf", "azure-storage-blob", "rich", "numpy"} <= names
    # ...and none of what only training or the viewer needs (torch alone is far over a Function's size).
    assert not names & {"torch", "torchvision", "torchmetrics", "timm", "pycocotools", "pillow", "starlette", "jinja2",
                        "uvicorn"}
