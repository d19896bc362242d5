"""SigV4 verifier against requests signed by real clients: botocore's SigV4Auth / SigV4QueryAuth and
requests-aws4auth's AWS4Auth, for API Gateway's ``execute-api`` service.

Each signed request is turned into what the server sees on the wire (method, percent-encoded path and
query, headers including the ``Host`` the HTTP client adds, body bytes). "Now" is the request's own
X-Amz-Date, so the tests do not depend on the clock.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import requests
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from requests_aws4auth import AWS4Auth

from forwarder.auth.sigv4 import SignatureError, VerifiedCaller, verify

ACCESS_KEY = "AKIAFORWARDERTEST01"
SECRET = "c2VjcmV0LWFjY2Vzcy1rZXktZm9yLXRlc3RzLW9ubHk"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////session+token/with=chars"
REGION = "eu-central-1"
HOST = "abc123defg.execute-api.eu-central-1.amazonaws.com"
BODY = {"email": "jana.novakova@example.com", "first_name": "Jana", "consent": True}
SECRETS = {ACCESS_KEY: SECRET}


@dataclass(frozen=True)
class Wire:
    """A request as the API receives it."""

    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def signed_at(self) -> datetime:
        value = next(v for k, v in self.headers if k.lower() == "x-amz-date")
        return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)

    @property
    def presigned_at(self) -> datetime:
        date = next(p.split("=", 1)[1] for p in self.raw_query.split("&") if p.startswith("X-Amz-Date="))
        return datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _wire(method: str, url: str, headers: list[tuple[str, str]], body: bytes | str | None) -> Wire:
    parts = urlsplit(url)
    if not any(name.lower() == "host" for name, _ in headers):
        headers = [("Host", parts.netloc), *headers]  # added by the HTTP client when sending
    raw = body.encode() if isinstance(body, str) else (body or b"")
    return Wire(method, parts.path, parts.query, headers, raw)


def botocore_signed(
    method: str, url: str, *, body: bytes = b"", token: str | None = None, region: str = REGION
) -> Wire:
    """botocore's SigV4Auth, as an SDK client signs: the URL path is already percent-encoded."""
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET, token), "execute-api", region).add_auth(request)
    prepared = request.prepare()
    return _wire(prepared.method, prepared.url, list(prepared.headers.items()), prepared.body)


def aws4auth_signed(
    method: str, url: str, *, json_body: object = None, token: str | None = None, at: datetime | None = None
) -> Wire:
    """requests-aws4auth's AWS4Auth applied by requests when it prepares the request."""
    auth = AWS4Auth(ACCESS_KEY, SECRET, REGION, "execute-api", session_token=token)
    headers = {"X-Amz-Date": at.strftime("%Y%m%dT%H%M%SZ")} if at else {}
    prepared = requests.Request(method, url, json=json_body, headers=headers, auth=auth).prepare()
    assert prepared.url is not None and prepared.method is not None
    body = prepared.body if isinstance(prepared.body, bytes | str) else None
    return _wire(prepared.method, prepared.url, list(prepared.headers.items()), body)


def check(
    wire: Wire, *, now: datetime | None = None, region: str | None = None, secrets: dict[str, str] = SECRETS
) -> VerifiedCaller:
    return verify(
        method=wire.method,
        raw_path=wire.raw_path,
        raw_query=wire.raw_query,
        headers=wire.headers,
        body=wire.body,
        lookup_secret=secrets.get,
        now=now or wire.signed_at,
        region=region,
    )


def refusal(wire: Wire, **kwargs: object) -> SignatureError:
    with pytest.raises(SignatureError) as refused:
        check(wire, **kwargs)  # type: ignore[arg-type]
    assert refused.value.status == 403
    return refused.value


# --- botocore -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, TOKEN], ids=["long-term-key", "session-token"])
def test_botocore_signed_json_post_is_accepted(token: str | None) -> None:
    # given a JSON POST to /v1/contacts signed by botocore, with or without a session token
    wire = botocore_signed("POST", f"https://{HOST}/v1/contacts", body=json.dumps(BODY).encode(), token=token)

    # when it is verified
    caller = check(wire)

    # then the caller is the signing key, in the signed scope, with its session token
    assert caller == VerifiedCaller(ACCESS_KEY, REGION, "execute-api", wire.signed_at, token)


