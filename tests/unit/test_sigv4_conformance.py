"""SigV4 verifier against the public AWS test suites (aws-c-auth v4 and botocore's legacy aws4_testsuite).

Every case of both suites is run: our canonical request and string to sign must equal the suite's, and
``verify()`` must accept the suite's signed request with "now" taken from the case. Tampering (signature,
body, secret) must be refused. The suites live outside the repository, in ``../shared/conformance/sigv4``;
a missing suite fails the run, it is never skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from forwarder.auth.sigv4 import (
    SignatureError,
    VerifiedCaller,
    canonical_request,
    credential_scope,
    payload_hash,
    signature,
    signing_key,
    string_to_sign,
    verify,
)

SUITES = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "sigv4"
AWS_C_AUTH = SUITES / "aws-c-auth-v4"
LEGACY = SUITES / "botocore-aws4-testsuite"

ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
SERVICE = "service"

# Cases a correct verifier cannot accept, each with its reason. They run as strict xfails: if one starts
# passing, the run fails and the entry must go.
EXPECTED_FAILURES = {
    "legacy/get-vanilla-with-session-token": (
        "the upstream .sreq carries get-vanilla's signature (5fa00fa3...) instead of this case's own: "
        "the .authz (07ec1639...) matches the .creq/.sts and aws-c-auth's header-signature.txt. "
        "Accepting the .sreq would mean accepting a wrong signature; "
        "test_legacy_accepts_request_signed_with_authz covers the case."
    ),
}


@dataclass(frozen=True)
class HttpRequest:
    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next(value.strip() for key, value in self.headers if key.lower() == name.lower())


def parse_http(data: bytes) -> HttpRequest:
    """A request as the suites write it: request line (the target may hold spaces), headers with folded
    continuation lines, blank line, body. Bytes after the target stay as they are: that is the wire path."""
    text = data.decode("utf-8").replace("\r\n", "\n")
    head, _, body = text.partition("\n\n")
    request_line, *lines = head.split("\n")
    method, _, rest = request_line.partition(" ")
    target, _, version = rest.rpartition(" ")
    assert version.startswith("HTTP/"), request_line
    raw_path, _, raw_query = target.partition("?")
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):  # obs-fold: continues the previous header's value
            name, value = headers[-1]
            headers[-1] = (name, f"{value}\n{line}")
        elif line:
            name, _, value = line.partition(":")
            headers.append((name, value))
    return HttpRequest(method, raw_path, raw_query, headers, body.encode("utf-8"))


def amz(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def parse_amz(value: str) -> datetime:
    return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


# --- the cases ----------------------------------------------------------------------------------------------


def _case_dirs(root: Path, marker: str) -> list[Path]:
    if not root.is_dir():  # a missing suite must fail, not collect zero cases (which pytest would skip)
        return [root / "SUITE-MISSING"]
    return sorted(path.parent for path in root.rglob(marker))


@dataclass(frozen=True)
class CCase:
    """An aws-c-auth case: context.json, request.txt and the header-*/query-* expectations."""

    name: str
    path: Path

    @property
    def context(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "context.json").read_text())
        return data

    @property
    def now(self) -> datetime:
        return datetime.fromisoformat(self.context["timestamp"].replace("Z", "+00:00"))

    @property
    def token(self) -> str | None:
        token: str | None = self.context["credentials"].get("token")
        return token

    @property
    def omit_token(self) -> bool:
        return bool(self.context.get("omit_session_token", False))

    def text(self, name: str) -> str:
        return (self.path / name).read_text(encoding="utf-8")

    def request(self, name: str) -> HttpRequest:
        return parse_http((self.path / name).read_bytes())


@dataclass(frozen=True)
class LegacyCase:
    """A botocore aws4_testsuite case: .req .creq .sts .authz .sreq."""

    name: str
    path: Path

    def text(self, ext: str) -> str:
        return (self.path / f"{self.path.name}.{ext}").read_text(encoding="utf-8")

    @property
    def now(self) -> datetime:
        return parse_amz(self.text("sts").split("\n")[1])

    def signed_request(self) -> HttpRequest:
        return parse_http((self.path / f"{self.path.name}.sreq").read_bytes())


C_CASES = [CCase(path.name, path) for path in _case_dirs(AWS_C_AUTH, "context.json")]
LEGACY_CASES = [LegacyCase(str(path.relative_to(LEGACY)), path) for path in _case_dirs(LEGACY, "*.sreq")]


def _ids(cases: list[Any]) -> list[str]:
    return [case.name for case in cases]


@dataclass(frozen=True)
class Signed:
    """A signed request of either suite, with the verifier options its case calls for."""

    id: str
    request: HttpRequest
    now: datetime
    normalize: bool
    omit_token: bool
    token: str | None
    presigned: bool


def signed_requests() -> Iterator[Signed]:
    for case in C_CASES:
        for mode in ("header", "query"):
            context = case.context
            yield Signed(
                id=f"aws-c-auth/{case.name}/{mode}",
                request=case.request(f"{mode}-signed-request.txt"),
                now=case.now,
                normalize=bool(context["normalize"]),
                omit_token=case.omit_token,
                token=case.token,
                presigned=mode == "query",
            )
    for legacy in LEGACY_CASES:
        request = legacy.signed_request()
        yield Signed(
            id=f"legacy/{legacy.name}",
            request=request,
            now=legacy.now,
            normalize=True,
            omit_token=False,
            token=next((v for k, v in request.headers if k.lower() == "x-amz-security-token"), None),
            presigned=False,
        )


def _verified_ok_requests() -> list[Any]:
    """Every signed request, the listed expected failures marked strict xfail."""
    params = []
    for item in signed_requests():
        marks = []
        if item.id in EXPECTED_FAILURES:
            marks = [pytest.mark.xfail(strict=True, raises=SignatureError, reason=EXPECTED_FAILURES[item.id])]
        params.append(pytest.param(item, id=item.id, marks=marks))
    return params


def _tamperable_requests() -> list[Any]:
    """Every signed request whose own signature is right (legacy ones carry the case's .authz)."""
    items = []
    for item in signed_requests():
        if item.id.startswith("legacy/"):
            authz = LegacyCase(item.id.removeprefix("legacy/"), LEGACY / item.id.removeprefix("legacy/"))
            item = replace(item, request=with_authorization(item.request, authz.text("authz")))
        items.append(pytest.param(item, id=item.id))
    return items


def with_authorization(request: HttpRequest, authorization: str) -> HttpRequest:
    headers = [(k, authorization if k.lower() == "authorization" else v) for k, v in request.headers]
    return replace(request, headers=headers)


def run_verify(
    item: Signed, request: HttpRequest | None = None, *, secret: str = SECRET, now: datetime | None = None
) -> VerifiedCaller:
    request = request or item.request
    return verify(
        method=request.method,
        raw_path=request.raw_path,
        raw_query=request.raw_query,
        headers=request.headers,
        body=request.body,
        lookup_secret={ACCESS_KEY: secret}.get,
        now=now or item.now,
        service=SERVICE,
        region=REGION,
        normalize_path=item.normalize,
        omit_session_token=item.omit_token,
    )


# --- the suites are there -----------------------------------------------------------------------------------


def test_both_suites_are_present_with_all_their_cases() -> None:
    # given the shared conformance folder next to the repository
    # when its cases are collected
    # then both suites are there, complete (README: 38 aws-c-auth cases, 34 legacy ones)
    assert AWS_C_AUTH.is_dir(), f"missing conformance suite {AWS_C_AUTH}"
    assert LEGACY.is_dir(), f"missing conformance suite {LEGACY}"
    assert len(C_CASES) == 38
    assert len(LEGACY_CASES) == 34


# --- aws-c-auth: signer side (request.txt + context -> canonical request, string to sign, signature) --------


def _signer_inputs(case: CCase, mode: str) -> tuple[HttpRequest, list[str]]:
    """What a signer canonicalises: request.txt plus what signing adds, and the headers it signs."""
    request = case.request("request.txt")
    date = amz(case.now)
    headers = list(request.headers)
    signed = sorted({name.strip().lower() for name, _ in headers})
    context = case.context
    body_hash = hashlib.sha256(request.body).hexdigest()
    if mode == "header":
        headers.append(("X-Amz-Date", date))
        if case.token and not case.omit_token:
            headers.append(("X-Amz-Security-Token", case.token))
        if context["sign_body"]:
            headers.append(("x-amz-content-sha256", body_hash))
        signed = sorted({name.strip().lower() for name, _ in headers})
        return replace(request, headers=headers), signed
    params = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{ACCESS_KEY}/{credential_scope(date[:8], REGION, SERVICE)}",
        "X-Amz-Date": date,
        "X-Amz-SignedHeaders": ";".join(signed),
        "X-Amz-Expires": str(context["expiration_in_seconds"]),
    }
    if case.token and not case.omit_token:
        params["X-Amz-Security-Token"] = case.token
    extra = urlencode(params, quote_via=quote, safe="")
    query = f"{request.raw_query}&{extra}" if request.raw_query else extra
    return replace(request, raw_query=query), signed


