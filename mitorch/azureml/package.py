"""What a job runs with: a wheel of this MiTorch in a small staged folder (the job's code), and
MiTorch's environment (a curated PyTorch image plus MiTorch's requirements). The wheel is built
from MiTorch's source tree when it runs from one, else re-packed from its installed files.

Both are folders named by a hash of their content under the cache: building again is skipped,
and AzureML, which also names uploads and anonymous environments by content, reuses them rather
than uploading or rebuilding an image (10-45 minutes) per submit. The user's working directory,
with its Hydra `outputs/` and datasets, is never uploaded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from mitorch.errors import ConfigError
from mitorch.paths import cache_dir

# A curated AzureML PyTorch image (torch, CUDA, NCCL, OpenMPI); MITORCH_AML_BASE_IMAGE overrides it.
BASE_IMAGE = "mcr.microsoft.com/azureml/curated/acpt-pytorch-2.2-cuda12.1:latest"
# What a job needs besides MiTorch's own requirements: the Key Vault read of the database URI, and
# MLflow for logger=mlflow (AzureML sets MLFLOW_TRACKING_URI to its tracking server, which
# azureml-mlflow serves).
JOB_REQUIREMENTS = ("azure-identity>=1.15", "azure-keyvault-secrets>=4.7", "mlflow-skinny>=2.10",
                    "azureml-mlflow>=1.55")
_SOURCE_PARTS = ("mitorch", "conf", "hydra_plugins", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")
_SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".cfg", ".toml", ".md", ".txt", ".json", ".html", ".css", ".js", "")


def source_root() -> Path | None:
    """The MiTorch source tree this MiTorch runs from (an editable or source install), or None
    when it runs from an installed wheel."""
    import mitorch

    root = Path(mitorch.__file__).resolve().parent.parent
    return root if (root / "setup.cfg").is_file() else None


def _source_files(root: Path) -> list[Path]:
    files = []
    for part in _SOURCE_PARTS:
        path = root / part
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                      and p.suffix in _SOURCE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files)


def _digest(entries: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, content in entries:
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()[:16]


def staged_code() -> Path:
    """A folder holding only a wheel of this MiTorch, cached by content: MITORCH_AML_WHEEL when
    set; else, from a source tree (an editable install), `pip wheel --no-deps` of a copy of it;
    else the installed distribution's own files re-packed into a wheel (see repack).

    Raises:
        ConfigError: the wheel cannot be built (the message has pip's last lines), or the
            installed MiTorch does not list its files.
    """
    given = os.environ.get("MITORCH_AML_WHEEL", "").strip()
    if given:
        wheel = Path(given)
        if not (wheel.is_file() and wheel.suffix == ".whl"):
            raise ConfigError(f"MITORCH_AML_WHEEL must name a .whl file, got {given[:200]}")
        return _stage([wheel], _digest([(wheel.name, wheel.read_bytes())]))
    root = source_root()
    if root is None:
        return _repacked()
    files = _source_files(root)
    key = _digest([(str(f.relative_to(root)), f.read_bytes()) for f in files])
    folder = cache_dir() / "azureml" / "code" / key
    if any(folder.glob("*.whl")):
        return folder
    with tempfile.TemporaryDirectory(prefix="mitorch-wheel-") as scratch:
        copy = Path(scratch) / "src"
        for f in files:  # a copy, so the build leaves no build/ or egg-info in the user's tree
            target = copy / f.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        built = Path(scratch) / "wheel"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                   "--wheel-dir", str(built), str(copy)]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(built.glob("mitorch-*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise ConfigError(f"could not build a MiTorch wheel for AzureML jobs: {tail or 'no wheel'}")
        return _stage(wheels, key)


def _repacked() -> Path:
    """The staged wheel of a MiTorch installed without its source: its installed files re-packed."""
    from mitorch.azureml import repack

    dist = repack.installed_distribution()
    files = repack.wheel_files(dist)
    key = _digest(files)
    folder = cache_dir() / "azureml" / "code" / key
    if any(folder.glob("*.whl")):
        return folder
    with tempfile.TemporaryDirectory(prefix="mitorch-wheel-") as scratch:
        return _stage([repack.write_wheel(dist, files, Path(scratch))], key)


def _stage(wheels: list[Path], key: str) -> Path:
    folder = cache_dir() / "azureml" / "code" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder.parent))
    for wheel in wheels:
        shutil.copyfile(wheel, partial / wheel.name)
    try:
        os.rename(partial, folder)  # all or nothing: a half-staged folder is never used
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)  # another process staged it first
    return folder


def requirements() -> list[str]:
    """MiTorch's own requirements (no extras) and what a job adds to them."""
    required = [r for r in metadata.requires("mitorch") or [] if "extra ==" not in r]
    return [*required, *JOB_REQUIREMENTS]


def environment_context() -> Path:
    """A Docker build context (Dockerfile, requirements.txt) for MiTorch's environment, cached by
    content: the base image (MITORCH_AML_BASE_IMAGE or a curated PyTorch image) plus
    MiTorch's requirements."""
    image = os.environ.get("MITORCH_AML_BASE_IMAGE", "").strip() or BASE_IMAGE
    files = {
        "Dockerfile": (f"FROM {image}\n"
                       "COPY requirements.txt /tmp/mitorch-requirements.txt\n"
                       "RUN python -m pip install --no-cache-dir -r /tmp/mitorch-requirements.txt\n"),
        "requirements.txt": "\n".join(requirements()) + "\n",
    }
    key = _digest([(name, text.encode()) for name, text in sorted(files.items())])
    folder = cache_dir() / "azureml" / "environment" / key
    if not (folder / "Dockerfile").is_file():
        partial = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=_made(folder.parent)))
        for name, text in files.items():
            (partial / name).write_text(text)
        try:
            os.rename(partial, folder)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
