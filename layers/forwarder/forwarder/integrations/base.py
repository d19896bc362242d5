"""What an integration is: its settings, its actions with typed fields, how it delivers and classifies.

Adding a vendor means adding a package under ``integrations/`` and one line in the registry; the flows
never change. Each delivery ends in one ``Outcome``: delivered, retry later, or rejected for good.
"""

from __future__ import annotations

import abc
import builtins
import email.utils
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel

from forwarder.ports.locks import LockPort

if TYPE_CHECKING:
    import requests

FieldKind = Literal["string", "list", "dynamic"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A field an action accepts; ``kind`` is the mapping kind that may target it."""

    name: str
    kind: FieldKind
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """An integration action, e.g. ExpertSender ``upsert_customer``; ``flows`` it may serve."""

    name: str
    flows: frozenset[str]
    fields: dict[str, FieldSpec]
    description: str
    batchable: bool = False


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # not sent: a later delete of the same customer was delivered


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery; ``reason`` says why (the vendor's words where it gave any)."""

    verdict: Verdict
    reason: str = ""
    errors: list[str] = field(default_factory=list)
    retry_after: float | None = None
    vendor_status: int | None = None
    #: The vendor refused the session token: deliver renews it once and sends the record again.
    token_refused: bool = False
    #: Not the record's fault and no attempt spent (e.g. no token can be had): the record is queued again
    #: to wait, never dead-lettered for it.
    hold: bool = False
    #: The vendor is down (5xx, 408, a timeout, no connection): what opens the integration's circuit breaker.
    vendor_down: bool = False
    #: The request may have been applied though no answer came (a read timeout, a dropped connection, a
    #: gateway's 504): the next attempt reads it back before sending it again.
    ambiguous: bool = False

    @classmethod
    def delivered(cls, status: int | None = None) -> Outcome:
        return cls(Verdict.DELIVERED, "delivered", vendor_status=status)

    @classmethod
    def retry(cls, reason: str, *, retry_after: float | None = None, status: int | None = None) -> Outcome:
        return cls(Verdict.RETRY, reason, retry_after=retry_after, vendor_status=status)

    @classmethod
    def unavailable(
        cls,
        reason: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        ambiguous: bool = False,
    ) -> Outcome:
        return cls(
            Verdict.RETRY,
            reason,
            retry_after=retry_after,
            vendor_status=status,
            vendor_down=True,
            ambiguous=ambiguous or status == 504,
        )

    @classmethod
    def refused_token(cls, reason: str, *, status: int | None = None) -> Outcome:
        return cls(Verdict.RETRY, reason, vendor_status=status, token_refused=True)

    @classmethod
    def held(cls, reason: str, *, retry_after: float | None = None) -> Outcome:
        return cls(Verdict.RETRY, reason, retry_after=retry_after, hold=True)

    @classmethod
    def rejected(cls, reason: str, errors: list[str] | None = None, *, status: int | None = None) -> Outcome:
        return cls(Verdict.REJECTED, reason, errors or [], vendor_status=status)


NOT_ATTEMPTED = "not attempted: the invocation had too little time left; it is retried"

#: What ``Integration.confirm`` answers per delivery: applied (True), not applied (False), cannot be read back
#: (None: sent again), or the read failed and the delivery waits with this outcome (see ``unreadable``).
ReadBack = bool | None | Outcome


def unreadable(title: str, problem: str, *, status: int | None = None, out_of_time: bool = False) -> Outcome:
    """The outcome of a delivery whose unanswered attempt could not be read back now: it stays "sending" and
    waits (the vendor may hold it already, so it is not sent again blind). Out of time: requeued at once,
    no attempt spent."""
    if out_of_time:
        return Outcome.retry(NOT_ATTEMPTED)
    return Outcome.unavailable(
        f"could not read back an unanswered attempt from {title}: {problem}", status=status, ambiguous=True
    )


@dataclass(slots=True)
class Budget:
    """The time an invocation may still spend; ``deadline`` is on the ``clock`` (monotonic), None = no limit."""

    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_remaining_ms(cls, remaining_ms: int | None, margin_seconds: float = 2.0) -> Budget:
        if remaining_ms is None:
            return cls()
        return cls(time.monotonic() + remaining_ms / 1000 - margin_seconds)

    def allows(self, seconds: float) -> bool:
        return self.deadline is None or self.clock() + seconds <= self.deadline


@dataclass(frozen=True, slots=True)
class RecordContext:
    """What validate knows of a record besides its data: which request it came from, and when."""

    request_id: str = ""
    received_at: str = ""


NO_CONTEXT = RecordContext()


class RecordInvalid(ValueError):
    """A mapped record breaks the vendor's field rules; rejected at validate, never sent."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class CredentialsError(Exception):
    """The integration's secret lacks what the integration needs (says which key, never a value)."""


class TokenError(Exception):
    """The vendor would not issue a token. The message is safe to log: it names the vendor's answer, never a
    credential, a token or a URL carrying one."""


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def classify_transport_error(error: requests.RequestException) -> Outcome:
    """Connection errors and timeouts are worth a retry; the reason names the kind, not the URL's secrets."""
    import requests  # deferred: importing requests costs cold starts that send nothing

    if isinstance(error, requests.ConnectTimeout):  # never sent
        return Outcome.unavailable(f"timeout connecting to the vendor ({type(error).__name__})")
    if isinstance(error, requests.Timeout):
        return Outcome.unavailable(f"timeout talking to the vendor ({type(error).__name__})", ambiguous=True)
    if isinstance(error, requests.ConnectionError):
        return Outcome.unavailable(
            f"could not connect to the vendor ({type(error).__name__})", ambiguous=True
        )
    return Outcome.retry(f"HTTP error talking to the vendor ({type(error).__name__})")


def sent_unanswered(error: requests.RequestException) -> bool:
    """The request may have reached the vendor (everything but a failure to connect)."""
    import requests  # deferred: importing requests costs cold starts that send nothing

    return not isinstance(error, requests.ConnectTimeout)


class Integration(abc.ABC):
    """One vendor. Subclasses declare ``type``, ``settings_model``, ``actions`` and implement ``prepare`` and
    ``deliver``; token vendors set ``uses_tokens`` and implement ``token``, ``token_expires_at`` and
    ``fetch_token`` (``forwarder.tokens`` decides when to fetch, under a lock)."""

    type: ClassVar[str]
    title: ClassVar[str]
    settings_model: ClassVar[builtins.type[BaseModel]]
    secret_keys: ClassVar[tuple[str, ...]] = ()
    uses_tokens: ClassVar[bool] = False
    actions: ClassVar[dict[str, ActionSpec]]
    default_actions: ClassVar[dict[str, str]]  # flow -> action name

    def action(self, name: str) -> ActionSpec:
        return self.actions[name]

    @abc.abstractmethod
    def prepare(
        self,
        operation: str,
        mapped: dict[str, Any],
        settings: BaseModel,
        context: RecordContext = NO_CONTEXT,
    ) -> dict[str, Any]:
        """Shape and check one mapped record into the vendor's payload; raise RecordInvalid listing problems.
        ``context`` names the request (e.g. for the vendor's idempotency key)."""

    @abc.abstractmethod
    def deliver(
        self,
        operation: str,
        payloads: Sequence[dict[str, Any]],
        settings: BaseModel,
        credentials: dict[str, Any],
        http: requests.Session,
        budget: Budget | None = None,
        locks: LockPort | None = None,
        retried: Sequence[bool] | None = None,
    ) -> list[Outcome]:
        """Send payloads (batched where the vendor allows); one Outcome per payload, in order. A request that
        ``budget`` does not allow is not made: its payloads get ``Outcome.retry(NOT_ATTEMPTED)``. ``locks``
        (shared by every process that delivers) serialises what must happen once, e.g. creating a list.
        ``retried`` marks payloads an earlier attempt got part of the way with: an integration that works in
        steps skips a step the vendor already shows applied, so no effect happens twice."""

    def batch_size(self, operation: str, settings: BaseModel) -> int:
        """How many payloads one ``deliver`` call may take for this operation."""
        return 1

    def requests_for(self, operation: str, count: int, settings: BaseModel) -> int:
        """About how many vendor requests delivering ``count`` payloads makes (what a rate limit counts)."""
        return count

    def check_config(
        self, settings: BaseModel, flows: dict[str, tuple[str, list[Any]]]
    ) -> list[tuple[tuple[str | int, ...], str]]:
        """Mistakes a schema-valid config would only reveal by rejecting every record: (path, message) pairs,
        the path relative to the integration (e.g. ``("contacts", "mapping")``). ``flows``: flow -> (action,
        mapping rules)."""
        return []

    def identities(self, operation: str, payload: dict[str, Any]) -> list[str]:
        """The customer identifiers a payload carries (``email:jane@example.com``), for the deletion ledger.
        An empty list opts the operation out of delete ordering."""
        return []

    def customer_key(self, operation: str, payload: dict[str, Any], settings: BaseModel) -> str | None:
        """The identity this integration matches the payload's customer on (``email:jane@example.com``): a
        customer's deliveries are applied in the order they were received, per this key. None: no order."""
        found = self.identities(operation, payload)
        return found[0] if found else None

    def confirm(
        self,
        operation: str,
        payloads: Sequence[dict[str, Any]],
        settings: BaseModel,
        credentials: dict[str, Any],
        http: requests.Session,
        budget: Budget | None = None,
    ) -> list[ReadBack]:
        """For deliveries whose earlier attempt got no answer (a read timeout, a crash): True when the vendor
        shows the payload applied already (read back), False when it does not, None when this action cannot
        be read back (the delivery is then sent again, which the action must tolerate), or an ``Outcome``
        when the read itself failed (``unreadable``): the delivery waits and is read back again next time,
        never sent blind. Default: cannot tell."""
        return [None] * len(payloads)

    def check_credentials(self, credentials: dict[str, Any]) -> None:
        missing = [key for key in self.secret_keys if not credentials.get(key)]
        if missing:
            raise CredentialsError(f"the {self.title} secret lacks the key(s): {', '.join(missing)}")

    def token(self, credentials: dict[str, Any]) -> str | None:
        """The session token stored in the credentials, if any."""
        return None

    def token_expires_at(self, credentials: dict[str, Any]) -> float | None:
        """When the stored token expires (epoch seconds), or None when it lives until it is replaced."""
        return None

    def fetch_token(
        self, settings: BaseModel, credentials: dict[str, Any], http: requests.Session
    ) -> dict[str, Any]:
        """Ask the vendor for a new token; returns the fields to store in the secret. Raises TokenError."""
        raise NotImplementedError(f"{self.title} uses no session tokens")
