"""A request's status per integration, as ``GET /v1/requests/{request_id}`` and ``forwarder status`` show it.

Read from the delivery log: the request's own record (written by validate: its client, and per integration a
queued delivery or a rejection with the reason) and its deliveries' records (written by deliver). Only the
client that sent a request may read it; to anyone else it answers exactly as an id never issued, so a
request id reveals nothing to another brand.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from forwarder.ports.deliveries import (
    DeliveryKey,
    DeliveryLog,
    DeliveryRecord,
    DeliveryState,
    PlannedDelivery,
    RequestRecord,
)

#: How long a request's status is shown: the delivery log's TTL (DynamoDB deletes expired items days late,
#: and the embedded store at start only, so the age is checked here too).
STATUS_KEPT_SECONDS = 30 * 24 * 3600

#: What a request id can look like (ids are UUIDs; anything else is answered as unknown, unread).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

#: The status an integration shows for each state of its delivery.
STATUS_OF: dict[DeliveryState, str] = {
    DeliveryState.SENDING: "pending",
    DeliveryState.RETRYING: "pending",
    DeliveryState.DELIVERED: "delivered",
    DeliveryState.REJECTED: "rejected",
    DeliveryState.SUPERSEDED: "superseded",
    DeliveryState.DEAD_LETTERED: "dead_lettered",
}


def plausible_request_id(request_id: str) -> bool:
    return bool(_REQUEST_ID.match(request_id))


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _planned(record: RequestRecord, planned: PlannedDelivery) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "integration": planned.integration,
        "operation": planned.operation,
        "status": planned.state,
        "attempts": 0,
        "first_attempt_at": None,
        "updated_at": _iso(record.validated_at),
    }
    if planned.state == "rejected":
        entry.update(stage="validate", reason=planned.reason, errors=list(planned.errors))
    return entry


def _delivery(key: DeliveryKey, found: DeliveryRecord) -> dict[str, Any]:
    status = STATUS_OF[found.state]
    entry: dict[str, Any] = {
        "integration": key.integration,
        "operation": key.operation,
        "status": status,
        "attempts": found.attempts,
        "first_attempt_at": _iso(found.first_attempt_at),
        "updated_at": _iso(found.updated_at),
    }
    if status == "pending":
        entry["sending"] = found.state is DeliveryState.SENDING
        if found.reason:
            entry["last_error"] = found.reason
    elif status != "delivered":
        entry["reason"] = found.reason
        if status == "rejected":
            entry["stage"] = "deliver"
    return entry


def view(record: RequestRecord, deliveries: dict[DeliveryKey, DeliveryRecord]) -> dict[str, Any]:
    """The status document: the request, then one entry per integration (the plan's order; a delivery the
    plan does not name, e.g. after a config change, follows it)."""
    integrations: list[dict[str, Any]] = []
    shown: set[DeliveryKey] = set()
    for planned in record.planned:
        key = DeliveryKey(record.request_id, planned.integration, planned.operation or "")
        found = deliveries.get(key) if planned.state == "pending" else None
        integrations.append(_delivery(key, found) if found is not None else _planned(record, planned))
        shown.add(key)
    for key, found in sorted(deliveries.items(), key=lambda item: item[0].sort_key):
        if key not in shown:
            integrations.append(_delivery(key, found))
    if record.reason:
        overall = "rejected"
    elif any(entry["status"] == "pending" for entry in integrations):
        overall = "pending"
    else:
        overall = "done"
    document: dict[str, Any] = {
        "request_id": record.request_id,
        "status": overall,
        "group_key": record.group_key,
        "action": record.action,
        "received_at": record.received_at,
        "validated_at": _iso(record.validated_at),
        "integrations": integrations,
    }
    if record.reason:
        document["reason"] = record.reason
    return document


def status_for(
    log: DeliveryLog, request_id: str, client: str, now: float | None = None
) -> dict[str, Any] | None:
    """The status of ``request_id`` for ``client``; None when there is none to show it: an id that is not
    one, a request not (yet) validated, one older than 30 days, or another client's (all alike)."""
    if not plausible_request_id(request_id):
        return None
    record, deliveries = log.request(request_id)
    if record is None or record.client != client:
        return None
    if (time.time() if now is None else now) - record.validated_at > STATUS_KEPT_SECONDS:
        return None  # expired, not yet deleted
    return view(record, deliveries)