@pytest.mark.parametrize("mode", ["header", "query"])
@pytest.mark.parametrize("case", C_CASES, ids=_ids(C_CASES))
def test_aws_c_auth_signer_side_matches_suite(case: CCase, mode: str) -> None:
    # given the unsigned request.txt, dated and (query mode) presigned from context.json
    request, signed = _signer_inputs(case, mode)
    context = case.context
    date = amz(case.now)

    # when it is canonicalised and signed
    creq = canonical_request(
        method=request.method,
        raw_path=request.raw_path,
        raw_query=request.raw_query,
        headers=request.headers,
        signed_headers=signed,
        payload_hash=payload_hash(request.body, request.headers, signed),
        normalize_path=bool(context["normalize"]),
    )
    sts = string_to_sign(
        amz_date=date, scope=credential_scope(date[:8], REGION, SERVICE), canonical_request=creq
    )
    sig = signature(signing_key(SECRET, date[:8], REGION, SERVICE), sts)

    # then the canonical request, string to sign and signature are the suite's
    assert creq == case.text(f"{mode}-canonical-request.txt")
    assert sts == case.text(f"{mode}-string-to-sign.txt")
    assert sig == case.text(f"{mode}-signature.txt").strip()


# --- verifier side: canonical request and string to sign of the signed requests -----------------------------


