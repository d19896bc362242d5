"""HMAC signatures of a hook's raw body, as form tools and payment platforms send them.

The MAC is computed over the exact bytes received (never a re-serialised body), compared in constant time;
with a signed timestamp it covers ``<timestamp>.<body>`` and a timestamp outside the tolerance is refused,
so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from forwarder.config.hooks import HmacAuth
from forwarder.contract import ContractError


def _refused(code: str, message: str) -> ContractError:
    return ContractError(401, code, message)


def _describe(auth: HmacAuth) -> str:
    shape = f"{auth.prefix}<{auth.encoding} HMAC-{auth.algorithm.upper()}>"
    if auth.signature_key:
        stamp = f"{auth.timestamp_key}=<unix seconds>," if auth.timestamp_key else ""
        shape = f"{stamp}{auth.signature_key}={shape}"
    signed = "<timestamp>.<raw body>" if auth.timestamped else "the raw body"
    return f"'{auth.header}: {shape}' of {signed}, keyed with the hook's secret"


def verify(auth: HmacAuth, secret: str, headers: Mapping[str, str], body: bytes, now: float) -> bytes:
    """Return the verified MAC (it identifies this signed request), or raise ContractError (401).

    ``headers``: the request's headers, names in lower case."""
    header = headers.get(auth.header.lower())
    if not header:
        raise _refused("SIGNATURE_MISSING", f"header '{auth.header}' is missing; send {_describe(auth)}")
    timestamp: str | None = None
    if auth.signature_key:
        items = [part.strip().partition("=") for part in header.split(",")]
        candidates = [value.strip() for key, _, value in items if key.strip() == auth.signature_key]
        if auth.timestamp_key:
            timestamp = next(
                (value.strip() for key, _, value in items if key.strip() == auth.timestamp_key), None
            )
    else:
        candidates = [header.strip()]
    if auth.timestamp_header:
        timestamp = headers.get(auth.timestamp_header.lower())
    payload = body
    if auth.timestamped:
        payload = _timestamped(auth, timestamp, body, now)
    expected = hmac.new(secret.encode("utf-8"), payload, getattr(hashlib, auth.algorithm)).digest()
    decoded = [mac for mac in (_decode(auth, candidate) for candidate in candidates) if mac is not None]
    if not decoded:
        raise _refused(
            "SIGNATURE_MALFORMED", f"header '{auth.header}' does not hold a signature; send {_describe(auth)}"
        )
    if not any(hmac.compare_digest(mac, expected) for mac in decoded):
        raise _refused(
            "SIGNATURE_INVALID",
            f"the signature does not match the body; send {_describe(auth)} (check the secret, and sign the "
            "bytes sent, not a re-serialised body)",
        )
    return expected


def _timestamped(auth: HmacAuth, timestamp: str | None, body: bytes, now: float) -> bytes:
    where = (
        f"'{auth.timestamp_key}=' in '{auth.header}'" if auth.timestamp_key else f"'{auth.timestamp_header}'"
    )
    if not timestamp:
        raise _refused("SIGNATURE_TIMESTAMP_MISSING", f"the signed timestamp ({where}) is missing")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise _refused(
            "SIGNATURE_MALFORMED", f"the signed timestamp ({where}) must be whole seconds since 1970 (UTC)"
        )
    age = now - int(timestamp)
    if abs(age) > auth.tolerance_seconds:
        raise _refused(
            "SIGNATURE_EXPIRED",
            f"the signature was made {abs(int(age))} s {'ago' if age > 0 else 'ahead'}; this hook accepts "
            f"{auth.tolerance_seconds} s either way: a replayed or delayed request (or a sender's clock that is "
            "off) is refused; sign each request when it is sent",
        )
    return timestamp.encode("ascii") + b"." + body


def _decode(auth: HmacAuth, candidate: str) -> bytes | None:
    if auth.prefix:
        if not candidate.startswith(auth.prefix):
            return None
        candidate = candidate[len(auth.prefix) :]
    try:
        if auth.encoding == "hex":
            return bytes.fromhex(candidate)
        return base64.b64decode(candidate.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
