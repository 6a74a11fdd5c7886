"""Reading image bytes from plain files and from members of zip archives ("a.zip@b.jpg")."""
from __future__ import annotations

import os
import re
import zipfile

_ZIP_MEMBER = re.compile(r"^(.+?\.zip)@(.+)$", re.IGNORECASE)


def split_zip_path(path: str) -> tuple[str, str | None]:
    """Splits "dir/archive.zip@member.jpg" into ("dir/archive.zip", "member.jpg")."""
    match = _ZIP_MEMBER.match(path)
    if match:
        return match.group(1), match.group(2)
    return path, None


class FileReader:
    """Reads file contents; zip archives stay open, one handle per archive per process.

    DataLoader workers are separate processes: a handle opened before the fork would share
    its file offset with the parent, so handles are keyed by the process that opened them.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._archives: dict[str, zipfile.ZipFile] = {}

    def read(self, path: str) -> bytes:
        archive, member = split_zip_path(path)
        if member is None:
            with open(path, "rb") as f:
                return f.read()
        return self._archive(archive).read(member)

    def members(self, archive: str) -> set[str]:
        """The member names of a zip archive."""
        return set(self._archive(archive).namelist())

    def _archive(self, path: str) -> zipfile.ZipFile:
        if self._pid != os.getpid():
            # Forked: the inherited handles belong to the parent.
            self._archives = {}
            self._pid = os.getpid()
        handle = self._archives.get(path)
        if handle is None:
            handle = self._archives[path] = zipfile.ZipFile(path)
        return handle

    def __getstate__(self) -> dict:
        # Spawned workers get a fresh reader; open handles do not pickle.
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
