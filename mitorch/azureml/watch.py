"""How long each AzureML job of an executor has been waiting to start, or stuck, across ticks.

AzureML tells a job's status but not since when the job is in it, and every micontrol tick is a
new process. So the executor keeps, for each job it reads, the phase it saw and since when, in
a small JSON file under the data directory (one file per executor identity; the tick lease lets
one tick of an identity run at a time). The training record is the controller's alone.

Phases, from a job's status:
    waiting  NotStarted, Queued, Provisioning, Preparing, Starting (not running its command yet)
    running  Running
    ended    Completed, Failed, Canceled
    stuck    anything else: NotResponding, CancelRequested, Finalizing, Paused, Unknown, and any
             status MiTorch does not know

A phase's clock starts at the first tick that sees the job in it (statuses of one phase share
it: Queued then Preparing is one wait). A job this file has no entry for that is waiting counts
from its creation, which AzureML keeps: it cannot have waited longer. A lost or unreadable file
restarts the clocks, so a job is escalated later, never earlier.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mitorch.azureml.jobs import RUNNING, TERMINAL, WAITING
from mitorch.errors import MiTorchError

# An entry no tick has looked at for this long past its limits belongs to a job whose training
# ended: it is dropped when the file is next written.
_KEEP_S = 30 * 24 * 3600.0


def phase_of(status: str) -> str:
    """"waiting", "running", "ended" or "stuck" (see the module's docstring)."""
    status = status.lower()
    if status in WAITING:
        return "waiting"
    if status == RUNNING:
        return "running"
    return "ended" if status in TERMINAL else "stuck"


class JobWatch:
    """The phase clocks of one executor's jobs.

    Args:
        path: the JSON file that keeps them between ticks.
        stuck_s: the longest a job may stay stuck (MITORCH_AML_STUCK_S).
        queued_max_s: the longest a job may wait to start; 0: no limit (MITORCH_AML_QUEUED_MAX_S).
        clock: seconds since the epoch (time.time); the limits are judged on it.
    """

    def __init__(self, path: Path, stuck_s: float, queued_max_s: float, clock: Callable[[], float]) -> None:
        self.path, self.stuck_s, self.queued_max_s, self.clock = path, stuck_s, queued_max_s, clock

    def escalated(self, name: str) -> str | None:
        """Why the executor gave the job up at an earlier tick (it is gone for good), or None."""
        return self._load().get(name, {}).get("escalated")

    def see(self, name: str, status: str, created_at: datetime | None) -> str | None:
        """Records that the job is in status now.

        Returns:
            When the job has been waiting or stuck for longer than its limit, the line that says
            so (e.g. "AzureML job X was stuck in NotResponding for 1:00:05, longer than
            MITORCH_AML_STUCK_S=3600"); else None.
        """
        jobs, now, phase = self._load(), self.clock(), phase_of(status)
        entry = jobs.get(name)
        if phase == "ended":
            if entry is not None:
                del jobs[name]
                self._save(jobs)
            return None
        if entry is None or entry.get("phase") != phase:
            since = now
            if entry is None and phase == "waiting" and created_at is not None:
                since = min(now, _seconds(created_at))
            entry = jobs[name] = {"phase": phase, "since": since, "statuses": [status]}
            self._save(jobs)
        elif status not in entry["statuses"]:
            entry["statuses"].append(status)
            self._save(jobs)
        return self._overdue(name, entry, now)

    def escalate(self, name: str, reason: str) -> None:
        """Remembers that the job was given up, and why, for the ticks that read it again."""
        jobs = self._load()
        jobs[name] = {**jobs.get(name, {"since": self.clock()}), "escalated": reason}
        self._save(jobs)

    # Helpers -----------------------------------------------------------------------------------

    def _overdue(self, name: str, entry: dict[str, Any], now: float) -> str | None:
        if entry["phase"] == "stuck":
            limit, variable, what = self.stuck_s, "MITORCH_AML_STUCK_S", "stuck in " + " then ".join(entry["statuses"])
        elif entry["phase"] == "waiting" and self.queued_max_s > 0:
            limit, variable = self.queued_max_s, "MITORCH_AML_QUEUED_MAX_S"
            what = f"waiting to start ({', '.join(entry['statuses'])})"
        else:
            return None
        elapsed = now - entry["since"]
        if elapsed <= limit:
            return None
        return (f"AzureML job {name} was {what} for {timedelta(seconds=round(elapsed))}, "
                f"longer than {variable}={limit:g}")

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            jobs = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: the clocks start again (later, never earlier)
        return jobs if isinstance(jobs, dict) else {}

    def _save(self, jobs: dict[str, dict[str, Any]]) -> None:
        oldest = self.clock() - _KEEP_S - max(self.stuck_s, self.queued_max_s)
        kept = {name: entry for name, entry in jobs.items() if entry.get("since", 0) >= oldest}
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(kept, indent=1, sort_keys=True))
            os.replace(partial, self.path)
        except OSError as e:
            # Without it no job could ever be found stuck: say so rather than hold slots for ever.
            raise MiTorchError(f"cannot keep the AzureML job clocks in {self.path} ({e.strerror or e}); "
                               "set XDG_DATA_HOME to a writable folder that lasts between ticks") from None


def _seconds(moment: datetime) -> float:
    """A timestamp from AzureML (UTC; a naive one is UTC too) as seconds since the epoch."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
