"""AWS Signature Version 4 request verification, as API Gateway does it for IAM-authorised routes.

The verifier works on the request exactly as it came off the wire: ``raw_path`` and ``raw_query`` are still
percent-encoded, ``headers`` keep their order and duplicates, ``body`` is the raw bytes. It accepts both forms
of SigV4:

* header auth: ``Authorization: AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request,
  SignedHeaders=host;x-amz-date, Signature=...`` with the time in ``X-Amz-Date`` (else ``Date``);
* query auth (presigned URLs): ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``,
  ``X-Amz-SignedHeaders`` and ``X-Amz-Signature`` (left out of the canonical query) in the query string.

Canonicalisation follows the non-S3 rules (botocore, aws-c-auth, API Gateway for ``execute-api``): the path is
optionally normalised (dot segments removed, repeated slashes collapsed) and then URI-encoded once more, so a
path received as ``/a%20b`` is signed as ``/a%2520b``; query keys and values are decoded and re-encoded with
the RFC 3986 unreserved set, then sorted by key and value; header values are trimmed and inner whitespace
(folded lines included) collapsed to one space, duplicate headers joined with ``,``.

Every refusal is a :class:`SignatureError` carrying API Gateway's status (403), ``x-amzn-ErrorType`` and
message, and a stable ``code`` naming the rule (``SIGNATURE_MISMATCH``, ``WRONG_REGION``, ...). Only the
standard library is used. What API Gateway adds on top for ``execute-api`` (the payload must be signed,
session tokens must be the ones STS issued) is the caller's policy: this module stays a generic verifier.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote, unquote_to_bytes

__all__ = [
    "ALGORITHM",
    "UNSIGNED_PAYLOAD",
    "SignatureError",
    "VerifiedCaller",
    "canonical_headers",
    "canonical_query_string",
    "canonical_request",
    "canonical_uri",
    "credential_scope",
    "payload_hash",
    "signature",
    "signing_key",
    "string_to_sign",
    "verify",
]

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_PRESIGNED_EXPIRES = 604800  # one week, the longest X-Amz-Expires AWS accepts

MISSING_TOKEN = "MissingAuthenticationTokenException"
INCOMPLETE_SIGNATURE = "IncompleteSignatureException"
INVALID_SIGNATURE = "InvalidSignatureException"
UNRECOGNIZED_CLIENT = "UnrecognizedClientException"

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."

#: The ``code`` of a refusal when its raise site names none: one per ``x-amzn-ErrorType``.
_DEFAULT_CODES = {
    MISSING_TOKEN: "MISSING_AUTHENTICATION_TOKEN",
    INCOMPLETE_SIGNATURE: "INCOMPLETE_SIGNATURE",
    INVALID_SIGNATURE: "INVALID_SIGNATURE",
    UNRECOGNIZED_CLIENT: "UNKNOWN_ACCESS_KEY",
}

_QUERY_REQUIRED = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
)
_QUERY_AUTH_PARAMS = (*_QUERY_REQUIRED, "X-Amz-Expires", "X-Amz-Security-Token")
_HEADER_WHITESPACE = re.compile(r"[ \t\r\n]+")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")


class SignatureError(Exception):
    """The request is refused; ``error_type`` and ``message`` are what API Gateway would answer (403), ``code``
    a stable name of the rule that refused it (default: one per ``error_type``)."""

    status: int
    error_type: str
    message: str
    code: str

    def __init__(self, error_type: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{error_type}: {message}")
        self.status = 403
        self.error_type = error_type
        self.message = message
        self.code = code or _DEFAULT_CODES.get(error_type, "ACCESS_DENIED")


@dataclass(frozen=True)
class VerifiedCaller:
    """Who signed an accepted request, and with which credential scope."""

    access_key_id: str
    region: str
    service: str
    signed_at: datetime
    session_token: str | None


@dataclass(frozen=True)
class _Credentials:
    """The authentication values of a request, from the Authorization header or the query string."""

    access_key_id: str
    scope_date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    signed_at: datetime
    expires: int | None  # presigned only
    session_token: str | None


# --- canonical request --------------------------------------------------------------------------------------


def canonical_uri(raw_path: str, *, normalize: bool = True) -> str:
    """The canonical URI of a wire path: optionally normalised, then every segment URI-encoded again."""
    path = raw_path or "/"
    if normalize:
        path = _remove_dot_segments(path)
    return quote(path.encode("utf-8", "surrogateescape"), safe="/~")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 dot-segment removal plus collapsing of empty segments (``//``), as AWS normalises paths."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    head = "/" if path.startswith("/") else ""
    tail = "/" if kept and path.endswith("/") else ""
    return head + "/".join(kept) + tail or "/"


def _encode_query_component(raw: str) -> str:
    return quote(unquote_to_bytes(raw.encode("utf-8", "surrogateescape")), safe="-_.~")


def canonical_query_string(raw_query: str, *, exclude: Collection[str] = ()) -> str:
    """Decode and re-encode every key and value, then sort by key and value.

    Keys named in ``exclude`` (compared decoded) are dropped; a key without ``=`` gets an empty value.
    """
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if exclude and unquote(key) in exclude:
            continue
        pairs.append((_encode_query_component(key), _encode_query_component(value)))
    pairs.sort()
    return "&".join(f"{key}={value}" for key, value in pairs)


def _trim(value: str) -> str:
    return _HEADER_WHITESPACE.sub(" ", value).strip(" ")


def canonical_headers(headers: Sequence[tuple[str, str]], signed_headers: Sequence[str]) -> str:
    """``name:value\\n`` for each signed header, in ``signed_headers`` order; duplicates joined with ``,``."""
    values: dict[str, list[str]] = {name: [] for name in signed_headers}
    for name, value in headers:
        lowered = name.strip().lower()
        if lowered in values:
            values[lowered].append(_trim(value))
    return "".join(f"{name}:{','.join(values[name])}\n" for name in signed_headers)


def payload_hash(
    body: bytes, headers: Sequence[tuple[str, str]], signed_headers: Collection[str] = ()
) -> str:
    """Hex SHA-256 of the body, or ``UNSIGNED-PAYLOAD`` when a signed ``x-amz-content-sha256`` says so."""
    if (
        "x-amz-content-sha256" in signed_headers
        and _header(headers, "x-amz-content-sha256") == UNSIGNED_PAYLOAD
    ):
        return UNSIGNED_PAYLOAD
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    signed_headers: Sequence[str],
    payload_hash: str,
    normalize_path: bool = True,
    exclude_query: Collection[str] = (),
) -> str:
    """The SigV4 canonical request of a wire request (``signed_headers`` lowercase, in signed order)."""
    return "\n".join(
        (
            method.upper(),
            canonical_uri(raw_path, normalize=normalize_path),
            canonical_query_string(raw_query, exclude=exclude_query),
            canonical_headers(headers, signed_headers),
            ";".join(signed_headers),
            payload_hash,
        )
    )


# --- signing ------------------------------------------------------------------------------------------------


def credential_scope(date: str, region: str, service: str) -> str:
    """``YYYYMMDD/region/service/aws4_request``."""
    return f"{date}/{region}/{service}/{TERMINATOR}"


def string_to_sign(*, amz_date: str, scope: str, canonical_request: str) -> str:
    """Algorithm, request time (ISO 8601 basic), credential scope, hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key: HMAC chain of ``AWS4`` + secret over date, region, service and ``aws4_request``."""
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def signature(key: bytes, string_to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign under the derived signing key."""
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


