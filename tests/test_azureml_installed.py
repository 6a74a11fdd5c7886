"""AzureML jobs from a plain (non-editable) install of MiTorch: with no source tree to build from,
the job's wheel is MiTorch's installed files re-packed. MiTorch runs from a `pip install --target`
folder in a subprocess (PYTHONPATH), never from this repository."""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
_SOURCE = ("mitorch", "conf", "hydra_plugins", "setup.cfg", "pyproject.toml", "README.md")
_WHEEL = "mitorch-0.1.0-py3-none-any.whl"

# Run first in each subprocess: MiTorch must come from the install folder, not from this
# repository through the editable finder of the test environment.
_FROM_INSTALL = """
import os, sys, json
from pathlib import Path
import mitorch
assert Path(mitorch.__file__).resolve().is_relative_to(Path(os.environ["PYTHONPATH"]).resolve()), mitorch.__file__
"""


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _installed_python(site: Path, code: str, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    """`code` run with MiTorch from `site` (after the check that it is imported from there)."""
    return subprocess.run([sys.executable, "-c", _FROM_INSTALL + code], cwd=tmp, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(site), **env})


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A wheel of this repository (built from a copy: the build leaves nothing in the tree) and
    its plain install into a folder."""
    root = tmp_path_factory.mktemp("installed")
    for part in _SOURCE:
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, root / "src" / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(REPO / part, root / "src" / part)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "wheel"), str(root / "src"))
    wheel = root / "wheel" / _WHEEL
    _pip("install", "--no-deps", "--target", str(root / "site"), str(wheel))
    return SimpleNamespace(wheel=wheel, site=root / "site")


def _members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.slow
def test_a_plain_install_stages_its_installed_files_as_a_wheel_and_reuses_it(installed: SimpleNamespace,
                                                                             tmp_path: Path) -> None:
    staged = _installed_python(installed.site, """
from mitorch.azureml import package, repack
first = package.staged_code()
def _no_rebuild(*args):
    raise AssertionError("the wheel was built again")
repack.write_wheel = _no_rebuild
second = package.staged_code()
print(json.dumps([str(first), str(second)]))
""", tmp_path, MITORCH_CACHE_DIR=str(tmp_path / "cache"), MITORCH_AML_WHEEL="")
    assert staged.returncode == 0, staged.stderr
    first, second = map(Path, json.loads(staged.stdout.splitlines()[-1]))
    assert first == second and first.parent == tmp_path / "cache" / "azureml" / "code"
    assert [p.name for p in first.iterdir()] == [_WHEEL]
    repacked, original = _members(first / _WHEEL), _members(installed.wheel)

    # The same files as the wheel it was installed from (hydra_plugins among them, no compiled
    # files, no installer's files, no scripts); only WHEEL and RECORD are written afresh.
    assert sorted(repacked) == sorted(original)
    assert "hydra_plugins/mitorch_launchers/azureml_launcher.py" in repacked
    fresh = {"mitorch-0.1.0.dist-info/WHEEL", "mitorch-0.1.0.dist-info/RECORD"}
    assert {name: repacked[name] for name in repacked if name not in fresh} == \
           {name: original[name] for name in original if name not in fresh}
    assert b"Tag: py3-none-any\n" in repacked["mitorch-0.1.0.dist-info/WHEEL"]
    assert b"Root-Is-Purelib: true\n" in repacked["mitorch-0.1.0.dist-info/WHEEL"]

    # Its RECORD lists every member with its hash and size.
    rows = list(csv.reader(repacked["mitorch-0.1.0.dist-info/RECORD"].decode().splitlines()))
    assert sorted(row[0] for row in rows) == sorted(repacked)
    for name, digest, size in rows:
        if name.endswith("/RECORD"):
            assert digest == size == ""
            continue
        content = repacked[name]
        assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        assert int(size) == len(content), name

    # It installs, and MiTorch, its Hydra launchers and its console scripts come from it.
    _pip("install", "--no-deps", "--target", str(tmp_path / "site2"), str(first / _WHEEL))
    again = _installed_python(tmp_path / "site2", """
