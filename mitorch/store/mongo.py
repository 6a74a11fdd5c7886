"""The MongoDB backend (also Azure Cosmos DB for MongoDB): widely supported operators only, and
an index behind every sort."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from mitorch.errors import first_line
from mitorch.store.base import (DB_NOW, STATUSES, DuplicateError, JobStore, LeaseLost, StoreError, dataset_record,
                                field_names, duplicate_message as _duplicate_message, new_id, now, status_fields,
                                training_record)
from mitorch.store.uri import redact

DATABASE = "mitorch"
_QUEUE = [("priority", 1), ("created_at", 1), ("_id", 1)]
_RECENT = [("created_at", -1), ("_id", -1)]


def _utc(value: Any) -> Any:
    # A client without tz_aware returns naive UTC datetimes, also inside lists and sub-documents.
    if isinstance(value, dict):
        return {k: _utc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utc(v) for v in value]
    if hasattr(value, "tzinfo") and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _out(document: dict[str, Any] | None) -> dict[str, Any] | None:
    if document is None:
        return None
    document = _utc(document)
    document["id"] = document.pop("_id")
    return document


def _in(record: dict[str, Any]) -> dict[str, Any]:
    document = dict(record)
    document["_id"] = document.pop("id")
    return document


def _attempt_query(attempt: int) -> Any:
    # A training never claimed has no attempt field: it holds attempt 0.
    return attempt if attempt else {"$in": [0, None]}


class MongoStore(JobStore):
    """A JobStore in a MongoDB database.

    Args:
        uri: a mongodb:// or mongodb+srv:// URI; or
        client: an existing pymongo-compatible client (tests pass mongomock's).
        database: the database name.
    """

    def __init__(self, uri: str | None = None, client: Any = None, database: str = DATABASE) -> None:
        import pymongo
        from pymongo.errors import PyMongoError

        try:
            if client is None:
                client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, tz_aware=True,
                                             w=1, retryWrites=False)
                client.admin.command("ping")
            self._client = client
            self._db = client[database]
            self._create_indexes()
        except PyMongoError as e:
            reason = str(e).split(",")[0].split("\n")[0]
            raise StoreError(f"cannot reach the database at {redact(uri or '')} ({reason}); "
                             "check MITORCH_DB_URI and that the server is up") from None
        self._errors = PyMongoError
        self._duplicate = pymongo.errors.DuplicateKeyError
        self._return_after = pymongo.ReturnDocument.AFTER

    def _create_indexes(self) -> None:
        # create_index is idempotent: every process may run it on first use.
        db = self._db
        db.trainings.create_index([("status", 1), *_QUEUE])
        db.trainings.create_index([("status", 1), *_RECENT])
        db.trainings.create_index(_QUEUE)
        db.trainings.create_index(_RECENT)
        db.trainings.create_index([("job_id", 1), *_QUEUE])
        db.trainings.create_index([("job_id", 1), ("trial_number", 1)], unique=True, name="one_training_per_trial",
                                  partialFilterExpression={"trial_number": {"$type": "number"}})
        db.training_results.create_index([("training_id", 1), ("epoch", 1)], unique=True)
        db.jobs.create_index(_RECENT)
        db.jobs.create_index([("status", 1), *_RECENT])
        db.datasets.create_index([("name", 1), ("version", 1)], unique=True)
        db.optuna_journal.create_index([("journal", 1), ("number", 1)], unique=True)

    def _call(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(*args, **kwargs)
        except self._errors as e:
            raise StoreError(f"database request failed: {first_line(e)}") from None

    # -- trainings ------------------------------------------------------------------------

    def add_trainings(self, trainings: Sequence[dict[str, Any]]) -> list[str]:
        records = [training_record(t) for t in trainings]
        self._insert_trainings(records)
        return [r["id"] for r in records]

    def _insert_trainings(self, records: Sequence[dict[str, Any]]) -> None:
        """Inserts all or, after a failure, removes the ones it inserted (no transactions needed)."""
        if not records:
            return
        try:
            self._db.trainings.insert_many([_in(r) for r in records], ordered=True)
        except self._errors as e:
            errors = getattr(e, "details", None) or {}
            inserted = records[:errors["nInserted"]] if "nInserted" in errors else records
            try:
                self._db.trainings.delete_many({"_id": {"$in": [r["id"] for r in inserted]}})
            except self._errors:
                pass
            duplicate = next((w for w in errors.get("writeErrors", ()) if w.get("code") == 11000), None)
            if isinstance(e, self._duplicate) or duplicate is not None:
                raise DuplicateError(_duplicate_message(records[duplicate["index"] if duplicate else 0])) from None
            raise StoreError(f"database request failed: {first_line(e)}") from None

    def get_training(self, training_id: str) -> dict[str, Any] | None:
        return _out(self._call(self._db.trainings.find_one, {"_id": training_id}))

    def list_trainings(self, statuses: Sequence[str] | None = None, job_id: str | None = None,
                       order: str = "queue", limit: int | None = None,
                       fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {}
        if statuses is not None:
            query["status"] = {"$in": list(statuses)}
        if job_id is not None:
            query["job_id"] = job_id
        projection = None if fields is None else dict.fromkeys(field_names(fields), 1)
        cursor = self._db.trainings.find(query, projection, sort=_QUEUE if order == "queue" else _RECENT,
                                         limit=limit or 0)
        trainings = [_out(d) for d in self._call(list, cursor)]
        if fields is not None:
            trainings = [{"id": t["id"], **{name: t.get(name) for name in fields}} for t in trainings]
        return trainings

    def claim_training(self, fields: dict[str, Any], from_status: str = "new", to_status: str = "queued",
                       new_attempt: dict[str, Any] | None = None) -> dict[str, Any] | None:
        update = self._update({**fields, "status": to_status})
        if new_attempt is not None:
            # The entry's times come from the client: $currentDate cannot reach into a pushed entry.
            update["$inc"] = {"attempt": 1}
            update.setdefault("$push", {})["attempts"] = {k: now() if v is DB_NOW else v for k, v in new_attempt.items()}
        return _out(self._call(self._db.trainings.find_one_and_update, {"status": from_status}, update, sort=_QUEUE,
                               return_document=self._return_after))

    def update_training(self, training_id: str, fields: dict[str, Any],
                        expected_status: str | Sequence[str] | None = None,
                        attempt: int | None = None) -> bool:
        query: dict[str, Any] = {"_id": training_id}
        if expected_status is not None:
            expected = [expected_status] if isinstance(expected_status, str) else list(expected_status)
            query["status"] = {"$in": expected}
        if attempt is not None:
            query["attempt"] = _attempt_query(attempt)
        result = self._call(self._db.trainings.update_one, query, self._update(fields))
        return result.matched_count == 1

    @staticmethod
    def _update(fields: dict[str, Any]) -> dict[str, Any]:
        fields, history = status_fields(fields)
        stamped = [key for key, value in fields.items() if value is DB_NOW]
        update: dict[str, Any] = {"$set": {k: v for k, v in fields.items() if v is not DB_NOW}, "$push": {}}
        if stamped:
            update["$currentDate"] = dict.fromkeys(stamped, True)
        if history is not None:
            update["$push"]["status_history"] = history
        return {k: v for k, v in update.items() if v}

    def count_trainings(self, job_id: str | None = None) -> dict[str, int]:
        match = {} if job_id is None else {"job_id": job_id}
        groups = self._call(lambda: list(self._db.trainings.aggregate(
            [{"$match": match}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}])))
        counts = {group["_id"]: group["n"] for group in groups}
        return {s: counts.get(s, 0) for s in STATUSES}

    # -- per-epoch results ----------------------------------------------------------------

    def put_result(self, training_id: str, result: dict[str, Any], attempt: int | None = None) -> bool:
        record = {**result, "training_id": training_id, "recorded_at": now()}
        if attempt is not None:
            # Checked, then written: a successor that takes over in between writes its own
            # result for the same epoch, which replaces this one; a training ended in between
            # keeps this one result of the epoch it was running.
            record["attempt"] = attempt
            current = {"_id": training_id, "status": "running", "attempt": _attempt_query(attempt)}
            if self._call(self._db.trainings.count_documents, current) == 0:
                return False
        self._call(self._db.training_results.replace_one, {"training_id": training_id, "epoch": int(result["epoch"])},
                   record, upsert=True)
        return True

    def list_results(self, training_id: str) -> list[dict[str, Any]]:
        cursor = self._db.training_results.find({"training_id": training_id}, {"_id": 0},
                                                sort=[("training_id", 1), ("epoch", 1)])
        return [_utc(d) for d in self._call(list, cursor)]

    # -- jobs -----------------------------------------------------------------------------

    def add_job(self, job: dict[str, Any], trainings: Sequence[dict[str, Any]] = ()) -> tuple[str, list[str]]:
        # Without multi-document transactions (a standalone server, Cosmos DB): the trainings go
        # first, the job last; a failure on the way removes what was written.
        record = {"status": "new", **job, "id": job.get("id") or new_id(), "created_at": now()}
        children = [training_record({**t, "job_id": record["id"]}) for t in trainings]
        try:
            self._insert_trainings(children)
            self._call(self._db.jobs.insert_one, _in(record))
        except StoreError:
            try:
                self._db.trainings.delete_many({"job_id": record["id"]})
            except self._errors:
                pass
            raise
        return record["id"], [t["id"] for t in children]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return _out(self._call(self._db.jobs.find_one, {"_id": job_id}))

    def update_job(self, job_id: str, fields: dict[str, Any], lease: tuple[str, str] | None = None) -> bool:
        """Sets fields of a job (see JobStore.update_job).

        With a lease, the lease is checked, then the job is written: two requests, not one atomic
        step. A holder paused between the two for longer than the lease's remaining time could
        still write once after another holder took over; callers renew the lease just before
        each write, so that remaining time is a whole ttl.
        """
        if lease is not None and not self._holds(lease):
            return False
        return self._call(self._db.jobs.update_one, {"_id": job_id}, {"$set": dict(fields)}).matched_count == 1

    def list_jobs(self, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        query = {} if statuses is None else {"status": {"$in": list(statuses)}}
        return [_out(d) for d in self._call(list, self._db.jobs.find(query, sort=_RECENT))]

    # -- datasets -------------------------------------------------------------------------

    def put_datasets(self, datasets: Sequence[dict[str, Any]]) -> None:
        records = [dataset_record(d) for d in datasets]  # every entry is checked before any write
        for r in records:
            self._call(self._db.datasets.replace_one, {"name": r["name"], "version": r["version"]}, _in(r), upsert=True)

    def get_dataset(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        query: dict[str, Any] = {"name": name}
        if version is not None:
            query["version"] = version
        found = self._call(list, self._db.datasets.find(query, sort=[("name", 1), ("version", -1)], limit=1))
        return _out(found[0]) if found else None

    def list_datasets(self) -> list[dict[str, Any]]:
        return [_out(d) for d in self._call(list, self._db.datasets.find({}, sort=[("name", 1), ("version", 1)]))]

    # -- the database's clock and leases ---------------------------------------------------

    def clock(self) -> datetime:
        document = self._call(self._db.leases.find_one_and_update, {"_id": "$clock"},
                              {"$currentDate": {"now": True}}, upsert=True, return_document=self._return_after)
        return _utc(document["now"])

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        moment = self.clock()
        query = {"_id": name, "$or": [{"holder": holder}, {"expires_at": {"$lte": moment}}]}
        update = {"$set": {"holder": holder, "expires_at": moment + timedelta(seconds=ttl_s)}}
        try:
            self._db.leases.update_one(query, update, upsert=True)
        except self._duplicate:
            return False  # held by another: the filter missed and the insert met its _id
        except self._errors as e:
            raise StoreError(f"database request failed: {first_line(e)}") from None
        return True

    def _holds(self, lease: tuple[str, str]) -> bool:
        """Whether holder holds the lease unexpired, judged in one request: the read stamps the
        database's clock on the lease's record and returns both."""
        name, holder = lease
        document = self._call(self._db.leases.find_one_and_update, {"_id": name, "holder": holder},
                              {"$currentDate": {"checked_at": True}}, return_document=self._return_after)
        return document is not None and _utc(document["checked_at"]) < _utc(document["expires_at"])

    def release_lease(self, name: str, holder: str) -> None:
        self._call(self._db.leases.delete_one, {"_id": name, "holder": holder})

    def get_lease(self, name: str) -> dict[str, Any] | None:
        document = self._call(self._db.leases.find_one, {"_id": name})
        return None if document is None else {"name": name, "holder": document["holder"],
                                              "expires_at": _utc(document["expires_at"])}

    # -- Optuna journals ------------------------------------------------------------------

    def append_logs(self, journal: str, logs: Sequence[dict[str, Any]], lease: tuple[str, str] | None = None) -> None:
        """Appends logs to a journal (see JobStore.append_logs).

        With a lease, the lease is checked once, then the logs are appended: separate requests,
        not one atomic step. A holder paused between the check and the appends for longer than
        the lease's remaining time could still append once after another holder took over;
        callers renew the lease just before each append, so that remaining time is a whole ttl.

        Raises:
            LeaseLost: holder does not hold the lease at the check; nothing was appended.
        """
        import json

        from pymongo.write_concern import WriteConcern

        # JSON strings: BSON refuses the integer keys of intermediate values. Each log takes
        # max + 1 under the unique (journal, number) index and retries when another writer took
        # that number first; a separate counter would leave a hole when its writer died between
        # the two steps, and readers would disagree on the order.
        texts = [json.dumps(log) for log in logs]
        if lease is not None and not self._holds(lease):
            raise LeaseLost(*lease)
        journals = self._db.get_collection("optuna_journal", write_concern=WriteConcern("majority"))
        for text in texts:
            while True:
                last = self._call(list, journals.find({"journal": journal}, {"number": 1},
                                                      sort=[("journal", 1), ("number", -1)], limit=1))
                number = last[0]["number"] + 1 if last else 0
                try:
                    journals.insert_one({"journal": journal, "number": number, "log": text})
                    break
                except self._duplicate:
                    continue
                except self._errors as e:
                    raise StoreError(f"database request failed: {first_line(e)}") from None

    def read_logs(self, journal: str, log_number_from: int = 0) -> list[dict[str, Any]]:
        import json

        cursor = self._db.optuna_journal.find({"journal": journal, "number": {"$gte": log_number_from}},
                                              {"_id": 0, "number": 1, "log": 1}, sort=[("journal", 1), ("number", 1)])
        logs = []
        for expected, document in enumerate(self._call(list, cursor), log_number_from):
            if document["number"] != expected:
                break  # not yet visible here: the logs after a gap wait for the next read
            logs.append(json.loads(document["log"]))
        return logs

    # -- read-only queries for viewers ------------------------------------------------------

    def training_states(self) -> list[dict[str, Any]]:
        cursor = self._db.trainings.find({}, {"_id": 1, "status": 1, "priority": 1})
        return [{"id": d["_id"], "status": d["status"], "priority": d["priority"]} for d in self._call(list, cursor)]

    def get_trainings(self, training_ids: Sequence[str]) -> list[dict[str, Any]]:
        wanted = list(dict.fromkeys(training_ids))
        found = {d["_id"]: d for d in self._call(list, self._db.trainings.find({"_id": {"$in": wanted}}))}
        return [_out(found[i]) for i in wanted if i in found]

    def results_of(self, training_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        results: dict[str, list[dict[str, Any]]] = {i: [] for i in training_ids}
        cursor = self._db.training_results.find({"training_id": {"$in": list(results)}}, {"_id": 0},
                                                sort=[("training_id", 1), ("epoch", 1)])
        for document in self._call(list, cursor):
            results[document["training_id"]].append(_utc(document))
        return results

    def count_results(self, training_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        counts = {i: {"count": 0, "last_epoch": None} for i in training_ids}
        pipeline = [{"$match": {"training_id": {"$in": list(counts)}}},
                    {"$group": {"_id": "$training_id", "count": {"$sum": 1}, "last_epoch": {"$max": "$epoch"}}}]
        for group in self._call(list, self._db.training_results.aggregate(pipeline)):
            counts[group["_id"]] = {"count": group["count"], "last_epoch": group["last_epoch"]}
        return counts

    def close(self) -> None:
        self._client.close()
