"""Where queued trainings keep weights, checkpoints and logs (MITORCH_ARTIFACTS_URI).

A local directory (the default: the user's data directory) is used in place. With an Azure Blob
container URL (`https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]`, with a SAS token in
the URL or credentials through azure-identity), a training works in a local folder under the
cache and uploads its files to `URL/TRAINING_ID/NAME`: last.pt after every epoch (so a retry on
another machine resumes), then model.pt and train.log. Records keep the URLs without tokens.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from mitorch.errors import ConfigError
from mitorch.paths import cache_dir, data_dir
from mitorch.service import remote
from mitorch.store.uri import redact


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
    """A training's local folder, which holds one folder per attempt."""
    if remote_root() is not None:
        return cache_dir() / "trainings" / training_id
    return artifacts_root() / training_id


def attempt_name(attempt: int) -> str:
    return f"attempt-{attempt}"


def attempt_dir(training_id: str, attempt: int) -> Path:
    """An attempt's local folder: model.pt, last.pt (so a later attempt resumes), train.log, run/."""
    return training_dir(training_id) / attempt_name(attempt)


def log_tail(training_id: str, attempt: int, lines: int = 5) -> str:
    """The last lines of an attempt's local log ("" when there is none), for a record."""
    try:
        text = (attempt_dir(training_id, attempt) / "train.log").read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-2000:]


def artifact_url(training_id: str, name: str) -> str | None:
    """Where a training's file goes remotely, or None when artifacts are local."""
    root = remote_root()
    return None if root is None else f"{root}/{training_id}/{name}"


def publish(training_id: str, path: Path, attempt: int) -> str:
    """Uploads an attempt's file when artifacts are remote; returns where it is kept."""
    url = artifact_url(training_id, f"{attempt_name(attempt)}/{path.name}")
    return str(path) if url is None else remote.upload(path, url)


def restore_checkpoint(training_id: str, attempt: int, folder: Path, first: int = 1) -> str | None:
    """Puts the newest last.pt of attempts first..attempt-1 into folder, so this attempt resumes.

    Returns:
        Where the checkpoint came from (a path, or a URL without its token), or None when no
        earlier attempt left one.
    """
    target = folder / "last.pt"
    folder.mkdir(parents=True, exist_ok=True)
    for earlier in range(attempt - 1, first - 1, -1):
        local = attempt_dir(training_id, earlier) / "last.pt"
        if local.is_file():
            _copy_atomically(local, target)
            return str(local)
        url = artifact_url(training_id, f"{attempt_name(earlier)}/last.pt")
        if url is not None and remote.exists(url):
            os.replace(remote.fetch(url), target)
            return redact(url)
    return None


def _copy_atomically(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def remove_checkpoints(training_id: str, attempts: int) -> list[str]:
    """Deletes the last.pt of attempts 1..attempts, local and remote (weights and logs stay),
    unless MITORCH_KEEP_CHECKPOINTS=1. Returns what was removed."""
    if os.environ.get("MITORCH_KEEP_CHECKPOINTS", "").strip().lower() in ("1", "true", "yes"):
        return []
    removed = []
    for attempt in range(1, attempts + 1):
        local = attempt_dir(training_id, attempt) / "last.pt"
        if local.is_file():
            local.unlink()
            removed.append(str(local))
        url = artifact_url(training_id, f"{attempt_name(attempt)}/last.pt")
        if url is not None and remote.delete(url):
            removed.append(url)
    return removed
