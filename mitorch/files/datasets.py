"""Registered datasets: checking a registration file, and making a split's files local.

A registration file is a JSON list of entries:

    {"name": "shapes", "version": 0,
     "train": {"path": "https://acct.blob.core.windows.net/data/train.txt?sv=...&sig=...",
               "support_files": ["https://acct.blob.core.windows.net/data/images.zip?sv=...&sig=..."]},
     "val": {"path": "/data/shapes/val.txt", "support_files": []}}

`path` is what mitrain reads (a text-format file or an image folder); `support_files` are the
files it refers to (image archives, labels.txt), which end up beside it. Versions are whole
numbers from 0, as in the original MiTorch's dataset definitions.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mitorch.errors import ConfigError
from mitorch.files import credentials, remote
from mitorch.files.secrets import credential_forms, redact

# Versions are stored as 64-bit integers (SQLite INTEGER, MongoDB long).
MAX_VERSION = 2**63 - 1
# A dataset's name is a label typed on command lines (--dataset NAME) and shown in tables.
MAX_NAME_CHARS = 128
# A registration file of thousands of datasets is a few MB; a larger one is not read.
MAX_FILE_BYTES = 10_000_000

SPLITS = ("train", "val")


def read_registration(file: str) -> list[dict[str, Any]]:
    """The dataset records a registration file describes, every entry checked; SAS tokens move to
    the credentials file, local paths become absolute (relative to the file).

    Raises:
        ConfigError: naming the file, the entry and what is wrong. Nothing is kept then.
    """
    try:
        size = Path(file).stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"dataset file {file} holds {size} bytes, more than {MAX_FILE_BYTES}; an entry is a few "
                              "hundred bytes")
        entries = json.loads(Path(file).read_text())
    except FileNotFoundError:
        raise ConfigError(f"dataset file {file} does not exist") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"dataset file {file} is not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"dataset file {file} nests too deeply; an entry is {{name, version, train, val}}") from None
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"dataset file {file} must hold a JSON list of datasets")
    base = Path(file).resolve().parent
    checked = [_check_entry(entry, i, file, base) for i, entry in enumerate(entries)]
    seen = set()
    for entry in checked:
        key = (entry["name"], entry["version"])
        if key in seen:
            raise ConfigError(f"dataset file {file}: {entry['name']} version {entry['version']} appears twice")
        seen.add(key)
    # Only now that every entry is valid do tokens go to the credentials file.
    for entry in checked:
        for split in SPLITS:
            entry[split] = {"path": credentials.remember(entry[split]["path"]),
                            "support_files": [credentials.remember(f) for f in entry[split]["support_files"]]}
    return checked


def _check_entry(entry: Any, index: int, file: str, base: Path) -> dict[str, Any]:
    where = f"dataset file {file}, entry {index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object with name, version, train and val")
    unknown = set(entry) - {"name", "version", "train", "val", "description"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                          "keys are name, version, train, val, description")
    name, version = entry.get("name"), entry.get("version")
    if not isinstance(name, str) or not name or ":" in name or name != name.strip() or not name.isprintable() \
            or len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"{where}: name must be a non-empty string of at most {MAX_NAME_CHARS} characters without "
                          "':', surrounding spaces or control characters")
    where = f"dataset file {file}, {name}"
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= MAX_VERSION:
        raise ConfigError(f"{where}: version must be a whole number from 0 to 2**63-1, got {_short(version)}")
    record = {"name": name, "version": version}
    if "description" in entry:
        record["description"] = str(entry["description"])
        if credential_forms(record["description"]):
            raise ConfigError(f"{where}: the description carries a credential "
                              f"({', '.join(credential_forms(record['description']))}); leave secrets out of it")
    for split in SPLITS:
        value = entry.get(split)
        if not isinstance(value, dict) or not isinstance(value.get("path"), str):
            raise ConfigError(f"{where}: {split} must be an object with a path")
        support = value.get("support_files", [])
        if not isinstance(support, list) or not all(isinstance(f, str) for f in support):
            raise ConfigError(f"{where}: {split}.support_files must be a list of paths or URLs")
        extra = set(value) - {"path", "support_files"}
        if extra:
            raise ConfigError(f"{where}: {split} has unknown key(s) {', '.join(sorted(extra))}")
        paths = [_check_path(p, f"{where}: {split}", base) for p in [value["path"], *support]]
        names = [_file_name(p) for p in paths]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: {split} has two files named alike; they must sit side by side")
        record[split] = {"path": paths[0], "support_files": paths[1:]}
    return record


def _check_path(path: str, where: str, base: Path) -> str:
    if not path.strip():
        # An empty path would stand for the registration file's own folder.
        raise ConfigError(f"{where}: a path is empty; give the split's file or folder, or an https URL")
    if remote.is_remote(path):
        scheme = path.split("://", 1)[0]
        if scheme == "http" and not _loopback(path):
            raise ConfigError(f"{where}: {redact(remote.bare(path))} is plain http; use https")
        # A token in the query moves to the credentials file; one anywhere else would be stored.
        kept = credential_forms(credentials.split_sas(path)[0])
        if kept:
            raise ConfigError(f"{where}: {redact(remote.bare(path))} carries a credential outside its query "
                              f"({', '.join(kept)}); give a SAS token or a presigned URL instead")
        return path
    if "://" in path:
        raise ConfigError(f"{where}: {redact(path.split('?')[0])} is neither a local path nor an http(s) URL")
    local = (base / os.path.expanduser(path)).resolve()
    if not local.exists():
        raise ConfigError(f"{where}: {local} does not exist")
    return str(local)


def _loopback(url: str) -> bool:
    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def _file_name(path: str) -> str:
    return Path(remote.bare(path).rstrip("/")).name


def parse_reference(text: str) -> tuple[str, int | None]:
    """NAME or NAME:VERSION."""
    name, _, version = text.partition(":")
    if not name:
        raise ConfigError(f"--dataset needs NAME or NAME:VERSION, got {_short(text)}")
    check_name(name, "--dataset")
    if not version:
        return name, None
    return name, parse_version(version, f"--dataset {name}")


def check_name(name: str, what: str) -> None:
    """Refuses a dataset name longer than any registered one can be, before the store is asked.

    Raises:
        ConfigError: naming what and the cap.
    """
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"{what}: a dataset name has at most {MAX_NAME_CHARS} characters, got {len(name)}")


def parse_version(text: str, what: str = "--version") -> int:
    """A dataset version given as text: a whole number from 0 to 2**63-1.

    Raises:
        ConfigError: naming what and the value.
    """
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_VERSION:
        raise ConfigError(f"{what}: the version must be a whole number from 0 to 2**63-1, got {_short(text)}")
    return int(text)


def _short(value: Any) -> str:
    """value for an error message, cut short: a hostile value may be megabytes long."""
    try:
        shown = repr(value)
    except ValueError:  # an integer beyond Python's digit limit
        return "a number too long to show"
    return shown if len(shown) <= 40 else f"{shown[:37]}..."


def local_split(split: dict[str, Any]) -> str:
    """A local path to read a split from: local files as they are; remote files downloaded (or
    taken from the cache) and linked side by side into one folder."""
    files = [split["path"], *split.get("support_files", [])]
    if not any(remote.is_remote(f) for f in files):
        return split["path"]
    copies = [remote.fetch(f) for f in files]
    key = hashlib.sha256("\n".join(remote.bare(f) for f in files).encode()).hexdigest()[:32]
    folder = remote.cache_dir() / "datasets" / key
    folder.mkdir(parents=True, exist_ok=True)
    for name, copy in zip((_file_name(f) for f in files), copies):
        link = folder / name
        if not link.exists():
            temporary = folder / f".{name}.{os.getpid()}"
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(copy.resolve())
            os.replace(temporary, link)
    return str(folder / _file_name(files[0]))
