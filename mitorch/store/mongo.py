"""The MongoDB backend (also Azure Cosmos DB for MongoDB): widely supported operators only, and
an index behind every sort."""
from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote_plus

from mitorch.errors import first_line
from mitorch.store.base import (DB_NOW, STATUSES, DuplicateError, JobStore, LeaseLost, StoreError, dataset_record,
                                field_names, duplicate_message as _duplicate_message, new_id, now, status_fields,
                                training_record, trial_key)
from mitorch.files.secrets import redact

DATABASE = "mitorch"
# One training per search trial: a plain unique index on trial_key, which every training carries
# (MiTorch before trial_key kept a partial unique index on (job_id, trial_number)).
_TRIAL_INDEX, _OLD_TRIAL_INDEX = "one_training_per_trial_key", "one_training_per_trial"
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


def database_in_uri(uri: str) -> str | None:
    """The database a mongodb:// or mongodb+srv:// URI names, read as pymongo and MongoDB's tools
    read it: the path after the hosts, before any options, decoded, up to a "." (the older
    "db.collection" form); None when it names none.

    Raises:
        ValueError: a name with a character MongoDB refuses.
    """
    hosts_and_path = uri.partition("://")[2].partition("?")[0]
    name = unquote_plus(hosts_and_path.partition("/")[2]).split(".", 1)[0]
    if re.search(r'[/ "$]', name):
        raise ValueError(f"database name {name!r} has a character MongoDB refuses (/, space, \" or $)")
    return name or None


# MongoDB's error codes that opening a store can meet.
_UNAUTHORIZED, _AUTHENTICATION_FAILED, _INDEX_NOT_FOUND = 13, 18, 27
_CANNOT_CREATE_INDEX, _INDEX_OPTIONS_CONFLICT, _INDEX_KEY_SPECS_CONFLICT, _DUPLICATE_KEY = 67, 85, 86, 11000


def _server_reason(error: Any) -> str:
    details = error.details if isinstance(error.details, dict) else {}
    reason = details.get("errmsg") or str(error).split(", full error:")[0]
    reason = redact(" ".join(str(reason).split()))  # one line, and a server may echo a connection string
    return reason if len(reason) <= 300 else reason[:297] + "..."


def _index_refused(error: Any, collection: Any, name: str, action: str) -> str:
    """One line: which index, why the server refused it and what to do."""
    where = f"{collection.database.name}.{collection.name}"
    reason = f"{_server_reason(error)}, code {error.code}"
    causes = {
        _UNAUTHORIZED: (f"the database user lacks the privilege to {action} indexes",
                        f"grant it the readWrite role on database {collection.database.name}, or open the store "
                        "once as a user who has it"),
        _CANNOT_CREATE_INDEX: ("the server refuses an option of this index",
                               "use a server that supports plain and unique indexes on fields (MongoDB 4.4 or later, "
                               "Azure Cosmos DB for MongoDB: there on a new, empty database)"),
        _INDEX_OPTIONS_CONFLICT: ("an index on the same keys exists with other options or another name",
                                  f"drop that index (db.{collection.name}.dropIndex(NAME)) and open the store again: "
                                  "MiTorch creates its own"),
        _INDEX_KEY_SPECS_CONFLICT: (f"an index named {name} exists with other keys or options",
                                    f"drop it (db.{collection.name}.dropIndex({name!r})) and open the store again: "
                                    "MiTorch creates its own"),
        _DUPLICATE_KEY: ("documents already in the collection break this unique index",
                         "remove the duplicates the server names, then open the store again"
                         + (" (a process of a MiTorch older than trial_key still writing trainings: stop it first)"
                            if name == _TRIAL_INDEX else "")),
    }
    cause, remedy = causes.get(error.code, ("the server refused it", "check that the server is one MiTorch supports "
                                                                     "(MongoDB 4.4 or later, or a compatible one)"))
    return f"cannot {action} the index {name} on {where}: {cause} ({reason}); {remedy}"


def _refused_at_open(error: Any, shown_uri: str) -> str:
    reason = f"{_server_reason(error)}, code {error.code}"
    if error.code == _AUTHENTICATION_FAILED:
        return (f"the database at {shown_uri} refused the credentials ({reason}); check the user name and password "
                "in MITORCH_DB_URI")
    return f"the database at {shown_uri} refused a request while opening the store ({reason}); check MITORCH_DB_URI"


def _attempt_query(attempt: int) -> Any:
    # A training never claimed has no attempt field: it holds attempt 0.
    return attempt if attempt else {"$in": [0, None]}


