"""The embedded gateway's AWS_IAM authorisation: the generic SigV4 verifier plus API Gateway's own rules for
execute-api (the stack's region, a signed payload, session tokens the stack issued, revoked keys).

Requests are signed by botocore and requests-aws4auth; "now" is the request's own X-Amz-Date."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from requests_aws4auth import AWS4Auth

from forwarder.auth.sigv4 import SignatureError
from forwarder_local.authorizer import IamAuthorizer, Identity
from forwarder_local.stores import LocalCredentials
from tests.unit import test_sigv4_conformance as suites

REGION = "eu-central-1"
HOST = "127.0.0.1:8080"
USER = "arn:aws:iam::000000000000:user/forwarder-demo"
BODY = json.dumps({"data": {"email": "jane@example.com"}, "group_key": "demo"}).encode()
FORGED_TOKEN = "IQoJb3JpZ2luX2VjEFORGED//////////token+never/issued="


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


class Wire:
    """A request as the gateway receives it."""

    def __init__(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> None:
        path, _, query = url.removeprefix(f"http://{HOST}").partition("?")
        if not any(name.lower() == "host" for name, _ in headers):
            headers = [("Host", HOST), *headers]
        self.method, self.raw_path, self.raw_query, self.headers, self.body = (
            method,
            path,
            query,
            headers,
            body,
        )

    @property
    def signed_at(self) -> datetime:
        text = next((v for k, v in self.headers if k.lower() == "x-amz-date"), None)
        if text is None:
            text = next(p.split("=", 1)[1] for p in self.raw_query.split("&") if p.startswith("X-Amz-Date="))
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)

    def with_body(self, body: bytes) -> Wire:
        return Wire(self.method, f"http://{HOST}{self.raw_path}", self.headers, body)


def botocore_signed(
    credentials: Credentials,
    *,
    region: str = REGION,
    body: bytes = BODY,
    headers: dict[str, str] | None = None,
) -> Wire:
    request = AWSRequest(
        "POST",
        f"http://{HOST}/v1/contacts",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    SigV4Auth(credentials, "execute-api", region).add_auth(request)
    return Wire("POST", request.url, [(str(k), str(v)) for k, v in request.headers.items()], body)


def aws4auth_signed(access_key: str, secret: str, token: str | None = None) -> Wire:
    auth = AWS4Auth(access_key, secret, REGION, "execute-api", session_token=token)
    prepared = requests.Request("POST", f"http://{HOST}/v1/contacts", data=BODY, auth=auth).prepare()
    assert prepared.url is not None
    return Wire("POST", prepared.url, list(prepared.headers.items()), BODY)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def credentials(tmp_path: Path, clock: Clock) -> LocalCredentials:
    return LocalCredentials(tmp_path / "credentials.json", clock=clock)


@pytest.fixture
def authorizer(credentials: LocalCredentials) -> IamAuthorizer:
    return IamAuthorizer(credentials, REGION)


@pytest.fixture
def key(credentials: LocalCredentials) -> tuple[str, str]:
    return credentials.create_key(USER)


def authenticate(authorizer: IamAuthorizer, wire: Wire, now: datetime | None = None) -> Identity:
    return authorizer.authenticate(
        method=wire.method,
        raw_path=wire.raw_path,
        raw_query=wire.raw_query,
        headers=wire.headers,
        body=wire.body,
        now=now or wire.signed_at,
    )


def refusal(authorizer: IamAuthorizer, wire: Wire, *secrets: str, **kwargs: Any) -> SignatureError:
    with pytest.raises(SignatureError) as refused:
        authenticate(authorizer, wire, **kwargs)
    error = refused.value
    assert error.status == 403
    for secret in secrets:  # never a secret or a session token in what the caller (or a log) sees
        assert secret not in error.message and secret not in str(error)
    return error


# --- long-term keys -----------------------------------------------------------------------------------------


def test_a_long_term_key_signed_for_the_stacks_region_is_accepted_as_its_user(
    authorizer: IamAuthorizer, key: tuple[str, str]
) -> None:
    # given a request signed with the user's long-term key for the stack's region
    wire = botocore_signed(Credentials(*key))
    # when it is authenticated, then the caller is the key and its IAM user
    assert authenticate(authorizer, wire) == Identity(key[0], USER)


def test_a_session_token_with_a_long_term_key_is_refused(
    authorizer: IamAuthorizer, key: tuple[str, str]
) -> None:
    # given a long-term key signing with a session token the stack never issued (botocore signs it)
    wire = botocore_signed(Credentials(key[0], key[1], FORGED_TOKEN))
    # when it is authenticated, then it is refused as API Gateway refuses an invalid token
    refused = refusal(authorizer, wire, key[1], FORGED_TOKEN)
    assert (refused.error_type, refused.code) == ("UnrecognizedClientException", "SESSION_TOKEN_INVALID")
    assert refused.message.startswith("The security token included in the request is invalid.")
    assert f"Access key {key[0]} is a long-term key" in refused.message


def test_a_request_signed_for_another_region_is_refused_naming_the_region_to_sign_for(
    authorizer: IamAuthorizer, key: tuple[str, str]
) -> None:
    wire = botocore_signed(Credentials(*key), region="us-east-1")
    refused = refusal(authorizer, wire, key[1])
    assert (refused.error_type, refused.code) == ("InvalidSignatureException", "WRONG_REGION")
    assert refused.message == (
        "Credential should be scoped to a valid region, not 'us-east-1'. Sign for 'eu-central-1'."
    )


# --- the payload is signed ----------------------------------------------------------------------------------


@pytest.mark.parametrize("same_body", [True, False], ids=["same-body", "other-body"])
def test_unsigned_payload_is_refused(
    authorizer: IamAuthorizer, key: tuple[str, str], same_body: bool
) -> None:
    # given a request signed with x-amz-content-sha256: UNSIGNED-PAYLOAD (the generic verifier accepts it)
    wire = botocore_signed(Credentials(*key), headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    if not same_body:
        wire = wire.with_body(BODY.replace(b"jane", b"mallory"))
    # when it is authenticated, whether its body is the one signed or not
    refused = refusal(authorizer, wire, key[1])
    # then it is refused: execute-api signs the payload
    assert (refused.error_type, refused.code) == ("InvalidSignatureException", "UNSIGNED_PAYLOAD")
    assert "hex SHA-256 of the body" in refused.message


def test_a_body_other_than_the_one_whose_hash_was_signed_is_refused(
    authorizer: IamAuthorizer, key: tuple[str, str]
) -> None:
    # given a request signed by requests-aws4auth, which sends x-amz-content-sha256 of the signed body
    signed = aws4auth_signed(*key)
    assert authenticate(authorizer, signed).access_key == key[0]
    # when another body arrives with it
    refused = refusal(authorizer, signed.with_body(BODY.replace(b"jane", b"mallory")), key[1])
    # then it is refused, saying the hash is not the body's
    assert (refused.error_type, refused.code) == ("InvalidSignatureException", "PAYLOAD_HASH_MISMATCH")


def test_a_changed_body_without_a_payload_hash_header_is_a_signature_mismatch(
    authorizer: IamAuthorizer, key: tuple[str, str]
) -> None:
    # botocore sends no x-amz-content-sha256 for execute-api: the verifier hashes the body it received
    wire = botocore_signed(Credentials(*key)).with_body(BODY.replace(b"jane", b"mallory"))
    refused = refusal(authorizer, wire, key[1])
    assert refused.code == "SIGNATURE_MISMATCH"


# --- temporary credentials ----------------------------------------------------------------------------------


def test_temporary_credentials_the_stack_issued_are_accepted_as_the_keys_user(
    authorizer: IamAuthorizer, credentials: LocalCredentials, key: tuple[str, str]
) -> None:
    # given temporary credentials issued with the user's long-term key (as STS GetSessionToken does)
    session = credentials.create_session(key[0], duration_seconds=900)
    assert session.access_key_id.startswith("ASIA")
    # when a request is signed with them, by botocore and by requests-aws4auth
    signed = [
        botocore_signed(Credentials(session.access_key_id, session.secret_access_key, session.session_token)),
        aws4auth_signed(session.access_key_id, session.secret_access_key, session.session_token),
    ]
    # then each is accepted, for the user the long-term key belongs to
    for wire in signed:
        assert authenticate(authorizer, wire) == Identity(session.access_key_id, USER)


def test_a_presigned_url_with_temporary_credentials_is_accepted(
    authorizer: IamAuthorizer, credentials: LocalCredentials, key: tuple[str, str]
) -> None:
    session = credentials.create_session(key[0])
    request = AWSRequest("GET", f"http://{HOST}/v1/contacts")
    token = Credentials(session.access_key_id, session.secret_access_key, session.session_token)
    SigV4QueryAuth(token, "execute-api", REGION, expires=60).add_auth(request)
    wire = Wire("GET", request.prepare().url, [], b"")
    assert authenticate(authorizer, wire).access_key == session.access_key_id


def test_a_temporary_key_without_its_session_token_is_refused(
    authorizer: IamAuthorizer, credentials: LocalCredentials, key: tuple[str, str]
) -> None:
    session = credentials.create_session(key[0])
    wire = botocore_signed(Credentials(session.access_key_id, session.secret_access_key))
    refused = refusal(authorizer, wire, session.secret_access_key, session.session_token)
    assert (refused.error_type, refused.code) == ("UnrecognizedClientException", "SESSION_TOKEN_MISSING")


def test_a_temporary_key_with_another_sessions_token_is_refused(
    authorizer: IamAuthorizer, credentials: LocalCredentials, key: tuple[str, str]
) -> None:
    # given two sessions of the same user
    first, second = credentials.create_session(key[0]), credentials.create_session(key[0])
    # when the first key signs with the second session's token, or with a token never issued
    refusals = [
        refusal(
            authorizer,
            botocore_signed(Credentials(first.access_key_id, first.secret_access_key, token)),
            first.secret_access_key,
            token,
        )
        for token in (second.session_token, FORGED_TOKEN)
    ]
    # then both are refused as invalid tokens
    for refused in refusals:
        assert (refused.error_type, refused.code) == ("UnrecognizedClientException", "SESSION_TOKEN_INVALID")
        assert "not the session token issued with access key" in refused.message


def test_expired_temporary_credentials_are_refused(
    authorizer: IamAuthorizer, credentials: LocalCredentials, key: tuple[str, str], clock: Clock
) -> None:
    # given temporary credentials issued an hour ago, valid one hour and a minute, and a request they signed
    clock.now -= 3600
    session = credentials.create_session(key[0], duration_seconds=3660)
    wire = botocore_signed(
        Credentials(session.access_key_id, session.secret_access_key, session.session_token)
    )
    expires_at = datetime.strptime(session.expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    # when it arrives a second before they expire, then it is accepted
    assert authenticate(authorizer, wire, now=expires_at - timedelta(seconds=1)).access_key == (
        session.access_key_id
    )
    # when it arrives as they expire (still within the signature's 5 minutes)
    refused = refusal(authorizer, wire, session.secret_access_key, session.session_token, now=expires_at)
    # then it is refused as an expired token, saying when it expired and how to get new ones
    assert (refused.error_type, refused.code) == ("ExpiredTokenException", "SESSION_TOKEN_EXPIRED")
    assert session.expires_at in refused.message and "forwarder clients session" in refused.message


# --- revoked keys -------------------------------------------------------------------------------------------


def test_a_revoked_key_and_its_temporary_credentials_are_refused(
    authorizer: IamAuthorizer, credentials: LocalCredentials, key: tuple[str, str]
) -> None:
    # given a long-term key and temporary credentials issued with it, both accepted
    session = credentials.create_session(key[0])
    long_term = botocore_signed(Credentials(*key))
    temporary = botocore_signed(
        Credentials(session.access_key_id, session.secret_access_key, session.session_token)
    )
    assert authenticate(authorizer, long_term).access_key == key[0]
    # when the long-term key is revoked
    assert credentials.revoke(key[0]) == [key[0], session.access_key_id]
    # then both are refused as revoked, saying how to get a new key
    for wire, secret in ((long_term, key[1]), (temporary, session.secret_access_key)):
        refused = refusal(authorizer, wire, secret, session.session_token)
        assert (refused.error_type, refused.code) == ("UnrecognizedClientException", "ACCESS_KEY_REVOKED")
        assert "forwarder clients create" in refused.message


# --- the conformance suites under API Gateway's rules -------------------------------------------------------


def _gateway_cases() -> list[Any]:
    """The suites' correctly signed requests that API Gateway could receive: path normalised (as
    execute-api does) and the session token signed."""
    return [
        param
        for param in suites._tamperable_requests()
        if param.values[0].normalize and not param.values[0].omit_token
    ]


@pytest.mark.parametrize("item", _gateway_cases())
def test_conformance_requests_under_the_gateways_rules(tmp_path: Path, item: suites.Signed) -> None:
    # given a suite's signed request, its key on file as a long-term key, the gateway in the suite's region
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({suites.ACCESS_KEY: {"secret_access_key": suites.SECRET, "user_arn": USER}}))
    authorizer = IamAuthorizer(LocalCredentials(path), suites.REGION, service=suites.SERVICE)
    request = item.request

    def run() -> Identity:
        return authorizer.authenticate(
            method=request.method,
            raw_path=request.raw_path,
            raw_query=request.raw_query,
            headers=request.headers,
            body=request.body,
            now=item.now,
        )

    if item.token is None:
        # when it carries no session token, then it is accepted (a signed x-amz-content-sha256 is the body's)
        assert run() == Identity(suites.ACCESS_KEY, USER)
        return
    # when it carries the suite's session token, which the stack never issued, then it is refused
    with pytest.raises(SignatureError) as refused:
        run()
    assert refused.value.code == "SESSION_TOKEN_INVALID"
    # and once the stack holds the key as temporary credentials issued with that very token, it is accepted
    path.write_text(
        json.dumps(
            {
                suites.ACCESS_KEY: {
                    "secret_access_key": suites.SECRET,
                    "user_arn": USER,
                    "session_token_sha256": hashlib.sha256(item.token.encode()).hexdigest(),
                    "expires_at": "2999-01-01T00:00:00Z",
                    "issued_from": "AKIDLONGTERMEXAMPLE",
                }
            }
        )
    )
    assert run() == Identity(suites.ACCESS_KEY, USER)
