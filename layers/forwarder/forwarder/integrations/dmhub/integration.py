"""Convertlab DM Hub: customers with list memberships, customer events, deletes (seeds 000 and 003).

* contacts -> ``upsert_customer``: ``POST /v1/customerandidentities`` identifies or creates the customer by the
  configured identity (``identity_type``: email, mobile, or a custom type), then list memberships: list names
  resolve to ids (paged ``GET /v1/lists``, cached; created with ``POST /v1/lists`` only when
  ``create_missing_lists`` allows), members go in with ``POST /v1/listMembersBatch`` for the whole delivery
  batch, and ``remove_lists`` leaves lists with ``POST /v1/listservice/removeFromList``.
* events -> ``customer_event``: the customer is found by identity (created when new), then
  ``POST /v1/customerevents`` with ``externalId`` = the request id, so a retried event is not recorded twice.
* delete -> ``delete_customer``: found by identity, then ``DELETE /v1/customers/{id}``; no such customer is
  what a delete asks for: delivered.
* Secret: ``app_id`` and ``secret``; the forwarder keeps ``access_token`` and ``expires_at`` beside them
  (one token per application, renewed through ``forwarder.tokens``: DM Hub keeps one active token per app).
"""

from __future__ import annotations

import builtins
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from forwarder.integrations.base import (
    NO_CONTEXT,
    NOT_ATTEMPTED,
    ActionSpec,
    Budget,
    FieldSpec,
    Integration,
    Outcome,
    ReadBack,
    RecordContext,
    RecordInvalid,
    Verdict,
    unreadable,
)
from forwarder.integrations.dmhub.client import (
    TOKEN_ERROR_CODES,
    DmHubClient,
    DmHubError,
    OutOfTime,
    fetch_token,
)
from forwarder.mapping import TransformValueError, as_text, convert_date
from forwarder.ports.locks import LockPort

if TYPE_CHECKING:
    import requests

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MOBILE = re.compile(r"^\+?[0-9]{1,4} ?[0-9]{4,16}$")
_ATTR = re.compile(r"^attr([1-9]|1[0-9]|20)$")
_EVENT_ATTR = re.compile(r"^attr[1-5]$")
_GENDERS = {"0": 0, "unknown": 0, "1": 1, "m": 1, "male": 1, "2": 2, "f": 2, "female": 2}
_LIST_CACHE_SECONDS = 600.0


