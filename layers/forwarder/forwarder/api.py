"""The public HTTP API (ingest's routes) and all error -> HTTP mapping, in one place."""

from __future__ import annotations

import base64
import binascii
import html
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types

from forwarder import status
from forwarder.config.hooks import FormTokenAuth, HookConfig
from forwarder.contract import STATUS_RESOURCE, Action, ContractError
from forwarder.flows import hooks
from forwarder.flows.ingest import (
    Accepted,
    Caller,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    ServiceUnavailable,
    accept,
)
from forwarder.hooks import HOOK_RESOURCE
from forwarder.observability import count_accepted, count_refused, logger
from forwarder.ports.deliveries import DeliveryLogError
from forwarder.runtime import services

app = APIGatewayRestResolver()
#: The hook route in the resolver's spelling of a path parameter.
_HOOK_ROUTE = HOOK_RESOURCE.replace("{hook_id}", "<hook_id>")
_STATUS_ROUTE = STATUS_RESOURCE.replace("{request_id}", "<request_id>")


def _json(
    status: int, body: dict[str, Any], request_id: str | None = None, headers: dict[str, str] | None = None
) -> Response[Any]:
    headers = {**(headers or {}), **({"X-Request-Id": request_id} if request_id else {})} or None
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers
    )


def _accept(action: Action) -> Response[Any]:
    event = app.current_event
    headers = event.headers or {}  # built anew at each read of the property: read once
    identity = event.request_context.identity
    body: str | bytes | None = event.body
    if event.is_base64_encoded and event.body is not None:
        try:
            body = base64.b64decode(event.body, validate=True)
        except (binascii.Error, ValueError):
            raise ContractError(
                400,
                "INVALID_ENCODING",
                "the body could not be read (bad base64 from the gateway); send UTF-8 JSON",
            ) from None
    accepted: Accepted = accept(
        services(),
        action=action,
        body=body,
        content_type=headers.get("content-type"),
        caller=Caller(access_key=identity.access_key, user_arn=identity.user_arn),
        idempotency_key=headers.get("idempotency-key"),
        deadline=app.lambda_context,
    )
    if not accepted.repeated:
        count_accepted()
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


# --- a request's status: GET /v1/requests/{request_id} (SigV4; only the client that sent it may read it) ------


def _request_not_found() -> ContractError:
    # One answer for an unknown id, an expired one, one not validated yet and another client's.
    return ContractError(
        404,
        "REQUEST_NOT_FOUND",
        "no request with this id from this client in the last 30 days (a request shows here a few seconds "
        "after its 202; check the id, and sign with the credentials that sent it)",
    )


@app.get(_STATUS_ROUTE)
def request_status(request_id: str) -> Response[Any]:
    identity = app.current_event.request_context.identity
    current = services()
    client = current.config.client_for(identity.access_key, identity.user_arn)
    if client is None:
        raise ContractError(
            403, "ACCESS_DENIED", "these credentials are not registered for any group key; ask for access"
        )
    if current.deliveries is None:
        raise StatusUnavailable()
    try:
        document = status.status_for(current.deliveries, request_id, client.name, current.clock())
    except DeliveryLogError:
        logger.exception("the delivery log could not be read for a status request")
        raise StatusUnavailable() from None
    if document is None:
        raise _request_not_found()
    return _json(200, document)


class StatusUnavailable(Exception):
    """The delivery log could not be read: the client retries."""


@app.exception_handler(StatusUnavailable)  # type: ignore[untyped-decorator]
def status_unavailable(_: StatusUnavailable) -> Response[Any]:
    return _json(503, {"code": "UNAVAILABLE", "message": "the status could not be read; retry shortly"})


# --- web-form hooks: POST /v1/hooks/{hook_id} (no SigV4: a token or an HMAC signature) -----------------------


def _lower_headers() -> dict[str, str]:
    return {name.lower(): value for name, value in (app.current_event.headers or {}).items()}


def _raw_body() -> bytes:
    event = app.current_event
    if event.is_base64_encoded:
        return base64.b64decode(event.body or "")
    return (event.body or "").encode("utf-8")


