"""The messages that travel between the flows on the queues. Each is a versioned JSON document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from forwarder.contract import Action, FlatData


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class IngestMessage(_Message):
    """An accepted request, as ingest enqueues it for validate."""

    kind: Literal["ingest"] = "ingest"
    version: Literal[1] = 1
    request_id: str
    action: Action
    group_key: str
    data: FlatData
    received_at: str
    client: str
    idempotency_key: str | None = None


class DeliveryMessage(_Message):
    """One (record, integration): the vendor-shaped payload validate produced, for deliver to send."""

    kind: Literal["delivery"] = "delivery"
    version: Literal[1] = 1
    request_id: str
    group_key: str
    action: Action
    integration: str = Field(description="the integration's name within its group key")
    integration_type: str
    operation: str = Field(description="the integration action, e.g. upsert_customer")
    payload: dict[str, Any]
    received_at: str
    held: int = Field(0, description="times queued again to wait for credentials (not attempts)")

    @property
    def delivery_id(self) -> str:
        return f"{self.request_id}:{self.integration}:{self.operation}"


#: Room a message leaves for its attributes and the queue's own bookkeeping: documents are cut to fit under
#: the queue's 256 KiB with this to spare.
_HEADROOM_BYTES = 2048
_REASON_CHARS = 2000


def _json_bytes(model: BaseModel) -> int:
    return len(model.model_dump_json().encode("utf-8"))


class Rejection(_Message):
    """A record rejected for good, with the reason: the rejects trail."""

    kind: Literal["rejection"] = "rejection"
    version: Literal[1] = 1
    request_id: str
    group_key: str
    stage: Literal["source", "validate", "deliver"] = Field(
        description="source: a producer's message refused before ingest (see forwarder.flows.sources)"
    )
    source: str | None = Field(None, description="the producer (a sources: name) of a source rejection")
    integration: str | None = None
    operation: str | None = None
    reason: str
    errors: list[str] = Field(default_factory=list)
    record: dict[str, Any] = Field(description="the data (validate) or the vendor payload (deliver)")
    rejected_at: str = Field(default_factory=utcnow_iso)
    record_truncated: bool = Field(False, description="the record was cut to fit a queue message")

    def fitted(self, limit: int) -> Rejection:
        """This rejection as it fits a queue message of ``limit`` bytes: the reason and errors always stay (the
        errors cut to fit); a record too big to travel with them is replaced by its size and attribute names."""
        budget = limit - _HEADROOM_BYTES
        if _json_bytes(self) <= budget:
            return self
        errors = [error[:_REASON_CHARS] for error in self.errors[:100]]
        fitted = self.model_copy(
            update={
                "reason": self.reason[:_REASON_CHARS],
                "errors": errors,
                "record": {
                    "bytes": len(json.dumps(self.record).encode("utf-8")),
                    "attributes": sorted(self.record)[:200],
                },
                "record_truncated": True,
            }
        )
        while _json_bytes(fitted) > budget and fitted.errors:
            fitted = fitted.model_copy(update={"errors": fitted.errors[: len(fitted.errors) // 2]})
        return fitted


class DeadLetter(_Message):
    """A delivery that exhausted its retries, with the last reason: the delivery DLQ."""

    kind: Literal["dead_letter"] = "dead_letter"
    version: Literal[1] = 1
    delivery: DeliveryMessage
    reason: str
    attempts: int
    dead_lettered_at: str = Field(default_factory=utcnow_iso)

    def fitted(self, limit: int) -> DeadLetter:
        """This dead letter as it fits a queue message of ``limit`` bytes. The delivery travelled in a queue
        message already, so cutting the reason to a few thousand characters is all it can need; the delivery
        stays whole, so the dead letter can be replayed."""
        if _json_bytes(self) <= limit - _HEADROOM_BYTES:
            return self
        return self.model_copy(update={"reason": self.reason[:_REASON_CHARS]})