import hydra_plugins.mitorch_launchers
from importlib import metadata
scripts = sorted(e.name for e in metadata.distribution("mitorch").entry_points.select(group="console_scripts"))
print(json.dumps([hydra_plugins.mitorch_launchers.__file__, scripts]))
""", tmp_path)
    assert again.returncode == 0, again.stderr
    launchers, scripts = json.loads(again.stdout.splitlines()[-1])
    assert Path(launchers).is_relative_to(tmp_path / "site2")
    assert scripts == ["micontrol", "midataset", "miexport", "mipredict", "miquery", "misubmit", "mitest", "mitrain",
                       "miviewer"]
    assert (tmp_path / "site2" / "bin" / "mitrain").is_file()


@pytest.mark.slow
def test_an_azureml_job_is_submitted_from_a_plain_install(installed: SimpleNamespace, tmp_path: Path) -> None:
    """micontrol's AzureML executor, over the fake client of tests/test_azureml.py, sends a job
    whose code is the re-packed wheel."""
    pytest.importorskip("azure.ai.ml", reason="the AzureML tests need the azure extra: pip install -e '.[test]'")
    sent = _installed_python(installed.site, f"""
sys.path.append({str(REPO)!r})  # after the install folder: the fake client only
from tests.test_azureml import ENV, FakeMLClient
os.environ.update(ENV)
from mitorch.service.controller import Settings, tick
from mitorch.service.executors.azureml import AzureMLExecutor
from mitorch.store.sqlite import SQLiteStore
store, client = SQLiteStore("db.sqlite"), FakeMLClient()
training_id = store.add_training({{"config": {{"max_epochs": 1}}}})
actions = tick(store, AzureMLExecutor(client=lambda: client), say=lambda line: None, settings=Settings(tick_wait_s=0))
job = client.jobs.sent[f"mitorch-{{training_id}}-1"]
print(json.dumps([actions, training_id, str(job.code), job.command]))
""", tmp_path, MITORCH_CACHE_DIR=str(tmp_path / "cache"), MITORCH_AML_WHEEL="",
                              MITORCH_ARTIFACTS_URI="https://acct.blob.core.windows.net/art",
                              XDG_DATA_HOME=str(tmp_path / "data"))
    assert sent.returncode == 0, sent.stderr
    actions, training_id, code, command = json.loads(sent.stdout.splitlines()[-1])
    assert actions == [f"dispatched {training_id} to mitorch-{training_id}-1"]
    assert Path(code).parent == tmp_path / "cache" / "azureml" / "code"
    assert [p.name for p in Path(code).iterdir()] == [_WHEEL]
    assert command.endswith(f"--no-deps --no-index {_WHEEL} && mitrain --training-id {training_id} --attempt 1")


def test_an_install_without_record_is_a_one_line_error_naming_the_fix(tmp_path: Path) -> None:
    """Some installers write no RECORD: there is then no list of the files to re-pack."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "mitorch", site / "mitorch", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (site / "mitorch-0.1.0.dist-info").mkdir()
    (site / "mitorch-0.1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mitorch\n"
                                                                "Version: 0.1.0\n")
    staged = _installed_python(site, """
from mitorch.azureml.package import staged_code
from mitorch.errors import ConfigError
try:
    staged_code()
except ConfigError as e:
    print(json.dumps(str(e)))
""", tmp_path, MITORCH_CACHE_DIR=str(tmp_path / "cache"), MITORCH_AML_WHEEL="")
    assert staged.returncode == 0, staged.stderr
    message = json.loads(staged.stdout.splitlines()[-1])
    assert "\n" not in message and "no .dist-info/RECORD" in message
    assert message.endswith("set MITORCH_AML_WHEEL to a wheel of this MiTorch for AzureML jobs to install")
    assert not (tmp_path / "cache" / "azureml").exists()
