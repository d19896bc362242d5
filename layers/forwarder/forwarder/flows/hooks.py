"""Web-form webhooks: authenticate a post against its hook's secret, read it as a flat record, and queue it
through ingest's own path (``accept_record``) for the hook's group key and flow.

* An **HMAC** hook (form tools, servers) checks the signature of the raw body before reading it. Its request
  is recorded under the verified MAC (Powertools Idempotency, like an ``Idempotency-Key``): a resend of the
  very same signed request queues nothing; it answers the first request's answer when the signature carries
  no timestamp (Typeform and Tally resend a delivery unchanged when an answer was lost), and is refused as a
  replay when it does (a sender that timestamps signs each delivery anew). An old timestamp is refused.
* A **form token** hook (a plain HTML form in a browser) checks the page's Origin and the token (a hidden
  field or a query parameter); a filled honeypot field is answered like a success and dropped.

The secret is ``{"secret": "..."}`` in the secret store; ``forwarder hooks revoke`` replaces it by
``{"revoked_at": "..."}``, after which the hook answers 410.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from forwarder.config.hooks import FormTokenAuth, HmacAuth, HookConfig
from forwarder.contract import Action, ContractError, Envelope, check_flat
from forwarder.flows.ingest import Accepted, Deadline, ServiceUnavailable, accept_record
from forwarder.hooks import bodies, formats, signatures
from forwarder.observability import logger, metrics
from forwarder.ports.secrets import SecretNotFoundError, SecretStoreError
from forwarder.runtime import Services

#: A revoked or rotated hook secret takes effect within this many seconds on a warm Lambda.
HOOK_SECRET_MAX_AGE_SECONDS = 60


@dataclass(frozen=True, slots=True)
class HookRequest:
    """A post to a hook: its id, headers (names in lower case), query parameters and raw body."""

    hook_id: str
    headers: Mapping[str, str]
    query: Mapping[str, Sequence[str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class HookAnswer:
    """``accepted``: the queued request (None when a filled honeypot dropped it); ``redirect``: where a
    browser goes next (form token hooks)."""

    accepted: Accepted | None
    redirect: str | None = None


def find_hook(services: Services, hook_id: str) -> HookConfig:
    hook = services.config.hooks.get(hook_id)
    if hook is None:
        raise ContractError(404, "HOOK_NOT_FOUND", f"there is no hook '{hook_id[:64]}'; check the form's URL")
    return hook


def origin_allowed(hook: HookConfig, origin: str | None) -> bool:
    """Whether a browser on ``origin`` may post to the hook (a request without an Origin is no browser's)."""
    if origin is None:
        return True
    return isinstance(hook.auth, FormTokenAuth) and origin in hook.auth.allowed_origins


def receive(services: Services, request: HookRequest, deadline: Deadline | None = None) -> HookAnswer:
    """Authenticate and queue one post. Raises ContractError (4xx) saying what to fix, or ServiceUnavailable."""
    hook = find_hook(services, request.hook_id)
    action = next(action for action in Action if action.flow == hook.flow)
    secret = _secret(services, request.hook_id, hook)
    content_type = request.headers.get("content-type")
    max_bytes = services.settings.max_body_bytes
    if isinstance(hook.auth, HmacAuth):
        mac = signatures.verify(hook.auth, secret, request.headers, request.body, services.clock())
        record = _record(hook, bodies.read_body(request.body, content_type, max_bytes))
        accepted = accept_record(
            services,
            action=action,
            envelope=_envelope(hook, record),
            client=f"hook:{request.hook_id}",
            idempotency_key="hmac:" + hashlib.sha256(mac).hexdigest(),
            deadline=deadline,
        )
        if accepted.repeated and hook.auth.timestamped:
            raise ContractError(
                401,
                "SIGNATURE_REPLAYED",
                "this signed request was received before and is not accepted again; sign each request anew",
            )
        return HookAnswer(accepted)
    auth = hook.auth
    if not origin_allowed(hook, request.headers.get("origin")):
        raise ContractError(
            403,
            "ORIGIN_NOT_ALLOWED",
            "this form's page is not on an origin the hook accepts; add the page's origin to the hook's "
            "allowed_origins",
        )
    record = _record(hook, bodies.read_body(request.body, content_type, max_bytes))
    token = record.pop(auth.field, None)
    if token is None:
        token = next(iter(request.query.get(auth.field) or ()), None)
    if token is None:
        raise ContractError(
            401,
            "TOKEN_MISSING",
            f'the form has no \'{auth.field}\' field; add <input type="hidden" name="{auth.field}" '
            'value="<the hook\'s token>">',
        )
    if not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8"), secret.encode("utf-8")):
        raise ContractError(
            401,
            "TOKEN_INVALID",
            f"the form's '{auth.field}' is not this hook's token; copy the token `forwarder hooks create` "
            "printed (a revoked or rotated token stops working)",
        )
    if auth.honeypot is not None and _filled(record.pop(auth.honeypot, None)):
        # Answered like a success, so a bot learns nothing; counted, never logged with the form's fields.
        logger.info("hook post dropped: honeypot filled", extra={"hook": request.hook_id})
        if not is_metrics_disabled():
            metrics.add_metric(name="HookHoneypotDropped", unit=MetricUnit.Count, value=1)
        return HookAnswer(None, auth.redirect)
    accepted = accept_record(
        services,
        action=action,
        envelope=_envelope(hook, record),
        client=f"hook:{request.hook_id}",
        deadline=deadline,
    )
    return HookAnswer(accepted, auth.redirect)


def _secret(services: Services, hook_id: str, hook: HookConfig) -> str:
    max_age = min(services.settings.secrets_max_age_seconds, HOOK_SECRET_MAX_AGE_SECONDS)
    try:
        stored = services.secrets.get(hook.secret, max_age_seconds=max_age)
    except SecretNotFoundError:
        # The operator has not run `forwarder hooks create` yet: not the sender's fault, retrying may help.
        logger.error("hook has no secret in the secret store", extra={"hook": hook_id})
        raise ServiceUnavailable() from None
    except SecretStoreError as error:
        logger.error("hook secret unreadable", extra={"hook": hook_id, "error": str(error)})
        raise ServiceUnavailable() from None
    value = stored.get("secret")
    if isinstance(value, str) and value:
        return value
    if stored.get("revoked_at"):
        raise ContractError(
            410, "HOOK_REVOKED", "this hook was revoked and accepts nothing; ask for a new one"
        )
    logger.error("hook secret has no 'secret' value", extra={"hook": hook_id})
    raise ServiceUnavailable()


def _record(hook: HookConfig, body: bodies.HookBody) -> dict[str, Any]:
    if body.kind == "form":
        return dict(bodies.form_record(body.fields))
    return dict(formats.record_from_json(body.document, hook.format))


def _envelope(hook: HookConfig, record: dict[str, Any]) -> Envelope:
    if not record:
        raise ContractError(400, "EMPTY_DATA", "the post carries no fields for the record", attribute="data")
    return Envelope.model_construct(group_key=hook.group_key, data=check_flat(record))


def _filled(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(isinstance(item, str) and item.strip() for item in values)