def _auth_values(request: HttpRequest) -> tuple[list[str], str, bool]:
    """Signed headers, X-Amz-Date and whether the request is presigned, read off the signed request."""
    query = dict(part.partition("=")[::2] for part in request.raw_query.split("&") if part)
    if "X-Amz-Signature" in query:
        return query["X-Amz-SignedHeaders"].replace("%3B", ";").split(";"), query["X-Amz-Date"], True
    match = re.search(r"SignedHeaders=([^,\s]+)", request.header("Authorization"))
    assert match
    return match.group(1).split(";"), request.header("X-Amz-Date"), False


def _verifier_canonical_request(request: HttpRequest, *, normalize: bool, omit_token: bool) -> str:
    signed, _, presigned = _auth_values(request)
    exclude = {"X-Amz-Signature", *(["X-Amz-Security-Token"] if omit_token else [])} if presigned else set()
    return canonical_request(
        method=request.method,
        raw_path=request.raw_path,
        raw_query=request.raw_query,
        headers=request.headers,
        signed_headers=signed,
        payload_hash=payload_hash(request.body, request.headers, signed),
        normalize_path=normalize,
        exclude_query=exclude,
    )


@pytest.mark.parametrize("mode", ["header", "query"])
@pytest.mark.parametrize("case", C_CASES, ids=_ids(C_CASES))
def test_aws_c_auth_signed_request_canonicalises_like_suite(case: CCase, mode: str) -> None:
    # given the suite's signed request, as it arrives on the wire
    request = case.request(f"{mode}-signed-request.txt")
    _, date, _ = _auth_values(request)

    # when the verifier canonicalises it with the signed headers it declares
    creq = _verifier_canonical_request(
        request, normalize=case.context["normalize"], omit_token=case.omit_token
    )
    sts = string_to_sign(
        amz_date=date, scope=credential_scope(date[:8], REGION, SERVICE), canonical_request=creq
    )

    # then it is the suite's canonical request and string to sign
    assert creq == case.text(f"{mode}-canonical-request.txt")
    assert sts == case.text(f"{mode}-string-to-sign.txt")


