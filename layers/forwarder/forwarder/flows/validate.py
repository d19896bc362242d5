"""validate: per record, map and check it for each of its group key's integrations; emit one delivery
message per (record, integration); a record that cannot be mapped for an integration is rejected for that
integration, with the reason, to the rejects trail. Each request's record for the status route (its client,
and per integration pending or rejected with the reason) goes to the delivery log, one write per batch,
before its deliveries are queued."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import ValidationError

from forwarder.config import ForwarderConfig
from forwarder.integrations.base import RecordContext, RecordInvalid
from forwarder.mapping import MappingError
from forwarder.messages import DeliveryMessage, IngestMessage, Rejection
from forwarder.observability import NO_INTEGRATION, emit_rejections, logger, request_scope
from forwarder.ordering import deduplication_id, delivery_group
from forwarder.ports.deliveries import DeliveryLogError, PlannedDelivery, RequestRecord
from forwarder.ports.queues import MAX_MESSAGE_BYTES, OutgoingMessage, QueueError
from forwarder.runtime import Services


def plan(config: ForwarderConfig, message: IngestMessage) -> tuple[list[DeliveryMessage], list[Rejection]]:
    """The deliveries and rejections one accepted record leads to (no I/O: the CLI's preview uses it too)."""
    group = config.group_keys.get(message.group_key)
    if group is None:
        return [], [
            Rejection(
                request_id=message.request_id,
                group_key=message.group_key,
                stage="validate",
                reason=f"group key '{message.group_key}' is no longer configured",
                record=dict(message.data),
            )
        ]
    deliveries: list[DeliveryMessage] = []
    rejections: list[Rejection] = []
    for integration_config in group.integrations:
        operation = integration_config.operation(message.action)
        if not integration_config.enabled or operation is None:
            continue
        try:
            mapped = integration_config.map(message.action, message.data)
            payload = integration_config.integration.prepare(
                operation,
                mapped,
                integration_config.parsed_settings,
                RecordContext(message.request_id, message.received_at),
            )
        except (MappingError, RecordInvalid) as error:
            rejections.append(
                Rejection(
                    request_id=message.request_id,
                    group_key=message.group_key,
                    stage="validate",
                    integration=integration_config.name,
                    operation=operation,
                    reason=f"the record does not map to {integration_config.integration.title} ({operation})",
                    errors=error.errors,
                    record=dict(message.data),
                )
            )
            continue
        deliveries.append(
            DeliveryMessage(
                request_id=message.request_id,
                group_key=message.group_key,
                action=message.action,
                integration=integration_config.name,
                integration_type=integration_config.type,
                operation=operation,
                payload=payload,
                received_at=message.received_at,
            )
        )
    if not deliveries and not rejections:
        rejections.append(
            Rejection(
                request_id=message.request_id,
                group_key=message.group_key,
                stage="validate",
                reason=f"no enabled integration of group key '{message.group_key}' handles {message.action.flow}",
                record=dict(message.data),
            )
        )
    return deliveries, rejections


def outgoing(
    config: ForwarderConfig, record: SQSRecord, rejected: list[str] | None = None
) -> tuple[list[OutgoingMessage], list[OutgoingMessage]]:
    """The delivery and rejection messages one ingest message leads to; ``rejected`` gets, per rejection, the
    integration it concerns (for the ``RecordsRejected`` metric)."""
    deliveries, rejections, _ = _validated(config, record, 0.0, rejected)
    return deliveries, rejections


#: Field problems kept per rejected integration in a request's status record (the rejects trail has them all).
_STATUS_ERRORS = 20
_STATUS_ERROR_CHARS = 500


def request_record(
    message: IngestMessage, deliveries: list[DeliveryMessage], rejections: list[Rejection], now: float
) -> RequestRecord:
    """What the status route shows of a validated request: its client, and per integration a queued delivery
    (pending) or a rejection with its reason."""
    planned = [
        PlannedDelivery(delivery.integration, delivery.operation, "pending") for delivery in deliveries
    ]
    planned.extend(
        PlannedDelivery(
            rejection.integration,
            rejection.operation,
            "rejected",
            rejection.reason,
            tuple(error[:_STATUS_ERROR_CHARS] for error in rejection.errors[:_STATUS_ERRORS]),
        )
        for rejection in rejections
        if rejection.integration is not None
    )
    whole = next((rejection for rejection in rejections if rejection.integration is None), None)
    return RequestRecord(
        request_id=message.request_id,
        client=message.client,
        group_key=message.group_key,
        action=message.action.value,
        received_at=message.received_at,
        validated_at=now,
        planned=tuple(planned),
        reason=whole.reason if whole is not None else "",
    )


def _validated(
    config: ForwarderConfig, record: SQSRecord, now: float, rejected: list[str] | None = None
) -> tuple[list[OutgoingMessage], list[OutgoingMessage], RequestRecord | None]:
    try:
        message = IngestMessage.model_validate_json(record.body)
    except ValidationError as error:
        rejection = Rejection(
            request_id=record.message_id,
            group_key="",
            stage="validate",
            reason="the queue message is not an ingest message",
            errors=[f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()][:10],
            record={"body": record.body[:2000]},
        )
        if rejected is not None:
            rejected.append(NO_INTEGRATION)
        return [], [OutgoingMessage(rejection.fitted(MAX_MESSAGE_BYTES).model_dump_json())], None
    deliveries, rejections = plan(config, message)
    if rejected is not None:
        rejected.extend(rejection.integration or NO_INTEGRATION for rejection in rejections)
    logger.info(
        "record validated",
        extra={
            "request_id": message.request_id,
            "group_key": message.group_key,
            "deliveries": [delivery.integration for delivery in deliveries],
            "rejections": [rejection.integration for rejection in rejections],
        },
    )
    group = config.group_keys[message.group_key] if deliveries else None
    outgoing_deliveries: list[OutgoingMessage] = []
    for delivery in deliveries:
        assert group is not None
        integration = group.integration(delivery.integration)
        assert integration is not None
        outgoing_deliveries.append(
            OutgoingMessage(
                delivery.model_dump_json(),
                {
                    "request_id": delivery.request_id,
                    "integration": delivery.integration,
                    "group_key": delivery.group_key,
                },
                # the delivery queue is FIFO: the customer's deliveries in the order they were received, and
                # a second send of the same delivery (a retried validate) within 5 minutes is a no-op
                group_id=delivery_group(integration, delivery),
                dedup_id=deduplication_id(delivery.delivery_id),
            )
        )
    return (
        outgoing_deliveries,
        [OutgoingMessage(rejection.fitted(MAX_MESSAGE_BYTES).model_dump_json()) for rejection in rejections],
        request_record(message, deliveries, rejections, now),
    )


def handle_batch(services: Services, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Validate a batch; the batch's deliveries and rejections are sent together (one SQS batch call per ten
    messages, not one per record). A record is reported failed when its own validation raised, or when a send
    that carried its messages failed: it is then retried whole (deliveries are at-least-once)."""
    failures: list[str] = []
    deliveries: list[tuple[str, OutgoingMessage]] = []
    rejections: list[tuple[str, OutgoingMessage]] = []
    requests: list[tuple[str, RequestRecord]] = []
    rejected: list[tuple[str, str]] = []  # (the ingest message, the integration) per rejection
    config = services.config  # once per batch
    now = services.clock()
    failed_groups: set[str] = set()
    for raw in event.get("Records", []):
        record = SQSRecord(raw)
        # The ingest queue is FIFO: once a customer's request failed, their later ones in this batch wait too
        # (handled now, they would overtake it).
        lane = str(raw.get("attributes", {}).get("MessageGroupId") or record.message_id)
        if lane in failed_groups:
            failures.append(record.message_id)
            continue
        # ingest sets the request id as a message attribute: this record's lines carry it
        request_id = (raw.get("messageAttributes") or {}).get("request_id", {}).get("stringValue")
        integrations: list[str] = []
        try:
            with request_scope(request_id or record.message_id):
                to_deliver, to_reject, request = _validated(config, record, now, integrations)
        except Exception:  # a defect for this record must not fail its neighbours
            logger.exception("validation failed unexpectedly", extra={"message_id": record.message_id})
            failures.append(record.message_id)
            failed_groups.add(lane)
            continue
        deliveries.extend((record.message_id, message) for message in to_deliver)
        rejections.extend((record.message_id, message) for message in to_reject)
        rejected.extend((record.message_id, integration) for integration in integrations)
        if request is not None:
            requests.append((record.message_id, request))
    if requests and services.deliveries is not None:
        # Before the deliveries are queued: a delivery is never recorded before its request is.
        try:
            services.deliveries.record_requests([request for _, request in requests])
        except DeliveryLogError as error:
            logger.error(
                "could not record the batch's requests; they will be retried", extra={"error": str(error)}
            )
            recorded = dict.fromkeys(owner for owner, _ in requests)
            failures.extend(owner for owner in recorded if owner not in failures)
            deliveries = [(owner, message) for owner, message in deliveries if owner not in recorded]
            rejections = [(owner, message) for owner, message in rejections if owner not in recorded]
    for queue, messages in (("delivery", deliveries), ("rejects", rejections)):
        if not messages:
            continue
        try:
            services.queues.send(queue, [message for _, message in messages])
        except QueueError as error:
            logger.error(
                "could not enqueue; the batch's records will be retried",
                extra={"queue": queue, "error": str(error)},
            )
            failures.extend(owner for owner, _ in messages if owner not in failures)
    # counted once: a record reported failed is validated again, and counted then
    emit_rejections(Counter(integration for owner, integration in rejected if owner not in failures))
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in dict.fromkeys(failures)]}