class DmHubSettings(BaseModel):
    """Per group key settings of the DM Hub integration (no credentials here: they are in the secret)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("https://api.convertlab.com", pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    api_version: Literal["v1", "v2"] = Field(
        "v1", description="v1: old-version application (token in the query string); v2: new-version (Bearer)"
    )
    identity_type: str = Field(
        "email",
        min_length=1,
        max_length=32,
        description="the identity customers are found by: email, mobile, or a custom identity type",
    )
    create_missing_lists: bool = Field(False, description="create a list named by a record when it is absent")
    list_batch_size: int = Field(500, ge=1, le=1000, description="memberships per listMembersBatch call")
    batch_size: int = Field(100, ge=1, le=500, description="records per delivery call")
    token_error_codes: list[int] = Field(default_factory=lambda: list(TOKEN_ERROR_CODES))
    timeout_seconds: float = Field(10.0, gt=0, le=20)


_CUSTOMER_FIELDS = {
    "identity_value": FieldSpec(
        "identity_value", "string", "the customer's identity value when identity_type is a custom type"
    ),
    "name": FieldSpec("name", "string", "full name"),
    "email": FieldSpec("email", "string", "e-mail address"),
    "mobile": FieldSpec("mobile", "string", "mobile number in international form (+86 15300830723)"),
    "gender": FieldSpec("gender", "string", "male / female / unknown (or 1 / 2 / 0, m / f)"),
    "birthday": FieldSpec("birthday", "string", "date of birth, ISO 8601 (sent as YYYY-MM-DD)"),
    "country": FieldSpec("country", "string", "country"),
    "province": FieldSpec("province", "string", "province"),
    "city": FieldSpec("city", "string", "city"),
    "source": FieldSpec("source", "string", "where the customer came from"),
    "attributes": FieldSpec("attributes", "dynamic", "custom attributes: {attribute: attr1 ... attr20}"),
    "lists": FieldSpec("lists", "list", "names of the lists the customer joins"),
    "remove_lists": FieldSpec("remove_lists", "list", "names of the lists the customer leaves"),
}
_IDENTITY_FIELDS = {name: _CUSTOMER_FIELDS[name] for name in ("identity_value", "email", "mobile")}
_EVENT_FIELDS = {
    **_IDENTITY_FIELDS,
    "event": FieldSpec("event", "string", "the event type id (at most 32 characters)", required=True),
    "date": FieldSpec("date", "string", "when it happened, ISO 8601 (default: when the request came in)"),
    "target_id": FieldSpec("target_id", "string", "the event's target id"),
    "target_name": FieldSpec("target_name", "string", "the event's target name"),
    "source": FieldSpec("source", "string", "the event's source"),
    "external_id": FieldSpec("external_id", "string", "your id of the event (default: the request id)"),
    "attributes": FieldSpec("attributes", "dynamic", "event attributes: {attribute: attr1 ... attr5}"),
}


class _ListIds:
    """List name -> id per DM Hub application, shared by deliveries in this process for a few minutes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_app: dict[str, tuple[float, dict[str, int]]] = {}

    def get(self, app: str) -> dict[str, int] | None:
        with self._lock:
            cached = self._by_app.get(app)
        if cached is None or time.monotonic() - cached[0] > _LIST_CACHE_SECONDS:
            return None
        return cached[1]

    def put(self, app: str, ids: dict[str, int]) -> None:
        with self._lock:
            self._by_app[app] = (time.monotonic(), ids)

    def forget(self, app: str) -> None:
        with self._lock:
            self._by_app.pop(app, None)

    def clear(self) -> None:
        with self._lock:
            self._by_app.clear()


LIST_IDS = _ListIds()


