"""The public HTTP API (ingest's routes) and all error -> HTTP mapping, in one place."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types

from forwarder.contract import Action, ContractError
from forwarder.flows.ingest import (
    Accepted,
    Caller,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    ServiceUnavailable,
    accept,
)
from forwarder.observability import logger
from forwarder.runtime import services

app = APIGatewayRestResolver()


def _json(
    status: int, body: dict[str, Any], request_id: str | None = None, headers: dict[str, str] | None = None
) -> Response[Any]:
    headers = {**(headers or {}), **({"X-Request-Id": request_id} if request_id else {})} or None
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers
    )


def _accept(action: Action) -> Response[Any]:
    event = app.current_event
    identity = event.request_context.identity
    body: str | bytes | None = event.decoded_body if event.is_base64_encoded else event.body
    accepted: Accepted = accept(
        services(),
        action=action,
        body=body,
        content_type=event.headers.get("content-type") if event.headers else None,
        caller=Caller(access_key=identity.access_key, user_arn=identity.user_arn),
        idempotency_key=(event.headers or {}).get("idempotency-key"),
        deadline=app.lambda_context,
    )
    return _json(202, {"request_id": accepted.request_id, "status": "accepted"}, accepted.request_id)


@app.post("/v1/contacts")
def upsert_contact() -> Response[Any]:
    return _accept(Action.UPSERT_CONTACT)


@app.delete("/v1/contacts")
def delete_contact() -> Response[Any]:
    return _accept(Action.DELETE_CONTACT)


@app.post("/v1/events")
def custom_event() -> Response[Any]:
    return _accept(Action.EVENT)


@app.exception_handler(ContractError)  # type: ignore[untyped-decorator]
def contract_error(error: ContractError) -> Response[Any]:
    logger.info("request refused", extra={"status": error.status, "code": error.code})
    return _json(error.status, error.body())


@app.exception_handler(IdempotencyKeyReused)  # type: ignore[untyped-decorator]
def idempotency_key_reused(_: IdempotencyKeyReused) -> Response[Any]:
    logger.info("request refused", extra={"status": 422, "code": "IDEMPOTENCY_KEY_REUSED"})
    return _json(
        422,
        {
            "code": "IDEMPOTENCY_KEY_REUSED",
            "message": "this Idempotency-Key was used in the last 24 hours for a different request (route, "
            "group_key or data); send a new request with a new key, or repeat the first one unchanged",
        },
    )


@app.exception_handler(IdempotencyKeyInProgress)  # type: ignore[untyped-decorator]
def idempotency_key_in_progress(_: IdempotencyKeyInProgress) -> Response[Any]:
    logger.info("request refused", extra={"status": 409, "code": "IDEMPOTENCY_KEY_IN_PROGRESS"})
    return _json(
        409,
        {
            "code": "IDEMPOTENCY_KEY_IN_PROGRESS",
            "message": "the first request with this Idempotency-Key is still being accepted; retry shortly",
        },
        headers={"Retry-After": "1"},
    )


@app.exception_handler(ServiceUnavailable)  # type: ignore[untyped-decorator]
def unavailable(_: ServiceUnavailable) -> Response[Any]:
    return _json(503, {"code": "UNAVAILABLE", "message": "the request could not be queued; retry it"})


@app.not_found
def not_found(_: Exception) -> Response[Any]:
    return _json(
        404,
        {"code": "NOT_FOUND", "message": "no such route; use POST|DELETE /v1/contacts or POST /v1/events"},
    )