def test_botocore_signed_path_needing_encoding_is_accepted() -> None:
    # given a path with a space and a non-ASCII character, percent-encoded on the wire as SDK serialisers do
    # (/v1/a b/é -> /v1/a%20b/%C3%A9), so botocore signs it double-encoded (/v1/a%2520b/%25C3%25A9)
    wire = botocore_signed("GET", f"https://{HOST}/v1/a%20b/%C3%A9")
    assert wire.raw_path == "/v1/a%20b/%C3%A9"

    # when it is verified, then it is accepted
    assert check(wire).access_key_id == ACCESS_KEY


def test_botocore_signed_query_string_is_accepted() -> None:
    # given a GET with an encoded query string, signed by botocore
    wire = botocore_signed(
        "GET", f"https://{HOST}/v1/contacts?limit=10&cursor=a%2Fb%3D&email=x%40example.com"
    )

    # when it is verified, then it is accepted
    assert check(wire).access_key_id == ACCESS_KEY


@pytest.mark.parametrize("token", [None, TOKEN], ids=["long-term-key", "session-token"])
def test_botocore_presigned_url_is_accepted_until_it_expires(token: str | None) -> None:
    # given a presigned GET URL (query auth) from botocore, valid 300 seconds
    request = AWSRequest(method="GET", url=f"https://{HOST}/v1/contacts?limit=10")
    SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET, token), "execute-api", REGION, expires=300).add_auth(
        request
    )
    wire = _wire("GET", request.prepare().url, [], None)

    # when it is verified within its validity, then it is accepted, with its session token
    caller = check(wire, now=wire.presigned_at + timedelta(seconds=300))
    assert (caller.access_key_id, caller.session_token) == (ACCESS_KEY, token)

    # when it is verified after, then it is refused as expired
    refused = refusal(wire, now=wire.presigned_at + timedelta(seconds=301))
    assert refused.error_type == "InvalidSignatureException"
    assert refused.message.startswith("Signature expired:")


# --- requests-aws4auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, TOKEN], ids=["long-term-key", "session-token"])
def test_aws4auth_signed_json_post_is_accepted(token: str | None) -> None:
    # given a JSON POST prepared by requests and signed by AWS4Auth
    wire = aws4auth_signed("POST", f"https://{HOST}/v1/contacts", json_body=BODY, token=token)

    # when it is verified
    caller = check(wire)

    # then it is accepted for the signing key and session token
    assert caller == VerifiedCaller(ACCESS_KEY, REGION, "execute-api", wire.signed_at, token)


def test_aws4auth_signed_path_needing_encoding_is_accepted() -> None:
    # given a GET to /v1/a b/%C3%A9?q=a b: requests percent-encodes what needs it, AWS4Auth signs that path
    wire = aws4auth_signed("GET", f"https://{HOST}/v1/a b/%C3%A9?q=a b&z=%C3%A9")
    assert wire.raw_path == "/v1/a%20b/%C3%A9"

    # when it is verified, then it is accepted
    assert check(wire).access_key_id == ACCESS_KEY


# --- refusals -----------------------------------------------------------------------------------------------

SIGNED_AT = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)


def test_request_six_minutes_old_is_refused_as_expired() -> None:
    # given a request signed at 12:36:00
    wire = aws4auth_signed("POST", f"https://{HOST}/v1/contacts", json_body=BODY, at=SIGNED_AT)
    assert check(wire, now=SIGNED_AT + timedelta(minutes=5)).access_key_id == ACCESS_KEY  # 5 min: still fine

    # when it is verified six minutes later
    refused = refusal(wire, now=SIGNED_AT + timedelta(minutes=6))

    # then it is refused with API Gateway's expiry message
    assert refused.error_type == "InvalidSignatureException"
    assert refused.message == (
        "Signature expired: 20150830T123600Z is now earlier than 20150830T123700Z (20150830T124200Z - 5 min.)"
    )


def test_request_dated_six_minutes_ahead_is_refused_as_not_yet_current() -> None:
    # given a request dated six minutes in the verifier's future
    wire = aws4auth_signed("POST", f"https://{HOST}/v1/contacts", json_body=BODY, at=SIGNED_AT)

    # when it is verified
    refused = refusal(wire, now=SIGNED_AT - timedelta(minutes=6))

    # then it is refused as not yet current
    assert refused.error_type == "InvalidSignatureException"
    assert refused.message == (
        "Signature not yet current: 20150830T123600Z is still later than 20150830T123500Z "
        "(20150830T123000Z + 5 min.)"
    )


