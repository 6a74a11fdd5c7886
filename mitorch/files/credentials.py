"""SAS tokens (and other URL credentials) kept outside the job store.

The job store never holds a secret: when a URL whose query carries a credential (an Azure SAS
token `...?sv=...&sig=...`, a presigned `X-Amz-Signature=...` URL) is registered, its query moves
to a credentials file readable by its owner only ($MITORCH_CREDENTIALS, else
$XDG_CONFIG_HOME/mitorch/credentials.json, mode 0600), and the store keeps the URL without it.

Tokens are kept per blob URL; a SAS token that opens a whole container or account (`sr=c`, or an
account SAS) is also kept for its container URL. Lookup prefers the blob's own token, then its
container's. Updates of the file hold an exclusive lock on a sidecar `.lock` file and replace the
file with a fresh temporary one, so concurrent registrations keep every token. The token in
MITORCH_ARTIFACTS_URI is known the same way.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from mitorch.errors import ConfigError
from mitorch.paths import config_dir
from mitorch.files.secrets import carries_credential

# Resource types of a SAS token that opens one blob (or one of its snapshots or versions) or one directory.
_NARROW_RESOURCES = {"b", "bs", "bv", "d"}


def split_sas(url: str) -> tuple[str, str | None]:
    """(the URL without its query, the token or None). A query is a token when it carries a
    credential (sig=, X-Amz-Signature=, token=, ...)."""
    parts = urlsplit(url)
    if not parts.query or not carries_credential("?" + parts.query):
        return url, None
    return urlunsplit(parts._replace(query="", fragment="")), parts.query


def is_sas(token: str | None) -> bool:
    """Whether token is an Azure SAS token (it signs with sig=)."""
    return token is not None and "sig" in parse_qs(token)


def container_url(url: str) -> str:
    """The container a blob URL belongs to: the account URL plus the first path segment.

    Azurite and other emulators put the account in the path (http://127.0.0.1:10000/account/...),
    so for an address with a port the container is the second segment.
    """
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    keep = 2 if parts.port is not None and segments else 1
    path = "/" + "/".join(segments[:keep])
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def credentials_path() -> Path:
    if os.environ.get("MITORCH_CREDENTIALS"):
        return Path(os.environ["MITORCH_CREDENTIALS"])
    return config_dir() / "credentials.json"


def remember(url: str) -> str:
    """Keeps the token of url (if any) in the credentials file; returns the URL without it."""
    bare, token = split_sas(url)
    if token is None:
        return url
    keys = [bare]
    if _opens_container(token):
        keys.append(container_url(bare))
    with _locked():
        document = _read_document()
        document["sas"] = {**document.get("sas", {}), **{key: token for key in keys}}
        _write_document(document)
    return bare


def sas_for(url: str) -> str | None:
    """The token known for url: its own, MITORCH_ARTIFACTS_URI's for that container, or the
    credentials file's for the blob, else for its container."""
    bare, token = split_sas(url)
    if token is not None:
        return token
    artifacts_bare, artifacts_token = split_sas(os.environ.get("MITORCH_ARTIFACTS_URI", ""))
    if artifacts_token and bare.startswith(artifacts_bare.rstrip("/") + "/"):
        return artifacts_token
    tokens = _read_document().get("sas", {})
    return tokens.get(bare) or tokens.get(container_url(bare))


def _opens_container(token: str) -> bool:
    """A SAS token for a container or a whole account, rather than for one blob or directory."""
    if not is_sas(token):
        return False  # presigned URLs of other clouds sign one object
    resource = parse_qs(token).get("sr", [""])[0].lower()
    return resource not in _NARROW_RESOURCES


def _read_document() -> dict[str, Any]:
    path = credentials_path()
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"cannot read the credentials file {path} ({e}); fix or delete it") from None
    if not isinstance(document, dict) or not isinstance(document.get("sas", {}), dict):
        raise ConfigError(f"the credentials file {path} must hold {{\"sas\": {{URL: token}}}}; fix or delete it")
    return document


@contextmanager
def _locked() -> Iterator[None]:
    """Holds an exclusive lock on the credentials file's sidecar lock file."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _write_document(document: dict[str, Any]) -> None:
    """Replaces the credentials file at once with a new owner-only one."""
    path = credentials_path()
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w") as f:
            json.dump(document, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
