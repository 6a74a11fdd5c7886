"""Where queued trainings keep weights, checkpoints and logs (MITORCH_ARTIFACTS_URI)."""
from __future__ import annotations

import os
from pathlib import Path

from mitorch.errors import ConfigError


def artifacts_root() -> Path:
    """$MITORCH_ARTIFACTS_URI (a local directory), else ~/.local/share/mitorch/artifacts."""
    uri = os.environ.get("MITORCH_ARTIFACTS_URI")
    if uri:
        if "://" in uri and not uri.startswith("file://"):
            raise ConfigError(f"MITORCH_ARTIFACTS_URI: only local directories are supported so far, got {uri.split('?')[0]}")
        return Path(uri.removeprefix("file://"))
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mitorch" / "artifacts"


def training_dir(training_id: str) -> Path:
    """A training's folder: model.pt, last.pt (so a retry resumes), train.log, run/."""
    return artifacts_root() / training_id
