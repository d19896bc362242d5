"""``forwarder config preview``: the vendor requests one record would cause, without reaching any vendor.

Each delivery the validate flow would queue is delivered by its integration's own code to that vendor's
sandbox, started in memory for the preview (no state, nothing kept); the requests the sandbox received are
the preview: method, the vendor's URL (the config's ``base_url`` with the sandbox's path), query and body.
Token requests are left out (they carry no record). The sandbox starts empty, so what is shown is what a
customer the vendor does not hold yet causes (an update may read the customer first and send less).
A request the sandbox refuses is shown with its status: the vendor would most likely refuse it too.
"""

from __future__ import annotations

import secrets as random_secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests

from forwarder.config import ForwarderConfig
from forwarder.messages import DeliveryMessage
from forwarder_local.sandboxes.framework import Sandbox


@dataclass
class _Vendor:
    sandbox: Sandbox
    credentials: dict[str, Any]
    #: the sandbox's path prefix that stands for the vendor's base URL
    base_path: str = ""


def _start(kind: str, settings: Any) -> _Vendor:
    if kind == "expertsender":
        from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox

        api_key = random_secrets.token_urlsafe(16)
        expertsender = ExpertSenderSandbox(api_key).start()
        return _Vendor(expertsender, {"api_key": api_key, "base_url": expertsender.url})
    if kind == "dmhub":
        from forwarder_local.sandboxes.dmhub import DmHubSandbox

        app_id, secret = "cl" + random_secrets.token_hex(8), random_secrets.token_hex(20)
        v2 = getattr(settings, "api_version", "v1") == "v2"
        dmhub = DmHubSandbox(app_id, secret, api_version="v2" if v2 else "v1").start()
        return _Vendor(dmhub, {"app_id": app_id, "secret": secret, "base_url": dmhub.url})
    if kind == "carecloud":
        from forwarder_local.sandboxes.carecloud import BASE_PATH, CareCloudSandbox

        application = random_secrets.token_hex(13)
        basic = getattr(settings, "auth_scheme", "bearer") == "basic"
        carecloud = CareCloudSandbox(
            external_application_id=application, auth_scheme="basic" if basic else "bearer"
        ).start()
        return _Vendor(
            carecloud,
            {"external_application_id": application, "base_url": carecloud.url + BASE_PATH},
            BASE_PATH,
        )
    raise ValueError(f"no sandbox for integration type '{kind}'")


@contextmanager
def _vendors() -> Iterator[dict[str, _Vendor]]:
    started: dict[str, _Vendor] = {}
    try:
        yield started
    finally:
        for vendor in started.values():
            vendor.sandbox.stop()


def vendor_requests(config: ForwarderConfig, deliveries: Sequence[DeliveryMessage]) -> list[dict[str, Any]]:
    """Per delivery: the integration, the operation, the vendor requests it makes and what the sandbox made
    of them (``delivered``, or the reason it would not be)."""
    integrations = {
        (group_key, item.name): item
        for group_key, group in config.group_keys.items()
        for item in group.integrations
    }
    previews: list[dict[str, Any]] = []
    with _vendors() as started, requests.Session() as http:
        for delivery in deliveries:
            integration_config = integrations[(delivery.group_key, delivery.integration)]
            integration = integration_config.integration
            settings = integration_config.parsed_settings
            key = f"{delivery.group_key}/{delivery.integration}"
            if key not in started:
                started[key] = _start(integration_config.type, settings)
            vendor = started[key]
            credentials = dict(vendor.credentials)
            if integration.uses_tokens and integration.token(credentials) is None:
                credentials.update(integration.fetch_token(settings, credentials, http))
            seen = len(vendor.sandbox.requests)
            (outcome,) = integration.deliver(
                delivery.operation, [delivery.payload], settings, credentials, http
            )
            base_url = str(getattr(settings, "base_url", "") or "").rstrip("/")
            sent = [
                {
                    "method": request.method,
                    "url": base_url + request.path.removeprefix(vendor.base_path),
                    **({"query": request.query} if request.query else {}),
                    "body": request.body,
                    **({"sandbox_status": request.status} if request.status >= 400 else {}),
                }
                for request in vendor.sandbox.requests[seen:]
            ]
            verdict = outcome.verdict.value
            previews.append(
                {
                    "integration": delivery.integration,
                    "operation": delivery.operation,
                    "requests": sent,
                    "outcome": verdict if verdict == "delivered" else f"{verdict}: {outcome.reason}",
                    **({"errors": outcome.errors} if outcome.errors else {}),
                }
            )
    return previews
