"""The delivery log port: what happened to each delivery (request, integration, action), kept outside the
queue so that it survives redeliveries, crashes and replays.

It is what makes effects exactly-once: a delivery the vendor confirmed is marked ``delivered`` and is never
sent again, whatever the queue hands the deliver flow later; one marked ``sending`` whose answer never came
(a crash, a read timeout) is resolved by the integration before anything is sent again. It also counts the
attempts and remembers when the first one was made, so retries give up by age (the retry horizon), not by
how often the queue handed the message over.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import StrEnum


class DeliveryLogError(Exception):
    """The log could not be read or written; the caller retries the delivery."""


class DeliveryState(StrEnum):
    SENDING = "sending"  # a request is (or was) on its way: its outcome is unknown until it is recorded
    DELIVERED = "delivered"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    RETRYING = "retrying"
    DEAD_LETTERED = "dead_lettered"

    @property
    def final(self) -> bool:
        """Done for good: the delivery is never sent again."""
        return self in (DeliveryState.DELIVERED, DeliveryState.REJECTED, DeliveryState.SUPERSEDED)


@dataclass(frozen=True, slots=True)
class DeliveryKey:
    """One delivery: a request, to one integration, for one action."""

    request_id: str
    integration: str
    operation: str

    @property
    def sort_key(self) -> str:
        return f"{self.integration}#{self.operation}"


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    state: DeliveryState
    attempts: int
    first_attempt_at: float | None
    updated_at: float
    reason: str = ""


class DeliveryLog(abc.ABC):
    @abc.abstractmethod
    def get(self, keys: list[DeliveryKey]) -> dict[DeliveryKey, DeliveryRecord]:
        """The records of the keys that have one (strongly consistent)."""

    @abc.abstractmethod
    def begin(self, keys: list[DeliveryKey], now: float) -> None:
        """Mark the deliveries ``sending`` just before their request goes out: one attempt more, and the time
        of the first attempt kept."""

    @abc.abstractmethod
    def finish(self, results: dict[DeliveryKey, tuple[DeliveryState, str]], now: float) -> None:
        """Record each delivery's new state and reason. A final state is never replaced by another."""

    @abc.abstractmethod
    def forget(self, keys: list[DeliveryKey]) -> None:
        """Drop the records (a dead letter replayed: its retries start again)."""