# --- verification -------------------------------------------------------------------------------------------


def verify(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    lookup_secret: Callable[[str], str | None],
    now: datetime,
    service: str = "execute-api",
    region: str | None = None,
    max_skew: timedelta = timedelta(minutes=5),
    normalize_path: bool = True,
    omit_session_token: bool = False,
) -> VerifiedCaller:
    """Accept a SigV4-signed request or raise :class:`SignatureError` (403) as API Gateway would.

    ``lookup_secret`` maps an access key id to its secret access key (``None``: unknown key). ``now`` is the
    verification time (naive values are taken as UTC). ``region=None`` accepts the region of the credential
    scope. Header-signed requests must be dated within ``max_skew`` of ``now``; presigned ones from
    ``max_skew`` before their date until ``X-Amz-Expires`` after it. ``omit_session_token`` is for presigned
    URLs whose ``X-Amz-Security-Token`` was appended after signing (aws-c-auth's flag of that name, as AWS IoT
    does); API Gateway signs it, so it is off by default.
    """
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    query = _parse_query(raw_query)
    authorizations = [value for name, value in headers if name.strip().lower() == "authorization"]
    presigned = any(key == "X-Amz-Algorithm" for key, _ in query)
    if not authorizations and not presigned:
        raise SignatureError(MISSING_TOKEN, "Missing Authentication Token")
    if authorizations and presigned:
        raise SignatureError(
            INCOMPLETE_SIGNATURE,
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
            "or the Authorization header should be specified",
        )
    creds = _from_query(query) if presigned else _from_header(authorizations, headers)

    if "host" not in creds.signed_headers and ":authority" not in creds.signed_headers:
        raise SignatureError(
            INCOMPLETE_SIGNATURE, "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )
    if creds.scope_date != creds.amz_date[:8]:
        raise SignatureError(
            INVALID_SIGNATURE,
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{creds.scope_date}' != '{creds.amz_date[:8]}', from '{creds.amz_date}'.",
            code="CREDENTIAL_DATE_MISMATCH",
        )
    if creds.service != service:
        raise SignatureError(
            INVALID_SIGNATURE,
            f"Credential should be scoped to correct service: '{service}'.",
            code="WRONG_SERVICE",
        )
    if region is not None and creds.region != region:
        raise SignatureError(
            INVALID_SIGNATURE,
            f"Credential should be scoped to a valid region, not '{creds.region}'. Sign for '{region}'.",
            code="WRONG_REGION",
        )
    _check_time(creds, now, max_skew)

    secret = lookup_secret(creds.access_key_id)
    if secret is None:
        raise SignatureError(UNRECOGNIZED_CLIENT, INVALID_TOKEN)

    exclude: set[str] = set()
    if presigned:
        exclude.add("X-Amz-Signature")
        if omit_session_token:
            exclude.add("X-Amz-Security-Token")
    request = canonical_request(
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=headers,
        signed_headers=creds.signed_headers,
        payload_hash=payload_hash(body, headers, creds.signed_headers),
        normalize_path=normalize_path,
        exclude_query=exclude,
    )
    scope = credential_scope(creds.scope_date, creds.region, creds.service)
    to_sign = string_to_sign(amz_date=creds.amz_date, scope=scope, canonical_request=request)
    expected = signature(signing_key(secret, creds.scope_date, creds.region, creds.service), to_sign)
    if not hmac.compare_digest(expected.encode("ascii"), creds.signature.encode("utf-8", "surrogateescape")):
        raise SignatureError(INVALID_SIGNATURE, SIGNATURE_MISMATCH, code="SIGNATURE_MISMATCH")
    return VerifiedCaller(
        access_key_id=creds.access_key_id,
        region=creds.region,
        service=creds.service,
        signed_at=creds.signed_at,
        session_token=creds.session_token,
    )


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """All values of a header (case-insensitive), trimmed and joined with ``,``; ``None`` when absent."""
    values = [_trim(value) for key, value in headers if key.strip().lower() == name]
    return ",".join(values) if values else None


def _parse_query(raw_query: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(AMZ_DATE_FORMAT)


def _parse_amz_date(value: str) -> datetime:
    if _AMZ_DATE.fullmatch(value):
        try:
            # YYYYMMDDTHHMMSSZ, checked by the pattern: read by position (strptime costs ~20 us a request)
            return datetime(
                int(value[0:4]),
                int(value[4:6]),
                int(value[6:8]),
                int(value[9:11]),
                int(value[11:13]),
                int(value[13:15]),
                tzinfo=UTC,
            )
        except ValueError:
            pass
    raise SignatureError(
        INCOMPLETE_SIGNATURE,
        f"Date must be in ISO-8601 'basic format'. Got '{value}'. See http://en.wikipedia.org/wiki/ISO_8601",
    )


def _parse_http_date(value: str) -> datetime:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None:
        raise SignatureError(INCOMPLETE_SIGNATURE, f"Date must be an RFC 1123 date. Got '{value}'.")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _split_credential(credential: str) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts):
        raise SignatureError(
            INCOMPLETE_SIGNATURE,
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
            f"got '{credential}'",
        )
    key_id, date, region, service, terminator = parts
    if terminator != TERMINATOR:
        raise SignatureError(
            INCOMPLETE_SIGNATURE,
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{terminator}'.",
        )
    return key_id, date, region, service


def _split_signed_headers(value: str) -> tuple[str, ...]:
    return tuple(name.strip().lower() for name in value.split(";") if name.strip())


def _from_header(authorizations: list[str], headers: Sequence[tuple[str, str]]) -> _Credentials:
    if len(authorizations) > 1:
        raise SignatureError(INCOMPLETE_SIGNATURE, "Only one Authorization header is allowed.")
    authorization = authorizations[0].strip()
    algorithm, _, rest = authorization.partition(" ")
    if algorithm.startswith("AWS4-") and algorithm != ALGORITHM:
        raise SignatureError(INCOMPLETE_SIGNATURE, f"Unsupported AWS 'algorithm': '{algorithm}'")
    params: dict[str, str] = {}
    if algorithm == ALGORITHM:
        for item in rest.split(","):
            item = item.strip()
            if not item:
                continue
            key, eq, value = item.partition("=")
            if not eq:
                raise SignatureError(
                    INCOMPLETE_SIGNATURE,
                    f"'{item}' not a valid key=value pair (missing equal-sign) in Authorization header: "
                    f"'{authorization}'.",
                )
            params[key.strip()] = value.strip()
    amz_date = _header(headers, "x-amz-date")
    http_date = _header(headers, "date")
    problems = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not params.get(name)
    ]
    if amz_date is None and http_date is None:
        problems.append(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    if problems:
        raise SignatureError(INCOMPLETE_SIGNATURE, " ".join([*problems, f"Authorization={authorization}"]))

    if amz_date is not None:
        signed_at = _parse_amz_date(amz_date)
    else:
        assert http_date is not None
        signed_at = _parse_http_date(http_date)
    key_id, date, region, service = _split_credential(params["Credential"])
    return _Credentials(
        access_key_id=key_id,
        scope_date=date,
        region=region,
        service=service,
        signed_headers=_split_signed_headers(params["SignedHeaders"]),
        signature=params["Signature"],
        amz_date=_fmt(signed_at),
        signed_at=signed_at,
        expires=None,
        session_token=_header(headers, "x-amz-security-token"),
    )


def _from_query(query: list[tuple[str, str]]) -> _Credentials:
    params: dict[str, str] = {}
    for key, value in query:
        if key in _QUERY_AUTH_PARAMS:
            if key in params:
                raise SignatureError(INCOMPLETE_SIGNATURE, f"Duplicate query parameter '{key}'.")
            params[key] = value
    if any(not params.get(name) for name in (*_QUERY_REQUIRED, "X-Amz-Expires")):
        raise SignatureError(
            INCOMPLETE_SIGNATURE,
            "AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', "
            "'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders', 'X-Amz-Expires'. "
            "Re-examine the query-string parameters.",
        )
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise SignatureError(INCOMPLETE_SIGNATURE, f"X-Amz-Algorithm only supports '{ALGORITHM}'")
    expires_text = params["X-Amz-Expires"]
    if not expires_text.isascii() or not expires_text.isdigit():
        raise SignatureError(INCOMPLETE_SIGNATURE, "X-Amz-Expires should be a number")
    expires = int(expires_text)
    if expires > MAX_PRESIGNED_EXPIRES:
        raise SignatureError(
            INCOMPLETE_SIGNATURE,
            f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGNED_EXPIRES}",
        )
    signed_at = _parse_amz_date(params["X-Amz-Date"])
    key_id, date, region, service = _split_credential(params["X-Amz-Credential"])
    return _Credentials(
        access_key_id=key_id,
        scope_date=date,
        region=region,
        service=service,
        signed_headers=_split_signed_headers(params["X-Amz-SignedHeaders"]),
        signature=params["X-Amz-Signature"],
        amz_date=params["X-Amz-Date"],
        signed_at=signed_at,
        expires=expires,
        session_token=params.get("X-Amz-Security-Token") or None,
    )


