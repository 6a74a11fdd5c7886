"""The job store: where the service keeps trainings, their results, jobs and datasets.

    from mitorch.store import open_store
    store = open_store()   # MITORCH_DB_URI, else an SQLite file in the user's data directory

MITORCH_DB_URI: mongodb://... or mongodb+srv://... (MongoDB, Azure Cosmos DB for MongoDB; the
database the URI names, as in mongodb://host/mydb, else "mitorch"), or sqlite:///PATH (embedded,
several processes on one machine).
"""
from __future__ import annotations

import os

from mitorch.errors import first_line
from mitorch.store.base import (ACTIVE, DEFAULT_PRIORITY, FINISHED, STATUSES, DuplicateError, JobStore, LeaseLost,
                                StoreError, default_sqlite_path)
from mitorch.files.secrets import redact

__all__ = ["ACTIVE", "DEFAULT_PRIORITY", "FINISHED", "STATUSES", "DuplicateError", "JobStore", "LeaseLost",
           "StoreError", "open_store", "redact"]


def open_store(uri: str | None = None) -> JobStore:
    """Opens the store that uri (default: $MITORCH_DB_URI) names.

    Raises:
        StoreError: an unknown scheme or a malformed URI, a database that cannot be reached (within
            about 5 s), or one that refuses the credentials or the store's indexes (the message
            names the cause).
    """
    uri = uri or os.environ.get("MITORCH_DB_URI") or f"sqlite:///{default_sqlite_path()}"
    try:
        if uri.startswith(("mongodb://", "mongodb+srv://")):
            from mitorch.store.mongo import MongoStore

            return MongoStore(uri)
        if uri.startswith("sqlite:///"):
            from mitorch.store.sqlite import SQLiteStore

            return SQLiteStore(uri[len("sqlite:///"):])
    except ValueError as e:
        # pymongo checks some parts of a URI (an out-of-range port) with ValueError; sqlite3 refuses a NUL byte.
        reason = redact(first_line(e))
        raise StoreError(f"malformed database URI {redact(uri)!r} ({reason}); check MITORCH_DB_URI") from None
    raise StoreError(f"unsupported database URI {redact(uri)}; use mongodb://, mongodb+srv:// or sqlite:///PATH")
