"""Optuna's journal storage kept in the job store: one journal per search job.

Only the controller opens it (`study_storage`); trainings never talk to Optuna. No snapshots:
Optuna's snapshots are pickles, and whoever can write the database would run code in the
controller that loads one.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend

from mitorch.store import JobStore


class StoreJournalBackend(BaseJournalBackend):
    """An Optuna journal backend over JobStore.append_logs / read_logs.

    Args:
        store: the job store.
        journal: the journal's name (a search job's id).
        uri: the store's URI, when known: a pickled backend (Optuna pickles storages to hand
            them to other processes) reopens the store from it.
    """

    def __init__(self, store: JobStore, journal: str, uri: str | None = None) -> None:
        self.store, self.journal, self.uri = store, journal, uri
        self.logs_read = 0  # how many logs this backend has read: the journal's length after a sync
        # (lease name, holder) that fences every append: the controller's search step sets it, so
        # a step that lost its lease cannot add a trial (the store raises LeaseLost).
        self.lease: tuple[str, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        if self.uri is None:
            raise TypeError("a journal backend opened without its store's URI cannot be pickled")
        return {"journal": self.journal, "uri": self.uri}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from mitorch.store import open_store

        self.__init__(open_store(state["uri"]), state["journal"], state["uri"])

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        """The journal's logs from number log_number_from on (Optuna's backend interface)."""
        logs = self.store.read_logs(self.journal, log_number_from)
        self.logs_read = max(self.logs_read, log_number_from + len(logs))
        return logs

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Appends logs to the journal, fenced by `lease` when one is set.

        Raises:
            LeaseLost: the lease was taken over; nothing was appended.
        """
        self.store.append_logs(self.journal, logs, lease=self.lease)


class StudyStorage(JournalStorage):
    """Optuna's journal storage over a StoreJournalBackend, which it keeps as `journal`: the
    search step fences the backend's appends and reads how much of the journal it has seen,
    through the backend it passed in (Optuna's own reference to it is private)."""

    def __init__(self, backend: StoreJournalBackend) -> None:
        super().__init__(backend)
        self.journal = backend


def study_storage(store: JobStore, journal: str, uri: str | None = None) -> StudyStorage:
    """The Optuna storage of one search job.

    Args:
        store: the job store.
        journal: the journal's name (the search job's id).
        uri: the store's URI, when the storage may be pickled (see StoreJournalBackend).
    """
    return StudyStorage(StoreJournalBackend(store, journal, uri))


# Storages kept for the life of their store object: a long-running process (micontrol --loop,
# miviewer) replays a journal once, then reads only the logs appended since, by anyone. The most
# recently used ones are kept, up to _KEPT_PER_STORE a store.
_kept: weakref.WeakKeyDictionary[JobStore, OrderedDict[str, StudyStorage]] = weakref.WeakKeyDictionary()
_kept_lock = threading.Lock()
_KEPT_PER_STORE = 64


def kept_study_storage(store: JobStore, journal: str) -> StudyStorage:
    """study_storage(store, journal), kept while `store` lives. Every read syncs with the
    journal in the store first (Optuna's JournalStorage does), so what other processes wrote
    is seen; only the replay of what was read before is saved."""
    with _kept_lock:
        storage = _kept.get(store, {}).get(journal)
    if storage is None:
        # The first replay, outside the lock (other threads go on with other studies). The
        # backend refers to the store weakly, so the cache does not keep the store alive.
        storage = study_storage(weakref.proxy(store), journal)  # type: ignore[arg-type]
    with _kept_lock:
        storages = _kept.setdefault(store, OrderedDict())
        storage = storages.setdefault(journal, storage)
        storages.move_to_end(journal)
        while len(storages) > _KEPT_PER_STORE:
            storages.popitem(last=False)
        return storage


def forget_study_storage(store: JobStore, journal: str) -> None:
    """Drops a kept storage (a job that ended)."""
    with _kept_lock:
        _kept.get(store, {}).pop(journal, None)


def keep_only(store: JobStore, journals: Iterable[str]) -> None:
    """Drops the kept storages of every other journal (jobs that ended, here or elsewhere)."""
    wanted = set(journals)
    with _kept_lock:
        storages = _kept.get(store, {})
        for journal in [j for j in storages if j not in wanted]:
            del storages[journal]


__all__ = ["StoreJournalBackend", "StudyStorage", "forget_study_storage", "keep_only", "kept_study_storage",
           "study_storage"]
