"""Where queued trainings keep weights, checkpoints and logs (MITORCH_ARTIFACTS_URI).

A local directory (the default: the user's data directory) is used in place. With an Azure Blob
container URL (`https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]`, with a SAS token in
the URL or credentials through azure-identity), a training works in a local folder under the
cache and uploads its files to `URL/TRAINING_ID/NAME`: last.pt after every epoch (so a retry on
another machine resumes), then model.pt and train.log. Records keep the URLs without tokens.

Retention: a checkpoint (last.pt, about 90 MB for a ResNet-50) is only there for an attempt to
resume from. A completed or pruned training never resumes, so its checkpoints are removed when it
ends (remove_checkpoints); a failed or cancelled one may be requeued and resume, so its
checkpoints stay until `micontrol gc` removes them some days after it ended (free_checkpoints).
Weights (model.pt, best.pt), logs and run folders stay, unless `micontrol gc --keep-best N` (or
MITORCH_GC_KEEP_BEST on the timer's tick) removes the attempt folders of trainings that ended long
ago, keeping each job's N best (mitorch.service.retention).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mitorch.errors import ConfigError
from mitorch.paths import cache_dir, data_dir
from mitorch.files import remote
from mitorch.files.secrets import redact


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
    """Deletes the checkpoints of attempts 1..attempts of a training that will not resume
    (completed or pruned), local and remote (weights and logs stay), unless
    MITORCH_KEEP_CHECKPOINTS=1. Returns what was removed."""
    if os.environ.get("MITORCH_KEEP_CHECKPOINTS", "").strip().lower() in ("1", "true", "yes"):
        return []
    return free_checkpoints(training_id, attempts).removed


@dataclass
class Freed:
    """What removing a training's checkpoints freed (or would free, in a dry run)."""

    removed: list[str] = field(default_factory=list)  # local paths, then blob URLs without tokens
    local_bytes: int = 0
    blobs: int = 0  # blobs removed; their sizes are not known here


def free_checkpoints(training_id: str, attempts: int, dry_run: bool = False) -> Freed:
    """Removes the checkpoints of attempts 1..attempts: last.pt and the leftovers of an
    interrupted save or copy of it in each attempt's local folder, and each attempt's uploaded
    last.pt when artifacts are in Blob Storage. Weights (model.pt, best.pt), logs and run folders
    stay. MITORCH_KEEP_CHECKPOINTS does not apply: the caller asked for this removal.

    Args:
        dry_run: find what would be removed, remove nothing.

    Raises:
        TransferError: Blob Storage refused a check or a deletion (what was removed before stays removed).
    """
    freed = Freed()
    for attempt in range(1, attempts + 1):
        for path in _checkpoint_files(attempt_dir(training_id, attempt)):
            try:
                size = path.stat().st_size
                if not dry_run:
                    path.unlink()
            except FileNotFoundError:  # removed meanwhile (an attempt that ended just now, another gc)
                continue
            freed.removed.append(str(path))
            freed.local_bytes += size
    for attempt in range(1, attempts + 1):
        url = artifact_url(training_id, f"{attempt_name(attempt)}/last.pt")
        if url is not None and (remote.exists(url) if dry_run else remote.delete(url)):
            freed.removed.append(url)
            freed.blobs += 1
    return freed


def _checkpoint_files(folder: Path) -> list[Path]:
    """last.pt and what an interrupted save (.last.pt.PID.tmp) or copy (.last.pt.PID.partial)
    of it left in an attempt's folder."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / name for name in names if name == "last.pt" or name.startswith(".last.pt.")]
