"""ingest: cheap synchronous checks, then enqueue and answer 202. Never calls a vendor.

A request with an ``Idempotency-Key`` is accepted once per (client, key) within 24 hours, through Powertools
Idempotency: the key is recorded INPROGRESS before the message is queued and COMPLETED with the answer after,
so a retry gets the first answer and queues nothing. When queueing fails the record is deleted (the retry is
queued afresh); when the process dies in between, the record stays INPROGRESS only until the invocation's own
deadline, after which a retry is queued. A key never answers 202 for a request that was not queued.

A keyed request's ``request_id`` is derived from the client, the key and the request, so a retry after a
process died between queueing and recording the answer queues the same request again: the FIFO queue's
deduplication drops it within five minutes, and past them the delivery log skips what was delivered already.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from forwarder.config import ForwarderConfig
from forwarder.contract import Action, ContractError, Envelope, parse_envelope
from forwarder.messages import IngestMessage, utcnow_iso
from forwarder.observability import logger
from forwarder.ordering import deduplication_id, ingest_group
from forwarder.ports.queues import OutgoingMessage, QueueError
from forwarder.runtime import Services

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer

#: How long a key answers with its first request's answer.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
#: How long a key stays "in progress" when no Lambda context says how long the invocation may still run.
IN_PROGRESS_FALLBACK_SECONDS = 30
#: The stored keys' prefix, fixed: renaming the function or this module keeps clients' keys.
_KEY_PREFIX = "forwarder.ingest"
#: The namespace of request ids derived from an Idempotency-Key (uuid5).
_KEYED_REQUESTS = uuid.UUID("5b0c6f0e-2d55-4d0b-9a8e-6f1f4a3c9d21")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who signed the request, as API Gateway's IAM authorisation (or the embedded gateway) reports it."""

    access_key: str | None
    user_arn: str | None


@dataclass(frozen=True, slots=True)
class Accepted:
    request_id: str
    group_key: str
    #: True when the answer is an earlier request's (the same Idempotency-Key and request): nothing was queued.
    repeated: bool = False


def accept(
    services: Services,
    *,
    action: Action,
    body: bytes | str | None,
    content_type: str | None,
    caller: Caller,
    idempotency_key: str | None = None,
    deadline: Deadline | None = None,
) -> Accepted:
    """Check the request and enqueue it (once per client and ``idempotency_key``; ``deadline``: the Lambda
    context). Raises ContractError (4xx), IdempotencyKeyReused, IdempotencyKeyInProgress or ServiceUnavailable."""
    envelope = parse_envelope(body, content_type, services.settings.max_body_bytes)
    client = services.config.client_for(caller.access_key, caller.user_arn)
    if client is None:
        raise ContractError(
            403, "ACCESS_DENIED", "these credentials are not registered for any group key; ask for access"
        )
    if not client.allows(envelope.group_key) or (
        envelope.group_key not in services.config.group_keys and "*" not in client.group_keys
    ):
        # The same answer whether the key exists or not: a caller cannot list other brands' group keys.
        raise _forbidden(client.name, envelope.group_key)
    return accept_record(
        services,
        action=action,
        envelope=envelope,
        client=client.name,
        may_use=client.allows,
        idempotency_key=idempotency_key,
        deadline=deadline,
    )


def _forbidden(client: str, group_key: str) -> ContractError:
    return ContractError(
        403,
        "GROUP_KEY_FORBIDDEN",
        f"client '{client}' may not use group key '{group_key}' (or it does not exist); check the key, or ask "
        "for access to it",
        attribute="group_key",
    )


def accept_record(
    services: Services,
    *,
    action: Action,
    envelope: Envelope,
    client: str,
    may_use: Callable[[str], bool] | None = None,
    idempotency_key: str | None = None,
    deadline: Deadline | None = None,
) -> Accepted:
    """Enqueue a checked record from any front door (a signed call, a web-form hook) for ``client``, who may use
    the group keys ``may_use`` allows (all when None). Raises as ``accept`` does."""
    check_destination(services.config, action, envelope, f"client '{client}'", may_use or (lambda _: True))
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 128):
        raise ContractError(400, "INVALID_IDEMPOTENCY_KEY", "Idempotency-Key must be 1 to 128 characters")

    def enqueue() -> Accepted:
        return _enqueue(services, action, envelope, client, idempotency_key)

    store = services.idempotency_store() if idempotency_key is not None else None
    if store is None or idempotency_key is None:
        return enqueue()
    request = {
        "client": client,
        "idempotency_key": idempotency_key,
        "action": action.value,
        "group_key": envelope.group_key,
        "data": envelope.data,
    }
    return _accept_once(store, request, enqueue, deadline)


def check_destination(
    config: ForwarderConfig, action: Action, envelope: Envelope, writer: str, allows: Callable[[str], bool]
) -> None:
    """The checks every way in makes once the envelope is well-formed: the group key exists, ``writer`` (a
    client or a producer, as named in messages) may write to it, and an integration of it handles ``action``.
    Raises ContractError (404, 403, 422)."""
    group = config.group_keys.get(envelope.group_key)
    if group is None:
        raise ContractError(
            404,
            "UNKNOWN_GROUP_KEY",
            f"group key '{envelope.group_key}' does not exist",
            attribute="group_key",
        )
    if not allows(envelope.group_key):
        raise ContractError(
            403,
            "GROUP_KEY_FORBIDDEN",
            f"{writer} may not use group key '{envelope.group_key}'",
            attribute="group_key",
        )
    if not any(item.enabled and item.operation(action) for item in group.integrations):
        raise ContractError(
            422,
            "NO_INTEGRATION_FOR_ACTION",
            f"no enabled integration of group key '{envelope.group_key}' handles {action.flow}",
            attribute="group_key",
        )


