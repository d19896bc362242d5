"""The deletion ledger port: remembers delivered deletes so that an older upsert of the same customer, still
retrying or replayed from the DLQ, cannot re-create data the caller asked to erase (GDPR). For a customer with a
recorded delete it also remembers the latest delivered upsert, so that the delete, dead-lettered and replayed
after that newer upsert, cannot erase it."""

from __future__ import annotations

import abc


class LedgerError(Exception):
    """The ledger could not be read or written; the caller retries the delivery."""


#: The prefix of the keys recording a customer's latest delivered upsert.
UPSERTED = "upserted/"


class DeletionLedger(abc.ABC):
    """Keys are ``group_key/integration/identity`` (identity e.g. ``email:jane@example.com``); times are the
    ISO 8601 UTC ``received_at`` of the requests, which sort as strings."""

    @abc.abstractmethod
    def record_deletes(self, entries: dict[str, str]) -> None:
        """Remember that each key's customer was deleted by a request received at the given time (keeping the
        latest time when a key is recorded twice)."""

    @abc.abstractmethod
    def deleted_since(self, keys: list[str], received_at: str) -> str | None:
        """The first key deleted by a request received after ``received_at``, or None."""

    def record_upserts(self, entries: dict[str, str]) -> None:
        """Remember that each key's customer got an upsert received at the given time (the latest one kept)."""
        self.record_deletes({UPSERTED + key: moment for key, moment in entries.items()})

    def upserted_since(self, keys: list[str], received_at: str) -> str | None:
        """The first key whose customer got an upsert received after ``received_at`` delivered, or None."""
        found = self.deleted_since([UPSERTED + key for key in keys], received_at)
        return found.removeprefix(UPSERTED) if found else None
