"""The deletion ledger port: remembers delivered deletes so that an older upsert of the same customer, still
retrying or replayed from the DLQ, cannot re-create data the caller asked to erase (GDPR)."""

from __future__ import annotations

import abc


class LedgerError(Exception):
    """The ledger could not be read or written; the caller retries the delivery."""


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
