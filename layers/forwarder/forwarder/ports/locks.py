"""The lock port: a lease lock shared by every process that delivers (Lambda containers, the embedded stack),
so that one of them refreshes a vendor token while the others wait for its result."""

from __future__ import annotations

import abc


class LockError(Exception):
    """The lock store could not be reached; the caller treats the lock as not acquired."""


class LockPort(abc.ABC):
    """Named leases. A lease ends when its owner releases it or when ``lease_seconds`` have passed, so a
    holder that dies (a killed container) never blocks the others for longer than the lease."""

    @abc.abstractmethod
    def acquire(self, name: str, owner: str, lease_seconds: float) -> bool:
        """Take the lease for ``owner`` when nobody holds it (or the holder's lease ran out)."""

    @abc.abstractmethod
    def release(self, name: str, owner: str) -> None:
        """End ``owner``'s lease; a lease someone else took over meanwhile is left alone."""
