"""The lease of the controller's search step, as commands take it while they change a search job
(misubmit --add-trials, micontrol cancel JOB_ID): no tick works on the job meanwhile.

Imports neither the config system nor Optuna: micontrol's cancel, requeue and set-priority
import it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mitorch.service.leases import JOBS_LEASE, Lease, new_holder
from mitorch.store import JobStore, StoreError


@contextmanager
def jobs_lease(store: JobStore, who: str, wait_s: float = 60.0, ttl_s: float = 120.0) -> Iterator[Lease]:
    """Holds the lease of the controller's search step while the caller changes a search job.

    Args:
        store: the job store.
        who: what takes it, as shown to whoever waits for it (misubmit, micontrol).
        wait_s: how long to wait for a tick that holds it.
        ttl_s: how long the lease lasts unless renewed.

    Raises:
        StoreError: a controller tick held it for all of wait_s.
    """
    lease = Lease(store, JOBS_LEASE, new_holder(who), ttl_s)
    if not lease.take(wait_s):
        holder = (store.get_lease(JOBS_LEASE) or {}).get("holder", "unknown")
        raise StoreError(f"a controller tick ({holder}) has been working on the search jobs for {wait_s:.0f} s; "
                         "try again in a few minutes")
    try:
        yield lease
    finally:
        lease.release()


__all__ = ["jobs_lease"]
