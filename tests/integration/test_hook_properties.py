"""Property-based: random bodies, headers, encodings and signatures thrown at POST /v1/hooks/{hook_id} through
the ingest handler. Whatever arrives, the answer is never a 5xx, and a record that is queued is flat."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.hooks_support import (
    FORM,
    FORM_ORIGIN,
    SECRETS,
    HookWorld,
    stripe_signature,
    tally_signature,
    typeform_signature,
)

HOOKS = ["signup-form", "typeform", "tally", "stripe-style"]
BOUNDARY = "hypothesisBoundary42"

text = st.text(max_size=30)
names = st.one_of(st.sampled_from(["email", "_token", "website", "tags", "tags[]", "first_name", ""]), text)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
form_fields = st.lists(st.tuples(names, st.one_of(text, st.just(SECRETS["signup-form"]))), max_size=8)


def urlencoded(fields: list[tuple[str, str]]) -> bytes:
    return "&".join(f"{quote(name)}={quote(value)}" for name, value in fields).encode()


def multipart(fields: list[tuple[str, str]], with_file: bool) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{quote(name)}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    if with_file:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n\x00\x01\r\n'.encode()
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, str | None, dict[str, str], str]:
    unknown = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
    hook_id = draw(st.sampled_from(HOOKS) if draw(st.integers(0, 9)) else unknown)
    kind = draw(st.sampled_from(["form", "multipart", "json", "typeform", "tally", "bytes"]))
    fields = draw(form_fields)
    if kind == "form":
        body, content_type = urlencoded(fields), draw(st.sampled_from([FORM, f"{FORM}; charset=UTF-8"]))
    elif kind == "multipart":
        body = multipart(fields, draw(st.booleans()))
        content_type = draw(
            st.sampled_from(
                [f"multipart/form-data; boundary={BOUNDARY}", "multipart/form-data", "multipart/mixed"]
            )
        )
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
        content_type = draw(
            st.one_of(st.none(), st.sampled_from([FORM, "application/json", "text/plain"]), text)
        )
    else:
        document: Any = draw(json_values)
        if kind == "typeform":
            document = {
                "form_response": {"answers": draw(st.lists(json_values, max_size=4)), "hidden": document}
            }
        elif kind == "tally":
            document = {"data": {"fields": draw(st.lists(json_values, max_size=4))}}
        elif draw(st.booleans()):
            document = dict(draw(st.dictionaries(names, json_values, max_size=6)))
            document["_token"] = SECRETS["signup-form"]
        body = json.dumps(document).encode()
        content_type = "application/json"
    headers: dict[str, str] = {}
    if draw(st.integers(0, 3)):  # most bodies get past the signature, so their contents are what is tested
        headers["Typeform-Signature"] = typeform_signature(body)
        headers["Tally-Signature"] = tally_signature(body)
        headers["Stripe-Signature"] = stripe_signature(body, int(time.time()) + draw(st.integers(-400, 400)))
    else:
        for header in ("Typeform-Signature", "Tally-Signature", "Stripe-Signature"):
            if draw(st.booleans()):
                headers[header] = draw(text.filter(lambda value: "\r" not in value and "\n" not in value))
    headers["Origin"] = draw(st.sampled_from([FORM_ORIGIN, "https://evil.example", "null"]))
    headers["Accept"] = draw(st.sampled_from(["application/json", "text/html", "*/*"]))
    query = draw(
        st.sampled_from(["", f"_token={SECRETS['signup-form']}", "_token=wrong", "_token=a&_token=b"])
    )
    return hook_id, body, content_type, headers, query


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookWorld]:
    built = HookWorld(tmp_path_factory.mktemp("hook-properties"))
    yield built
    built.close()


def flat(value: Any) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (
        isinstance(value, list) and all(isinstance(v, scalar) for v in value)
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_no_post_gets_a_5xx_and_every_queued_record_is_flat(
    world: HookWorld, request: tuple[str, bytes, str | None, dict[str, str], str]
) -> None:
    hook_id, body, content_type, headers, query = request
    world.install()
    before = len(world.queued())
    response = world.post(hook_id, body, content_type, headers, query)
    status = response["statusCode"]
    answer = response["body"]
    event(f"{status} {json.loads(answer).get('code', '') if answer.startswith('{') else ''}")
    assert status < 500, (status, response["body"])
    queued = world.queued()[before:]
    if status in (202, 303):
        assert len(queued) <= 1
        for message in queued:
            assert message["data"], message
            assert all(flat(value) for value in message["data"].values()), message["data"]
            if hook_id == "signup-form":  # the token and the honeypot never reach a record
                assert "_token" not in message["data"] and "website" not in message["data"]
    else:
        assert queued == [], (status, response["body"])
        refusal = response["body"]
        assert "code" in refusal or "<h1>" in refusal
    world.store.purge("ingest")