class DmHub(Integration):
    type: ClassVar[str] = "dmhub"
    title: ClassVar[str] = "Convertlab DM Hub"
    settings_model: ClassVar[builtins.type[BaseModel]] = DmHubSettings
    secret_keys: ClassVar[tuple[str, ...]] = ("app_id", "secret")
    uses_tokens: ClassVar[bool] = True
    actions: ClassVar[dict[str, ActionSpec]] = {
        "upsert_customer": ActionSpec(
            "upsert_customer",
            frozenset({"contacts"}),
            _CUSTOMER_FIELDS,
            "POST /v1/customerandidentities, then list memberships in batches",
            batchable=True,
        ),
        "customer_event": ActionSpec(
            "customer_event",
            frozenset({"events"}),
            _EVENT_FIELDS,
            "POST /v1/customerevents for the customer found (or created) by identity",
            batchable=True,
        ),
        "delete_customer": ActionSpec(
            "delete_customer",
            frozenset({"delete"}),
            _IDENTITY_FIELDS,
            "DELETE /v1/customers/{id} of the customer found by identity",
        ),
    }
    default_actions: ClassVar[dict[str, str]] = {
        "contacts": "upsert_customer",
        "events": "customer_event",
        "delete": "delete_customer",
    }

    # --- tokens -----------------------------------------------------------------------------------------------

    def token(self, credentials: dict[str, Any]) -> str | None:
        token = credentials.get("access_token")
        return str(token) if token else None

    def token_expires_at(self, credentials: dict[str, Any]) -> float | None:
        try:
            return float(credentials.get("expires_at") or 0)
        except (TypeError, ValueError):
            return 0.0

    def fetch_token(
        self, settings: BaseModel, credentials: dict[str, Any], http: requests.Session
    ) -> dict[str, Any]:
        assert isinstance(settings, DmHubSettings)
        token, lifetime = fetch_token(
            self._base_url(settings, credentials),
            settings.api_version,
            str(credentials["app_id"]),
            str(credentials["secret"]),
            http,
            settings.timeout_seconds,
        )
        return {"access_token": token, "expires_at": time.time() + lifetime}

    # --- config checks ----------------------------------------------------------------------------------------

    def check_config(
        self, settings: BaseModel, flows: dict[str, tuple[str, list[Any]]]
    ) -> list[tuple[tuple[str | int, ...], str]]:
        assert isinstance(settings, DmHubSettings)
        problems: list[tuple[tuple[str | int, ...], str]] = []
        needed = _identity_field(settings)
        for flow, (_, rules) in flows.items():
            if not any(rule.to == needed for rule in rules):
                problems.append(
                    (
                        (flow, "mapping"),
                        f"settings.identity_type is {settings.identity_type} but no mapping fills '{needed}': "
                        "every record would be rejected",
                    )
                )
            pattern, limit = (
                (_EVENT_ATTR, "attr1 ... attr5") if flow == "events" else (_ATTR, "attr1 ... attr20")
            )
            for index, rule in enumerate(rules):
                if rule.to == "attributes":
                    for attribute, key in rule.fields.items():
                        if not pattern.match(str(key)):
                            problems.append(
                                (
                                    (flow, "mapping", index, "fields", attribute),
                                    f"DM Hub attributes are named {limit}, not '{key}'",
                                )
                            )
        return problems

    def identities(self, operation: str, payload: dict[str, Any]) -> list[str]:
        identity = payload.get("identity") or {}
        if not identity:
            return []
        value = str(identity["identityValue"])
        return [
            f"{identity['identityType']}:{value.lower() if identity['identityType'] == 'email' else value}"
        ]

    # --- validate: mapped fields -> vendor payload ------------------------------------------------------------

    def prepare(
        self,
        operation: str,
        mapped: dict[str, Any],
        settings: BaseModel,
        context: RecordContext = NO_CONTEXT,
    ) -> dict[str, Any]:
        assert isinstance(settings, DmHubSettings)
        errors: list[str] = []
        identity = _identity(mapped, settings, errors)
        if operation == "delete_customer":
            payload: dict[str, Any] = {"identity": identity}
        elif operation == "customer_event":
            payload = {"identity": identity, "event": _event(mapped, context, errors)}
        else:
            payload = {"identity": identity, "customer": _customer(mapped, errors)}
            for name in ("lists", "remove_lists"):
                names = [str(item).strip() for item in mapped.get(name, []) if str(item).strip()]
                too_long = [item for item in names if len(item) > 255]
                if too_long:
                    errors.append(
                        f"field '{name}': list names are at most 255 characters ('{too_long[0][:40]}...')"
                    )
                if names:
                    payload[name] = sorted(set(names))
        if errors:  # the identity and the customer may check one field alike (an e-mail identity): said once
            raise RecordInvalid(list(dict.fromkeys(errors)))
        return payload

    # --- deliver ----------------------------------------------------------------------------------------------

    def batch_size(self, operation: str, settings: BaseModel) -> int:
        assert isinstance(settings, DmHubSettings)
        return settings.batch_size

    def confirm(
        self,
        operation: str,
        payloads: Sequence[dict[str, Any]],
        settings: BaseModel,
        credentials: dict[str, Any],
        http: requests.Session,
        budget: Budget | None = None,
    ) -> list[ReadBack]:
        """Reads an unanswered upsert back: the customer found by identity holds every field it carried and
        is a member of its lists (and of none it was to leave). Events carry ``externalId`` (a second one is a
        duplicate) and deletes may be sent again, so they need no read."""
        assert isinstance(settings, DmHubSettings)
        token = self.token(credentials)
        if operation != "upsert_customer" or not token:
            return [None] * len(payloads)
        client = DmHubClient(
            self._base_url(settings, credentials),
            settings.api_version,
            token,
            http,
            timeout=settings.timeout_seconds,
            budget=budget,
            token_codes=tuple(settings.token_error_codes),
        )
        answers: list[ReadBack] = []
        for payload in payloads:
            try:
                answers.append(self._applied(client, payload))
            except OutOfTime:
                answers.append(unreadable(self.title, "no time left", out_of_time=True))
            except DmHubError as error:
                # a refused token is renewed by sending, which is safe only when nothing is there: wait instead
                answers.append(unreadable(self.title, str(error), status=error.status))
            except (KeyError, TypeError, ValueError):
                answers.append(None)
        return answers

    @staticmethod
    def _held_customer(client: DmHubClient, payload: dict[str, Any]) -> int | None:
        """The id of the customer found by the payload's identity when it holds every field the payload sets."""
        identity = payload["identity"]
        customer_id = client.find_customer(identity["identityType"], identity["identityValue"])
        if customer_id is None:
            return None
        stored = client.request("GET", f"/v1/customers/{customer_id}") or {}
        holds = all(stored.get(name) == value for name, value in payload["customer"].items())
        return customer_id if holds else None

    @staticmethod
    def _applied(client: DmHubClient, payload: dict[str, Any]) -> bool:
        identity = payload["identity"]
        customer_id = client.find_customer(identity["identityType"], identity["identityValue"])
        if customer_id is None:
            return False
        stored = client.request("GET", f"/v1/customers/{customer_id}") or {}
        if any(stored.get(name) != value for name, value in payload["customer"].items()):
            return False
        if not payload.get("lists") and not payload.get("remove_lists"):
            return True
        names = _page_lists(client)
        member_of = {int(item["listId"]) for item in client.members_page(customer_id=customer_id, rows=10000)}
        if any(names.get(name) not in member_of for name in payload.get("lists", [])):
            return False
        return not any(names.get(name) in member_of for name in payload.get("remove_lists", []))

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
        assert isinstance(settings, DmHubSettings)
        self.check_credentials(credentials)
        token = self.token(credentials)
        if not token:
            return [Outcome.refused_token("no DM Hub token is stored yet")] * len(payloads)
        client = DmHubClient(
            self._base_url(settings, credentials),
            settings.api_version,
            token,
            http,
            timeout=settings.timeout_seconds,
            budget=budget,
            token_codes=tuple(settings.token_error_codes),
        )
        if operation == "upsert_customer":
            return self._upsert(
                list(payloads),
                client,
                settings,
                str(credentials["app_id"]),
                locks,
                list(retried) if retried else [False] * len(payloads),
            )
        outcomes: list[Outcome | None] = [None] * len(payloads)
        for index, payload in enumerate(payloads):
            try:
                outcomes[index] = (
                    self._delete(payload, client)
                    if operation == "delete_customer"
                    else self._event(payload, client)
                )
            except DmHubError as error:
                outcomes[index] = error.outcome()
                if error.token_refused:
                    break  # the rest would be refused too: renewed and sent again by the deliver flow
            except OutOfTime:
                break
        return _fill(outcomes)

    @staticmethod
    def _base_url(settings: DmHubSettings, credentials: dict[str, Any]) -> str:
        return str(credentials.get("base_url") or settings.base_url).rstrip("/")

    @staticmethod
    def _delete(payload: dict[str, Any], client: DmHubClient) -> Outcome:
        identity = payload["identity"]
        customer_id = client.find_customer(identity["identityType"], identity["identityValue"])
        if customer_id is None:
            return Outcome.delivered(404)  # no such customer: the effect a delete asks for
        try:
            client.delete_customer(customer_id)
        except DmHubError as error:
            if error.not_found:
                return Outcome.delivered(404)
            raise
        return Outcome.delivered(204)

    @staticmethod
    def _event(payload: dict[str, Any], client: DmHubClient) -> Outcome:
        identity = payload["identity"]
        customer_id = client.find_customer(identity["identityType"], identity["identityValue"])
        if customer_id is None:
            created = client.upsert_customer(_identity_customer(identity), [identity])
            customer_id = int(created["id"])
        try:
            client.create_event({**payload["event"], "customerId": customer_id})
        except DmHubError as error:
            if error.duplicate:
                return Outcome.delivered(error.status)  # recorded by an earlier attempt
            raise
        return Outcome.delivered(201)

    def _upsert(
        self,
        payloads: list[dict[str, Any]],
        client: DmHubClient,
        settings: DmHubSettings,
        app_id: str,
        locks: LockPort | None,
        retried: list[bool],
    ) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(payloads)
        customer_ids: dict[int, int] = {}
        for index, payload in enumerate(payloads):
            try:
                held = self._held_customer(client, payload) if retried[index] else None
                if held is not None:  # an earlier attempt upserted it: only what is left is done now
                    customer_ids[index] = held
                    continue
                answer = client.upsert_customer(
                    {**_identity_customer(payload["identity"]), **payload["customer"]}, [payload["identity"]]
                )
                customer_ids[index] = int(answer["id"])
            except DmHubError as error:
                outcomes[index] = error.outcome()
                if error.token_refused:
                    # No membership call with a refused token: the records upserted before it are sent again
                    # (with their memberships) once the deliver flow has renewed the token.
                    for done in customer_ids:
                        outcomes[done] = outcomes[index]
                    return _fill(outcomes)
            except (KeyError, TypeError, ValueError):
                outcomes[index] = Outcome.retry("DM Hub answered the customer upsert without a customer id")
            except OutOfTime:
                break
        wanted = {index: payloads[index].get("lists", []) for index in customer_ids}
        leaving = {index: payloads[index].get("remove_lists", []) for index in customer_ids}
        if any(wanted.values()) or any(leaving.values()):
            _Memberships(client, settings, app_id, locks, outcomes).apply(customer_ids, wanted, leaving)
        for index in customer_ids:
            if outcomes[index] is None:
                outcomes[index] = Outcome.delivered(200)
        return _fill(outcomes)


