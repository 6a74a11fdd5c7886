"""The JobStore interface: trainings, their per-epoch results, jobs and datasets.

Backends (MongoDB, embedded SQLite) implement the abstract methods and pass one conformance
suite (tests/test_store.py). Records are plain dicts: each carries its `id`; times are
timezone-aware UTC datetimes, kept to the millisecond (as MongoDB keeps them).
"""
from __future__ import annotations

import itertools
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from mitorch.errors import MiTorchError
from mitorch.paths import data_dir

# new -> queued (dispatched to an executor) -> running -> completed | failed | cancelled | pruned
# (pruned: its search job's pruner stopped it early; its per-epoch results are kept)
STATUSES = ("new", "queued", "running", "completed", "failed", "cancelled", "pruned")
FINISHED = ("completed", "failed", "cancelled", "pruned")
ACTIVE = ("new", "queued", "running")
DEFAULT_PRIORITY = 100
# Priorities are stored as 64-bit integers (MongoDB's long).
PRIORITY_MIN, PRIORITY_MAX = -(2**63), 2**63 - 1


def parse_priority(value: object, what: str = "a priority") -> int:
    """A priority from text (a command line, a form) or a value (a job file): a whole number that
    fits in 64 bits.

    Raises:
        ValueError: naming what was wrong, without echoing a long value.
    """
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 30:  # no 64-bit number is written longer; int() of a long one costs its square
            raise ValueError(f"{what} must fit in 64 bits, got {shown}")
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{what} is a whole number, got {shown}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is a whole number, got {shown}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValueError(f"{what} must fit in 64 bits (-2**63 to 2**63-1), got {shown}")
    return value


class StoreError(MiTorchError):
    """The database cannot be reached or refuses a request."""


class DuplicateError(StoreError):
    """A record with the same id, or a training with the same (job_id, trial_number), exists."""


class LeaseLost(StoreError):
    """A write fenced by a lease was refused: its holder no longer holds the lease (it expired, or
    another holder took it)."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"{holder} lost the lease {name!r} (it expired or another holder took it); "
                         "nothing was written: renew it with acquire_lease before writing again")
        self.name, self.holder = name, holder

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuilt from (name, holder), not from the message, when it crosses a process boundary.
        return type(self), (self.name, self.holder)


class _DatabaseNow:
    """A field value the backend replaces with the database's own clock at the moment of the write."""

    def __repr__(self) -> str:
        return "DB_NOW"


# Heartbeats, leases and staleness are judged on one clock, the database's, never by comparing
# the clocks of two machines.
DB_NOW = _DatabaseNow()


