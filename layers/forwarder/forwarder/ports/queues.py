"""The queue port: what the flows need from a message queue with SQS semantics."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to enqueue: a JSON body plus string attributes (SQS MessageAttributes of type String)."""

    body: str
    attributes: dict[str, str] = field(default_factory=dict)
    delay_seconds: int = 0


class QueueError(Exception):
    """A queue could not take or change a message; the caller must not report the work as done."""


class QueuePort(abc.ABC):
    """A named set of queues. Queue names are logical: ``ingest``, ``delivery``, ``delivery-dlq``, ``rejects``."""

    @abc.abstractmethod
    def send(self, queue: str, messages: list[OutgoingMessage]) -> list[str]:
        """Enqueue messages durably, in order; returns their message ids. Raises QueueError on failure."""

    @abc.abstractmethod
    def change_visibility(self, queue: str, receipt_handle: str, seconds: int) -> None:
        """Hide a received message for ``seconds`` from now (how retries are delayed)."""
