"""The queue port: what the flows need from a message queue with SQS semantics."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

#: SQS's limit for one message and for one SendMessageBatch call (bytes), and the entries a batch takes.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_BATCH_ENTRIES = 10


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to enqueue: a JSON body plus string attributes (SQS MessageAttributes of type String). On a
    FIFO queue, ``group_id`` orders it behind the earlier messages of its group and ``dedup_id`` makes a second
    send within 5 minutes a no-op."""

    body: str
    attributes: dict[str, str] = field(default_factory=dict)
    delay_seconds: int = 0
    group_id: str | None = None
    dedup_id: str | None = None

    @property
    def size(self) -> int:
        """Bytes SQS counts: the body plus each attribute's name, data type and value."""
        size = len(self.body.encode())
        for name, value in self.attributes.items():
            size += len(name.encode()) + len("String") + len(value.encode())
        return size


def batches(messages: Sequence[OutgoingMessage]) -> Iterator[list[OutgoingMessage]]:
    """Split messages, in order, into SendMessageBatch-sized chunks (<= 10 entries, <= 256 KiB).

    A single message above the byte budget travels alone: the queue, not this function, decides whether it
    fits."""
    batch: list[OutgoingMessage] = []
    batch_bytes = 0
    for message in messages:
        size = message.size
        if batch and (len(batch) == MAX_BATCH_ENTRIES or batch_bytes + size > MAX_MESSAGE_BYTES):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(message)
        batch_bytes += size
    if batch:
        yield batch


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
