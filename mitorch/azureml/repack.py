"""A wheel of the installed MiTorch, re-packed from its own files, for when it runs from a plain
(non-editable) install and has no source tree to build one from.

An installed distribution lists its files in its metadata (the `.dist-info/RECORD` an installer
writes, which `importlib.metadata`'s `Distribution.files` reads). The package files among them
(`mitorch/`, `hydra_plugins/`), with the distribution's METADATA and entry points, make the wheel
again; its WHEEL (with the original's tag) and RECORD (fresh hashes and sizes) are written anew.
What the installer added is left out: compiled `__pycache__` files, INSTALLER, REQUESTED,
direct_url.json, and the console scripts it put outside site-packages (installing the wheel
makes them again from its entry points).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

from mitorch.errors import ConfigError

# Written by the installer, not part of the wheel (RECORD is written afresh, and so is WHEEL, from
# the original's tags).
_INSTALLER_FILES = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD", "RECORD.jws", "RECORD.p7s"}
_FIX = "set MITORCH_AML_WHEEL to a wheel of this MiTorch for AzureML jobs to install"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same files make the same wheel


def installed_distribution() -> metadata.Distribution:
    """The installed distribution this MiTorch is imported from (not another one on the path).

    Raises:
        ConfigError: the imported MiTorch belongs to no installed distribution.
    """
    import mitorch

    here = Path(mitorch.__file__).resolve()
    for dist in metadata.distributions(name="mitorch"):
        if Path(dist.locate_file("mitorch/__init__.py")).resolve() == here:
            return dist
    raise ConfigError(f"MiTorch at {here.parent} has neither its source nor installed metadata beside it; {_FIX}")


def wheel_files(dist: metadata.Distribution) -> list[tuple[str, bytes]]:
    """The files the wheel holds, as (path in the wheel, content), sorted: the package files and
    the `.dist-info` files that came from the original wheel (WHEEL among them, when present).

    Raises:
        ConfigError: the distribution's metadata lists no files, or a listed file is missing.
    """
    # RECORD itself rather than dist.files: from Python 3.12 that list silently drops missing
    # files, and for an egg-info install it lists the source files instead.
    record = dist.read_text("RECORD")
    if record is None:
        raise ConfigError(f"the installed MiTorch at {Path(dist.locate_file('mitorch')).parent} lists no files in "
                          f"its metadata (no .dist-info/RECORD; some installers leave it out); {_FIX}")
    files = []
    for row in csv.reader(record.splitlines()):
        entry = PurePosixPath(row[0]) if row and row[0] else None
        if entry is None or entry.is_absolute() or ".." in entry.parts:
            continue  # scripts and data installed outside site-packages
        parts = entry.parts
        if "__pycache__" in parts or entry.suffix == ".pyc":
            continue
        if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] in _INSTALLER_FILES:
            continue
        path = Path(dist.locate_file(entry))
        try:
            files.append(("/".join(parts), path.read_bytes()))
        except OSError:
            raise ConfigError(f"the installed MiTorch misses its file {path}; reinstall MiTorch or {_FIX}") from None
    return sorted(files)


def write_wheel(dist: metadata.Distribution, files: list[tuple[str, bytes]], folder: Path) -> Path:
    """Write the wheel of `files` (from wheel_files) into `folder`, with a fresh WHEEL and RECORD.

    Returns:
        The wheel's path, named `NAME-VERSION-TAG.whl` with the original wheel's tag (MiTorch is
        pure Python: py3-none-any).
    """
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    version = dist.version.replace("-", "_")
    info = f"{name}-{version}.dist-info"
    original = {p.split("/", 1)[1]: content for p, content in files if p.split("/", 1)[0].endswith(".dist-info")}
    tags, purelib = _wheel_tags(original.get("WHEEL", b"").decode("utf-8", "replace"))
    entries = [(p, content) for p, content in files if not p.split("/", 1)[0].endswith(".dist-info")]
    entries += [(f"{info}/{p}", content) for p, content in original.items() if p != "WHEEL"]
    entries.append((f"{info}/WHEEL", ("Wheel-Version: 1.0\nGenerator: mitorch (re-packed from the installed files)\n"
                                      f"Root-Is-Purelib: {purelib}\n"
                                      + "".join(f"Tag: {tag}\n" for tag in tags)).encode()))
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, content in entries:
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(content)])
    writer.writerow([f"{info}/RECORD", "", ""])
    entries.append((f"{info}/RECORD", record.getvalue().encode()))
    wheel = folder / f"{name}-{version}-{_compressed(tags)}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, content in entries:  # the .dist-info last, RECORD at the very end
            member = zipfile.ZipInfo(path, _ZIP_TIME)
            member.external_attr = 0o644 << 16
            member.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(member, content)
    return wheel


def _wheel_tags(text: str) -> tuple[list[str], str]:
    """The original WHEEL's tags and Root-Is-Purelib; without one, a pure Python wheel's."""
    tags, purelib = [], "true"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Tag" and value.strip():
            tags.append(value.strip())
        elif key.strip() == "Root-Is-Purelib" and value.strip():
            purelib = value.strip().lower()
    return tags or ["py3-none-any"], purelib


def _compressed(tags: list[str]) -> str:
    """py2-none-any, py3-none-any -> py2.py3-none-any (the file name's compressed tag set)."""
    columns: list[list[str]] = [[], [], []]
    for tag in tags:
        for column, part in zip(columns, tag.split("-")):
            if part not in column:
                column.append(part)
    return "-".join(".".join(column) for column in columns)