def _skew_text(skew: timedelta) -> str:
    seconds = int(skew.total_seconds())
    return f"{seconds // 60} min." if seconds % 60 == 0 else f"{seconds} sec."


def _check_time(creds: _Credentials, now: datetime, max_skew: timedelta) -> None:
    signed_at = creds.signed_at
    if signed_at > now + max_skew:
        raise SignatureError(
            INVALID_SIGNATURE,
            f"Signature not yet current: {_fmt(signed_at)} is still later than {_fmt(now + max_skew)} "
            f"({_fmt(now)} + {_skew_text(max_skew)})",
            code="SIGNATURE_NOT_YET_CURRENT",
        )
    if creds.expires is not None:
        window = timedelta(seconds=creds.expires)
        if now > signed_at + window:
            raise SignatureError(
                INVALID_SIGNATURE,
                f"Signature expired: {_fmt(signed_at)} is now earlier than {_fmt(now - window)} "
                f"({_fmt(now)} - {creds.expires} sec.)",
                code="SIGNATURE_EXPIRED",
            )
    elif signed_at < now - max_skew:
        raise SignatureError(
            INVALID_SIGNATURE,
            f"Signature expired: {_fmt(signed_at)} is now earlier than {_fmt(now - max_skew)} "
            f"({_fmt(now)} - {_skew_text(max_skew)})",
            code="SIGNATURE_EXPIRED",
        )
