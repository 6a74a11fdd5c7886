"""Leases in the store, held by one process at a time across hosts: a tick's lease per executor,
the search step's lease "jobs", the executor marker.

A lease is a fence, not a hint: its holder renews it inside long work (`keep`), stops at the
first renewal that fails (LeaseLost), and passes `fence` to every store write the lease
protects, so the store refuses that write once another holder took the lease over.
"""
from __future__ import annotations

import os
import secrets
import time

from mitorch.store import JobStore, LeaseLost, StoreError

# The lease of the controller's search step, once across hosts; misubmit --add-trials and
# micontrol cancel JOB_ID take it too, so no tick works on a job they change.
JOBS_LEASE = "jobs"


def new_holder(who: str) -> str:
    """A holder name unique to this call: who, this process and a random tag."""
    return f"{who}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    """One holder's claim on the store lease `name`.

    Args:
        store: the job store that keeps the lease.
        name: the lease's name.
        holder: this holder's unique name (see new_holder).
        ttl_s: how long one take or renewal holds it, on the database's clock.
    """

    def __init__(self, store: JobStore, name: str, holder: str, ttl_s: float) -> None:
        self.store, self.name, self.holder, self.ttl_s = store, name, holder, ttl_s
        self._renewed = 0.0  # time.monotonic() of the last take or renewal

    @property
    def fence(self) -> tuple[str, str]:
        """What a protected store write passes (`lease=`): the store refuses it unless this
        holder still holds the lease."""
        return self.name, self.holder

    def take(self, wait_s: float = 0.0) -> bool:
        """Takes the lease, waiting up to wait_s for another holder to give it up or let it expire.

        Returns:
            Whether this holder holds it now.
        """
        deadline = time.monotonic() + wait_s
        while True:
            started = time.monotonic()
            if self.store.acquire_lease(self.name, self.holder, self.ttl_s):
                self._renewed = started
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def keep(self) -> None:
        """Renews the lease once a third of its time has passed since the last take or renewal:
        called inside long loops, before each protected step. A lease that another holder took,
        even one given up since, is never taken back: what this holder knew may be stale.

        Raises:
            LeaseLost: this holder lost the lease; the caller stops before its next write.
        """
        if time.monotonic() - self._renewed < self.ttl_s / 3:
            return
        started = time.monotonic()
        record = self.store.get_lease(self.name)
        if record is None or record["holder"] != self.holder or not self.store.acquire_lease(
                self.name, self.holder, self.ttl_s):
            raise LeaseLost(self.name, self.holder)
        self._renewed = started

    def release(self) -> None:
        """Gives the lease up, if this holder still holds it; a store error is left to expiry."""
        try:
            self.store.release_lease(self.name, self.holder)
        except StoreError:
            pass
