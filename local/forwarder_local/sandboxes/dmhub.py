"""Convertlab DM Hub sandbox: a local HTTP server that behaves like DM Hub's REST API.

Contract sources: ``000_a0cd606e131e5d63.txt`` (application integration, v2 token call),
``003_9b3baae16795f0f9.txt`` (Chinese: customer lists API v1) and the "Convertlab DM Hub" section of
``vendor-notes.md`` (v1 token call, customers, identities, events, error shapes).

One application (``app_id`` / ``secret``) is registered, as an old-version (``v1``) or a new-version (``v2``)
application. It holds at most one active token: fetching a new one invalidates the previous one.

Token routes (no token needed):

* ``GET /security/accesstoken?grant_type=client_credentials&appid=&secret=`` (v1 application) ->
  ``200 {"error_code": 0, "access_token", "expires_in"}``; failures are HTTP 200 too:
  ``40001`` wrong/missing appid or secret, ``40002`` grant_type not ``client_credentials``,
  ``40201`` the application is new-version.
* ``GET /v2/oauth2/token?app_id=&secret=&grant_type=client_credentials`` (v2 application) ->
  ``200 {"access_token", "expires_in"}``; failures: ``400`` code ``400001`` (a parameter missing, or
  grant_type not ``client_credentials``), ``401`` code ``401001`` (wrong app_id or secret), ``403`` code
  ``403001`` (the application is old-version).

Data routes (the v1 resource paths for both application versions; a v1 token only in ``?access_token=``,
a v2 token in ``Authorization: Bearer`` or ``?access_token=``):

* ``POST /v1/customerandidentities`` (upsert) -> ``201`` created / ``200`` updated, the customer.
* ``GET /v1/customeridentities?identityType=&identityValue=`` -> ``200 [identity, ...]``.
* ``GET /v1/customers/{id}`` -> ``200`` customer; ``DELETE /v1/customers/{id}`` -> ``204``.
* ``POST /v1/customerevents`` -> ``201`` the stored event.
* ``POST /v1/lists`` -> ``201``; ``GET /v1/lists?rows&page&sidx&sord``; ``DELETE /v1/lists/{id}`` -> ``204``.
* ``POST /v1/listMembers`` -> ``201`` new / ``200`` existing; ``DELETE /v1/listMembers/{id}`` -> ``204``;
  ``GET /v1/listMembers?listId&customerId&sinceId&rows&sidx&sord``.
* ``POST /v1/listMembersBatch`` -> ``200 {"items": [...]}``.
* ``POST /v1/listservice/removeFromList?customerIds=1,2&listId=4`` -> ``200 {"removed": n}``.
* ``GET /v1/listservice/memberCount?listId&joinListDateSince&joinListDateTo`` -> ``200 {"listId", "count"}``.

Errors: a v1 application gets ``{"error_code": n, "error_description": "..."}``, a v2 application
``{"success": false, "error": {"code": n, "message": "...", "fieldErrors": [{"field", "message"}]}}``.
Token problems on data calls: ``40014`` (missing, unknown or replaced token) and ``42001`` (expired), with
HTTP 200 for a v1 application (DM Hub's habit) and HTTP 401 for a v2 one (without ``fieldErrors``).
Validation: HTTP 400, code ``40000``, the description names every failing field
(``customer.email: 'x' is not a valid e-mail address``). Unknown id: HTTP 404, ``40400``
(``customer 12 does not exist``). Identity conflict: 400 ``40900``; duplicate event: 400 ``40901``.
Unknown route: 404 ``40400``; wrong method: 405 ``40500`` with ``Allow``. Failures the framework detects
(bad body size, injected faults, internal errors) carry ``code = HTTP status * 100`` (503 -> ``50300``).

Choices where the documents are silent (each one strict, so a forwarder is honestly tested):

* Authentication is checked before routing: an unknown route without a valid token gets the token error.
* Tokens are random, expire ``token_ttl_seconds`` after issue (``expires_in`` is that number, an integer)
  and are stored as SHA-256 digests (the state, readable under ``/_sandbox/state/tokens``, never holds a
  usable token). A v1 application's token in a Bearer header is ignored (treated as missing). For a v2
  application the Bearer header wins over the query parameter. ``POST /v2/oauth2/token`` (Basic
  credentials) is not offered.
* Token calls check, in order: v1 - grant_type, then credentials, then the application version;
  v2 - parameters present and grant_type, then credentials, then the application version.
* JSON ids (``customerId``, ``listId``) must be JSON integers > 0 (a string of digits is rejected);
  ids in paths and query strings are decimal digits (``GET /v1/customers/abc`` is a 400, not a 404).
  ``null`` in any optional field means "not given". Unknown fields in any JSON body (top level or nested)
  are rejected; unknown query parameters are ignored. Token routes answer only GET (405 otherwise).
* Upsert: the first given identity already bound to a customer picks that customer; else the first
  customer (lowest id) whose ``mobile`` matches the request's ``mobile``, else whose ``email`` matches the
  request's ``email``; else a new customer. Customer fields are not unique (two customers may share an
  e-mail); identities are. Identity values are compared exactly, except type ``email`` (case-insensitive)
  and type ``mobile`` (spaces ignored); customer ``email`` / ``mobile`` fields are compared the same way.
  Identities and customer fields are independent: an ``email`` identity does not set the ``email`` field.
  The same identity twice in one request is a 400. A re-sent identity of the same customer keeps its id
  and takes a new ``identityName`` when one is given. ``lastUpdated`` changes on every upsert.
  ``customer`` is required (``{}`` only binds identities). Free-text fields (``name``, ``country``,
  ``province``, ``city``, ``source``) accept any string, the empty string included (it is "given");
  ``mobile``/``email``/``birthday``/``dateJoin`` must match their formats. ``attr1``..``attr20`` take
  strings, finite numbers or booleans. The customer body lists ``id``, the fields it holds (never
  ``null``), ``dateCreated`` and ``lastUpdated``.
* ``GET /v1/customeridentities`` needs both parameters (400 otherwise); the answer is in id order.
* Events: ``targetId`` is a string or an integer; ``targetName``/``source`` strings; ``externalId`` a
  non-empty string of at most 64 characters; ``attr1``..``attr5`` like customer attributes. The stored
  event holds ``id``, ``customerId``, ``event``, ``date`` (default: now) and the given optional fields.
  Events outlive their customer (deleting a customer keeps them).
* Lists: ``name`` must be a non-blank string (at most 255 characters). ``GET /v1/lists``: ``rows``
  defaults to 20 and is 1..10000, ``page`` starts at 1 (a page past the end is empty), ``sidx`` is one of
  ``id``, ``name``, ``dateCreated``, ``lastUpdated``, ``sord`` is ``asc`` or ``desc`` (lower case, exactly);
  ties are broken by id in the same direction; names sort by code point; ``total`` is 0 without lists.
  A list's ``lastUpdated`` does not change when members come and go. An empty query value (``rows=``)
  counts as absent, on every route.
* ``POST /v1/listMembers`` answers 201 for a new membership and 200 with the existing membership
  (unchanged) when the customer is already in the list. ``POST /v1/listMembersBatch`` answers 200, items
  in request order, 1..``max_batch`` items; an unknown customer or list in an item is a 400 naming
  ``items[i]`` (the whole batch is refused); an item repeated in one batch yields one membership.
* ``GET /v1/listMembers``: both filters are optional (no filter lists every membership); an unknown
  ``listId`` gives an empty answer; ``sinceId`` is a non-negative integer; ties on ``sidx`` are broken by
  id in the same direction, and the bound applies to the ``sidx`` field alone, as documented (so with
  ``sidx=customerId`` and no ``listId`` filter, keyset paging may skip a customer's other memberships).
* ``removeFromList``: ``listId`` must exist (404); ``customerIds`` is 1..``max_batch`` comma-separated
  decimal ids without spaces; any body is ignored.
* ``memberCount``: the list must exist (404); the bounds are inclusive, in exactly the documented form
  ``2016-11-11T11:11:11`` (no ``Z``); a start after the end is a 400.
* Timestamps have second resolution, UTC, ``2017-06-07T12:20:20Z``; a membership's ``lastUpdated`` equals
  its ``dateCreated``.

Effects ledger (``framework.py``; ``GET /_sandbox/state/effects``): ``upsert`` once per
``POST /v1/customerandidentities`` applied, keyed ``<first identity value>|<op marker of the body>`` (a
customer field or attribute whose value starts with ``op:``, e.g. ``source``; else a digest of the body, which
a retried delivery sends unchanged); ``delete`` per customer deleted, keyed by identity and the op marker of
the deleted data; ``event`` per event recorded, keyed by ``externalId``; ``membership`` per list membership
newly created, keyed ``<listId>/<customerId>``. Random faults spare the two token routes.

Admin routes come from the shared framework (faults, chaos, outages, counters, latency, reset, request log,
token expiry, paged state under ``/_sandbox/state/{tokens|customers|identities|lists|members|events|effects}``);
this sandbox adds ``GET /_sandbox/customers`` (each customer with its ``identities`` and ``lists``),
``GET /_sandbox/lists`` (each list with its ``members`` count) and ``GET /_sandbox/events``. With a
``state_path`` everything, tokens included, survives a restart.

Standalone: ``python -m forwarder_local.sandboxes.dmhub --port 8702 --app-id X --secret Y [--api-version v2]``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from forwarder_local.sandboxes.framework import (
    AdminRoute,
    JsonObject,
    Request,
    Response,
    Sandbox,
    digest,
    effect_key,
    serve_until_stopped,
    standalone_parser,
)
from forwarder_local.sandboxes.framework import quote_value as _quote

ApiVersion = Literal["v1", "v2"]
Handler = Callable[[Request, re.Match[str]], Response]

# -- state ---------------------------------------------------------------------------------------------------
TOKENS: Final = "tokens"
CUSTOMERS: Final = "customers"
IDENTITIES: Final = "identities"
LISTS: Final = "lists"
MEMBERS: Final = "members"
EVENTS: Final = "events"
ACTIVE_TOKEN: Final = "active"
TOKEN_REQUESTS: Final = "token_requests"
ID_COUNTERS: Final[dict[str, str]] = {
    CUSTOMERS: "customer_id",
    IDENTITIES: "identity_id",
    LISTS: "list_id",
    MEMBERS: "member_id",
    EVENTS: "event_id",
}

# -- codes -----------------------------------------------------------------------------------------------------
INVALID_REQUEST: Final = 40000
INVALID_CREDENTIALS: Final = 40001
INVALID_GRANT_TYPE: Final = 40002
INVALID_TOKEN: Final = 40014
PERMISSION_NOT_ENOUGH: Final = 40201
NOT_FOUND: Final = 40400
METHOD_NOT_ALLOWED: Final = 40500
IDENTITY_CONFLICT: Final = 40900
DUPLICATE_EVENT: Final = 40901
TOKEN_EXPIRED: Final = 42001
V2_BAD_TOKEN_REQUEST: Final = 400001
V2_INVALID_CREDENTIALS: Final = 401001
V2_WRONG_VERSION: Final = 403001

# -- field rules -----------------------------------------------------------------------------------------------
GRANT_TYPE: Final = "client_credentials"
TEXT_FIELDS: Final = ("name", "country", "province", "city", "source")
CUSTOMER_ATTRS: Final = tuple(f"attr{n}" for n in range(1, 21))
CUSTOMER_FIELDS: Final = (
    "name",
    "gender",
    "mobile",
    "email",
    "birthday",
    "country",
    "province",
    "city",
    "dateJoin",
    "source",
    *CUSTOMER_ATTRS,
)
GENDERS: Final = (0, 1, 2)
UPSERT_FIELDS: Final = frozenset({"customer", "customerIdentities"})
IDENTITY_FIELDS: Final = frozenset({"identityType", "identityValue", "identityName"})
MAX_IDENTITY_TYPE: Final = 32
MAX_IDENTITY_VALUE: Final = 128
EVENT_ATTRS: Final = tuple(f"attr{n}" for n in range(1, 6))
EVENT_FIELDS: Final = frozenset(
    {"customerId", "event", "date", "targetId", "targetName", "source", "externalId", *EVENT_ATTRS}
)
EVENT_ORDER: Final = (
    "customerId",
    "event",
    "date",
    "targetId",
    "targetName",
    "source",
    *EVENT_ATTRS,
    "externalId",
)
MAX_EVENT_NAME: Final = 32
MAX_EXTERNAL_ID: Final = 64
MAX_LIST_NAME: Final = 255
MAX_ROWS: Final = 10000
DEFAULT_ROWS: Final = 20
LIST_SORT_FIELDS: Final = ("id", "name", "dateCreated", "lastUpdated")
MEMBER_SORT_FIELDS: Final = ("id", "listId", "customerId")
SORT_ORDERS: Final = ("asc", "desc")

EMAIL_RE: Final = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
MOBILE_RE: Final = re.compile(r"(\+[0-9]{1,4} ?)?[0-9]{4,20}")
DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
UTC_DATETIME_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
JOIN_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
DIGITS_RE: Final = re.compile(r"[0-9]+")
UTC_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


class DmHubError(Exception):
    """A failure answered in the application's error shape."""

    def __init__(
        self, status: int, code: int, message: str, field_errors: list[JsonObject] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field_errors = field_errors if field_errors is not None else []


def _invalid(errors: Sequence[tuple[str, str]]) -> DmHubError:
    description = "; ".join(f"{where}: {message}" for where, message in errors)
    fields = [{"field": where, "message": message} for where, message in errors]
    return DmHubError(400, INVALID_REQUEST, description, fields)


def _not_found(kind: str, ident: int) -> DmHubError:
    return DmHubError(404, NOT_FOUND, f"{kind} {ident} does not exist")


class _Checks:
    """Collects every validation error of one request, each with the field it is about."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, where: str, message: str) -> None:
        self.errors.append((where, message))

    def raise_if_any(self) -> None:
        if self.errors:
            raise _invalid(self.errors)

    def json_object(self, where: str, value: object, allowed: Iterable[str]) -> JsonObject | None:
        """``value`` as a JSON object, with an error per unknown field; ``None`` (and an error) otherwise."""
        names = sorted(allowed)
        if not isinstance(value, dict):
            self.fail(where or "body", f"must be a JSON object with {', '.join(names)}")
            return None
        for name in sorted(set(value) - set(names)):
            self.fail(_join(where, name), f"unknown field (expected {', '.join(names)})")
        return value

    def identifier(self, where: str, value: object) -> int | None:
        if value is None:
            self.fail(where, "required; a positive integer id")
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.fail(where, f"{_quote(value)} is not an id (a positive integer)")
            return None
        return value

    def text(self, where: str, value: object, *, limit: int | None = None, blank: bool = True) -> str | None:
        if not isinstance(value, str):
            self.fail(where, "must be a string")
            return None
        if not blank and not value.strip():
            self.fail(where, "must not be empty")
            return None
        if limit is not None and len(value) > limit:
            self.fail(where, f"is {len(value)} characters long; at most {limit} are allowed")
            return None
        return value

    def attribute(self, where: str, value: object) -> object | None:
        if isinstance(value, str | bool | int):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        self.fail(where, f"{_quote(value)} is not a string, a number or a boolean")
        return None

    def utc_datetime(self, where: str, value: object) -> str | None:
        text = self.text(where, value)
        if text is not None and not _parses(text, UTC_DATETIME_RE, UTC_FORMAT):
            self.fail(where, f"{_quote(text)} is not a UTC date-time such as 2017-06-07T12:20:20Z")
            return None
        return text


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _parses(text: str, pattern: re.Pattern[str], fmt: str) -> bool:
    if not pattern.fullmatch(text):
        return False
    try:
        datetime.strptime(text, fmt)
    except ValueError:
        return False
    return True


def _identity_key(identity_type: str, value: str) -> tuple[str, str]:
    if identity_type == "email":
        return identity_type, value.lower()
    if identity_type == "mobile":
        return identity_type, value.replace(" ", "")
    return identity_type, value


def _field_key(name: str, value: str) -> str:
    return value.lower() if name == "email" else value.replace(" ", "")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Identity:
    type: str
    value: str
    name: str | None


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    methods: dict[str, Handler]


class DmHubSandbox(Sandbox):
    """Convertlab DM Hub API (tokens, customers, identities, events, lists) over real HTTP."""

    title = "Convertlab DM Hub sandbox"
    chaos_exempt = ("/security/accesstoken", "/v2/oauth2/token")

    def __init__(
        self,
        app_id: str,
        secret: str,
        *,
        api_version: ApiVersion = "v1",
        host: str = "127.0.0.1",
        port: int = 0,
        state_path: str | Path | None = None,
        token_ttl_seconds: int = 7200,
        max_batch: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not app_id or not secret:
            raise ValueError("app_id and secret must not be empty")
        if api_version not in ("v1", "v2"):
            raise ValueError("api_version must be 'v1' or 'v2'")
        if token_ttl_seconds < 1:
            raise ValueError("token_ttl_seconds must be at least 1")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.app_id = app_id
        self._secret = secret.encode("utf-8")
        self.api_version: ApiVersion = api_version
        self.token_ttl_seconds = token_ttl_seconds
        self.max_batch = max_batch
        self._clock = clock
        self._identity_index: dict[tuple[str, str], int] = {}
        self._field_index: dict[str, dict[str, set[int]]] = {"mobile": {}, "email": {}}
        self._member_index: dict[tuple[int, int], int] = {}
        self._event_index: dict[tuple[int, str], int] = {}
        self._routes = self._route_table()
        super().__init__(host, port, state_path)

    def _route_table(self) -> list[_Route]:
        def route(pattern: str, **methods: Handler) -> _Route:
            return _Route(re.compile(pattern), methods)

        return [
            route(r"/v1/customerandidentities/?", POST=self._upsert_customer),
            route(r"/v1/customeridentities/?", GET=self._find_identities),
            route(r"/v1/customers/([^/]+)/?", GET=self._get_customer, DELETE=self._delete_customer),
            route(r"/v1/customerevents/?", POST=self._post_event),
            route(r"/v1/lists/?", GET=self._get_lists, POST=self._post_list),
            route(r"/v1/lists/([^/]+)/?", DELETE=self._delete_list),
            route(r"/v1/listMembers/?", GET=self._get_members, POST=self._post_member),
            route(r"/v1/listMembers/([^/]+)/?", DELETE=self._delete_member),
            route(r"/v1/listMembersBatch/?", POST=self._post_members_batch),
            route(r"/v1/listservice/removeFromList/?", POST=self._remove_from_list),
            route(r"/v1/listservice/memberCount/?", GET=self._member_count),
        ]

    # -- framework hooks -------------------------------------------------------------------------------------

    def load(self) -> None:
        self._identity_index = {
            _identity_key(item["identityType"], item["identityValue"]): item["id"]
            for item in self.state.items(IDENTITIES).values()
        }
        self._field_index = {"mobile": {}, "email": {}}
        for customer in self.state.items(CUSTOMERS).values():
            self._index_fields(customer, add=True)
        self._member_index = {
            (item["listId"], item["customerId"]): item["id"] for item in self.state.items(MEMBERS).values()
        }
        self._event_index = {
            (item["customerId"], item["externalId"]): item["id"]
            for item in self.state.items(EVENTS).values()
            if "externalId" in item
        }

    def error(self, status: int, detail: str, path: str) -> Response:
        return self._error_response(DmHubError(status, status * 100, detail))

    def expire_tokens(self) -> None:
        with self.lock:
            active = self.state.get(TOKENS, ACTIVE_TOKEN)
            now = self._clock()
            if active is not None and active["expiresAt"] > now:
                self.state.put(TOKENS, ACTIVE_TOKEN, {**active, "expiresAt": now})

    def admin(self) -> dict[str, tuple[tuple[str, ...], AdminRoute]]:
        return {
            "/_sandbox/customers": (("GET",), lambda request: Response(200, {"customers": self.customers()})),
            "/_sandbox/lists": (("GET",), lambda request: Response(200, {"lists": self.lists()})),
            "/_sandbox/events": (("GET",), lambda request: Response(200, {"events": self.events()})),
        }

    # -- state for tests -------------------------------------------------------------------------------------

    def token_requests(self) -> int:
        """How many token calls were answered with a token."""
        with self.lock:
            return self.state.counter(TOKEN_REQUESTS)

    def customers(self) -> list[JsonObject]:
        """Every customer (copies) in id order, each with its ``identities`` and the ``lists`` it is in."""
        with self.lock:
            return self._customer_details(self._sorted(CUSTOMERS))

    def find_customer(self, identity_type: str, identity_value: str) -> JsonObject | None:
        """The customer bound to an identity (with identities and lists), or ``None``."""
        with self.lock:
            identity_id = self._identity_index.get(_identity_key(identity_type, identity_value))
            if identity_id is None:
                return None
            identity = self.state.get(IDENTITIES, str(identity_id))
            return self._customer_details([self.state.get(CUSTOMERS, str(identity["customerId"]))])[0]

    def lists(self) -> list[JsonObject]:
        """Every list (copies) in id order, each with its ``members`` count."""
        with self.lock:
            counts: dict[int, int] = {}
            for member in self.state.items(MEMBERS).values():
                counts[member["listId"]] = counts.get(member["listId"], 0) + 1
            stored = self.state.items(LISTS)
            return [
                {**copy.deepcopy(stored[key]), "members": counts.get(int(key), 0)}
                for key in sorted(stored, key=int)
            ]

    def members(self, list_id: int) -> list[int]:
        """Ids of the customers in a list, ascending."""
        with self.lock:
            return sorted(
                item["customerId"] for item in self.state.items(MEMBERS).values() if item["listId"] == list_id
            )

    def events(self) -> list[JsonObject]:
        """Every recorded event (copies) in id order."""
        with self.lock:
            stored = self.state.items(EVENTS)
            return [copy.deepcopy(stored[key]) for key in sorted(stored, key=int)]

    def _customer_details(self, customers: Iterable[JsonObject]) -> list[JsonObject]:
        identities: dict[int, list[JsonObject]] = {}
        for identity in self._sorted(IDENTITIES):
            identities.setdefault(identity["customerId"], []).append(identity)
        in_lists: dict[int, list[int]] = {}
        for member in self.state.items(MEMBERS).values():
            in_lists.setdefault(member["customerId"], []).append(member["listId"])
        return [
            {
                **copy.deepcopy(customer),
                "identities": copy.deepcopy(identities.get(customer["id"], [])),
                "lists": sorted(in_lists.get(customer["id"], [])),
            }
            for customer in customers
        ]

    def _sorted(self, collection: str) -> list[JsonObject]:
        stored = self.state.items(collection)
        return [stored[key] for key in sorted(stored, key=int)]

    # -- request handling ------------------------------------------------------------------------------------

    def vendor(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        try:
            with self.lock:
                if path == "/security/accesstoken":
                    return self._token_v1(request)
                if path == "/v2/oauth2/token":
                    return self._token_v2(request)
                refused = self._authenticate(request)
                if refused is not None:
                    return refused
                return self._route(request)
        except DmHubError as failure:
            return self._error_response(failure)

    def _route(self, request: Request) -> Response:
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            handler = route.methods.get(request.method)
            if handler is None:
                allowed = ", ".join(route.methods)
                response = self._error_response(
                    DmHubError(
                        405,
                        METHOD_NOT_ALLOWED,
                        f"method {request.method} is not allowed on {request.path}; use {allowed}",
                    )
                )
                response.headers["Allow"] = allowed
                return response
            return handler(request, match)
        raise DmHubError(404, NOT_FOUND, f"no such API: {request.method} {request.path}")

    def _error_response(self, failure: DmHubError) -> Response:
        if self.api_version == "v1":
            return Response(
                failure.status, {"error_code": failure.code, "error_description": failure.message}
            )
        return Response(
            failure.status,
            {
                "success": False,
                "error": {
                    "code": failure.code,
                    "message": failure.message,
                    "fieldErrors": failure.field_errors,
                },
            },
        )

    # -- tokens ----------------------------------------------------------------------------------------------

    def _credentials_match(self, app_id: str | None, secret: str | None) -> bool:
        if not app_id or not secret:
            return False
        same_app = hmac.compare_digest(app_id.encode("utf-8"), self.app_id.encode("utf-8"))
        same_secret = hmac.compare_digest(secret.encode("utf-8"), self._secret)
        return same_app and same_secret

    def _token_v1(self, request: Request) -> Response:
        def refuse(code: int, description: str) -> Response:
            return Response(200, {"error_code": code, "error_description": description})

        if request.method != "GET":
            return Response(
                405,
                {"error_code": METHOD_NOT_ALLOWED, "error_description": "use GET /security/accesstoken"},
                {"Allow": "GET"},
            )
        grant_type = request.param("grant_type")
        if grant_type != GRANT_TYPE:
            shown = "grant_type is missing" if not grant_type else f"invalid grant_type {_quote(grant_type)}"
            return refuse(INVALID_GRANT_TYPE, f"{shown}: must be {GRANT_TYPE}")
        if not self._credentials_match(request.param("appid"), request.param("secret")):
            return refuse(INVALID_CREDENTIALS, "invalid appid or secret")
        if self.api_version != "v1":
            return refuse(
                PERMISSION_NOT_ENOUGH,
                "permission is not enough: the application is new-version, use /v2/oauth2/token",
            )
        token = self._issue_token()
        return Response(200, {"error_code": 0, "access_token": token, "expires_in": self.token_ttl_seconds})

    def _token_v2(self, request: Request) -> Response:
        def refuse(status: int, code: int, message: str) -> Response:
            return Response(status, {"success": False, "error": {"code": code, "message": message}})

        if request.method != "GET":
            response = refuse(405, METHOD_NOT_ALLOWED, "use GET /v2/oauth2/token")
            response.headers["Allow"] = "GET"
            return response
        missing = [name for name in ("app_id", "secret", "grant_type") if not request.param(name)]
        if missing:
            return refuse(400, V2_BAD_TOKEN_REQUEST, f"missing required parameter(s): {', '.join(missing)}")
        grant_type = request.param("grant_type")
        if grant_type != GRANT_TYPE:
            return refuse(
                400, V2_BAD_TOKEN_REQUEST, f"invalid grant_type {_quote(grant_type)}: must be {GRANT_TYPE}"
            )
        if not self._credentials_match(request.param("app_id"), request.param("secret")):
            return refuse(401, V2_INVALID_CREDENTIALS, "invalid app_id or secret")
        if self.api_version != "v2":
            return refuse(
                403,
                V2_WRONG_VERSION,
                "permission is not enough: the application is an old-version application, "
                "use /security/accesstoken",
            )
        token = self._issue_token()
        return Response(200, {"access_token": token, "expires_in": self.token_ttl_seconds})

    def _issue_token(self) -> str:
        token = secrets.token_hex(16)
        now = self._clock()
        with self.state.batch():
            self.state.put(
                TOKENS,
                ACTIVE_TOKEN,
                {"sha256": _digest(token), "issuedAt": now, "expiresAt": now + self.token_ttl_seconds},
            )
            self.state.next_id(TOKEN_REQUESTS)
        return token

    def _presented_token(self, request: Request) -> str | None:
        if self.api_version == "v2":
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        return request.param("access_token") or None

    def _authenticate(self, request: Request) -> Response | None:
        token = self._presented_token(request)
        active = self.state.get(TOKENS, ACTIVE_TOKEN)
        if token is None:
            code, message = INVALID_TOKEN, "invalid access_token"
            if self.api_version == "v2":
                message = "invalid access_token: none given (send Authorization: Bearer <token>)"
        elif active is None or not hmac.compare_digest(_digest(token), active["sha256"]):
            code, message = INVALID_TOKEN, "invalid access_token"
        elif self._clock() >= active["expiresAt"]:
            code, message = TOKEN_EXPIRED, "access_token expired"
        else:
            return None
        if self.api_version == "v1":
            return Response(200, {"error_code": code, "error_description": message})
        return Response(401, {"success": False, "error": {"code": code, "message": message}})

    # -- helpers ---------------------------------------------------------------------------------------------

    def _now(self) -> str:
        return datetime.fromtimestamp(self._clock(), tz=UTC).strftime(UTC_FORMAT)

    def _new_id(self, collection: str) -> int:
        return self.state.next_id(ID_COUNTERS[collection])

    @staticmethod
    def _json_body(request: Request) -> object:
        if request.body_error is not None:
            raise _invalid([("body", f"not valid JSON ({request.body_error})")])
        if request.body is None:
            raise _invalid([("body", "required; a JSON object")])
        return request.body

    @staticmethod
    def _path_id(match: re.Match[str], kind: str) -> int:
        text = match.group(1)
        if not DIGITS_RE.fullmatch(text) or int(text) < 1:
            raise _invalid([("id", f"{_quote(text)} is not a {kind} id (a positive integer)")])
        return int(text)

    @staticmethod
    def _query_int(
        request: Request, name: str, *, minimum: int, maximum: int | None = None, default: int | None = None
    ) -> int | None:
        text = request.param(name)
        if not text:
            return default
        if not DIGITS_RE.fullmatch(text) or int(text) < minimum:
            raise _invalid([(name, f"{_quote(text)} is not an integer >= {minimum}")])
        value = int(text)
        if maximum is not None and value > maximum:
            raise _invalid([(name, f"{value} exceeds the maximum of {maximum}")])
        return value

    @staticmethod
    def _query_choice(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
        text = request.param(name)
        if not text:
            return default
        if text not in choices:
            raise _invalid([(name, f"{_quote(text)} is not one of {', '.join(choices)}")])
        return text

    def _customer(self, customer_id: int) -> JsonObject:
        customer = self.state.get(CUSTOMERS, str(customer_id))
        if customer is None:
            raise _not_found("customer", customer_id)
        return customer  # type: ignore[no-any-return]

    def _list(self, list_id: int) -> JsonObject:
        stored = self.state.get(LISTS, str(list_id))
        if stored is None:
            raise _not_found("list", list_id)
        return stored  # type: ignore[no-any-return]

    def _index_fields(self, customer: JsonObject, *, add: bool) -> None:
        for name, index in self._field_index.items():
            value = customer.get(name)
            if value is None:
                continue
            key = _field_key(name, value)
            if add:
                index.setdefault(key, set()).add(customer["id"])
            else:
                owners = index.get(key, set())
                owners.discard(customer["id"])
                if not owners:
                    index.pop(key, None)

    # -- customers -------------------------------------------------------------------------------------------

    def _upsert_customer(self, request: Request, match: re.Match[str]) -> Response:
        fields, identities = _parse_upsert(self._json_body(request))
        target = self._upsert_target(fields, identities)
        now = self._now()
        with self.state.batch():
            if target is None:
                customer: JsonObject = {"id": self._new_id(CUSTOMERS), **fields, "dateCreated": now}
            else:
                customer = copy.deepcopy(self._customer(target))
                self._index_fields(customer, add=False)
                customer.update(fields)
            customer["lastUpdated"] = now
            customer = _customer_view(customer)
            self.state.put(CUSTOMERS, str(customer["id"]), customer)
            self._index_fields(customer, add=True)
            for identity in identities:
                self._bind(customer["id"], identity, now)
            self.record_effect("upsert", effect_key(_who(identities, customer), request.body))
        return Response(201 if target is None else 200, copy.deepcopy(customer))

    def _upsert_target(self, fields: JsonObject, identities: list[_Identity]) -> int | None:
        """The customer an upsert applies to (``None``: a new one); refuses identities of other customers."""
        owners = []
        for position, identity in enumerate(identities):
            identity_id = self._identity_index.get(_identity_key(identity.type, identity.value))
            if identity_id is not None:
                owners.append(
                    (position, identity, self.state.get(IDENTITIES, str(identity_id))["customerId"])
                )
        if owners:
            target: int = owners[0][2]
            for position, identity, owner in owners:
                if owner != target:
                    raise DmHubError(
                        400,
                        IDENTITY_CONFLICT,
                        f"customerIdentities[{position}]: identity {identity.type} {_quote(identity.value)} "
                        f"already belongs to customer {owner}",
                        [
                            {
                                "field": f"customerIdentities[{position}]",
                                "message": f"belongs to customer {owner}",
                            }
                        ],
                    )
            return target
        for name in ("mobile", "email"):
            if name in fields:
                matches = self._field_index[name].get(_field_key(name, fields[name]))
                if matches:
                    return min(matches)
        return None

    def _bind(self, customer_id: int, identity: _Identity, now: str) -> None:
        key = _identity_key(identity.type, identity.value)
        identity_id = self._identity_index.get(key)
        if identity_id is not None:
            stored = self.state.get(IDENTITIES, str(identity_id))
            if identity.name is not None and stored["identityName"] != identity.name:
                self.state.put(IDENTITIES, str(identity_id), {**stored, "identityName": identity.name})
            return
        identity_id = self._new_id(IDENTITIES)
        self.state.put(
            IDENTITIES,
            str(identity_id),
            {
                "id": identity_id,
                "customerId": customer_id,
                "identityType": identity.type,
                "identityValue": identity.value,
                "identityName": identity.name,
                "dateCreated": now,
            },
        )
        self._identity_index[key] = identity_id

    def _find_identities(self, request: Request, match: re.Match[str]) -> Response:
        checks = _Checks()
        identity_type, identity_value = request.param("identityType"), request.param("identityValue")
        if not identity_type:
            checks.fail("identityType", "required")
        if not identity_value:
            checks.fail("identityValue", "required")
        checks.raise_if_any()
        assert identity_type is not None and identity_value is not None
        identity_id = self._identity_index.get(_identity_key(identity_type, identity_value))
        found = [] if identity_id is None else [copy.deepcopy(self.state.get(IDENTITIES, str(identity_id)))]
        return Response(200, found)

    def _get_customer(self, request: Request, match: re.Match[str]) -> Response:
        return Response(200, copy.deepcopy(self._customer(self._path_id(match, "customer"))))

    def _delete_customer(self, request: Request, match: re.Match[str]) -> Response:
        customer = self._customer(self._path_id(match, "customer"))
        customer_id = customer["id"]
        identities = [item for item in self._sorted(IDENTITIES) if item["customerId"] == customer_id]
        members = [item for item in self._sorted(MEMBERS) if item["customerId"] == customer_id]
        with self.state.batch():
            for identity in identities:
                self.state.delete(IDENTITIES, str(identity["id"]))
                self._identity_index.pop(
                    _identity_key(identity["identityType"], identity["identityValue"]), None
                )
            for member in members:
                self.state.delete(MEMBERS, str(member["id"]))
                self._member_index.pop((member["listId"], member["customerId"]), None)
            self.state.delete(CUSTOMERS, str(customer_id))
            self._index_fields(customer, add=False)
            who = _who(
                [_Identity(item["identityType"], item["identityValue"], None) for item in identities],
                customer,
            )
            self.record_effect("delete", effect_key(who, customer))
        return Response(204)

    # -- events ----------------------------------------------------------------------------------------------

    def _post_event(self, request: Request, match: re.Match[str]) -> Response:
        event = _parse_event(self._json_body(request))
        customer_id = event["customerId"]
        self._customer(customer_id)
        external_id = event.get("externalId")
        if external_id is not None and (customer_id, external_id) in self._event_index:
            raise DmHubError(
                400,
                DUPLICATE_EVENT,
                f"duplicate event: externalId {_quote(external_id)} is already recorded for customer {customer_id}",
                [{"field": "externalId", "message": "already recorded for this customer"}],
            )
        event.setdefault("date", self._now())
        with self.state.batch():
            event_id = self._new_id(EVENTS)
            stored = {"id": event_id, **{name: event[name] for name in EVENT_ORDER if name in event}}
            self.state.put(EVENTS, str(event_id), stored)
            self.record_effect("event", str(external_id) if external_id is not None else digest(request.body))
        if external_id is not None:
            self._event_index[(customer_id, external_id)] = event_id
        return Response(201, copy.deepcopy(stored))

    # -- lists -----------------------------------------------------------------------------------------------

    def _post_list(self, request: Request, match: re.Match[str]) -> Response:
        checks = _Checks()
        body = checks.json_object("", self._json_body(request), ("name",))
        name = None
        if body is not None:
            if body.get("name") is None:
                checks.fail("name", "required; the list name")
            else:
                name = checks.text("name", body["name"], limit=MAX_LIST_NAME, blank=False)
        checks.raise_if_any()
        now = self._now()
        with self.state.batch():
            list_id = self._new_id(LISTS)
            stored = {"id": list_id, "name": name, "dateCreated": now, "lastUpdated": now}
            self.state.put(LISTS, str(list_id), stored)
        return Response(201, copy.deepcopy(stored))

    def _delete_list(self, request: Request, match: re.Match[str]) -> Response:
        list_id = self._list(self._path_id(match, "list"))["id"]
        members = [item for item in self._sorted(MEMBERS) if item["listId"] == list_id]
        with self.state.batch():
            for member in members:
                self.state.delete(MEMBERS, str(member["id"]))
                self._member_index.pop((member["listId"], member["customerId"]), None)
            self.state.delete(LISTS, str(list_id))
        return Response(204)

    def _get_lists(self, request: Request, match: re.Match[str]) -> Response:
        rows = self._query_int(request, "rows", minimum=1, maximum=MAX_ROWS, default=DEFAULT_ROWS)
        page = self._query_int(request, "page", minimum=1, default=1)
        assert rows is not None and page is not None
        sidx = self._query_choice(request, "sidx", LIST_SORT_FIELDS, "id")
        sord = self._query_choice(request, "sord", SORT_ORDERS, "asc")
        ordered = sorted(
            self.state.items(LISTS).values(),
            key=lambda item: (item[sidx], item["id"]),
            reverse=sord == "desc",
        )
        chosen = ordered[(page - 1) * rows : page * rows]
        return Response(
            200,
            {
                "page": page,
                "records": len(chosen),
                "rows": copy.deepcopy(chosen),
                "total": math.ceil(len(ordered) / rows),
            },
        )

    # -- list members ----------------------------------------------------------------------------------------

    @staticmethod
    def _member_pair(where: str, checks: _Checks, value: object) -> tuple[int, int] | None:
        item = checks.json_object(where, value, ("customerId", "listId"))
        if item is None:
            return None
        customer_id = checks.identifier(_join(where, "customerId"), item.get("customerId"))
        list_id = checks.identifier(_join(where, "listId"), item.get("listId"))
        if customer_id is None or list_id is None:
            return None
        return customer_id, list_id

    def _add_member(self, customer_id: int, list_id: int) -> tuple[JsonObject, bool]:
        """The membership of a customer in a list, created if needed (state batch held by the caller)."""
        existing = self._member_index.get((list_id, customer_id))
        if existing is not None:
            return self.state.get(MEMBERS, str(existing)), False
        now = self._now()
        member_id = self._new_id(MEMBERS)
        member = {
            "id": member_id,
            "customerId": customer_id,
            "dateCreated": now,
            "lastUpdated": now,
            "listId": list_id,
        }
        self.state.put(MEMBERS, str(member_id), member)
        self._member_index[(list_id, customer_id)] = member_id
        self.record_effect("membership", f"{list_id}/{customer_id}")
        return member, True

    def _post_member(self, request: Request, match: re.Match[str]) -> Response:
        checks = _Checks()
        body = checks.json_object("", self._json_body(request), ("data",))
        pair = None
        if body is not None:
            if body.get("data") is None:
                checks.fail("data", "required; an object with customerId and listId")
            else:
                pair = self._member_pair("data", checks, body["data"])
        checks.raise_if_any()
        assert pair is not None
        customer_id, list_id = pair
        self._customer(customer_id)
        self._list(list_id)
        with self.state.batch():
            member, created = self._add_member(customer_id, list_id)
        return Response(201 if created else 200, {"data": copy.deepcopy(member)})

    def _post_members_batch(self, request: Request, match: re.Match[str]) -> Response:
        checks = _Checks()
        body = checks.json_object("", self._json_body(request), ("items",))
        pairs: list[tuple[int, int]] = []
        if body is not None:
            items = body.get("items")
            if items is None:
                checks.fail("items", "required; a list of {customerId, listId} objects")
            elif not isinstance(items, list):
                checks.fail("items", "must be a list of {customerId, listId} objects")
            elif not items:
                checks.fail("items", "must contain at least one item")
            elif len(items) > self.max_batch:
                checks.fail("items", f"{len(items)} items exceed the limit of {self.max_batch} per request")
            else:
                for position, item in enumerate(items):
                    where = f"items[{position}]"
                    pair = self._member_pair(where, checks, item)
                    if pair is None:
                        continue
                    customer_id, list_id = pair
                    if self.state.get(CUSTOMERS, str(customer_id)) is None:
                        checks.fail(f"{where}.customerId", f"customer {customer_id} does not exist")
                    if self.state.get(LISTS, str(list_id)) is None:
                        checks.fail(f"{where}.listId", f"list {list_id} does not exist")
                    pairs.append(pair)
        checks.raise_if_any()
        with self.state.batch():
            members = [self._add_member(customer_id, list_id)[0] for customer_id, list_id in pairs]
        return Response(200, {"items": copy.deepcopy(members)})

    def _delete_member(self, request: Request, match: re.Match[str]) -> Response:
        member_id = self._path_id(match, "list member")
        member = self.state.get(MEMBERS, str(member_id))
        if member is None:
            raise _not_found("list member", member_id)
        self.state.delete(MEMBERS, str(member_id))
        self._member_index.pop((member["listId"], member["customerId"]), None)
        return Response(204)

    def _get_members(self, request: Request, match: re.Match[str]) -> Response:
        list_id = self._query_int(request, "listId", minimum=1)
        customer_id = self._query_int(request, "customerId", minimum=1)
        since_id = self._query_int(request, "sinceId", minimum=0)
        rows = self._query_int(request, "rows", minimum=1, maximum=MAX_ROWS, default=DEFAULT_ROWS)
        assert rows is not None
        sidx = self._query_choice(request, "sidx", MEMBER_SORT_FIELDS, "customerId")
        descending = self._query_choice(request, "sord", SORT_ORDERS, "asc") == "desc"
        chosen = [
            item
            for item in self.state.items(MEMBERS).values()
            if (list_id is None or item["listId"] == list_id)
            and (customer_id is None or item["customerId"] == customer_id)
            and (since_id is None or (item[sidx] < since_id if descending else item[sidx] > since_id))
        ]
        chosen.sort(key=lambda item: (item[sidx], item["id"]), reverse=descending)
        return Response(200, {"items": copy.deepcopy(chosen[:rows])})

    def _remove_from_list(self, request: Request, match: re.Match[str]) -> Response:
        checks = _Checks()
        list_text, ids_text = request.param("listId"), request.param("customerIds")
        list_id: int | None = None
        customer_ids: list[int] = []
        if not list_text:
            checks.fail("listId", "required; the list id")
        elif not DIGITS_RE.fullmatch(list_text) or int(list_text) < 1:
            checks.fail("listId", f"{_quote(list_text)} is not a list id (a positive integer)")
        else:
            list_id = int(list_text)
        if not ids_text:
            checks.fail("customerIds", "required; customer ids separated by commas")
        else:
            parts = ids_text.split(",")
            bad = [part for part in parts if not DIGITS_RE.fullmatch(part) or int(part) < 1]
            if bad:
                checks.fail("customerIds", f"{_quote(bad[0])} is not a customer id (a positive integer)")
            elif len(parts) > self.max_batch:
                checks.fail(
                    "customerIds", f"{len(parts)} ids exceed the limit of {self.max_batch} per request"
                )
            else:
                customer_ids = [int(part) for part in parts]
        checks.raise_if_any()
        assert list_id is not None
        self._list(list_id)
        removed = 0
        with self.state.batch():
            for customer_id in dict.fromkeys(customer_ids):
                member_id = self._member_index.pop((list_id, customer_id), None)
                if member_id is not None:
                    self.state.delete(MEMBERS, str(member_id))
                    removed += 1
        return Response(200, {"removed": removed})

    def _member_count(self, request: Request, match: re.Match[str]) -> Response:
        checks = _Checks()
        list_text = request.param("listId")
        list_id: int | None = None
        if not list_text:
            checks.fail("listId", "required; the list id")
        elif not DIGITS_RE.fullmatch(list_text) or int(list_text) < 1:
            checks.fail("listId", f"{_quote(list_text)} is not a list id (a positive integer)")
        else:
            list_id = int(list_text)
        bounds: dict[str, datetime] = {}
        for name in ("joinListDateSince", "joinListDateTo"):
            text = request.param(name)
            if not text:
                continue
            if not _parses(text, JOIN_DATE_RE, "%Y-%m-%dT%H:%M:%S"):
                checks.fail(name, f"{_quote(text)} is not a UTC date-time such as 2016-11-11T11:11:11")
            else:
                bounds[name] = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        since, until = bounds.get("joinListDateSince"), bounds.get("joinListDateTo")
        if since is not None and until is not None and since > until:
            checks.fail("joinListDateSince", "is after joinListDateTo")
        checks.raise_if_any()
        assert list_id is not None
        self._list(list_id)
        count = 0
        for member in self.state.items(MEMBERS).values():
            if member["listId"] != list_id:
                continue
            joined = datetime.strptime(member["dateCreated"], UTC_FORMAT).replace(tzinfo=UTC)
            if (since is None or joined >= since) and (until is None or joined <= until):
                count += 1
        return Response(200, {"listId": list_id, "count": count})


# -- request bodies ------------------------------------------------------------------------------------------


def _parse_upsert(body: object) -> tuple[JsonObject, list[_Identity]]:
    """The customer fields given (non-null) and the identities of an upsert body; 400 on any problem."""
    checks = _Checks()
    top = checks.json_object("", body, UPSERT_FIELDS)
    fields: JsonObject = {}
    identities: list[_Identity] = []
    if top is not None:
        customer = top.get("customer")
        if customer is None:
            checks.fail("customer", "required; an object of customer fields ({} to only bind identities)")
        else:
            fields = _parse_customer(checks, customer)
        identities = _parse_identities(checks, top.get("customerIdentities"))
    checks.raise_if_any()
    return fields, identities


def _parse_customer(checks: _Checks, value: object) -> JsonObject:
    customer = checks.json_object("customer", value, CUSTOMER_FIELDS)
    if customer is None:
        return {}
    fields: JsonObject = {}
    for name in CUSTOMER_FIELDS:
        raw = customer.get(name)
        if raw is None:
            continue
        where = f"customer.{name}"
        parsed: object | None
        if name in TEXT_FIELDS:
            parsed = checks.text(where, raw)
        elif name in CUSTOMER_ATTRS:
            parsed = checks.attribute(where, raw)
        elif name == "gender":
            parsed = raw if type(raw) is int and raw in GENDERS else None
            if parsed is None:
                checks.fail(where, f"{_quote(raw)} is not 0 (unknown), 1 (male) or 2 (female)")
        elif name == "dateJoin":
            parsed = checks.utc_datetime(where, raw)
        else:
            parsed = _parse_contact(checks, where, name, raw)
        if parsed is not None:
            fields[name] = parsed
    return fields


def _parse_contact(checks: _Checks, where: str, name: str, raw: object) -> str | None:
    """``mobile``, ``email`` or ``birthday``."""
    text = checks.text(where, raw)
    if text is None:
        return None
    if name == "mobile" and not MOBILE_RE.fullmatch(text):
        checks.fail(
            where,
            f"{_quote(text)} is not a mobile number (digits, optional +country code, e.g. +86 15300830723)",
        )
        return None
    if name == "email" and not EMAIL_RE.fullmatch(text):
        checks.fail(where, f"{_quote(text)} is not a valid e-mail address")
        return None
    if name == "birthday" and not _parses(text, DATE_RE, "%Y-%m-%d"):
        checks.fail(where, f"{_quote(text)} is not a date such as 1990-05-17 (YYYY-MM-DD)")
        return None
    return text


def _parse_identities(checks: _Checks, value: object) -> list[_Identity]:
    if value is None:
        checks.fail("customerIdentities", "required; at least one {identityType, identityValue}")
        return []
    if not isinstance(value, list):
        checks.fail("customerIdentities", "must be a list of {identityType, identityValue, identityName}")
        return []
    if not value:
        checks.fail("customerIdentities", "must contain at least one identity")
        return []
    identities: list[_Identity] = []
    seen: dict[tuple[str, str], int] = {}
    for position, raw in enumerate(value):
        where = f"customerIdentities[{position}]"
        item = checks.json_object(where, raw, IDENTITY_FIELDS)
        if item is None:
            continue
        identity_type = _required_text(
            checks, f"{where}.identityType", item.get("identityType"), MAX_IDENTITY_TYPE
        )
        identity_value = _required_text(
            checks, f"{where}.identityValue", item.get("identityValue"), MAX_IDENTITY_VALUE
        )
        name = item.get("identityName")
        if name is not None and checks.text(f"{where}.identityName", name) is None:
            continue
        if identity_type is None or identity_value is None:
            continue
        if identity_type == "email" and not EMAIL_RE.fullmatch(identity_value):
            checks.fail(f"{where}.identityValue", f"{_quote(identity_value)} is not a valid e-mail address")
            continue
        key = _identity_key(identity_type, identity_value)
        if key in seen:
            checks.fail(where, f"repeats customerIdentities[{seen[key]}]")
            continue
        seen[key] = position
        identities.append(_Identity(identity_type, identity_value, name))
    return identities


def _required_text(checks: _Checks, where: str, value: object, limit: int) -> str | None:
    if value is None:
        checks.fail(where, "required")
        return None
    return checks.text(where, value, limit=limit, blank=False)


def _parse_event(body: object) -> JsonObject:
    checks = _Checks()
    event = checks.json_object("", body, EVENT_FIELDS)
    parsed: JsonObject = {}
    if event is not None:
        customer_id = checks.identifier("customerId", event.get("customerId"))
        if customer_id is not None:
            parsed["customerId"] = customer_id
        name = _required_text(checks, "event", event.get("event"), MAX_EVENT_NAME)
        if name is not None:
            parsed["event"] = name
        for key in sorted(EVENT_FIELDS - {"customerId", "event"}):
            raw = event.get(key)
            if raw is None:
                continue
            value: object | None
            if key == "date":
                value = checks.utc_datetime(key, raw)
            elif key == "externalId":
                value = checks.text(key, raw, limit=MAX_EXTERNAL_ID, blank=False)
            elif key == "targetId":
                value = raw if isinstance(raw, str) or (type(raw) is int) else None
                if value is None:
                    checks.fail(key, f"{_quote(raw)} is not a string or an integer")
            elif key in EVENT_ATTRS:
                value = checks.attribute(key, raw)
            else:
                value = checks.text(key, raw)
            if value is not None:
                parsed[key] = value
    checks.raise_if_any()
    return parsed


def _who(identities: Sequence[_Identity], customer: JsonObject) -> str:
    """Who a ledger effect is about: the first identity's value (e-mail in lower case), else the customer's
    e-mail or mobile field, else its id."""
    if identities:
        return _identity_key(identities[0].type, identities[0].value)[1]
    for name in ("email", "mobile"):
        if customer.get(name):
            return _field_key(name, str(customer[name]))
    return f"id:{customer['id']}"


def _customer_view(customer: JsonObject) -> JsonObject:
    """A customer document in a stable key order: id, fields, dateCreated, lastUpdated."""
    view: JsonObject = {"id": customer["id"]}
    view.update({name: customer[name] for name in CUSTOMER_FIELDS if name in customer})
    view["dateCreated"] = customer["dateCreated"]
    view["lastUpdated"] = customer["lastUpdated"]
    return view


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sandbox in the foreground until interrupted (Ctrl-C or SIGTERM)."""
    parser = standalone_parser("dmhub", "Local Convertlab DM Hub API sandbox.", 8702)
    parser.add_argument(
        "--app-id", default=os.environ.get("DMHUB_SANDBOX_APP_ID"), help="default: $DMHUB_SANDBOX_APP_ID"
    )
    parser.add_argument(
        "--secret", default=os.environ.get("DMHUB_SANDBOX_SECRET"), help="default: $DMHUB_SANDBOX_SECRET"
    )
    parser.add_argument(
        "--api-version", choices=("v1", "v2"), default="v1", help="application generation (default v1)"
    )
    parser.add_argument(
        "--token-ttl", type=int, default=7200, help="token lifetime in seconds (default 7200)"
    )
    parser.add_argument("--max-batch", type=int, default=1000, help="items per batch call (default 1000)")
    args = parser.parse_args(argv)
    if not args.app_id or not args.secret:
        parser.error(
            "--app-id and --secret (or $DMHUB_SANDBOX_APP_ID and $DMHUB_SANDBOX_SECRET) are required"
        )
    sandbox = DmHubSandbox(
        args.app_id,
        args.secret,
        api_version=args.api_version,
        host=args.host,
        port=args.port,
        state_path=args.state_path,
        token_ttl_seconds=args.token_ttl,
        max_batch=args.max_batch,
    )
    serve_until_stopped(
        sandbox,
        f"DM Hub sandbox listening on {{url}} ({args.api_version} application; admin routes under /_sandbox/)",
    )


if __name__ == "__main__":
    main()
