"""The producers' ways in, embedded: a local event bus that plays the stack's EventBridge rule, and a producer
that sends to the local producer queue, both on the durable queue store, as their AWS counterparts do.

``LocalEventBus.put_events`` takes PutEvents entries (``Source``, ``DetailType``, ``Detail``), builds the event
EventBridge would (``version``, ``id``, ``account``, ``time``, ``region``, ``resources``, ``detail``) and, when
it matches the rule (``forwarder.producers``: a source starting with ``forwarder.``, one of the detail-types),
puts it on the ``producer-events`` queue, as the rule's SQS target would; others match no rule and go nowhere.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from forwarder.contract import Action
from forwarder.producers import (
    ACTION_ATTRIBUTE,
    DETAIL_TYPES,
    EVENT_SOURCE_PREFIX,
    SOURCE_ATTRIBUTE,
    detail_type,
)
from forwarder_local.queue import ACCOUNT_ID, REGION, DurableQueueStore

#: The embedded queues the producers write to (stack.QUEUES creates them).
PRODUCER_QUEUE = "producer"
EVENTS_QUEUE = "producer-events"
#: PutEvents' limit for one entry (EventBridge: 256 KiB per event).
MAX_EVENT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class PutResult:
    """One entry's result, as PutEvents answers it; ``matched``: the rule forwarded it to the events queue."""

    event_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    matched: bool = False

    def as_entry(self) -> dict[str, str]:
        if self.event_id is not None:
            return {"EventId": self.event_id}
        return {"ErrorCode": str(self.error_code), "ErrorMessage": str(self.error_message)}


def rule_matches(source: str, detail_type: str) -> bool:
    """The stack's rule (template.yaml's ProducerEventsRule, held to forwarder.producers by its tests)."""
    return source.startswith(EVENT_SOURCE_PREFIX) and detail_type in DETAIL_TYPES


class LocalEventBus:
    """The default event bus with the stack's one rule; see the module docstring."""

    def __init__(self, store: DurableQueueStore) -> None:
        self.store = store

    def put_events(self, entries: Sequence[dict[str, Any]]) -> list[PutResult]:
        return [self._put(entry) for entry in entries]

    def _put(self, entry: dict[str, Any]) -> PutResult:
        source, kind, detail_text = entry.get("Source"), entry.get("DetailType"), entry.get("Detail")
        if not isinstance(source, str) or not source or not isinstance(kind, str) or not kind:
            return PutResult(error_code="InvalidArgument", error_message="Source and DetailType are required")
        try:
            detail = json.loads(detail_text) if isinstance(detail_text, str) else None
        except ValueError:
            detail = None
        if not isinstance(detail, dict):
            return PutResult(error_code="MalformedDetail", error_message="Detail is malformed.")
        event_id = str(uuid.uuid4())
        event = {
            "version": "0",
            "id": event_id,
            "detail-type": kind,
            "source": source,
            "account": ACCOUNT_ID,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": list(entry.get("Resources") or []),
            "detail": detail,
        }
        body = json.dumps(event, ensure_ascii=False)
        if len(body.encode("utf-8")) > MAX_EVENT_BYTES:
            return PutResult(
                error_code="ValidationException", error_message="Total size of the entries exceeds 256KB"
            )
        if not rule_matches(source, kind):
            return PutResult(event_id=event_id)
        self.store.send(EVENTS_QUEUE, body)
        return PutResult(event_id=event_id, matched=True)


def put_entry(group_key: str, data: dict[str, Any], action: Action, source: str) -> dict[str, Any]:
    """The PutEvents entry a producer puts for a record (what `aws events put-events --entries` takes)."""
    return {
        "Source": source,
        "DetailType": detail_type(action),
        "Detail": json.dumps({"group_key": group_key, "data": data}, ensure_ascii=False),
    }


def send_to_producer_queue(
    store: DurableQueueStore, group_key: str, data: dict[str, Any], action: Action, source: str
) -> str:
    """Send a record to the local producer queue as an SQS producer would; returns the message id."""
    return store.send(
        PRODUCER_QUEUE,
        json.dumps({"group_key": group_key, "data": data}, ensure_ascii=False),
        {SOURCE_ATTRIBUTE: source, ACTION_ATTRIBUTE: action.value},
    )
