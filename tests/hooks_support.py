"""What the hook tests share: a config with one hook of each kind, the form tools' documented signing schemes,
and payloads in their documented shapes (Typeform's form_response, Tally's FORM_RESPONSE)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from forwarder import runtime
from forwarder.hooks import HOOK_RESOURCE
from forwarder.runtime import RuntimeSettings, Services
from forwarder_local.gateway import proxy_event
from forwarder_local.idempotency import SqliteIdempotencyLayer
from forwarder_local.poller import LambdaContext
from forwarder_local.queue import DurableQueueStore
from forwarder_local.stack import QUEUES, load_handler
from forwarder_local.stores import EmbeddedQueues, LocalSecretStore
from tests.conftest import REPO_ROOT

FORM = "application/x-www-form-urlencoded"
EXPERTSENDER_ONLY = REPO_ROOT / "config" / "examples" / "expertsender-only.yaml"
FORM_ORIGIN = "http://forms.example"
THANKS = "https://www.example.com/thanks"
#: hook id -> the secret tests store for it
SECRETS = {
    "signup-form": "form-token-0123456789",
    "typeform": "typeform-secret",
    "tally": "tally-secret",
    "stripe-style": "whsec_test_secret",
}


def hooks_yaml(origin: str = FORM_ORIGIN, redirect: str = THANKS) -> str:
    return f"""
hooks:
  signup-form:
    group_key: demo
    flow: contacts
    secret: forwarder/hooks/signup-form
    auth:
      kind: form_token
      allowed_origins: [{origin}]
      honeypot: website
      redirect: {redirect}
  typeform:
    group_key: demo
    secret: forwarder/hooks/typeform
    format: typeform
    auth: {{kind: hmac, header: Typeform-Signature, encoding: base64, prefix: "sha256="}}
  tally:
    group_key: demo
    secret: forwarder/hooks/tally
    format: tally
    auth: {{kind: hmac, header: Tally-Signature, encoding: base64}}
  stripe-style:
    group_key: demo
    flow: delete
    secret: forwarder/hooks/stripe-style
    auth: {{kind: hmac, header: Stripe-Signature, signature_key: v1, timestamp_key: t, tolerance_seconds: 300}}
"""


def write_config(folder: Path, base: Path = EXPERTSENDER_ONLY, **options: str) -> Path:
    """``base`` with the test hooks added, written to ``folder``."""
    path = folder / "forwarder-hooks.yaml"
    path.write_text(base.read_text(encoding="utf-8") + hooks_yaml(**options), encoding="utf-8")
    return path


def store_secrets(secrets: Any) -> None:
    """Store every test hook's secret as `forwarder hooks create` does."""
    for hook_id, value in SECRETS.items():
        secrets.put(f"forwarder/hooks/{hook_id}", {"secret": value, "created_at": "2026-01-01T00:00:00Z"})


# --- the senders' documented signing schemes -------------------------------------------------------------


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()


def typeform_signature(body: bytes, secret: str = SECRETS["typeform"]) -> str:
    """Typeform-Signature: 'sha256=' + base64 of the HMAC-SHA256 of the raw body."""
    return "sha256=" + base64.b64encode(_mac(secret, body)).decode()


def tally_signature(body: bytes, secret: str = SECRETS["tally"]) -> str:
    """Tally-Signature: base64 of the HMAC-SHA256 of the payload."""
    return base64.b64encode(_mac(secret, body)).decode()


def stripe_signature(body: bytes, timestamp: int, secret: str = SECRETS["stripe-style"]) -> str:
    """Stripe-Signature: 't=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">'."""
    return f"t={timestamp},v1=" + _mac(secret, f"{timestamp}.".encode() + body).hex()


