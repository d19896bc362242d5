"""The messages that travel between the flows on the queues. Each is a versioned JSON document."""

from __future__ import annotations

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


class Rejection(_Message):
    """A record rejected for good, with the reason: the rejects trail."""

    kind: Literal["rejection"] = "rejection"
    version: Literal[1] = 1
    request_id: str
    group_key: str
    stage: Literal["validate", "deliver"]
    integration: str | None = None
    operation: str | None = None
    reason: str
    errors: list[str] = Field(default_factory=list)
    record: dict[str, Any] = Field(description="the data (validate) or the vendor payload (deliver)")
    rejected_at: str = Field(default_factory=utcnow_iso)


class DeadLetter(_Message):
    """A delivery that exhausted its retries, with the last reason: the delivery DLQ."""

    kind: Literal["dead_letter"] = "dead_letter"
    version: Literal[1] = 1
    delivery: DeliveryMessage
    reason: str
    attempts: int
    dead_lettered_at: str = Field(default_factory=utcnow_iso)