def test_unknown_access_key_is_refused_as_unrecognized_client() -> None:
    # given a correctly signed request from a key the verifier does not know
    wire = botocore_signed("POST", f"https://{HOST}/v1/contacts", body=b"{}")

    # when it is verified with an empty key store
    refused = refusal(wire, secrets={})

    # then it is refused as API Gateway refuses unknown keys
    assert refused.error_type == "UnrecognizedClientException"
    assert refused.message == "The security token included in the request is invalid."


def test_request_without_authorization_is_refused_as_missing_token() -> None:
    # given a signed request whose Authorization header is dropped
    signed = botocore_signed("POST", f"https://{HOST}/v1/contacts", body=b"{}")
    wire = Wire(
        signed.method,
        signed.raw_path,
        signed.raw_query,
        [(k, v) for k, v in signed.headers if k.lower() != "authorization"],
        signed.body,
    )

    # when it is verified
    refused = refusal(wire)

    # then it is refused for a missing authentication token
    assert (refused.error_type, refused.message) == (
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    )


def test_request_for_another_region_is_refused_when_region_is_pinned() -> None:
    # given a request signed for us-east-1
    wire = botocore_signed("POST", f"https://{HOST}/v1/contacts", body=b"{}", region="us-east-1")
    assert check(wire).region == "us-east-1"  # accepted while the region is not pinned

    # when it is verified by an API pinned to eu-central-1
    refused = refusal(wire, region=REGION)

    # then it is refused
    assert (refused.error_type, refused.code) == ("InvalidSignatureException", "WRONG_REGION")
    assert refused.message == (
        "Credential should be scoped to a valid region, not 'us-east-1'. Sign for 'eu-central-1'."
    )


def test_request_for_another_service_is_refused() -> None:
    # given a request signed for another service (execute-api is the verifier's default)
    request = AWSRequest(method="GET", url=f"https://{HOST}/v1/contacts")
    SigV4Auth(Credentials(ACCESS_KEY, SECRET), "lambda", REGION).add_auth(request)
    prepared = request.prepare()
    wire = _wire("GET", prepared.url, list(prepared.headers.items()), None)

    # when it is verified, then it is refused
    refused = refusal(wire)
    assert (refused.error_type, refused.message) == (
        "InvalidSignatureException",
        "Credential should be scoped to correct service: 'execute-api'.",
    )


def test_changed_body_is_refused() -> None:
    # given a signed JSON POST whose body is changed in transit
    signed = aws4auth_signed("POST", f"https://{HOST}/v1/contacts", json_body=BODY)
    wire = Wire(
        signed.method,
        signed.raw_path,
        signed.raw_query,
        signed.headers,
        signed.body.replace(b"Jana", b"Jano"),
    )

    # when it is verified, then it is refused as a signature mismatch
    refused = refusal(wire)
    assert refused.error_type == "InvalidSignatureException"
    assert refused.message.startswith("The request signature we calculated does not match the signature")


def test_host_not_signed_is_refused_as_incomplete() -> None:
    # given a signed request whose SignedHeaders leave out host
    signed = aws4auth_signed("POST", f"https://{HOST}/v1/contacts", json_body=BODY)
    headers = [
        (k, re.sub(r"(SignedHeaders=[^,]*?)\bhost;", r"\1", v) if k.lower() == "authorization" else v)
        for k, v in signed.headers
    ]
    assert headers != signed.headers
    wire = Wire(signed.method, signed.raw_path, signed.raw_query, headers, signed.body)

    # when it is verified, then it is refused as an incomplete signature
    refused = refusal(wire)
    assert (refused.error_type, refused.message) == (
        "IncompleteSignatureException",
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
    )


def test_authorization_without_credential_is_refused_as_incomplete() -> None:
    # given a request whose Authorization header is not SigV4 (a bearer token)
    wire = Wire("GET", "/v1/contacts", "", [("Host", HOST), ("Authorization", "Bearer abc.def")], b"")

    # when it is verified, then it is refused with API Gateway's incomplete-signature message
    refused = refusal(wire, now=SIGNED_AT)
    assert refused.error_type == "IncompleteSignatureException"
    assert refused.message == (
        "Authorization header requires 'Credential' parameter. "
        "Authorization header requires 'Signature' parameter. "
        "Authorization header requires 'SignedHeaders' parameter. "
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
        "Authorization=Bearer abc.def"
    )