def typeform_payload(email: str, first_name: str = "Jane") -> bytes:
    """A form_response in the shape of Typeform's example payload (answers keyed by field ref)."""
    document = {
        "event_id": "01HW1Q5T1E8XAMPLE",
        "event_type": "form_response",
        "form_response": {
            "form_id": "lT4Z3j",
            "token": "a3a12ec67a1ace1b5a7ebb4d2bd0ea4b",
            "landed_at": "2026-01-18T18:07:02Z",
            "submitted_at": "2026-01-18T18:07:02Z",
            "hidden": {"utm_source": "newsletter"},
            "definition": {
                "id": "lT4Z3j",
                "title": "Sign up",
                "fields": [
                    {"id": "DlXFaesGBpoF", "title": "Your e-mail?", "type": "email", "ref": "email"},
                    {"id": "SMEUb7VJz92Q", "title": "First name", "type": "short_text", "ref": "first_name"},
                    {"id": "k6TP9oLGgHjl", "title": "Interests", "type": "multiple_choice", "ref": "tags"},
                    {"id": "gFFf3xAkJKsr", "title": "City", "type": "dropdown", "ref": "city"},
                ],
            },
            "answers": [
                {
                    "type": "email",
                    "email": email,
                    "field": {"id": "DlXFaesGBpoF", "type": "email", "ref": "email"},
                },
                {
                    "type": "text",
                    "text": first_name,
                    "field": {"id": "SMEUb7VJz92Q", "type": "short_text", "ref": "first_name"},
                },
                {
                    "type": "choices",
                    "choices": {"labels": ["vip", "beta"]},
                    "field": {"id": "k6TP9oLGgHjl", "type": "multiple_choice", "ref": "tags"},
                },
                {
                    "type": "choice",
                    "choice": {"label": "Oslo"},
                    "field": {"id": "gFFf3xAkJKsr", "type": "dropdown", "ref": "city"},
                },
                {
                    "type": "payment",
                    "payment": {"amount": "4.50", "last4": "4242", "name": "J Doe", "success": True},
                    "field": {"id": "payment1", "type": "payment", "ref": "payment"},
                },
            ],
        },
    }
    return json.dumps(document).encode()


def tally_payload(email: str) -> bytes:
    """A FORM_RESPONSE in the shape of Tally's example webhook event."""
    document = {
        "eventId": "a4cb511e-d513-4fa5-baee-b815d718dfd1",
        "eventType": "FORM_RESPONSE",
        "createdAt": "2026-06-28T15:00:21.889Z",
        "data": {
            "responseId": "2wgx4n",
            "submissionId": "2wgx4n",
            "respondentId": "dwQKYm",
            "formId": "VwbNEw",
            "formName": "Sign up",
            "createdAt": "2026-06-28T15:00:21.000Z",
            "fields": [
                {"key": "question_3EKz4n", "label": "email", "type": "INPUT_EMAIL", "value": email},
                {"key": "question_w4Q4Xn", "label": "first_name", "type": "INPUT_TEXT", "value": "Tally"},
                {
                    "key": "question_nPGOx0",
                    "label": "tags",
                    "type": "CHECKBOXES",
                    "value": ["0c7b9a1e", "a4e1b2c3"],
                    "options": [{"id": "0c7b9a1e", "text": "vip"}, {"id": "a4e1b2c3", "text": "beta"}],
                },
                {
                    "key": "question_mVGEg3",
                    "label": "Upload",
                    "type": "FILE_UPLOAD",
                    "value": [{"id": "1", "name": "cv.pdf", "url": "https://storage.tally.so/cv.pdf"}],
                },
            ],
        },
    }
    return json.dumps(document).encode()


class HookWorld:
    """The ingest handler in-process on local parts (queues, secret store, idempotency store), with every
    test hook's secret stored; ``post`` feeds it the proxy event API Gateway builds for a hook."""

    def __init__(self, tmp_path: Path, config: Path | None = None) -> None:
        self.store = DurableQueueStore(tmp_path / "queues.db")
        for spec in QUEUES:
            self.store.create_queue(spec)
        self.secrets = LocalSecretStore(tmp_path / "secrets.json")
        store_secrets(self.secrets)
        self.idempotency = SqliteIdempotencyLayer(tmp_path / "idempotency.db")
        settings = RuntimeSettings(
            runtime="embedded",
            config_path=str(config or write_config(tmp_path)),
            secrets_max_age_seconds=0,
        )
        self.services = Services(
            settings=settings,
            queues=EmbeddedQueues(self.store),
            secrets=self.secrets,
            idempotency=self.idempotency,
        )
        self.install()
        self.handler = load_handler("ingest")

    def install(self) -> None:
        """Make the handlers use this world's services (again, e.g. after another test's)."""
        runtime.install(self.services)

    def queued(self) -> list[dict[str, Any]]:
        return [json.loads(message["body"]) for message in self.store.peek("ingest")]

    def post(
        self,
        hook_id: str,
        body: bytes,
        content_type: str | None = FORM,
        headers: dict[str, str] | None = None,
        query: str = "",
        method: str = "POST",
    ) -> dict[str, Any]:
        sent = [("Host", "api.example.com")]
        if content_type is not None:
            sent.append(("Content-Type", content_type))
        sent += list((headers or {}).items())
        event = proxy_event(
            method=method,
            raw_path=f"/v1/hooks/{hook_id}",
            raw_query=query,
            headers=sent,
            body=body,
            access_key=None,
            user_arn=None,
            source_ip="198.51.100.7",
            resource=HOOK_RESOURCE,
            path_parameters={"hook_id": hook_id},
        )
        response: dict[str, Any] = self.handler(event, LambdaContext(function_name="IngestFunction"))
        return response

    def close(self) -> None:
        self.store.close()
        self.idempotency.close()
