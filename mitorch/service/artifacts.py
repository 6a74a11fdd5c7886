"""Where queued trainings keep weights, checkpoints and logs (MITORCH_ARTIFACTS_URI).

A local directory (the default: the user's data directory) is used in place. With an Azure Blob
container URL (`https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]`, with a SAS token in
the URL or credentials through azure-identity), a training works in a local folder under the
cache and uploads its files to `URL/TRAINING_ID/NAME`: last.pt after every epoch (so a retry on
another machine resumes), then model.pt and train.log. Records keep the URLs without tokens.
"""
from __future__ import annotations

import os
from pathlib import Path

from mitorch.errors import ConfigError
from mitorch.paths import cache_dir, data_dir
from mitorch.service import remote


def remote_root() -> str | None:
    """The Blob URL (without its token) artifacts go to, or None for a local directory."""
    uri = os.environ.get("MITORCH_ARTIFACTS_URI", "")
    if not remote.is_remote(uri):
        if "://" in uri and not uri.startswith("file://"):
            raise ConfigError(f"MITORCH_ARTIFACTS_URI must be a local directory or an Azure Blob container URL, "
                              f"got {remote.bare(uri)}")
        return None
    if not remote.is_blob(uri):
        raise ConfigError(f"MITORCH_ARTIFACTS_URI {remote.bare(uri)}: http(s) artifacts need an Azure Blob container "
                          "URL with a SAS token (or azure-identity credentials for *.blob.core.windows.net)")
    return remote.bare(uri).rstrip("/")


def artifacts_root() -> Path:
    """$MITORCH_ARTIFACTS_URI when it is a local directory, else ~/.local/share/mitorch/artifacts."""
    uri = os.environ.get("MITORCH_ARTIFACTS_URI")
    if uri and remote_root() is None:
        return Path(uri.removeprefix("file://"))
    return data_dir() / "artifacts"


def training_dir(training_id: str) -> Path:
    """A training's local folder: model.pt, last.pt (so a retry resumes), train.log, run/."""
    if remote_root() is not None:
        return cache_dir() / "trainings" / training_id
    return artifacts_root() / training_id


def artifact_url(training_id: str, name: str) -> str | None:
    """Where a training's file goes remotely, or None when artifacts are local."""
    root = remote_root()
    return None if root is None else f"{root}/{training_id}/{name}"


def publish(training_id: str, path: Path) -> str:
    """Uploads a training's file when artifacts are remote; returns where it is kept."""
    url = artifact_url(training_id, path.name)
    return str(path) if url is None else remote.upload(path, url)


def restore_checkpoint(training_id: str, folder: Path) -> None:
    """Before a retry on a fresh machine: brings last.pt back from remote artifacts, if any."""
    url = artifact_url(training_id, "last.pt")
    if url is None or (folder / "last.pt").exists() or not remote.exists(url):
        return
    folder.mkdir(parents=True, exist_ok=True)
    copy = remote.fetch(url)
    os.replace(copy, folder / "last.pt")
