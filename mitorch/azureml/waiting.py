"""Waiting for the jobs of `hydra/launcher=azureml hydra.launcher.wait=true`, and what a finished
job leaves: its output `run` (the run's Hydra directory) and the JSON line of its final metrics."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mitorch.azureml import jobs
from mitorch.azureml.settings import AzureMLSettings
from mitorch.errors import MiTorchError


def wait(client: Any, names: list[str], settings: AzureMLSettings, poll_s: float) -> dict[str, str]:
    """Polls each job until it ends (Completed, Failed, Canceled); returns its final status.
    Each end is one line on stderr. A job that cannot be read 5 times in a row stops the wait."""
    pending, ended, misses = list(names), {}, dict.fromkeys(names, 0)
    while pending:
        for name in list(pending):
            try:
                status = jobs.status_value(client.jobs.get(name).status)
            except Exception as e:  # noqa: BLE001 - a network or service error: ask again next round
                misses[name] += 1
                if misses[name] >= 5:
                    raise MiTorchError(f"cannot read AzureML job {name} while waiting for it: {settings.reason(e)}; "
                                       "it may still run (see its studio link)") from None
                continue
            misses[name] = 0
            if status.lower() in jobs.TERMINAL:
                ended[name] = status
                pending.remove(name)
                print(f"{name} {status}", file=sys.stderr, flush=True)
        if pending:
            time.sleep(poll_s)
    return ended


def download_run(client: Any, name: str, working_dir: Path, settings: AzureMLSettings) -> None:
    """The job's output `run` (its Hydra run directory) into the run's local sweep subdirectory."""
    working_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mitorch-aml-") as scratch:
        try:
            client.jobs.download(name, download_path=scratch, output_name="run")
        except Exception as e:  # noqa: BLE001
            raise MiTorchError(f"cannot download the output of AzureML job {name}: {settings.reason(e)}") from None
        run = Path(scratch) / "named-outputs" / "run"
        if run.is_dir():
            shutil.copytree(run, working_dir, dirs_exist_ok=True)


def final_metrics(working_dir: Path) -> dict[str, Any] | None:
    """The JSON object on the last line of the run's stdout (rank 0's), or None."""
    try:
        lines = (working_dir / "stdout-rank0.txt").read_text(errors="replace").strip().splitlines()
        value = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