class MongoStore(JobStore):
    """A JobStore in a MongoDB database.

    Args:
        uri: a mongodb:// or mongodb+srv:// URI; or
        client: an existing pymongo-compatible client (tests pass mongomock's).
        database: the database name; default: the one the URI names, else "mitorch".
    """

    def __init__(self, uri: str | None = None, client: Any = None, database: str | None = None) -> None:
        import pymongo
        from pymongo.errors import OperationFailure, PyMongoError

        self._errors = PyMongoError
        self._duplicate = pymongo.errors.DuplicateKeyError
        self._return_after = pymongo.ReturnDocument.AFTER
        self._refused = OperationFailure
        shown = redact(uri or "")
        name = database or database_in_uri(uri or "") or DATABASE
        try:
            if client is None:
                client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, tz_aware=True,
                                             w=1, retryWrites=False)
                client.admin.command("ping")
            self._client = client
            self._db = client[name]
            self._create_indexes()
        except OperationFailure as e:
            # The server answered and refused (an index is refused in _create_index, with its own message).
            raise StoreError(_refused_at_open(e, shown)) from None
        except PyMongoError as e:  # no answer: the server is down, unknown or out of reach
            reason = str(e).split(",")[0].split("\n")[0]
            raise StoreError(f"cannot reach the database at {shown} ({reason}); "
                             "check MITORCH_DB_URI and that the server is up") from None

    def _create_indexes(self) -> None:
        # Every process runs this on first use, before it writes: creating an index that exists
        # is a no-op. Only plain and unique indexes on fields: servers without partial or sparse
        # indexes (Azure Cosmos DB for MongoDB, FerretDB) take them all.
        db = self._db
        self._create_index(db.trainings, [("status", 1), *_QUEUE])
        self._create_index(db.trainings, [("status", 1), *_RECENT])
        self._create_index(db.trainings, _QUEUE)
        self._create_index(db.trainings, _RECENT)
        self._create_index(db.trainings, [("job_id", 1), *_QUEUE])
        self._create_index(db.trainings, [("fingerprint", 1), ("created_at", 1), ("_id", 1)])
        self._create_index(db.trainings, [("parent", 1), *_RECENT])
        self._one_training_per_trial()
        self._create_index(db.training_results, [("training_id", 1), ("epoch", 1)], unique=True)
        self._create_index(db.jobs, _RECENT)
        self._create_index(db.jobs, [("status", 1), *_RECENT])
        self._create_index(db.datasets, [("name", 1), ("version", 1)], unique=True)
        self._create_index(db.optuna_journal, [("journal", 1), ("number", 1)], unique=True)

    def _one_training_per_trial(self) -> None:
        """The unique index on trial_key; a database made before trial_key gets the key filled in
        and loses its partial index on (job_id, trial_number)."""
        trainings = self._db.trainings
        names = set(trainings.index_information())
        if _TRIAL_INDEX not in names:
            # Filled before the index exists: a training without the key would count as null, and a
            # second one would break the index. Concurrent openers set the same values.
            for document in trainings.find({"trial_key": {"$exists": False}}, {"job_id": 1, "trial_number": 1}):
                trainings.update_one({"_id": document["_id"], "trial_key": {"$exists": False}},
                                     {"$set": {"trial_key": trial_key({**document, "id": document["_id"]})}})
        # The new index before the old one goes, so that no moment is without one.
        self._create_index(trainings, [("trial_key", 1)], unique=True, name=_TRIAL_INDEX)
        if _OLD_TRIAL_INDEX in names:
            try:
                trainings.drop_index(_OLD_TRIAL_INDEX)
            except self._refused as e:
                if e.code != _INDEX_NOT_FOUND:  # another process dropped it first
                    raise StoreError(_index_refused(e, trainings, _OLD_TRIAL_INDEX, "drop")) from None

    def _create_index(self, collection: Any, keys: list[tuple[str, int]], **options: Any) -> None:
        try:
            collection.create_index(keys, **options)
        except self._refused as e:  # answered and refused; a lost connection is reported as one
            name = options.get("name") or "_".join(f"{field}_{direction}" for field, direction in keys)
            raise StoreError(_index_refused(e, collection, name, "create")) from None

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
                       fields: Sequence[str] | None = None, parent: str | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {}
        if statuses is not None:
            query["status"] = {"$in": list(statuses)}
        if job_id is not None:
            query["job_id"] = job_id
        if parent is not None:
            query["parent"] = parent
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

    def find_trainings(self, fingerprint: str, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"fingerprint": fingerprint}
        if statuses is not None:
            query["status"] = {"$in": list(statuses)}
        cursor = self._db.trainings.find(query, sort=[("created_at", 1), ("_id", 1)])
        return [_out(d) for d in self._call(list, cursor)]

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

    def list_results(self, training_id: str, after: int | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"training_id": training_id}
        if after is not None:
            query["epoch"] = {"$gt": after}
        cursor = self._db.training_results.find(query, {"_id": 0},
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
        try:
            document = self._stamp_clock()
        except self._duplicate:
            # Two processes created the clock's record at once and this one lost: it exists now.
            document = self._call(self._stamp_clock)
        return _utc(document["now"])

    def _stamp_clock(self) -> dict[str, Any]:
        try:
            return self._db.leases.find_one_and_update({"_id": "$clock"}, {"$currentDate": {"now": True}}, upsert=True,
                                                       return_document=self._return_after)
        except self._duplicate:
            raise
        except self._errors as e:
            raise StoreError(f"database request failed: {first_line(e)}") from None

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