class _TokenRefused(Exception):
    """A membership call was refused for its token: no further call is made with it."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


class _Memberships:
    """List memberships of one delivery batch: list names resolved to ids (cached; created under a lease when
    the settings allow), members added with ``listMembersBatch`` and removed with ``removeFromList``. A
    failure becomes the outcome of the records it concerns; the others are unaffected."""

    def __init__(
        self,
        client: DmHubClient,
        settings: DmHubSettings,
        app_id: str,
        locks: LockPort | None,
        outcomes: list[Outcome | None],
    ) -> None:
        self.client, self.settings, self.app_id, self.locks = client, settings, app_id, locks
        self.outcomes = outcomes

    def _mark(self, indexes: Sequence[int], outcome: Outcome) -> None:
        for index in indexes:
            if self.outcomes[index] is None:
                self.outcomes[index] = outcome

    def apply(
        self, customer_ids: dict[int, int], wanted: dict[int, list[str]], leaving: dict[int, list[str]]
    ) -> None:
        joining = {name for group in wanted.values() for name in group}
        parting = {name for group in leaving.values() for name in group}
        try:
            ids = self._list_ids(joining, parting)
        except (DmHubError, OutOfTime) as error:
            self._mark(list(customer_ids), _failure(error))
            return
        for index, group in wanted.items():
            missing = sorted(name for name in group if name not in ids)
            if missing:
                self._mark(
                    [index],
                    Outcome.retry(
                        f"DM Hub has no list named {', '.join(repr(name) for name in missing)}; create it in "
                        "DM Hub or set create_missing_lists"
                    ),
                )
        adds = [
            (index, {"customerId": customer_ids[index], "listId": ids[name]})
            for index, group in wanted.items()
            if self.outcomes[index] is None
            for name in group
        ]
        # A list that does not exist has no members to remove: nothing to do for it.
        removals: dict[int, list[tuple[int, int]]] = {}
        for index, group in leaving.items():
            for name in group:
                if name in ids and self.outcomes[index] is None:
                    removals.setdefault(ids[name], []).append((index, customer_ids[index]))
        size = self.settings.list_batch_size
        try:
            for start in range(0, len(adds), size):
                self._add(adds[start : start + size])
            for list_id, members in removals.items():
                for start in range(0, len(members), size):
                    self._remove(list_id, members[start : start + size])
        except _TokenRefused as refused:
            self._mark(list(customer_ids), refused.outcome)  # sent again, memberships included, after renewal

    def _add(self, batch: list[tuple[int, dict[str, int]]]) -> None:
        """``listMembersBatch``; a batch DM Hub refuses as a whole is halved until the refused items are
        found, so one bad item never fails its neighbours."""
        try:
            self.client.add_members([item for _, item in batch])
        except OutOfTime:
            self._mark([index for index, _ in batch], Outcome.retry(NOT_ATTEMPTED))
        except DmHubError as error:
            failed = self._explained(error, {item["listId"] for _, item in batch})
            if failed.verdict is Verdict.REJECTED and len(batch) > 1:
                half = len(batch) // 2
                self._add(batch[:half])
                self._add(batch[half:])
                return
            self._mark([index for index, _ in batch], failed)

    def _remove(self, list_id: int, members: list[tuple[int, int]]) -> None:
        try:
            self.client.remove_members(list_id, [customer for _, customer in members])
        except OutOfTime:
            self._mark([index for index, _ in members], Outcome.retry(NOT_ATTEMPTED))
        except DmHubError as error:
            self._mark([index for index, _ in members], self._explained(error, {list_id}))

    def _explained(self, error: DmHubError, list_ids: set[int]) -> Outcome:
        """The outcome of a failed membership call: a refused token stops the calls; a refusal caused by a
        list deleted in DM Hub since its id was cached is retried (the name resolves again), not rejected."""
        failed = error.outcome()
        if failed.token_refused:
            raise _TokenRefused(failed)
        if failed.verdict is Verdict.REJECTED:
            try:
                gone = _deleted_lists(self.client, self.app_id, list_ids)
            except (DmHubError, OutOfTime):
                gone = []
            if gone:
                return Outcome.retry(
                    f"{error}; DM Hub list(s) {gone} were deleted since their names were looked up: the names "
                    "are resolved again on the retry"
                )
        return failed

    def _list_ids(self, joining: set[str], parting: set[str]) -> dict[str, int]:
        """Ids of the named lists: from the cache, else from paging through the lists (then cached); lists to
        join that do not exist are created when the settings allow it."""
        cache_key = _cache_key(self.client, self.app_id)
        known = LIST_IDS.get(cache_key)
        if known is None or not (joining | parting) <= set(known):
            known = _page_lists(self.client)
            LIST_IDS.put(cache_key, known)
        missing = sorted(joining - set(known))
        if missing and self.settings.create_missing_lists:
            known = dict(known)
            for name in missing:
                known[name] = self._create(name)
            LIST_IDS.put(cache_key, known)
        return known

    def _create(self, name: str) -> int:
        """Create a list once: DM Hub does not check that list names are unique (seed 003), so two processes
        creating the same name would split its members. Under the name's lease, the lists are read again
        first; whoever comes second finds the list the first created."""
        if self.locks is None:
            return int(self.client.create_list(name)["id"])
        lease = f"dmhub-list/{self.app_id}/{hashlib.sha256(name.encode()).hexdigest()[:32]}"
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + _LIST_LEASE_WAIT_SECONDS
        while not self.locks.acquire(lease, owner, 30):
            if time.monotonic() > deadline:
                raise DmHubError(
                    "POST /v1/lists", 503, None, f"another delivery is creating the list {name!r}; retried"
                )
            time.sleep(0.1)
        try:
            existing = _page_lists(self.client).get(name)
            return existing if existing is not None else int(self.client.create_list(name)["id"])
        finally:
            self.locks.release(lease, owner)


_LIST_LEASE_WAIT_SECONDS = 5.0


def _failure(error: DmHubError | OutOfTime) -> Outcome:
    return error.outcome() if isinstance(error, DmHubError) else Outcome.retry(NOT_ATTEMPTED)


def _page_lists(client: DmHubClient) -> dict[str, int]:
    """Every list name -> its id; of lists sharing a name, the oldest (DM Hub pages by ascending id)."""
    known: dict[str, int] = {}
    for found in client.iter_lists():
        known.setdefault(str(found.get("name")), int(found["id"]))
    return known


def _cache_key(client: DmHubClient, app_id: str) -> str:
    return f"{client.base_url}|{app_id}"


def _deleted_lists(client: DmHubClient, app_id: str, list_ids: set[int]) -> list[int]:
    """Which of ``list_ids`` DM Hub no longer has (forgetting the cached names, which may be stale)."""
    LIST_IDS.forget(_cache_key(client, app_id))
    return sorted(list_ids - {int(found["id"]) for found in client.iter_lists()})


def _fill(outcomes: list[Outcome | None]) -> list[Outcome]:
    """Records not reached: refused with the same token as the one before them, or not attempted."""
    filled: list[Outcome] = []
    previous: Outcome | None = None
    for outcome in outcomes:
        if outcome is None:
            outcome = (
                previous if previous is not None and previous.token_refused else Outcome.retry(NOT_ATTEMPTED)
            )
        filled.append(outcome)
        previous = outcome
    return filled


def _identity_field(settings: DmHubSettings) -> str:
    return settings.identity_type if settings.identity_type in ("email", "mobile") else "identity_value"


def _identity(mapped: dict[str, Any], settings: DmHubSettings, errors: list[str]) -> dict[str, Any]:
    field = _identity_field(settings)
    value = str(mapped.get(field) or "").strip()
    if field == "email":
        value = value.lower()
    if not value:
        errors.append(
            f"field '{field}' is required: the integration finds customers by {settings.identity_type}"
        )
    elif len(value) > 128:
        errors.append(f"field '{field}': an identity value is at most 128 characters")
    elif field == "email" and not _EMAIL.match(value):
        errors.append(f"field 'email': '{value}' is not a valid e-mail address")
    elif field == "mobile" and not _MOBILE.match(value):
        errors.append(f"field 'mobile': '{value}' is not a mobile number in international form (add 'phone')")
    return {"identityType": settings.identity_type, "identityValue": value}


def _identity_customer(identity: dict[str, Any]) -> dict[str, Any]:
    """The customer fields a built-in identity implies (DM Hub matches by them, too)."""
    if identity["identityType"] in ("email", "mobile"):
        return {identity["identityType"]: identity["identityValue"]}
    return {}


def _customer(mapped: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    customer: dict[str, Any] = {}
    for name in ("name", "email", "mobile", "country", "province", "city", "source"):
        if name in mapped:
            customer[name] = str(mapped[name]).strip()
    if "email" in customer:
        customer["email"] = customer["email"].lower()
        if not _EMAIL.match(customer["email"]):
            errors.append(f"field 'email': '{customer['email']}' is not a valid e-mail address")
    if "mobile" in customer and not _MOBILE.match(customer["mobile"]):
        errors.append(
            f"field 'mobile': '{customer['mobile']}' is not a mobile number in international form "
            "(add the 'phone' transform)"
        )
    if "gender" in mapped:
        gender = _GENDERS.get(str(mapped["gender"]).strip().lower())
        if gender is None:
            errors.append(f"field 'gender': '{mapped['gender']}' is not male, female or unknown")
        else:
            customer["gender"] = gender
    if "birthday" in mapped:
        try:
            customer["birthday"] = convert_date(str(mapped["birthday"]).strip(), "iso8601", "date")
        except TransformValueError as error:
            errors.append(f"field 'birthday': {error} (add a 'date' transform)")
    for key, value in (mapped.get("attributes") or {}).items():
        customer[key] = value if isinstance(value, bool | int | float) else _text(value)
    return customer


def _event(mapped: dict[str, Any], context: RecordContext, errors: list[str]) -> dict[str, Any]:
    name = str(mapped.get("event") or "").strip()
    if not name:
        errors.append("field 'event' is required: the DM Hub event type")
    elif len(name) > 32:
        errors.append(f"field 'event': '{name[:40]}' is longer than DM Hub's 32 characters")
    event: dict[str, Any] = {"event": name}
    moment = mapped.get("date") or context.received_at
    if moment:
        try:
            event["date"] = _utc_seconds(convert_date(str(moment).strip()))
        except TransformValueError as error:
            errors.append(f"field 'date': {error} (add a 'date' transform)")
    for field, key in (("target_id", "targetId"), ("target_name", "targetName"), ("source", "source")):
        if field in mapped:
            event[key] = str(mapped[field]).strip()
    external = str(mapped.get("external_id") or context.request_id).strip()
    if external:
        event["externalId"] = external[:64]
    for key, value in (mapped.get("attributes") or {}).items():
        event[key] = value if isinstance(value, bool | int | float) else _text(value)
    return event


def _utc_seconds(iso: str) -> str:
    """``2024-05-01T10:00:00.000Z`` -> ``2024-05-01T10:00:00Z`` (DM Hub's UTC form)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: Any) -> str:
    return as_text(value)
