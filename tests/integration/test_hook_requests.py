"""Web-form hooks through the ingest handler in-process, fed the proxy events API Gateway (and the embedded
gateway) builds for POST|OPTIONS /v1/hooks/{hook_id}: forms, form tools' signed JSON, and every refusal."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from forwarder_local.poller import LambdaContext
from tests.conftest import REPO_ROOT, load_event
from tests.hooks_support import (
    FORM,
    FORM_ORIGIN,
    SECRETS,
    THANKS,
    HookWorld,
    stripe_signature,
    tally_payload,
    tally_signature,
    typeform_payload,
    typeform_signature,
)

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[HookWorld]:
    built = HookWorld(tmp_path)
    yield built
    built.close()


def body_of(response: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(response["body"])
    return parsed


def form(**fields: Any) -> bytes:
    return urlencode(fields, doseq=True).encode()


def header(response: dict[str, Any], name: str) -> str | None:
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name.lower():
            return str(value)
    for key, values in (response.get("multiValueHeaders") or {}).items():
        if key.lower() == name.lower():
            return str(values[0])
    return None


TOKEN = SECRETS["signup-form"]

# --- plain HTML forms (form token) -------------------------------------------------------------------------


def test_a_posted_form_is_queued_flat_and_the_browser_goes_to_the_thank_you_page(world: HookWorld) -> None:
    # given a form with a repeated checkbox, the hidden token and an empty honeypot
    body = form(_token=TOKEN, email="jane@example.com", first_name="Jane", tags=["vip", "beta"], website="")
    # when a browser on the allowed origin posts it
    response = world.post("signup-form", body, headers={"Origin": FORM_ORIGIN, "Accept": BROWSER_ACCEPT})
    # then it is sent on to the thank-you page, and the record is queued flat, without the token or honeypot
    assert response["statusCode"] == 303, response["body"]
    assert header(response, "Location") == THANKS
    assert header(response, "Access-Control-Allow-Origin") == FORM_ORIGIN
    [queued] = world.queued()
    assert queued["group_key"] == "demo" and queued["action"] == "upsert_contact"
    assert queued["data"] == {"email": "jane@example.com", "first_name": "Jane", "tags": ["vip", "beta"]}
    assert queued["client"] == "hook:signup-form"
    assert header(response, "X-Request-Id") == queued["request_id"]


def test_a_multipart_form_is_queued_and_a_file_is_refused(world: HookWorld) -> None:
    boundary = "----formboundary7MA4YWxk"
    parts = [("_token", TOKEN), ("email", "multi@example.com"), ("tags[]", "only-one")]
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    response = world.post("signup-form", body, f"multipart/form-data; boundary={boundary}")
    assert response["statusCode"] == 303, response["body"]
    [queued] = world.queued()
    assert queued["data"] == {"email": "multi@example.com", "tags": ["only-one"]}

    with_file = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="_token"\r\n\r\n{TOKEN}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="cv"; filename="cv.pdf"\r\n'
        f"Content-Type: application/pdf\r\n\r\n%PDF-1.4\r\n--{boundary}--\r\n"
    ).encode()
    refused = world.post("signup-form", with_file, f"multipart/form-data; boundary={boundary}")
    assert refused["statusCode"] == 415
    assert body_of(refused)["code"] == "FILE_NOT_ACCEPTED"
    assert len(world.queued()) == 1


def test_the_token_may_come_in_the_query_string(world: HookWorld) -> None:
    response = world.post("signup-form", form(email="q@example.com"), query=urlencode({"_token": TOKEN}))
    assert response["statusCode"] == 303
    assert world.queued()[0]["data"] == {"email": "q@example.com"}


def test_a_filled_honeypot_looks_accepted_but_is_dropped_and_logged_without_personal_data(
    world: HookWorld, logged: list[dict[str, Any]]
) -> None:
    body = form(_token=TOKEN, email="bot@spam.example", website="http://spam.example")
    response = world.post("signup-form", body, headers={"Origin": FORM_ORIGIN})
    assert response["statusCode"] == 303
    assert header(response, "Location") == THANKS
    assert world.queued() == []
    assert "bot@spam.example" not in json.dumps(logged)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"email": "x@example.com"}, "TOKEN_MISSING"),
        ({"_token": "not-the-token", "email": "x@example.com"}, "TOKEN_INVALID"),
        ({"_token": [TOKEN, TOKEN], "email": "x@example.com"}, "TOKEN_INVALID"),
    ],
)
def test_a_form_without_its_token_is_refused(world: HookWorld, fields: dict[str, Any], code: str) -> None:
    response = world.post("signup-form", form(**fields))
    assert response["statusCode"] == 401
    assert body_of(response)["code"] == code
    assert world.queued() == []


def test_a_browser_gets_a_readable_page_when_its_form_is_refused(world: HookWorld) -> None:
    response = world.post(
        "signup-form",
        form(_token="stale-token", email="x@example.com"),
        headers={"Origin": FORM_ORIGIN, "Accept": BROWSER_ACCEPT},
    )
    assert response["statusCode"] == 401
    assert str(header(response, "Content-Type")).startswith("text/html")
    assert "The form was not sent" in response["body"] and "TOKEN_INVALID" in response["body"]


def test_a_page_on_another_origin_may_not_post(world: HookWorld) -> None:
    response = world.post(
        "signup-form", form(_token=TOKEN, email="x@example.com"), headers={"Origin": "https://evil.example"}
    )
    assert response["statusCode"] == 403
    assert body_of(response)["code"] == "ORIGIN_NOT_ALLOWED"
    assert header(response, "Access-Control-Allow-Origin") is None
    assert world.queued() == []


def test_a_cors_preflight_is_answered_for_the_allowed_origin_only(world: HookWorld) -> None:
    preflight = {"Origin": FORM_ORIGIN, "Access-Control-Request-Method": "POST"}
    allowed = world.post("signup-form", b"", None, headers=preflight, method="OPTIONS")
    assert allowed["statusCode"] == 204
    assert header(allowed, "Access-Control-Allow-Origin") == FORM_ORIGIN
    assert "POST" in str(header(allowed, "Access-Control-Allow-Methods"))

    other = world.post(
        "signup-form", b"", None, headers={**preflight, "Origin": "https://evil.example"}, method="OPTIONS"
    )
    assert other["statusCode"] == 403
    assert header(other, "Access-Control-Allow-Origin") is None
    signed_hook = world.post("typeform", b"", None, headers=preflight, method="OPTIONS")
    assert signed_hook["statusCode"] == 403


# --- form tools' signed JSON (HMAC) -------------------------------------------------------------------------


def test_a_typeform_response_signed_as_typeform_signs_is_queued_flat(world: HookWorld) -> None:
    body = typeform_payload("tf@example.com")
    response = world.post(
        "typeform", body, "application/json", {"Typeform-Signature": typeform_signature(body)}
    )
    assert response["statusCode"] == 202, response["body"]
    [queued] = world.queued()
    assert queued["request_id"] == body_of(response)["request_id"]
    assert queued["data"] == {
        "email": "tf@example.com",
        "first_name": "Jane",
        "tags": ["vip", "beta"],
        "city": "Oslo",
        "utm_source": "newsletter",
    }


def test_a_tally_response_signed_as_tally_signs_is_queued_with_option_texts(world: HookWorld) -> None:
    body = tally_payload("tally@example.com")
    response = world.post("tally", body, "application/json", {"Tally-Signature": tally_signature(body)})
    assert response["statusCode"] == 202, response["body"]
    assert world.queued()[0]["data"] == {
        "email": "tally@example.com",
        "first_name": "Tally",
        "tags": ["vip", "beta"],
    }


@pytest.mark.parametrize(
    ("signature", "code"),
    [
        (None, "SIGNATURE_MISSING"),
        ("sha256=" + "A" * 44, "SIGNATURE_INVALID"),
        ("sha1=abc", "SIGNATURE_MALFORMED"),
        ("sha256=not base64!", "SIGNATURE_MALFORMED"),
    ],
)
def test_a_wrong_signature_is_refused(world: HookWorld, signature: str | None, code: str) -> None:
    body = typeform_payload("tf@example.com")
    headers = {"Typeform-Signature": signature} if signature else {}
    response = world.post("typeform", body, "application/json", headers)
    assert response["statusCode"] == 401
    assert body_of(response)["code"] == code
    assert "Typeform-Signature" in body_of(response)["message"]
    assert world.queued() == []


def test_a_body_changed_after_signing_is_refused(world: HookWorld) -> None:
    body = typeform_payload("tf@example.com")
    signature = typeform_signature(body)
    tampered = body.replace(b"tf@example.com", b"attacker@example.com")
    response = world.post("typeform", tampered, "application/json", {"Typeform-Signature": signature})
    assert body_of(response)["code"] == "SIGNATURE_INVALID"


def test_a_resent_typeform_delivery_gets_the_first_answer_and_is_queued_once(world: HookWorld) -> None:
    # Typeform resends a delivery unchanged when it got no answer: the same body, the same signature
    body = typeform_payload("again@example.com")
    headers = {"Typeform-Signature": typeform_signature(body)}
    first = world.post("typeform", body, "application/json", headers)
    second = world.post("typeform", body, "application/json", headers)
    assert first["statusCode"] == second["statusCode"] == 202
    assert body_of(first)["request_id"] == body_of(second)["request_id"]
    assert len(world.queued()) == 1


def test_a_timestamped_signature_is_accepted_once_and_never_after_its_tolerance(world: HookWorld) -> None:
    body = json.dumps({"email": "gone@example.com"}).encode()
    now = int(time.time())
    fresh = {"Stripe-Signature": stripe_signature(body, now)}
    # a fresh signature is accepted (this hook deletes the contact)
    accepted = world.post("stripe-style", body, "application/json", fresh)
    assert accepted["statusCode"] == 202, accepted["body"]
    assert world.queued()[0]["action"] == "delete_contact"
    # the very same signed request again is a replay
    replayed = world.post("stripe-style", body, "application/json", fresh)
    assert replayed["statusCode"] == 401
    assert body_of(replayed)["code"] == "SIGNATURE_REPLAYED"
    # a request signed 10 minutes ago is refused though its signature is right
    old = world.post(
        "stripe-style", body, "application/json", {"Stripe-Signature": stripe_signature(body, now - 600)}
    )
    assert old["statusCode"] == 401
    assert body_of(old)["code"] == "SIGNATURE_EXPIRED"
    assert "300 s" in body_of(old)["message"]
    # and a signature made with another secret is wrong
    wrong = world.post(
        "stripe-style",
        body,
        "application/json",
        {"Stripe-Signature": stripe_signature(body, now, secret="whsec_other")},
    )
    assert body_of(wrong)["code"] == "SIGNATURE_INVALID"
    assert len(world.queued()) == 1


# --- refusals common to every hook ------------------------------------------------------------------------


def test_an_unknown_hook_is_404(world: HookWorld) -> None:
    response = world.post("no-such-hook", form(_token=TOKEN))
    assert response["statusCode"] == 404
    assert body_of(response)["code"] == "HOOK_NOT_FOUND"


def test_a_revoked_hook_refuses_everything_with_410(world: HookWorld) -> None:
    world.secrets.put("forwarder/hooks/signup-form", {"revoked_at": "2026-01-02T00:00:00Z"})
    response = world.post("signup-form", form(_token=TOKEN, email="x@example.com"))
    assert response["statusCode"] == 410
    assert body_of(response)["code"] == "HOOK_REVOKED"
    assert world.queued() == []


def test_a_hook_without_a_secret_yet_answers_503_not_accepted(world: HookWorld) -> None:
    world.secrets.put("forwarder/hooks/tally", {})
    body = tally_payload("x@example.com")
    response = world.post("tally", body, "application/json", {"Tally-Signature": tally_signature(body)})
    assert response["statusCode"] == 503


@pytest.mark.parametrize(
    ("hook_id", "body", "content_type", "status", "code"),
    [
        ("signup-form", b"_token=" + TOKEN.encode(), FORM, 400, "EMPTY_DATA"),
        ("signup-form", b"_token=" + TOKEN.encode() + b"&name=%FF", FORM, 400, "INVALID_TEXT"),
        ("signup-form", b"<xml/>", "text/xml", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("signup-form", b"_token=x", f"{FORM}; charset=iso-8859-2", 415, "UNSUPPORTED_CHARSET"),
        ("signup-form", b"--x\r\n", "multipart/form-data", 400, "INVALID_MULTIPART"),
        (
            "signup-form",
            json.dumps({"_token": TOKEN, "address": {"city": "Oslo"}}).encode(),
            "application/json",
            400,
            "NESTED_ATTRIBUTE",
        ),
    ],
)
def test_bad_bodies_are_refused_with_a_code_saying_what_to_fix(
    world: HookWorld, hook_id: str, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = world.post(hook_id, body, content_type)
    assert response["statusCode"] == status, response["body"]
    assert body_of(response)["code"] == code
    assert world.queued() == []


def test_a_form_tool_payload_that_is_not_its_shape_is_refused(world: HookWorld) -> None:
    body = json.dumps({"email": "flat@example.com"}).encode()
    response = world.post(
        "typeform", body, "application/json", {"Typeform-Signature": typeform_signature(body)}
    )
    assert response["statusCode"] == 400
    assert body_of(response)["code"] == "INVALID_PAYLOAD"


# --- the canonical event (events/, also for `sam local invoke -e`) on the shipped config -----------------


def test_the_canonical_form_post_is_accepted_by_the_shipped_newsletter_hook(tmp_path: Path) -> None:
    # given the shipped config and the newsletter hook's token as the canonical event carries it
    world = HookWorld(tmp_path, config=REPO_ROOT / "config" / "forwarder.yaml")
    try:
        world.secrets.put("forwarder/hooks/newsletter", {"secret": "example-newsletter-token"})
        # when API Gateway hands ingest the browser's post
        response = world.handler(
            load_event("api_post_hook_form.json"), LambdaContext(function_name="IngestFunction")
        )
        # then the browser goes to the thank-you page and the record is queued for the demo group key
        assert response["statusCode"] == 303, response["body"]
        assert header(response, "Location") == "http://localhost:8000/thanks.html"
        [queued] = world.queued()
        assert queued["data"] == {
            "email": "jane@example.com",
            "first_name": "Jane",
            "tags": ["vip", "newsletter"],
        }
    finally:
        world.close()