def now() -> datetime:
    """The current UTC time, to the millisecond."""
    moment = datetime.now(timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


_PROCESS_TAG = secrets.token_hex(3)
_COUNTER = itertools.count(secrets.randbelow(2**24))


def new_id() -> str:
    """A 24-hex-digit id like a MongoDB ObjectId: milliseconds, a per-process random tag and a
    counter, so ids sort by creation time and, within a process, by creation order."""
    return f"{int(time.time() * 1000):012x}{_PROCESS_TAG}{next(_COUNTER) % 2**24:06x}"


def training_record(fields: dict[str, Any]) -> dict[str, Any]:
    """A new training with its defaults filled in."""
    created = now()
    status = fields.get("status", "new")
    _check_status(status)
    record = {"priority": DEFAULT_PRIORITY, **fields, "id": fields.get("id") or new_id(), "status": status,
              "created_at": created, "status_history": [{"status": status, "at": created}]}
    record["trial_key"] = trial_key(record)
    return record


def trial_key(training: dict[str, Any]) -> str:
    """What keeps one training per search trial: "<job_id>:<trial_number>" for a trial of a job,
    the training's own id otherwise. Every training carries it, so a plain unique index (which
    every MongoDB-compatible server takes, unlike a partial one) guards it."""
    if training.get("job_id") is not None and training.get("trial_number") is not None:
        return f"{training['job_id']}:{training['trial_number']}"
    return str(training["id"])


def duplicate_message(training: dict[str, Any]) -> str:
    if training.get("trial_number") is not None:
        return f"trial {training['trial_number']} of job {training.get('job_id')} already has a training"
    return f"a training with id {training['id']} exists"


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; statuses are {', '.join(STATUSES)}")


def dataset_record(fields: dict[str, Any]) -> dict[str, Any]:
    name, version = fields.get("name"), fields.get("version")
    if not isinstance(name, str) or not name:
        raise ValueError("a dataset needs a name")
    # Whole numbers from 0 (the original MiTorch's examples use 0), stored as 64-bit integers.
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 2**63:
        raise ValueError(f"dataset {name}: version must be a whole number from 0 to 2**63-1, got {version!r}")
    return {**fields, "id": f"{name}:{version}", "registered_at": now()}


class JobStore(ABC):
    """Where trainings, training results, jobs and datasets are kept."""

    # -- trainings ------------------------------------------------------------------------

    @abstractmethod
    def add_trainings(self, trainings: Sequence[dict[str, Any]]) -> list[str]:
        """Stores new trainings (status "new" unless given, priority 100 unless given), all or
        none. A search job has one training per trial: a second training with the same job_id
        and trial_number raises DuplicateError.

        Returns:
            Their ids, in order.
        """

    def add_training(self, training: dict[str, Any]) -> str:
        return self.add_trainings([training])[0]

    @abstractmethod
    def get_training(self, training_id: str) -> dict[str, Any] | None:
        """The training, or None."""

    @abstractmethod
    def list_trainings(self, statuses: Sequence[str] | None = None, job_id: str | None = None,
                       order: str = "queue", limit: int | None = None,
                       fields: Sequence[str] | None = None, parent: str | None = None) -> list[dict[str, Any]]:
        """Trainings with one of `statuses` (all when None), or of one job.

        Args:
            parent: only the trainings whose `parent` is this id (its clones and the trainings
                started from its weights), read by an index.
            order: "queue" (priority, then oldest first: the dispatch order) or "recent"
                (newest first).
            fields: when given, each training is read as its "id" and these top-level fields
                only (None for a field it lacks): a listing that skips whole configs.
        """

    @abstractmethod
    def claim_training(self, fields: dict[str, Any], from_status: str = "new", to_status: str = "queued",
                       new_attempt: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Atomically takes the first training in queue order with from_status, moves it to
        to_status and sets fields. Two racing claims never take the same training.

        Args:
            new_attempt: when given, the claim starts a new attempt: `attempt` (the fencing
                token, 0 before the first) goes up by one and this entry is appended to
                `attempts`, so attempt N is `attempts[N - 1]`.

        Returns:
            The updated training, or None when there is none to take.
        """

    @abstractmethod
    def update_training(self, training_id: str, fields: dict[str, Any],
                        expected_status: str | Sequence[str] | None = None,
                        attempt: int | None = None) -> bool:
        """Sets fields (a "status" among them moves it and is recorded in status_history),
        only if the training's status is one of expected_status (any when None) and, when
        attempt is given, the training still holds that attempt (a write fenced by it).

        A key "attempts.I.name" sets one field of the entry at index I; a value DB_NOW is the
        database's clock at the write.

        Returns:
            Whether the training was updated.
        """

    @abstractmethod
    def find_trainings(self, fingerprint: str, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The trainings whose `fingerprint` field is this one (read by an index), with one of
        `statuses` (all when None), oldest first. A training without a fingerprint (stored by a
        MiTorch before fingerprints) is never found."""

    @abstractmethod
    def count_trainings(self, job_id: str | None = None) -> dict[str, int]:
        """The number of trainings in each status (every status present, zeros included), of
        one job when job_id is given."""

    # -- per-epoch results ----------------------------------------------------------------

    @abstractmethod
    def put_result(self, training_id: str, result: dict[str, Any], attempt: int | None = None) -> bool:
        """Stores one epoch's result (result["epoch"]); a second one for that epoch replaces it.

        Args:
            attempt: when given, the result is stored only while the training holds that attempt
                and is "running": a process back from an outage adds nothing to a training that
                was requeued, cancelled or ended meanwhile, even under the same attempt.

        Returns:
            Whether it was stored.
        """

    @abstractmethod
    def list_results(self, training_id: str, after: int | None = None) -> list[dict[str, Any]]:
        """A training's per-epoch results, by epoch; after: only those of later epochs (what a
        live page has not shown yet), read by the database's index, not filtered here."""

    # -- jobs -----------------------------------------------------------------------------

    @abstractmethod
    def add_job(self, job: dict[str, Any], trainings: Sequence[dict[str, Any]] = ()) -> tuple[str, list[str]]:
        """Stores a job (a sweep or a search) and its first trainings, all or none.

        Returns:
            The job's id and its trainings' ids, in order.
        """

    @abstractmethod
    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job, or None."""

    @abstractmethod
    def update_job(self, job_id: str, fields: dict[str, Any], lease: tuple[str, str] | None = None) -> bool:
        """Sets fields of a job.

        Args:
            lease: (name, holder): the job is updated only while holder holds the lease `name`
                unexpired on the database's clock (an expired lease must be renewed first).

        Returns:
            Whether the job exists and was updated (False when the lease is not held).
        """

    @abstractmethod
    def list_jobs(self, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Jobs, newest first."""

    # -- datasets -------------------------------------------------------------------------

    @abstractmethod
    def put_datasets(self, datasets: Sequence[dict[str, Any]]) -> None:
        """Inserts or replaces datasets by (name, version), all or none."""

    @abstractmethod
    def get_dataset(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        """A dataset version; the highest version when version is None."""

    @abstractmethod
    def list_datasets(self) -> list[dict[str, Any]]:
        """Every dataset version, by name then version."""

    # -- the database's clock and leases ---------------------------------------------------

    @abstractmethod
    def clock(self) -> datetime:
        """The database's current time (the clock that DB_NOW stamps)."""

    @abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Takes (or renews, for its holder) the lease `name` until ttl_s from now on the
        database's clock. A lease whose time ran out (a crashed holder) can be taken by anyone.

        Returns:
            Whether holder holds the lease now.
        """

    @abstractmethod
    def release_lease(self, name: str, holder: str) -> None:
        """Gives the lease up, if holder holds it."""

    @abstractmethod
    def get_lease(self, name: str) -> dict[str, Any] | None:
        """The lease's record ({"holder", "expires_at"}), expired or not, or None."""

    # -- Optuna journals ------------------------------------------------------------------

    @abstractmethod
    def append_logs(self, journal: str, logs: Sequence[dict[str, Any]], lease: tuple[str, str] | None = None) -> None:
        """Appends logs (JSON-serialisable dicts) to the journal `journal`, each with the next log
        number: numbers are dense from 0 and every reader sees the logs in one order, also when
        several processes append at once.

        Args:
            lease: (name, holder): the logs are appended only while holder holds the lease `name`
                unexpired on the database's clock.

        Raises:
            LeaseLost: holder does not hold the lease; nothing was appended.
        """

    @abstractmethod
    def read_logs(self, journal: str, log_number_from: int = 0) -> list[dict[str, Any]]:
        """The journal's logs numbered log_number_from and up, in order (none past a gap)."""

    # -- read-only queries for viewers ------------------------------------------------------
    # Plain implementations over the methods above; backends answer them in fewer requests.

    def training_states(self) -> list[dict[str, Any]]:
        """Every training's id, status and priority, in no particular order: what a viewer's
        cache compares to find the trainings that changed, without reading whole records."""
        return [{"id": t["id"], "status": t["status"], "priority": t["priority"]}
                for t in self.list_trainings(order="recent")]

    def get_trainings(self, training_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The trainings with these ids, in the order asked; ids not found are left out."""
        found = (self.get_training(training_id) for training_id in dict.fromkeys(training_ids))
        return [training for training in found if training is not None]

    def results_of(self, training_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The per-epoch results of several trainings: each id asked -> its results by epoch
        (an empty list when it has none)."""
        return {training_id: self.list_results(training_id) for training_id in dict.fromkeys(training_ids)}

    def count_results(self, training_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """How many per-epoch results each training has and its last epoch, without reading
        them: each id asked -> {"count": N, "last_epoch": E or None}."""
        return {training_id: {"count": len(results), "last_epoch": results[-1]["epoch"] if results else None}
                for training_id, results in self.results_of(training_ids).items()}

    def close(self) -> None:
        """Releases connections."""


def set_path(record: dict[str, Any], key: str, value: Any) -> None:
    """Sets record[key] where key may be dotted ("attempts.0.run_id"), as MongoDB's $set does."""
    *parents, last = key.split(".")
    target: Any = record
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def status_fields(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Splits an update into the fields to set and the status-history entry it adds, if any."""
    status = fields.get("status")
    if status is None:
        return fields, None
    _check_status(status)
    return fields, {"status": status, "at": now()}


def default_sqlite_path() -> str:
    """$XDG_DATA_HOME/mitorch/mitorch.db, else ~/.local/share/mitorch/mitorch.db."""
    return str(data_dir() / "mitorch.db")


def field_names(fields: Sequence[str]) -> list[str]:
    """Checks the top-level field names a listing asks for (they become parts of queries).

    Raises:
        ValueError: a name that is not a plain identifier.
    """
    for name in fields:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"not a training field name: {name!r}")
    return list(fields)