def _cors(hook: HookConfig | None, origin: str | None) -> dict[str, str]:
    """The CORS answer headers for a browser on ``origin`` that the hook lets post (none for anyone else)."""
    if hook is None or origin is None or not isinstance(hook.auth, FormTokenAuth):
        return {}
    if not hooks.origin_allowed(hook, origin):
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def _refusal_page(error: ContractError, headers: dict[str, str]) -> Response[Any]:
    """A refusal a person reads: a browser that posted a plain form shows the answer as a page."""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>The form was not sent</title>'
        "</head><body><h1>The form was not sent</h1>"
        f"<p>{html.escape(error.message)}</p><p><small>{html.escape(error.code)} ({error.status})</small></p>"
        "<p>Go back and try again.</p></body></html>"
    )
    return Response(
        status_code=error.status, content_type="text/html; charset=utf-8", body=page, headers=headers
    )


@app.post(_HOOK_ROUTE)
def receive_hook(hook_id: str) -> Response[Any]:
    headers = _lower_headers()
    hook = services().config.hooks.get(hook_id)
    cors = _cors(hook, headers.get("origin"))
    request = hooks.HookRequest(
        hook_id=hook_id,
        headers=headers,
        query=app.current_event.multi_value_query_string_parameters or {},
        body=_raw_body(),
    )
    try:
        answer = hooks.receive(services(), request, deadline=app.lambda_context)
    except ContractError as error:
        logger.info(
            "hook request refused", extra={"hook": hook_id[:64], "status": error.status, "code": error.code}
        )
        count_refused(error.code)
        browser_form = hook is not None and isinstance(hook.auth, FormTokenAuth)
        if browser_form and "text/html" in headers.get("accept", ""):
            return _refusal_page(error, cors)
        return _json(error.status, error.body(), headers=cors or None)
    request_id = answer.accepted.request_id if answer.accepted else None
    if answer.accepted is not None and not answer.accepted.repeated:
        count_accepted()
    if answer.redirect is not None:
        return Response(
            status_code=303,
            body="",
            headers={
                "Location": answer.redirect,
                **cors,
                **({"X-Request-Id": request_id} if request_id else {}),
            },
        )
    assert answer.accepted is not None  # only a form token hook drops a post, and it redirects
    return _json(202, {"request_id": request_id, "status": "accepted"}, request_id, headers=cors or None)


@app.route(_HOOK_ROUTE, method="OPTIONS")
def hook_preflight(hook_id: str) -> Response[Any]:
    """A browser asks whether a page on its origin may post to the hook (CORS preflight)."""
    hook = hooks.find_hook(services(), hook_id)
    cors = _cors(hook, _lower_headers().get("origin"))
    if not cors:
        raise ContractError(
            403,
            "ORIGIN_NOT_ALLOWED",
            "this page's origin may not post to the hook; add it to the hook's allowed_origins",
        )
    return Response(
        status_code=204,
        body="",
        headers={
            **cors,
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


@app.exception_handler(ContractError)  # type: ignore[untyped-decorator]
def contract_error(error: ContractError) -> Response[Any]:
    logger.info("request refused", extra={"status": error.status, "code": error.code})
    count_refused(error.code)
    return _json(error.status, error.body())


@app.exception_handler(IdempotencyKeyReused)  # type: ignore[untyped-decorator]
def idempotency_key_reused(_: IdempotencyKeyReused) -> Response[Any]:
    logger.info("request refused", extra={"status": 422, "code": "IDEMPOTENCY_KEY_REUSED"})
    count_refused("IDEMPOTENCY_KEY_REUSED")
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
    count_refused("IDEMPOTENCY_KEY_IN_PROGRESS")
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
    count_refused("UNAVAILABLE")
    return _json(503, {"code": "UNAVAILABLE", "message": "the request could not be queued; retry it"})


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def unexpected(error: Exception) -> Response[Any]:
    """A bug or an outage below the API: logged with the request id, answered 500 quoting it."""
    request_id = _request_id()
    logger.exception("unexpected error in ingest", extra={"api_request_id": request_id})
    count_refused("INTERNAL_ERROR")
    return _json(
        500,
        {
            "code": "INTERNAL_ERROR",
            "message": f"the request could not be handled; nothing was accepted: retry it, and quote request id "
            f"{request_id} if it persists",
            "request_id": request_id,
        },
    )


def _request_id() -> str:
    try:
        found = app.current_event.request_context.request_id
    except (AttributeError, KeyError, TypeError):
        found = None
    return str(found or (app.lambda_context.aws_request_id if app.lambda_context else "unknown"))


@app.not_found
def not_found(_: Exception) -> Response[Any]:
    count_refused("NOT_FOUND")
    return _json(
        404,
        {
            "code": "NOT_FOUND",
            "message": "no such route; use POST|DELETE /v1/contacts, POST /v1/events, GET /v1/requests/{request_id}"
            " or POST /v1/hooks/{hook_id}",
        },
    )
