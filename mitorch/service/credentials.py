"""SAS tokens kept outside the job store.

The job store never holds a secret: when a URL with a SAS token (`...?sv=...&sig=...`) is
registered or submitted, its token moves to a credentials file readable by its owner only
($MITORCH_CREDENTIALS, else $XDG_CONFIG_HOME/mitorch/credentials.json, mode 0600), keyed by the
container URL, and the store keeps the URL without its query. Downloads and uploads look the
token up again by URL prefix. The token in MITORCH_ARTIFACTS_URI is known the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mitorch.errors import ConfigError
from mitorch.paths import config_dir


def split_sas(url: str) -> tuple[str, str | None]:
    """(the URL without its query, the SAS token or None). Only a query with `sig=` is a token."""
    parts = urlsplit(url)
    if not parts.query or "sig=" not in parts.query.lower():
        return url, None
    return urlunsplit(parts._replace(query="", fragment="")), parts.query


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


def _read() -> dict[str, str]:
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the credentials file {path} ({e}); fix or delete it") from None
    return dict(data.get("sas", {}))


def remember(url: str) -> str:
    """Keeps the SAS token of url (if any) in the credentials file; returns the URL without it."""
    bare, token = split_sas(url)
    if token is None:
        return url
    tokens = _read()
    tokens[container_url(bare)] = token
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        json.dump({"sas": tokens}, f, indent=1)
    os.replace(temporary, path)
    return bare


def sas_for(url: str) -> str | None:
    """The SAS token known for url: its own, MITORCH_ARTIFACTS_URI's for that container, or the
    credentials file's."""
    bare, token = split_sas(url)
    if token is not None:
        return token
    artifacts_bare, artifacts_token = split_sas(os.environ.get("MITORCH_ARTIFACTS_URI", ""))
    if artifacts_token and bare.startswith(artifacts_bare.rstrip("/") + "/"):
        return artifacts_token
    return _read().get(container_url(bare))
