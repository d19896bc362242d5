"""API Gateway's ``AWS_IAM`` authorisation, embedded: the generic SigV4 verifier plus the rules API Gateway
applies to ``execute-api`` on top of it.

* **The stack's region**: a credential scoped to another region is refused, naming the region to sign for.
* **The payload is signed**: ``execute-api`` hashes the body it received; ``x-amz-content-sha256:
  UNSIGNED-PAYLOAD`` (which the generic verifier honours, as S3 does) or a hash that is not the body's is
  refused, so a body other than the one signed is never accepted.
* **Session tokens are STS's**: a temporary key (``ASIA...``) must carry the session token issued with it,
  before it expires; a long-term key carries none. A token the stack never issued is refused.
* **Revoked keys** are refused, saying so.

Every refusal is a :class:`~forwarder.auth.sigv4.SignatureError` (403, ``x-amzn-ErrorType``, message, and a
stable ``code``). Messages name access key ids and regions, never a secret or a session token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from forwarder.auth.sigv4 import (
    INVALID_SIGNATURE,
    INVALID_TOKEN,
    UNRECOGNIZED_CLIENT,
    UNSIGNED_PAYLOAD,
    SignatureError,
    verify,
)
from forwarder_local.stores import LocalCredentials

EXPIRED_TOKEN = "ExpiredTokenException"
EXPIRED_TOKEN_MESSAGE = "The security token included in the request is expired"


@dataclass(frozen=True)
class Identity:
    """The caller of an accepted request, as API Gateway reports it in ``requestContext.identity``."""

    access_key: str
    user_arn: str | None


class IamAuthorizer:
    """Authenticates requests to ``execute-api`` in ``region`` against the keys in ``credentials``."""

    def __init__(self, credentials: LocalCredentials, region: str, service: str = "execute-api") -> None:
        self.credentials = credentials
        self.region = region
        self.service = service

    def authenticate(
        self,
        *,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        now: datetime,
    ) -> Identity:
        """The caller of a request API Gateway would accept; raises SignatureError otherwise."""
        looked_up: list[str] = []

        def lookup_secret(access_key_id: str) -> str | None:
            looked_up.append(access_key_id)
            return self.credentials.secret_for(access_key_id)

        try:
            caller = verify(
                method=method,
                raw_path=raw_path,
                raw_query=raw_query,
                headers=headers,
                body=body,
                lookup_secret=lookup_secret,
                now=now,
                service=self.service,
                region=self.region,
            )
        except SignatureError as error:
            if error.code == "SIGNATURE_MISMATCH":
                raise payload_problem(headers, body) or error from None
            if error.code == "UNKNOWN_ACCESS_KEY" and looked_up:
                raise self._revoked(looked_up[-1]) or error from None
            raise
        problem = payload_problem(headers, body)
        if problem is not None:
            raise problem
        self._check_session_token(caller.access_key_id, caller.session_token, now)
        return Identity(caller.access_key_id, self.credentials.user_arn(caller.access_key_id))

    def _revoked(self, access_key_id: str) -> SignatureError | None:
        issued = self.credentials.lookup(access_key_id)
        if issued is None or not issued.revoked_at:
            return None
        return SignatureError(
            UNRECOGNIZED_CLIENT,
            f"{INVALID_TOKEN} Access key {access_key_id} was revoked at {issued.revoked_at}; sign with an active "
            "key (`forwarder clients create --group-key ...` issues one).",
            code="ACCESS_KEY_REVOKED",
        )

    def _check_session_token(self, access_key_id: str, session_token: str | None, now: datetime) -> None:
        issued = self.credentials.lookup(access_key_id)
        if issued is None:  # verified a moment ago; gone since (revoked and dropped): refuse as unknown
            raise SignatureError(UNRECOGNIZED_CLIENT, INVALID_TOKEN)
        if not issued.temporary:
            if session_token is not None:
                raise SignatureError(
                    UNRECOGNIZED_CLIENT,
                    f"{INVALID_TOKEN} Access key {access_key_id} is a long-term key and takes no session token: "
                    "leave X-Amz-Security-Token out, or sign with the temporary key the token was issued with.",
                    code="SESSION_TOKEN_INVALID",
                )
            return
        if session_token is None:
            raise SignatureError(
                UNRECOGNIZED_CLIENT,
                f"{INVALID_TOKEN} Access key {access_key_id} is temporary: send the session token issued with it "
                "in X-Amz-Security-Token (signed).",
                code="SESSION_TOKEN_MISSING",
            )
        if not self.credentials.session_token_matches(access_key_id, session_token):
            raise SignatureError(
                UNRECOGNIZED_CLIENT,
                f"{INVALID_TOKEN} It is not the session token issued with access key {access_key_id}: sign with "
                "the access key, secret and session token `forwarder clients session` printed together.",
                code="SESSION_TOKEN_INVALID",
            )
        if issued.state(now.timestamp()) == "expired":
            raise SignatureError(
                EXPIRED_TOKEN,
                f"{EXPIRED_TOKEN_MESSAGE}: the temporary credentials of access key {access_key_id} expired at "
                f"{issued.expires_at}; get new ones (`forwarder clients session`).",
                code="SESSION_TOKEN_EXPIRED",
            )


def payload_problem(headers: Sequence[tuple[str, str]], body: bytes) -> SignatureError | None:
    """The refusal of a request whose ``x-amz-content-sha256`` is not the SHA-256 of its body (``None``: the
    header is absent or right). ``execute-api`` signs the payload, so ``UNSIGNED-PAYLOAD`` is refused too."""
    values = [value.strip() for name, value in headers if name.strip().lower() == "x-amz-content-sha256"]
    if not values:
        return None
    declared = ",".join(values)
    if declared == UNSIGNED_PAYLOAD:
        return SignatureError(
            INVALID_SIGNATURE,
            "execute-api signs the payload: x-amz-content-sha256 must be the hex SHA-256 of the body, not "
            f"{UNSIGNED_PAYLOAD} (or leave the header out; it is then computed from the body).",
            code="UNSIGNED_PAYLOAD",
        )
    if declared.lower() != hashlib.sha256(body).hexdigest():
        return SignatureError(
            INVALID_SIGNATURE,
            "x-amz-content-sha256 is not the SHA-256 of the body received: sign the body you send, and send "
            "the body you signed.",
            code="PAYLOAD_HASH_MISMATCH",
        )
    return None
