"""The wheel carries conf/ as mitorch.conf, and mitrain works from it in any directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "mitorch"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "outputs", "multirun", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True, capture_output=True)
    [built] = out.glob("mitorch-*.whl")
    return built


def test_wheel_contains_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"mitorch/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert "mitorch/conf/train.yaml" in shipped and "mitorch/conf/model/resnet.yaml" in shipped
    assert shipped <= names
    assert "mitorch/conf/__init__.py" in names
    assert "hydra_plugins/mitorch_launchers/queue_launcher.py" in names
    assert not any(n.startswith("hydra_plugins/__init__") for n in names)  # a namespace package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "mitrain = mitorch.cli.mitrain:main" in text and "mitest = mitorch.cli.mitest:main" in text


def test_mitrain_runs_from_the_installed_wheel_elsewhere(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import sys, mitorch; print(mitorch.__file__, file=sys.stderr)\n"
            "from mitorch.cli.mitrain import main\n"
            "sys.argv = ['mitrain', *sys.argv[1:]]\nmain()")
    env = {**os.environ, "PYTHONPATH": str(target)}
    args = ["-d", "batch_size=4", "data.num_workers=0", "image_size=32"]
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=elsewhere, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0].startswith(str(target))  # not the source tree
    assert json.loads(result.stdout.strip().splitlines()[-1])["num_samples"] == 4

    discover = ("from hydra.core.plugins import Plugins\nfrom hydra.plugins.launcher import Launcher\n"
                "print(sorted(c.__name__ for c in Plugins.instance().discover(Launcher)))")
    found = subprocess.run([sys.executable, "-c", discover], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert "QueueLauncher" in found.stdout, found.stderr
