"""sources: records from producers' SQS queues and EventBridge buses -> the ingest queue, with ingest's checks.

A producer message is read as the API reads a request (``forwarder.producers`` has the contract): the same
envelope check (``contract.parse_envelope``: JSON, size, flat data), the same destination checks (the group
key exists, the producer may write to it, an integration handles the action), the same enqueue (FIFO group
per customer). What fails a check is refused for good, with its reason, on the rejects trail (stage
``source``): a malformed message is never retried. What fails for a moment (a queue down) is reported in
``batchItemFailures`` and retried by SQS, up to the producer queue's ``maxReceiveCount``, then dead-lettered.

A record's request id is derived from its message (SQS: the queue and message id; EventBridge: the account
and event id), so a redelivered message is queued under the same id again and dropped downstream (the ingest
queue's 5-minute deduplication, then the delivery log).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from forwarder.config import ForwarderConfig, SourceConfig
from forwarder.contract import Action, ContractError, Envelope, parse_envelope
from forwarder.flows.ingest import ServiceUnavailable, check_destination, enqueue
from forwarder.messages import Rejection
from forwarder.observability import count_accepted, count_refused, logger
from forwarder.ports.queues import MAX_MESSAGE_BYTES, OutgoingMessage, QueueError
from forwarder.producers import ACTION_ATTRIBUTE, DETAIL_TYPES, EVENT_SOURCE_PREFIX, SOURCE_ATTRIBUTE
from forwarder.runtime import Services

#: The namespace of request ids derived from producer messages (uuid5).
_PRODUCED_REQUESTS = uuid.UUID("0f6a3c1e-8d0b-4f7e-a2c4-5e9b1d7f3a60")
_ACTIONS = ", ".join(action.value for action in Action)
_DETAIL_TYPES = ", ".join(f"'{name}'" for name in DETAIL_TYPES)


@dataclass(frozen=True, slots=True)
class ProducerRecord:
    """A producer's message, read and checked: ready for the ingest queue."""

    request_id: str
    source: SourceConfig
    action: Action
    envelope: Envelope


