"""Moving dead letters back onto the queue they came from, in the embedded stack (on AWS: an SQS DLQ redrive,
StartMessageMoveTask). Deliver unwraps a replayed dead letter and starts its retries again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from forwarder_local.queue import DurableQueueStore

#: What each replayable dead-letter queue goes back to.
REPLAY_TARGETS = {"delivery-dlq": "delivery", "ingest-dlq": "ingest"}


@dataclass(frozen=True, slots=True)
class Replayed:
    moved: int
    skipped: int  # left where they are (another integration's, with ``integration`` given)


def replay(
    store: DurableQueueStore,
    source: str,
    *,
    integration: str | None = None,
    limit: int = 10_000,
    on_batch: Callable[[int], None] | None = None,
) -> Replayed:
    """Move up to ``limit`` messages of the dead-letter queue ``source`` back to its queue (only those of
    ``integration`` when given), each into its FIFO group again; ``on_batch`` hears how many were handled."""
    target = REPLAY_TARGETS[source]
    moved = skipped = 0
    total = min(limit, sum(store.counts(source).values()))
    while moved + skipped < total:
        batch = store.receive(source, max_messages=10, visibility_timeout=60)
        if not batch:
            break
        for message in batch:
            if integration and message.attributes.get("integration") != integration:
                store.change_visibility(source, message.receipt_handle, 0)
                skipped += 1
                continue
            store.send(
                target,
                message.body,
                message.attributes or None,
                group_id=message.group_id,  # FIFO: back into its customer's group
                dedup_id=f"replay-{message.message_id}-{time.time_ns()}" if message.group_id else None,
            )
            store.delete(source, message.receipt_handle)
            moved += 1
        if on_batch is not None:
            on_batch(len(batch))
    return Replayed(moved, skipped)
