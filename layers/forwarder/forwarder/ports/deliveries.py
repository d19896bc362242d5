"""The delivery log port: what happened to each delivery (request, integration, action), kept outside the
queue so that it survives redeliveries, crashes and replays.

It is what makes effects exactly-once: a delivery the vendor confirmed is marked ``delivered`` and is never
sent again, whatever the queue hands the deliver flow later; one marked ``sending`` whose answer never came
(a crash, a read timeout) is resolved by the integration before anything is sent again. It also counts the
attempts and remembers when the first one was made, so retries give up by age (the retry horizon), not by
how often the queue handed the message over.

Next to the deliveries, each request has one record of its own (``RequestRecord``), written by validate: the
client that sent it (only that client may read its status), and what validate planned for each integration of
its group key (pending, or rejected with the reason). Together they are a request's status per integration
(``forwarder.status``), kept as long as the deliveries (30 days).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


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


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """What validate made of a request for one integration: a delivery is queued (``pending``), or the record
    does not map to it (``rejected``, with the reason and the field problems)."""

    integration: str
    operation: str | None
    state: Literal["pending", "rejected"]
    reason: str = ""
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """A request as validate saw it: who sent it, where to, and what it planned per integration. ``reason``:
    the record was rejected as a whole (no integration handles it)."""

    request_id: str
    client: str
    group_key: str
    action: str
    received_at: str
    validated_at: float
    planned: tuple[PlannedDelivery, ...] = ()
    reason: str = ""

    def planned_json(self) -> str:
        """``planned`` as the stores keep it: one JSON text."""
        return json.dumps(
            [
                {
                    "integration": item.integration,
                    "operation": item.operation,
                    "state": item.state,
                    "reason": item.reason,
                    "errors": list(item.errors),
                }
                for item in self.planned
            ],
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @staticmethod
    def parse_planned(text: str) -> tuple[PlannedDelivery, ...]:
        return tuple(
            PlannedDelivery(
                integration=str(item["integration"]),
                operation=item.get("operation"),
                state="rejected" if item.get("state") == "rejected" else "pending",
                reason=str(item.get("reason") or ""),
                errors=tuple(str(error) for error in item.get("errors") or ()),
            )
            for item in json.loads(text or "[]")
        )


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

    @abc.abstractmethod
    def record_requests(self, requests: list[RequestRecord]) -> None:
        """Record the requests validate handled (one write per batch where the store allows it). Writing one
        again replaces it: validate retried gives the same record."""

    @abc.abstractmethod
    def request(self, request_id: str) -> tuple[RequestRecord | None, dict[DeliveryKey, DeliveryRecord]]:
        """A request's record (None when validate has not recorded it) and its deliveries' records, read
        strongly consistent: what the status route shows."""