class Refused(Exception):
    """A producer message refused for good: ``error`` says why; the rest is what was learnt of it before."""

    def __init__(
        self,
        error: ContractError,
        request_id: str,
        source: str | None = None,
        group_key: str = "",
        record: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id
        self.source = source
        self.group_key = group_key
        self.record = record

    def rejection(self, body: str) -> Rejection:
        """The rejects trail's entry: the record's data when it was read, else the start of the message."""
        attribute = f" ({self.error.attribute})" if self.error.attribute else ""
        return Rejection(
            request_id=self.request_id,
            group_key=self.group_key,
            stage="source",
            source=self.source,
            reason=f"{self.error.code}: {self.error.message}",
            errors=[f"{self.error.code}{attribute}"],
            record=self.record if self.record is not None else {"body": body[:2000]},
        )


def request_id(kind: Literal["sqs", "eventbridge"], origin: str, message_id: str) -> str:
    """The request id of a producer message: the same for every delivery of the same message or event."""
    return str(uuid.uuid5(_PRODUCED_REQUESTS, f"{kind}/{origin}/{message_id}"))


def read(
    config: ForwarderConfig, record: SQSRecord, *, events_queue_arn: str, max_body_bytes: int
) -> ProducerRecord:
    """Read and check one producer message (no I/O). A message on ``events_queue_arn`` (the queue the bus's
    rule targets) is an EventBridge event, any other an SQS producer message. Raises Refused."""
    if events_queue_arn and record.event_source_arn == events_queue_arn:
        return _read_event(config, record, max_body_bytes)
    return _read_message(config, record, max_body_bytes)


def _refuse(status: int, code: str, message: str, attribute: str | None = None) -> ContractError:
    return ContractError(status, code, message, attribute=attribute)


def _check(
    config: ForwarderConfig,
    source: SourceConfig,
    action: Action,
    envelope: Envelope,
    request: str,
) -> ProducerRecord:
    try:
        check_destination(config, action, envelope, f"source '{source.name}'", source.allows)
    except ContractError as error:
        raise Refused(error, request, source.name, envelope.group_key, dict(envelope.data)) from None
    return ProducerRecord(request, source, action, envelope)


def _read_message(config: ForwarderConfig, record: SQSRecord, max_body_bytes: int) -> ProducerRecord:
    request = request_id("sqs", record.event_source_arn, record.message_id)
    attributes: dict[str, Any] = record.raw_event.get("messageAttributes") or {}

    def attribute(name: str) -> str | None:
        value = (attributes.get(name) or {}).get("stringValue")
        return value if isinstance(value, str) and value else None

    name = attribute(SOURCE_ATTRIBUTE)
    if name is None:
        raise Refused(
            _refuse(
                400,
                "MISSING_SOURCE",
                f"the message attribute '{SOURCE_ATTRIBUTE}' (String) must name the producer, as in the "
                "config's sources",
            ),
            request,
        )
    source = config.source("sqs", name)
    if source is None:
        raise Refused(
            _refuse(403, "UNKNOWN_SOURCE", f"no sqs source named '{name}' is configured"), request, name
        )
    if source.queue_arn is not None and source.queue_arn != record.event_source_arn:
        raise Refused(
            _refuse(
                403,
                "SOURCE_QUEUE_FORBIDDEN",
                f"source '{name}' writes only on {source.queue_arn}, not on {record.event_source_arn}",
            ),
            request,
            name,
        )
    action_name = attribute(ACTION_ATTRIBUTE)
    if action_name is None:
        raise Refused(
            _refuse(
                400,
                "MISSING_ACTION",
                f"the message attribute '{ACTION_ATTRIBUTE}' (String) must say what the record asks for: "
                f"one of {_ACTIONS}",
            ),
            request,
            name,
        )
    try:
        action = Action(action_name)
    except ValueError:
        raise Refused(
            _refuse(
                400,
                "INVALID_ACTION",
                f"action '{action_name[:64]}' is not one of {_ACTIONS}",
                attribute=ACTION_ATTRIBUTE,
            ),
            request,
            name,
        ) from None
    try:
        envelope = parse_envelope(record.body, None, max_body_bytes)
    except ContractError as error:
        raise Refused(error, request, name) from None
    return _check(config, source, action, envelope, request)


def _read_event(config: ForwarderConfig, record: SQSRecord, max_body_bytes: int) -> ProducerRecord:
    fallback = request_id("sqs", record.event_source_arn, record.message_id)
    try:
        event = json.loads(record.body)
    except ValueError:
        raise Refused(
            _refuse(400, "INVALID_EVENT", "the message is not an EventBridge event"), fallback
        ) from None
    if not isinstance(event, dict) or not all(key in event for key in ("source", "detail-type", "detail")):
        raise Refused(
            _refuse(
                400, "INVALID_EVENT", "the message is not an EventBridge event (source, detail-type, detail)"
            ),
            fallback,
        )
    account = str(event.get("account") or "")
    event_id = event.get("id")
    request = (
        request_id("eventbridge", account, event_id) if isinstance(event_id, str) and event_id else fallback
    )
    event_source = str(event["source"])
    source = config.source("eventbridge", event_source)
    if source is None:
        raise Refused(
            _refuse(
                403,
                "UNKNOWN_SOURCE",
                f"no eventbridge source has event_source '{event_source[:256]}' (they start with "
                f"'{EVENT_SOURCE_PREFIX}')",
            ),
            request,
        )
    if source.account is not None and source.account != account:
        raise Refused(
            _refuse(
                403,
                "SOURCE_ACCOUNT_FORBIDDEN",
                f"source '{source.name}' is put only by account {source.account}, not {account or 'none'}",
            ),
            request,
            source.name,
        )
    action = DETAIL_TYPES.get(str(event["detail-type"]))
    if action is None:
        raise Refused(
            _refuse(
                400,
                "UNKNOWN_DETAIL_TYPE",
                f"detail-type '{str(event['detail-type'])[:128]}' is not one of {_DETAIL_TYPES}",
                attribute="detail-type",
            ),
            request,
            source.name,
        )
    detail = event["detail"]
    # The detail is the envelope: the API's checks on it, as the producer put it (size, flatness, ...). JSON
    # escapes only what UTF-8 cannot carry (a lone surrogate, which parse_envelope then names).
    text = json.dumps(detail, ensure_ascii=False)
    if not _utf8(text):
        text = json.dumps(detail)
    try:
        envelope = parse_envelope(text, None, max_body_bytes)
    except ContractError as error:
        group_key = detail.get("group_key") if isinstance(detail, dict) else None
        raise Refused(error, request, source.name, group_key if isinstance(group_key, str) else "") from None
    return _check(config, source, action, envelope, request)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def handle_batch(services: Services, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Move a batch of producer messages onto the ingest queue (or the rejects trail); a message that could
    not be queued either way is reported in ``batchItemFailures`` and retried."""
    config = services.config  # once per batch
    settings = services.settings

    def handle(record: SQSRecord) -> None:
        try:
            produced = read(
                config,
                record,
                events_queue_arn=settings.producer_events_queue_arn,
                max_body_bytes=settings.max_body_bytes,
            )
        except Refused as refused:
            _reject(services, record, refused)
            return
        try:
            enqueue(
                services,
                produced.action,
                produced.envelope,
                client=f"source:{produced.source.name}",
                request_id=produced.request_id,
            )
            count_accepted()
        except ContractError as error:  # too big once queued (413): the record, not the queue, is at fault
            too_big = Refused(
                error,
                produced.request_id,
                produced.source.name,
                produced.envelope.group_key,
                dict(produced.envelope.data),
            )
            _reject(services, record, too_big)
        except ServiceUnavailable:
            logger.warning(
                "could not queue a producer record; it will be retried",
                extra={"message_id": record.message_id},
            )
            raise

    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    response = process_partial_response(
        event=event, record_handler=handle, processor=processor, context=context
    )
    return dict(response)


def _reject(services: Services, record: SQSRecord, refused: Refused) -> None:
    """Put a refused message on the rejects trail; raises (the message is retried) when the trail is down."""
    rejection = refused.rejection(record.body).fitted(MAX_MESSAGE_BYTES)
    try:
        services.queues.send("rejects", [OutgoingMessage(rejection.model_dump_json())])
    except QueueError as error:
        logger.error(
            "could not record a refused producer record; it will be retried",
            extra={"message_id": record.message_id, "error": str(error)},
        )
        raise ServiceUnavailable() from None
    count_refused(refused.error.code)
    logger.info(
        "producer record refused",
        extra={
            "request_id": refused.request_id,
            "source": refused.source,
            "group_key": refused.group_key,
            "code": refused.error.code,
        },
    )
