"""ingest: cheap synchronous checks, then enqueue and answer 202. Never calls a vendor."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from forwarder.contract import Action, ContractError, parse_envelope
from forwarder.messages import IngestMessage, utcnow_iso
from forwarder.observability import logger
from forwarder.ports.queues import OutgoingMessage, QueueError
from forwarder.runtime import Services


@dataclass(frozen=True, slots=True)
class Caller:
    """Who signed the request, as API Gateway's IAM authorisation (or the embedded gateway) reports it."""

    access_key: str | None
    user_arn: str | None


@dataclass(frozen=True, slots=True)
class Accepted:
    request_id: str
    group_key: str


def accept(
    services: Services,
    *,
    action: Action,
    body: bytes | str | None,
    content_type: str | None,
    caller: Caller,
    idempotency_key: str | None = None,
) -> Accepted:
    """Check the request and enqueue it. Raises ContractError (4xx) or ServiceUnavailable (503)."""
    envelope = parse_envelope(body, content_type, services.settings.max_body_bytes)
    config = services.config
    client = config.client_for(caller.access_key, caller.user_arn)
    if client is None:
        raise ContractError(
            403, "ACCESS_DENIED", "these credentials are not registered for any group key; ask for access"
        )
    group = config.group_keys.get(envelope.group_key)
    if group is None:
        raise ContractError(
            404,
            "UNKNOWN_GROUP_KEY",
            f"group key '{envelope.group_key}' does not exist",
            attribute="group_key",
        )
    if not client.allows(envelope.group_key):
        raise ContractError(
            403,
            "GROUP_KEY_FORBIDDEN",
            f"client '{client.name}' may not use group key '{envelope.group_key}'",
            attribute="group_key",
        )
    if not any(item.enabled and item.operation(action) for item in group.integrations):
        raise ContractError(
            422,
            "NO_INTEGRATION_FOR_ACTION",
            f"no enabled integration of group key '{envelope.group_key}' handles {action.flow}",
            attribute="group_key",
        )
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 128):
        raise ContractError(400, "INVALID_IDEMPOTENCY_KEY", "Idempotency-Key must be 1 to 128 characters")
    request_id = str(uuid.uuid4())
    message = IngestMessage(
        request_id=request_id,
        action=action,
        group_key=envelope.group_key,
        data=envelope.data,
        received_at=utcnow_iso(),
        client=client.name,
        idempotency_key=idempotency_key,
    )
    body_json = message.model_dump_json()
    if len(body_json.encode("utf-8")) > services.settings.max_message_bytes:
        raise ContractError(
            413,
            "BODY_TOO_LARGE",
            f"the record takes {len(body_json.encode('utf-8'))} bytes once queued; the limit is "
            f"{services.settings.max_message_bytes}: send fewer or shorter attributes",
        )
    try:
        services.queues.send(
            "ingest",
            [
                OutgoingMessage(
                    body_json,
                    {"request_id": request_id, "group_key": envelope.group_key, "action": action.value},
                )
            ],
        )
    except QueueError as error:
        logger.error("could not enqueue an accepted request", extra={"error": str(error)})
        raise ServiceUnavailable() from None
    logger.info(
        "request accepted",
        extra={
            "request_id": request_id,
            "group_key": envelope.group_key,
            "action": action.value,
            "client": client.name,
        },
    )
    return Accepted(request_id, envelope.group_key)


class ServiceUnavailable(Exception):
    """The request could not be enqueued; nothing was accepted and the client should retry."""
