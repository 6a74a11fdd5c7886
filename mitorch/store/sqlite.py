"""The embedded backend: one SQLite file, safe for several processes on one machine (WAL,
immediate transactions). The machine's clock is the database's clock."""
from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mitorch.envvars import env_float
from mitorch.store.base import (DB_NOW, STATUSES, DuplicateError, JobStore, LeaseLost, StoreError, dataset_record,
                                field_names, duplicate_message as _duplicate_message, new_id, now, set_path,
                                status_fields, training_record)

# Version 2: attempts and leases; 3: Optuna journals; 4: one training per search trial; 5: an index
# on fingerprints; 6: an index on parents. A database written by a newer MiTorch is refused, not misread.
SCHEMA_VERSION = 6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trainings (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, priority INTEGER NOT NULL, created_at TEXT NOT NULL,
    job_id TEXT, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS trainings_queue ON trainings (status, priority, created_at);
CREATE INDEX IF NOT EXISTS trainings_recent ON trainings (status, created_at);
CREATE INDEX IF NOT EXISTS trainings_job ON trainings (job_id, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS trainings_trial ON trainings (job_id, json_extract(data, '$.trial_number'))
    WHERE json_extract(data, '$.trial_number') IS NOT NULL;
CREATE INDEX IF NOT EXISTS trainings_fingerprint ON trainings (json_extract(data, '$.fingerprint'), created_at);
CREATE INDEX IF NOT EXISTS trainings_parent ON trainings (json_extract(data, '$.parent'), created_at);
CREATE TABLE IF NOT EXISTS training_results (
    training_id TEXT NOT NULL, epoch INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (training_id, epoch));
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT, created_at TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_recent ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT NOT NULL, version INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS optuna_journal (
    journal TEXT NOT NULL, number INTEGER NOT NULL, log TEXT NOT NULL, PRIMARY KEY (journal, number));
"""


def _encode(record: dict[str, Any]) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return {"$date": value.isoformat()}
        raise TypeError(f"a {type(value).__name__} cannot be stored")
    return json.dumps(record, default=default)


# SQLite's `->` JSON operator (3.38 and later).
_JSON_ARROW = sqlite3.sqlite_version_info >= (3, 38)


def _decode(text: str) -> dict[str, Any]:
    def hook(value: dict) -> Any:
        if len(value) == 1 and "$date" in value:
            return datetime.fromisoformat(value["$date"])
        return value
    return json.loads(text, object_hook=hook)


def _key(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


class SQLiteStore(JobStore):
    """A JobStore in one SQLite file.

    Args:
        path: the database file; its folder is created when missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # How long a request waits for another process's write lock (MITORCH_SQLITE_BUSY_TIMEOUT_S).
        busy_s = env_float("MITORCH_SQLITE_BUSY_TIMEOUT_S", 30.0, minimum=0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=busy_s, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_s * 1000)}")
            # Only a database older than this schema needs the write lock at opening.
            if self._schema_version() != SCHEMA_VERSION:
                with self._transaction() as db:
                    version = db.execute("PRAGMA user_version").fetchone()[0]
                    if version > SCHEMA_VERSION:
                        raise StoreError(f"the database sqlite:///{self.path} was written by a newer MiTorch "
                                         f"(schema {version}, this one reads up to {SCHEMA_VERSION}); upgrade MiTorch")
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except StoreError:
            raise
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the database sqlite:///{self.path}: {e}; check MITORCH_DB_URI") from None

    def _schema_version(self) -> int:
        with self._transaction(write=False) as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock at once: a claim's read and write are one step.
        # Reads take no lock (WAL): they go on while another process writes.
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise StoreError(f"database request failed: {e} (sqlite:///{self.path})") from None
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.ProgrammingError):
                    raise StoreError(f"database request failed: {e} (sqlite:///{self.path})") from None
                raise

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._transaction(write=False) as db:
            return [_decode(row[0]) for row in db.execute(sql, args).fetchall()]

    # -- trainings ------------------------------------------------------------------------

    def add_trainings(self, trainings: Sequence[dict[str, Any]]) -> list[str]:
        records = [training_record(t) for t in trainings]
        with self._transaction() as db:
            self._insert_trainings(db, records)
        return [r["id"] for r in records]

    @staticmethod
    def _insert_trainings(db: sqlite3.Connection, records: Sequence[dict[str, Any]]) -> None:
        for r in records:
            try:
                db.execute("INSERT INTO trainings VALUES (?, ?, ?, ?, ?, ?)",
                           (r["id"], r["status"], r["priority"], _key(r["created_at"]), r.get("job_id"), _encode(r)))
            except sqlite3.IntegrityError:
                raise DuplicateError(_duplicate_message(r)) from None

    def get_training(self, training_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT data FROM trainings WHERE id = ?", (training_id,))
        return rows[0] if rows else None

    def list_trainings(self, statuses: Sequence[str] | None = None, job_id: str | None = None,
                       order: str = "queue", limit: int | None = None,
                       fields: Sequence[str] | None = None, parent: str | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        if statuses is not None:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if job_id is not None:
            where.append("job_id = ?")
            args.append(job_id)
        if parent is not None:
            where.append("json_extract(data, '$.parent') = ?")  # the index's expression: the index answers
            args.append(parent)
        column = "data"
        names = None if fields is None else field_names(fields)
        if names is not None and _JSON_ARROW:
            # `->` gives each value as JSON (true stays true, floats keep every digit), and
            # json_object keeps it JSON.
            pairs = "".join(f", '{name}', data -> '$.{name}'" for name in names)
            column = f"json_object('id', id{pairs})"
        sql = f"SELECT {column} FROM trainings" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY priority, created_at, id" if order == "queue" else " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self._rows(sql, args)
        if names is not None and not _JSON_ARROW:  # an SQLite before 3.38: whole records, then their fields
            rows = [{"id": row["id"], **{name: row.get(name) for name in names}} for row in rows]
        return rows

    def claim_training(self, fields: dict[str, Any], from_status: str = "new", to_status: str = "queued",
                       new_attempt: dict[str, Any] | None = None) -> dict[str, Any] | None:
        with self._transaction() as db:
            row = db.execute("SELECT data FROM trainings WHERE status = ? ORDER BY priority, created_at, id LIMIT 1",
                             (from_status,)).fetchone()
            if row is None:
                return None
            record = _decode(row[0])
            if new_attempt is not None:
                record["attempt"] = record.get("attempt", 0) + 1
                record["attempts"] = [*record.get("attempts", []), _stamped(new_attempt)]
            return self._apply(db, record, {**fields, "status": to_status})

    def update_training(self, training_id: str, fields: dict[str, Any],
                        expected_status: str | Sequence[str] | None = None,
                        attempt: int | None = None) -> bool:
        expected = [expected_status] if isinstance(expected_status, str) else expected_status
        with self._transaction() as db:
            row = db.execute("SELECT data FROM trainings WHERE id = ?", (training_id,)).fetchone()
            if row is None:
                return False
            record = _decode(row[0])
            if expected is not None and record["status"] not in expected:
                return False
            if attempt is not None and record.get("attempt", 0) != attempt:
                return False
            self._apply(db, record, fields)
            return True

    @staticmethod
    def _apply(db: sqlite3.Connection, record: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        fields, history = status_fields(_stamped(fields))
        for key, value in fields.items():
            set_path(record, key, value)
        if history is not None:
            record["status_history"] = [*record.get("status_history", []), history]
        db.execute("UPDATE trainings SET status = ?, priority = ?, job_id = ?, data = ? WHERE id = ?",
                   (record["status"], record["priority"], record.get("job_id"), _encode(record), record["id"]))
        return record

    def find_trainings(self, fingerprint: str, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        # The same expression as the index's, so that the index answers.
        sql, args = "SELECT data FROM trainings WHERE json_extract(data, '$.fingerprint') = ?", [fingerprint]
        if statuses is not None:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args.extend(statuses)
        return self._rows(sql + " ORDER BY created_at, id", args)

    def count_trainings(self, job_id: str | None = None) -> dict[str, int]:
        where, args = ("WHERE job_id = ? ", (job_id,)) if job_id is not None else ("", ())
        with self._transaction(write=False) as db:
            counts = dict(db.execute(f"SELECT status, COUNT(*) FROM trainings {where}GROUP BY status", args).fetchall())
        return {status: counts.get(status, 0) for status in STATUSES}

    # -- per-epoch results ----------------------------------------------------------------

    def put_result(self, training_id: str, result: dict[str, Any], attempt: int | None = None) -> bool:
        record = {**result, "training_id": training_id, "recorded_at": now()}
        if attempt is not None:
            record["attempt"] = attempt
        with self._transaction() as db:
            if attempt is not None:
                row = db.execute("SELECT status, data FROM trainings WHERE id = ?", (training_id,)).fetchone()
                if row is None or row[0] != "running" or _decode(row[1]).get("attempt", 0) != attempt:
                    return False
            db.execute("INSERT OR REPLACE INTO training_results VALUES (?, ?, ?)",
                       (training_id, int(result["epoch"]), _encode(record)))
        return True

    def list_results(self, training_id: str, after: int | None = None) -> list[dict[str, Any]]:
        if after is None:
            return self._rows("SELECT data FROM training_results WHERE training_id = ? ORDER BY epoch", (training_id,))
        return self._rows("SELECT data FROM training_results WHERE training_id = ? AND epoch > ? ORDER BY epoch",
                          (training_id, after))

    # -- jobs -----------------------------------------------------------------------------

    def add_job(self, job: dict[str, Any], trainings: Sequence[dict[str, Any]] = ()) -> tuple[str, list[str]]:
        record = {"status": "new", **job, "id": job.get("id") or new_id(), "created_at": now()}
        children = [training_record({**t, "job_id": record["id"]}) for t in trainings]
        with self._transaction() as db:
            db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?)",
                       (record["id"], record["status"], _key(record["created_at"]), _encode(record)))
            self._insert_trainings(db, children)
        return record["id"], [t["id"] for t in children]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT data FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def update_job(self, job_id: str, fields: dict[str, Any], lease: tuple[str, str] | None = None) -> bool:
        # The lease check and the write share one immediate transaction: no other process can
        # take the lease between them.
        with self._transaction() as db:
            if lease is not None and not _holds(db, lease):
                return False
            row = db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            record = {**_decode(row[0]), **fields}
            db.execute("UPDATE jobs SET status = ?, data = ? WHERE id = ?", (record["status"], _encode(record), job_id))
            return True

    def list_jobs(self, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        if statuses is None:
            return self._rows("SELECT data FROM jobs ORDER BY created_at DESC, id DESC")
        marks = ",".join("?" * len(statuses))
        return self._rows(f"SELECT data FROM jobs WHERE status IN ({marks}) ORDER BY created_at DESC, id DESC",
                          list(statuses))

    # -- datasets -------------------------------------------------------------------------

    def put_datasets(self, datasets: Sequence[dict[str, Any]]) -> None:
        records = [dataset_record(d) for d in datasets]
        with self._transaction() as db:
            for r in records:
                db.execute("INSERT OR REPLACE INTO datasets VALUES (?, ?, ?)", (r["name"], r["version"], _encode(r)))

    def get_dataset(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        if version is None:
            rows = self._rows("SELECT data FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1", (name,))
        else:
            rows = self._rows("SELECT data FROM datasets WHERE name = ? AND version = ?", (name, version))
        return rows[0] if rows else None

    def list_datasets(self) -> list[dict[str, Any]]:
        return self._rows("SELECT data FROM datasets ORDER BY name, version")

    # -- the database's clock and leases ---------------------------------------------------

    def clock(self) -> datetime:
        return now()

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        with self._transaction() as db:
            moment = now()
            row = db.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != holder and datetime.fromisoformat(row[1]) > moment:
                return False
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                       (name, holder, (moment + timedelta(seconds=ttl_s)).isoformat()))
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def get_lease(self, name: str) -> dict[str, Any] | None:
        with self._transaction(write=False) as db:
            row = db.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
        return None if row is None else {"name": name, "holder": row[0], "expires_at": datetime.fromisoformat(row[1])}

    # -- Optuna journals ------------------------------------------------------------------

    def append_logs(self, journal: str, logs: Sequence[dict[str, Any]], lease: tuple[str, str] | None = None) -> None:
        texts = [json.dumps(log) for log in logs]  # checked before the write lock is taken
        with self._transaction() as db:  # the write lock makes max + 1 safe, and the lease check atomic
            if lease is not None and not _holds(db, lease):
                raise LeaseLost(*lease)
            last = db.execute("SELECT MAX(number) FROM optuna_journal WHERE journal = ?", (journal,)).fetchone()[0]
            start = -1 if last is None else last
            db.executemany("INSERT INTO optuna_journal VALUES (?, ?, ?)",
                           [(journal, start + 1 + i, text) for i, text in enumerate(texts)])

    def read_logs(self, journal: str, log_number_from: int = 0) -> list[dict[str, Any]]:
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT log FROM optuna_journal WHERE journal = ? AND number >= ? ORDER BY number",
                              (journal, log_number_from)).fetchall()
        return json.loads(f"[{','.join(row[0] for row in rows)}]")  # one parse: a replay reads thousands

    # -- read-only queries for viewers ------------------------------------------------------

    def training_states(self) -> list[dict[str, Any]]:
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT id, status, priority FROM trainings").fetchall()
        return [{"id": i, "status": s, "priority": p} for i, s, p in rows]

    def get_trainings(self, training_ids: Sequence[str]) -> list[dict[str, Any]]:
        wanted = list(dict.fromkeys(training_ids))
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(wanted):
            for record in self._rows(f"SELECT data FROM trainings WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                found[record["id"]] = record
        return [found[i] for i in wanted if i in found]

    def results_of(self, training_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        results: dict[str, list[dict[str, Any]]] = {i: [] for i in training_ids}
        for chunk in _chunks(list(results)):
            marks = ",".join("?" * len(chunk))
            for record in self._rows(f"SELECT data FROM training_results WHERE training_id IN ({marks}) "
                                     "ORDER BY training_id, epoch", chunk):
                results[record["training_id"]].append(record)
        return results

    def count_results(self, training_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        counts = {i: {"count": 0, "last_epoch": None} for i in training_ids}
        for chunk in _chunks(list(counts)):
            with self._transaction(write=False) as db:
                rows = db.execute(f"SELECT training_id, COUNT(*), MAX(epoch) FROM training_results WHERE training_id IN "
                                  f"({','.join('?' * len(chunk))}) GROUP BY training_id", chunk).fetchall()
            for training_id, count, last in rows:
                counts[training_id] = {"count": count, "last_epoch": last}
        return counts

    def close(self) -> None:
        with self._lock:  # not while another thread's request is in flight on this connection
            self._db.close()


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    # SQLite caps the number of parameters of one statement.
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _holds(db: sqlite3.Connection, lease: tuple[str, str]) -> bool:
    """Whether the lease (name, holder) is held by holder and unexpired now."""
    name, holder = lease
    row = db.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] == holder and datetime.fromisoformat(row[1]) > now()


def _stamped(fields: dict[str, Any]) -> dict[str, Any]:
    stamp = now()
    return {key: stamp if value is DB_NOW else value for key, value in fields.items()}
