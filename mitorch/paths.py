"""The user's directories for MiTorch, after the XDG base-directory rules."""
from __future__ import annotations

import os
from pathlib import Path


def _xdg(variable: str, *default: str) -> Path:
    return Path(os.environ.get(variable) or os.path.join(os.path.expanduser("~"), *default)) / "mitorch"


def cache_dir() -> Path:
    """Generated and downloaded data: $MITORCH_CACHE_DIR, else $XDG_CACHE_HOME/mitorch, else ~/.cache/mitorch."""
    if os.environ.get("MITORCH_CACHE_DIR"):
        return Path(os.environ["MITORCH_CACHE_DIR"])
    return _xdg("XDG_CACHE_HOME", ".cache")


def data_dir() -> Path:
    """The embedded job store and local artifacts: $XDG_DATA_HOME/mitorch, else ~/.local/share/mitorch."""
    return _xdg("XDG_DATA_HOME", ".local", "share")


def config_dir() -> Path:
    """The credentials file: $XDG_CONFIG_HOME/mitorch, else ~/.config/mitorch."""
    return _xdg("XDG_CONFIG_HOME", ".config")