def enqueue(
    services: Services, action: Action, envelope: Envelope, *, client: str, request_id: str
) -> Accepted:
    """Queue a checked record for validate under ``request_id`` (the producers' way in: their request ids are
    derived from the message or event, so a redelivered one is dropped downstream). Raises ContractError
    (413: too big once queued) or ServiceUnavailable."""
    return _enqueue(services, action, envelope, client, None, request_id)


def _enqueue(
    services: Services,
    action: Action,
    envelope: Envelope,
    client: str,
    idempotency_key: str | None,
    request_id: str | None = None,
) -> Accepted:
    if request_id is None:
        request_id = (
            str(uuid.uuid4())
            if idempotency_key is None
            else keyed_request_id(client, idempotency_key, action, envelope)
        )
    message = IngestMessage(
        request_id=request_id,
        action=action,
        group_key=envelope.group_key,
        data=envelope.data,
        received_at=utcnow_iso(),
        client=client,
        idempotency_key=idempotency_key,
    )
    logger.set_correlation_id(request_id)  # this request's lines carry the id its client gets
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
                    # the ingest queue is FIFO, one group per customer: validate handles a customer's
                    # requests in the order they were accepted
                    group_id=ingest_group(
                        services.config.group_keys[envelope.group_key],
                        envelope.group_key,
                        action,
                        envelope.data,
                        request_id,
                    ),
                    dedup_id=deduplication_id(request_id),
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
            "client": client,
        },
    )
    return Accepted(request_id, envelope.group_key)


def keyed_request_id(client: str, idempotency_key: str, action: Action, envelope: Envelope) -> str:
    """The request id of a request sent with an ``Idempotency-Key``: the same for the same client, key and
    request (route, group key, data; attribute order aside), so queueing it twice is caught downstream."""
    request = json.dumps(
        [client, idempotency_key, action.value, envelope.group_key, envelope.data],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return str(uuid.uuid5(_KEYED_REQUESTS, hashlib.sha256(request.encode("utf-8")).hexdigest()))


class Deadline(Protocol):
    """What the idempotency record needs of a Lambda context: how long this invocation may still run."""

    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Fallback:
    millis: int

    def get_remaining_time_in_millis(self) -> int:
        return self.millis


def _accept_once(
    store: BasePersistenceLayer,
    request: dict[str, Any],
    enqueue: Callable[[], Accepted],
    deadline: Deadline | None,
) -> Accepted:
    """Enqueue the request unless its client's key answered already; see the module docstring."""
    # Deferred: requests without a key never pay for importing Powertools Idempotency (and boto3).
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyInconsistentStateError,
        IdempotencyPersistenceLayerError,
        IdempotencyValidationError,
    )

    queued: list[Accepted] = []

    def accept_once(request: dict[str, Any]) -> dict[str, str]:
        accepted = enqueue()
        queued.append(accepted)
        return {"request_id": accepted.request_id, "group_key": accepted.group_key}

    # A config per call: only the first one configures the store (the same values every time); the deadline
    # differs per invocation, and concurrent requests of the embedded gateway must not share it.
    config = IdempotencyConfig(
        event_key_jmespath="[client, idempotency_key]",
        # "The same body": the hash of the canonical JSON (keys sorted) of the route's action, group key, data.
        payload_validation_jmespath="[action, group_key, data]",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=IDEMPOTENCY_TTL_SECONDS,
        hash_function="sha256",
        lambda_context=deadline or _Fallback(IN_PROGRESS_FALLBACK_SECONDS * 1000),  # type: ignore[arg-type]
    )
    once = idempotent_function(
        accept_once,
        data_keyword_argument="request",
        persistence_store=store,
        config=config,
        key_prefix=_KEY_PREFIX,
    )
    client = request["client"]
    try:
        answer: dict[str, str] = once(request=request)
    except IdempotencyValidationError:
        raise IdempotencyKeyReused() from None
    except (IdempotencyAlreadyInProgressError, IdempotencyInconsistentStateError):
        raise IdempotencyKeyInProgress() from None
    except IdempotencyPersistenceLayerError as error:
        # The cause names the store's error; the key is hashed in it, the data absent.
        if queued:
            # Queued, but the key could not be marked completed: the request stands. A retry within the
            # invocation's deadline answers 409, a later one is queued again (at least once, never lost).
            logger.warning(
                "request queued, its Idempotency-Key not recorded as answered",
                extra={"client": client, "request_id": queued[0].request_id, "error": str(error)},
            )
            return queued[0]
        logger.error("idempotency store unavailable", extra={"client": client, "error": str(error)})
        raise ServiceUnavailable() from None
    if not queued:
        logger.set_correlation_id(str(answer["request_id"]))
        logger.info(
            "repeated Idempotency-Key answered with the first request",
            extra={"client": client, "request_id": answer["request_id"]},
        )
    return Accepted(str(answer["request_id"]), str(answer["group_key"]), repeated=not queued)


class ServiceUnavailable(Exception):
    """The request could not be enqueued; nothing was accepted and the client should retry."""


class IdempotencyKeyReused(Exception):
    """The client's Idempotency-Key was used within 24 hours for a different request (route, group key or data)."""


class IdempotencyKeyInProgress(Exception):
    """The first request with this Idempotency-Key is still being accepted; retry shortly."""
