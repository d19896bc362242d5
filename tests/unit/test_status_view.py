"""The status document of a request: the plan validate recorded, outranked by what deliver recorded."""

from __future__ import annotations

from forwarder import status
from forwarder.ports.deliveries import (
    DeliveryKey,
    DeliveryRecord,
    DeliveryState,
    PlannedDelivery,
    RequestRecord,
)

RECORD = RequestRecord(
    request_id="r-1",
    client="demo",
    group_key="demo",
    action="upsert_contact",
    received_at="2026-11-25T10:00:00.000Z",
    validated_at=1_795_600_800.25,
    planned=(
        PlannedDelivery("expertsender", "upsert_customer", "pending"),
        PlannedDelivery("dmhub", "upsert_customer", "pending"),
        PlannedDelivery("carecloud", "upsert_customer", "pending"),
        PlannedDelivery("legacy", "upsert_customer", "rejected", "does not map", ("email: required",)),
    ),
)


def key(integration: str, operation: str = "upsert_customer") -> DeliveryKey:
    return DeliveryKey("r-1", integration, operation)


def test_each_integration_shows_its_own_state_with_reasons_attempts_and_times() -> None:
    # given ExpertSender retrying after a 503, DM Hub dead-lettered, CareCloud not tried yet
    deliveries = {
        key("expertsender"): DeliveryRecord(
            DeliveryState.RETRYING, 2, 1_795_600_801.0, 1_795_600_803.0, "HTTP 503"
        ),
        key("dmhub"): DeliveryRecord(
            DeliveryState.DEAD_LETTERED, 9, 1_795_600_801.0, 1_795_615_000.0, "gave up"
        ),
    }
    document = status.view(RECORD, deliveries)
    entries = {entry["integration"]: entry for entry in document["integrations"]}
    # then the request is pending (one integration still is), each entry says why
    assert document["status"] == "pending"
    assert document["validated_at"] == "2026-11-25T10:00:00.250Z"
    assert entries["expertsender"] == {
        "integration": "expertsender",
        "operation": "upsert_customer",
        "status": "pending",
        "attempts": 2,
        "first_attempt_at": "2026-11-25T10:00:01.000Z",
        "updated_at": "2026-11-25T10:00:03.000Z",
        "sending": False,
        "last_error": "HTTP 503",
    }
    assert entries["dmhub"]["status"] == "dead_lettered" and entries["dmhub"]["reason"] == "gave up"
    assert entries["carecloud"]["status"] == "pending" and entries["carecloud"]["attempts"] == 0
    assert entries["legacy"]["status"] == "rejected" and entries["legacy"]["stage"] == "validate"
    assert entries["legacy"]["errors"] == ["email: required"]


def test_a_request_is_done_when_no_integration_is_pending() -> None:
    deliveries = {
        key("expertsender"): DeliveryRecord(DeliveryState.DELIVERED, 1, 1.0, 2.0, "delivered"),
        key("dmhub"): DeliveryRecord(DeliveryState.SUPERSEDED, 0, None, 2.0, "superseded: a later delete"),
        key("carecloud"): DeliveryRecord(DeliveryState.REJECTED, 1, 1.0, 2.0, "HTTP 400 invalid_params"),
        # a delivery the plan does not name (the config changed between validate and deliver) is shown too
        key("mailer", "send"): DeliveryRecord(DeliveryState.DELIVERED, 1, 1.0, 2.0, "delivered"),
    }
    document = status.view(RECORD, deliveries)
    assert document["status"] == "done"
    statuses = [(entry["integration"], entry["status"]) for entry in document["integrations"]]
    assert statuses == [
        ("expertsender", "delivered"),
        ("dmhub", "superseded"),
        ("carecloud", "rejected"),
        ("legacy", "rejected"),
        ("mailer", "delivered"),
    ]
    carecloud = document["integrations"][2]
    assert carecloud["stage"] == "deliver" and carecloud["reason"] == "HTTP 400 invalid_params"


def test_only_the_sender_reads_a_request_and_odd_ids_are_not_looked_up() -> None:
    class Log:
        asked: list[str] = []

        def request(self, request_id: str) -> tuple[RequestRecord | None, dict[DeliveryKey, DeliveryRecord]]:
            self.asked.append(request_id)
            return (RECORD if request_id == "r-1" else None), {}

    log = Log()
    now = RECORD.validated_at + 60
    assert status.status_for(log, "r-1", "demo", now) is not None  # type: ignore[arg-type]
    assert status.status_for(log, "r-1", "other", now) is None  # type: ignore[arg-type]
    assert status.status_for(log, "r-2", "demo", now) is None  # type: ignore[arg-type]
    assert status.status_for(log, "../../etc", "demo", now) is None  # type: ignore[arg-type]
    assert status.status_for(log, "x" * 200, "demo", now) is None  # type: ignore[arg-type]
    assert log.asked == ["r-1", "r-1", "r-2"]
    # and after 30 days it is gone, even while the store has not deleted it yet (DynamoDB's TTL runs late)
    later = RECORD.validated_at + status.STATUS_KEPT_SECONDS
    assert status.status_for(log, "r-1", "demo", later - 1) is not None  # type: ignore[arg-type]
    assert status.status_for(log, "r-1", "demo", later + 1) is None  # type: ignore[arg-type]


def test_the_status_is_shown_as_long_as_the_delivery_log_keeps_it() -> None:
    from forwarder.adapters.aws import DELIVERY_LOG_TTL_DAYS

    assert status.STATUS_KEPT_SECONDS == DELIVERY_LOG_TTL_DAYS * 24 * 3600
