"""Hooks' pure parts: the ``hooks:`` config section, HMAC signatures as senders make them, form tools' payloads
and form bodies as flat records."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from forwarder.config import ConfigError, load_config_text
from forwarder.config.hooks import HmacAuth
from forwarder.contract import ContractError
from forwarder.hooks import hook_id_of
from forwarder.hooks.bodies import form_record, read_body
from forwarder.hooks.formats import record_from_json
from forwarder.hooks.signatures import verify
from tests.hooks_support import EXPERTSENDER_ONLY, hooks_yaml, tally_payload, typeform_payload

BASE = EXPERTSENDER_ONLY.read_text(encoding="utf-8")
#: The line of the first hook appended to BASE ("hooks:" is the line before).
HOOK_LINE = BASE.count("\n") + 2


def problems(hooks: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config_text(BASE + hooks, "hooks.yaml")
    return raised.value.problems


# --- config ------------------------------------------------------------------------------------------------


def test_the_test_hooks_are_a_valid_config() -> None:
    config = load_config_text(BASE + hooks_yaml())
    assert set(config.hooks) == {"signup-form", "typeform", "tally", "stripe-style"}
    assert config.hook_action("stripe-style") is not None
    assert config.hook_action("stripe-style").value == "delete_contact"  # type: ignore[union-attr]
    assert config.hook_action("nope") is None


@pytest.mark.parametrize(
    ("hooks", "expected"),
    [
        (
            "hooks:\n  h1: {group_key: nope, secret: forwarder/hooks/h1, auth: {kind: hmac, header: X-Sig}}\n",
            f"hooks.h1.group_key (line {HOOK_LINE}): unknown group key 'nope'; known: demo",
        ),
        (
            "hooks:\n  h1: {group_key: demo, flow: events, secret: forwarder/hooks/h1, "
            "auth: {kind: hmac, header: X-Sig}}\n",
            f"hooks.h1.flow (line {HOOK_LINE}): no enabled integration of group key 'demo' handles events",
        ),
        (
            "hooks:\n  h1: {group_key: demo, secret: forwarder/demo/expertsender, auth: {kind: hmac, header: X-Sig}}\n",
            f"hooks.h1.secret (line {HOOK_LINE}): 'forwarder/demo/expertsender' is not under a 'hooks/' folder",
        ),
        (
            "hooks:\n  'a b': {group_key: demo, secret: forwarder/hooks/h1, auth: {kind: hmac, header: X-Sig}}\n",
            f"hooks.a b (line {HOOK_LINE}): hook id 'a b' is not one URL path segment",
        ),
        (
            "hooks:\n  h1: {group_key: demo, secret: forwarder/hooks/h1, auth: {kind: form_token, "
            "allowed_origins: ['https://example.com/'], redirect: 'https://example.com/thanks'}}\n",
            "'https://example.com/' is not an origin",
        ),
        (
            "hooks:\n  h1: {group_key: demo, secret: forwarder/hooks/h1, auth: {kind: form_token, "
            "allowed_origins: ['https://example.com'], redirect: /thanks}}\n",
            "'/thanks' is not an absolute http(s) URL",
        ),
        (
            "hooks:\n  h1: {group_key: demo, secret: forwarder/hooks/h1, format: typeform, auth: {kind: form_token, "
            "allowed_origins: ['https://example.com'], redirect: 'https://example.com/t'}}\n",
            "a form_token hook takes form fields: remove 'format: typeform'",
        ),
        (
            "hooks:\n  h1: {group_key: demo, secret: forwarder/hooks/h1, "
            "auth: {kind: hmac, header: X-Sig, timestamp_key: t}}\n",
            "timestamp_key reads the header as a 'k=v,k=v' list: set signature_key too",
        ),
        (
            "hooks:\n  h1: {group_key: demo, secret: forwarder/hooks/h1, auth: {kind: basic, header: X-Sig}}\n",
            "hooks.h1.auth",
        ),
    ],
)
def test_config_check_names_each_hook_problem(hooks: str, expected: str) -> None:
    found = problems(hooks)
    assert any(expected in problem for problem in found), found


# --- signatures --------------------------------------------------------------------------------------------


BODY = b'{"email":"jane@example.com"}'


def test_typeforms_scheme_verifies_and_anything_else_is_refused() -> None:
    auth = HmacAuth(kind="hmac", header="Typeform-Signature", encoding="base64", prefix="sha256=")
    mac = hmac.new(b"s3cret", BODY, hashlib.sha256).digest()
    good = "sha256=" + base64.b64encode(mac).decode()
    assert verify(auth, "s3cret", {"typeform-signature": good}, BODY, now=0) == mac
    for headers, code in [
        ({}, "SIGNATURE_MISSING"),
        ({"typeform-signature": base64.b64encode(mac).decode()}, "SIGNATURE_MALFORMED"),  # no prefix
        ({"typeform-signature": good}, "SIGNATURE_INVALID"),  # with the other body below
    ]:
        with pytest.raises(ContractError) as refused:
            verify(auth, "s3cret", headers, BODY + b" ", now=0)
        assert (refused.value.status, refused.value.code) == (401, code)


def test_a_hex_sha1_signature_in_its_own_header_verifies() -> None:
    auth = HmacAuth(kind="hmac", header="X-Hub-Signature", algorithm="sha1", prefix="sha1=")
    header = "sha1=" + hmac.new(b"k", BODY, hashlib.sha1).hexdigest()
    assert verify(auth, "k", {"x-hub-signature": header}, BODY, now=0)


def test_a_stripe_style_header_accepts_any_of_its_v1_signatures_within_the_tolerance() -> None:
    auth = HmacAuth(kind="hmac", header="Stripe-Signature", signature_key="v1", timestamp_key="t")
    mac = hmac.new(b"whsec", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    header = f"t=1700000000,v1={'0' * 64},v1={mac},v0=ignored"
    assert verify(auth, "whsec", {"stripe-signature": header}, BODY, now=1700000299)
    with pytest.raises(ContractError) as late:
        verify(auth, "whsec", {"stripe-signature": header}, BODY, now=1700000301)
    assert late.value.code == "SIGNATURE_EXPIRED"
    with pytest.raises(ContractError) as early:
        verify(auth, "whsec", {"stripe-signature": header}, BODY, now=1699999000)
    assert early.value.code == "SIGNATURE_EXPIRED" and "ahead" in early.value.message
    with pytest.raises(ContractError) as untimed:
        verify(auth, "whsec", {"stripe-signature": f"v1={mac}"}, BODY, now=1700000000)
    assert untimed.value.code == "SIGNATURE_TIMESTAMP_MISSING"
    with pytest.raises(ContractError) as garbled:
        verify(auth, "whsec", {"stripe-signature": f"t=17e8,v1={mac}"}, BODY, now=1700000000)
    assert garbled.value.code == "SIGNATURE_MALFORMED"


def test_a_timestamp_in_a_header_of_its_own_is_signed_with_the_body() -> None:
    auth = HmacAuth(kind="hmac", header="X-Signature", timestamp_header="X-Timestamp", tolerance_seconds=60)
    mac = hmac.new(b"k", b"100." + BODY, hashlib.sha256).hexdigest()
    assert verify(auth, "k", {"x-signature": mac, "x-timestamp": "100"}, BODY, now=130)
    with pytest.raises(ContractError) as moved:
        verify(auth, "k", {"x-signature": mac, "x-timestamp": "101"}, BODY, now=130)
    assert moved.value.code == "SIGNATURE_INVALID"


# --- payloads and bodies ------------------------------------------------------------------------------------


def test_typeform_answers_are_read_by_ref_and_payments_left_out() -> None:
    record = record_from_json(json.loads(typeform_payload("a@b.co")), "typeform")
    assert record == {
        "utm_source": "newsletter",
        "email": "a@b.co",
        "first_name": "Jane",
        "tags": ["vip", "beta"],
        "city": "Oslo",
    }


def test_tally_fields_are_read_by_label_with_option_texts_and_files_left_out() -> None:
    record = record_from_json(json.loads(tally_payload("a@b.co")), "tally")
    assert record == {"email": "a@b.co", "first_name": "Tally", "tags": ["vip", "beta"]}


@pytest.mark.parametrize("format", ["fields", "typeform", "tally"])
def test_a_payload_of_another_shape_is_refused(format: str) -> None:
    with pytest.raises(ContractError) as refused:
        record_from_json([1, 2], format)
    assert refused.value.status == 400


def test_repeated_form_fields_become_lists_in_the_order_sent() -> None:
    body = read_body(b"a=1&b=x&a=2&c%5B%5D=only&a=3&=skipped", "application/x-www-form-urlencoded", 1000)
    assert form_record(body.fields) == {"a": ["1", "2", "3"], "b": "x", "c": ["only"]}


def test_a_body_over_the_limit_is_413() -> None:
    with pytest.raises(ContractError) as refused:
        read_body(b"a=" + b"x" * 2000, "application/x-www-form-urlencoded", 1024)
    assert (refused.value.status, refused.value.code) == (413, "BODY_TOO_LARGE")


def test_deep_json_is_refused_not_crashed_on() -> None:
    with pytest.raises(ContractError) as refused:
        read_body(b"[" * 100_000 + b"]" * 100_000, "application/json", 10**6)
    assert refused.value.code == "NESTED_TOO_DEEP"


@pytest.mark.parametrize(
    ("path", "hook_id"),
    [("/v1/hooks/signup", "signup"), ("/v1/hooks/", None), ("/v1/hooks/a/b", None), ("/v1/contacts", None)],
)
def test_hook_ids_are_one_path_segment(path: str, hook_id: str | None) -> None:
    assert hook_id_of(path) == hook_id
