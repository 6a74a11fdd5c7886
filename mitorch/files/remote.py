"""Remote files: downloads into a content cache, and uploads to Azure Blob Storage.

A URL is an Azure Blob URL when its host is `*.blob.core.windows.net` or a SAS token is known
for it (see mitorch.files.credentials); those go through azure-storage-blob (a SAS token, or
azure-identity's DefaultAzureCredential where it is installed). Other http(s) URLs are plain
GETs, with the URL's kept credential (a presigned URL's query) put back. Transient failures are
retried with exponential backoff; a file already in the cache is reused. Errors and messages
only ever show URLs without their query.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from mitorch.envvars import env_float, env_int
from mitorch.errors import DataError, MiTorchError, first_line
from mitorch.paths import cache_dir
from mitorch.files.credentials import is_sas, sas_for
from mitorch.files.secrets import redact

T = TypeVar("T")


class TransferError(MiTorchError):
    """A download or upload failed for good."""


def is_remote(path: str) -> bool:
    return path.startswith(("https://", "http://"))


def bare(url: str) -> str:
    """The URL as it may be shown or stored: without its query (and so without a SAS token)."""
    return url.split("?", 1)[0]


def is_blob(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host.endswith(".blob.core.windows.net") or is_sas(sas_for(url))


def fetch(path: str) -> Path:
    """A local copy of path: a local path as it is, a remote file from the cache or downloaded."""
    if not is_remote(path):
        return Path(path)
    shown = bare(path)
    name = unquote(urlsplit(shown).path.rstrip("/").rsplit("/", 1)[-1]) or "file"
    target = cache_dir() / "downloads" / hashlib.sha256(shown.encode()).hexdigest()[:32] / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{name}.{os.getpid()}.part")
    try:
        _retry(lambda: (_download_blob if is_blob(path) else _download_http)(path, partial), f"download {shown}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def upload(source: str | Path, url: str) -> str:
    """Uploads a file to a blob URL (overwriting), checks the stored size; returns the bare URL."""
    if not is_blob(url):
        raise TransferError(f"cannot upload to {bare(url)}: only Azure Blob URLs (with a SAS token or "
                            "azure-identity credentials) take uploads")
    size = os.path.getsize(source)

    def send() -> None:
        client = _blob_client(url)
        with open(source, "rb") as f:
            client.upload_blob(f, overwrite=True, validate_content=True, length=size)
        stored = client.get_blob_properties().size
        if stored != size:
            raise OSError(f"the stored blob has {stored} bytes, not {size}")

    _retry(send, f"upload {source} to {bare(url)}")
    return bare(url)


def exists(url: str) -> bool:
    return bool(_retry(lambda: _blob_client(url).exists(), f"check {bare(url)}"))


def delete(url: str) -> bool:
    """Deletes a blob if it exists; returns whether it existed."""
    def remove() -> bool:
        client = _blob_client(url)
        if not client.exists():
            return False
        client.delete_blob()
        return True

    return bool(_retry(remove, f"delete {bare(url)}"))


# -- transfers ---------------------------------------------------------------------------------


def _download_http(url: str, destination: Path) -> None:
    token = sas_for(url)
    if token is not None:
        url = f"{bare(url)}?{token}"
    request = urllib.request.Request(url, headers={"User-Agent": "mitorch"})
    with urllib.request.urlopen(request, timeout=60) as response, open(destination, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)
        expected = response.headers.get("Content-Length")
    if expected is not None and destination.stat().st_size != int(expected):
        raise OSError(f"got {destination.stat().st_size} of {expected} bytes")


def _download_blob(url: str, destination: Path) -> None:
    client = _blob_client(url)
    with open(destination, "wb") as f:
        stream = client.download_blob()
        stream.readinto(f)
    if destination.stat().st_size != stream.size:
        raise OSError(f"got {destination.stat().st_size} of {stream.size} bytes")


def _blob_client(url: str) -> Any:
    try:
        from azure.storage.blob import BlobClient
    except ImportError:
        raise DataError("Azure Blob URLs need azure-storage-blob: pip install azure-storage-blob") from None
    token = sas_for(url)
    if token is not None:
        return BlobClient.from_blob_url(f"{bare(url)}?{token}", retry_total=1)
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        return BlobClient.from_blob_url(bare(url), retry_total=1)  # a public container
    return BlobClient.from_blob_url(bare(url), credential=DefaultAzureCredential(), retry_total=1)


# -- retries -----------------------------------------------------------------------------------


def _retry(action: Callable[[], T], what: str) -> T:
    """Runs action, retrying transient failures with exponential backoff (MITORCH_TRANSFER_RETRIES
    further attempts, default 4, waiting MITORCH_TRANSFER_BACKOFF_S (default 1) times 1, 2, 4...)."""
    retries = env_int("MITORCH_TRANSFER_RETRIES", 4, minimum=0)
    backoff = env_float("MITORCH_TRANSFER_BACKOFF_S", 1.0, minimum=0)
    for attempt in range(retries + 1):
        try:
            return action()
        except MiTorchError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below, then re-raised as one line
            reason = _reason(e)
            if not _transient(e) or attempt == retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise TransferError(f"cannot {what}{tries}: {reason}") from None
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def _transient(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in (408, 429)
    status = getattr(error, "status_code", None)  # azure.core.exceptions.HttpResponseError
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return isinstance(error, OSError) or type(error).__name__ in ("ServiceRequestError", "ServiceResponseError")


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        code = getattr(error, "error_code", None) or getattr(error, "reason", "")
        hint = " (is the SAS token valid and not expired? register the dataset again with a fresh one)" \
            if status in (401, 403) else ""
        return f"HTTP {status} {code}{hint}"
    if isinstance(error, urllib.error.URLError):
        return redact(str(error.reason))
    return redact(first_line(error))