@pytest.mark.parametrize("case", LEGACY_CASES, ids=_ids(LEGACY_CASES))
def test_legacy_signed_request_canonicalises_like_suite(case: LegacyCase) -> None:
    # given the legacy suite's .sreq
    request = case.signed_request()
    _, date, _ = _auth_values(request)

    # when the verifier canonicalises it
    creq = _verifier_canonical_request(request, normalize=True, omit_token=False)
    sts = string_to_sign(
        amz_date=date, scope=credential_scope(date[:8], REGION, SERVICE), canonical_request=creq
    )

    # then it is the suite's .creq and .sts, and signing it gives the .authz signature
    assert creq == case.text("creq")
    assert sts == case.text("sts")
    sig = signature(signing_key(SECRET, date[:8], REGION, SERVICE), sts)
    assert case.text("authz").strip().endswith(f"Signature={sig}")


# --- verifier side: acceptance ------------------------------------------------------------------------------


@pytest.mark.parametrize("item", _verified_ok_requests())
def test_signed_request_is_accepted(item: Signed) -> None:
    # given a signed request of a suite, and "now" the case's time
    # when it is verified
    caller = run_verify(item)

    # then it is accepted, for the case's key, scope, time and session token
    assert caller.access_key_id == ACCESS_KEY
    assert (caller.region, caller.service) == (REGION, SERVICE)
    assert caller.signed_at == item.now
    assert caller.session_token == item.token


@pytest.mark.parametrize("item", [p for p in _verified_ok_requests() if p.values[0].presigned])
def test_presigned_request_is_accepted_until_it_expires(item: Signed) -> None:
    # given a presigned request of the aws-c-auth suite (X-Amz-Expires=3600)
    expires = timedelta(seconds=3600)

    # when it is verified at the last second of its validity, then it is accepted
    assert run_verify(item, now=item.now + expires).access_key_id == ACCESS_KEY

    # when it is verified one second later, then it is refused as expired
    with pytest.raises(SignatureError) as refused:
        run_verify(item, now=item.now + expires + timedelta(seconds=1))
    assert refused.value.error_type == "InvalidSignatureException"
    assert refused.value.message.startswith("Signature expired: 20150830T123600Z is now earlier than")


@pytest.mark.parametrize("case", LEGACY_CASES, ids=_ids(LEGACY_CASES))
def test_legacy_accepts_request_signed_with_authz(case: LegacyCase) -> None:
    # given the legacy .sreq with its Authorization set to the case's .authz
    request = with_authorization(case.signed_request(), case.text("authz").strip())
    item = Signed(f"legacy/{case.name}", request, case.now, True, False, None, False)

    # when it is verified, then it is accepted
    assert run_verify(item).access_key_id == ACCESS_KEY


# --- verifier side: tampering is refused --------------------------------------------------------------------


def _flip_hex(char: str) -> str:
    return "1" if char == "0" else "0"


def flip_signature(request: HttpRequest) -> HttpRequest:
    pattern = re.compile(r"((?:X-Amz-)?Signature=[0-9a-f]{63})([0-9a-f])")
    if "X-Amz-Signature=" in request.raw_query:
        query = pattern.sub(lambda m: m.group(1) + _flip_hex(m.group(2)), request.raw_query)
        assert query != request.raw_query
        return replace(request, raw_query=query)
    headers = [
        (
            k,
            pattern.sub(lambda m: m.group(1) + _flip_hex(m.group(2)), v)
            if k.lower() == "authorization"
            else v,
        )
        for k, v in request.headers
    ]
    assert headers != request.headers
    return replace(request, headers=headers)


def flip_body(request: HttpRequest) -> HttpRequest:
    body = bytes([request.body[0] ^ 0x01]) + request.body[1:] if request.body else b"x"
    return replace(request, body=body)


def _refused(item: Signed, request: HttpRequest, *, secret: str = SECRET) -> SignatureError:
    with pytest.raises(SignatureError) as refused:
        run_verify(item, request, secret=secret)
    return refused.value


@pytest.mark.parametrize("item", _tamperable_requests())
def test_tampering_is_refused(item: Signed) -> None:
    # given a correctly signed request of a suite, accepted as it is
    assert run_verify(item).access_key_id == ACCESS_KEY

    # when one character of its signature, or its body, changes, or the secret on file is different
    refusals = [
        _refused(item, flip_signature(item.request)),
        _refused(item, flip_body(item.request)),
        _refused(item, item.request, secret=SECRET[:-1] + "X"),
    ]

    # then each is refused as an invalid signature, with API Gateway's message
    for refusal in refusals:
        assert (refusal.status, refusal.error_type) == (403, "InvalidSignatureException")
        assert refusal.message.startswith("The request signature we calculated does not match")
