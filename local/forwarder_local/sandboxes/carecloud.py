"""CRM CareCloud sandbox: a local HTTP server that behaves like CareCloud's customer-interface REST API.

Contract sources: CareCloud's published OpenAPI 3.0.2 spec (``conformance/carecloud/openapi.yaml``,
crmcarecloud/api-spec), the vendor document ``001_fd161d55355cc1e8.txt`` (tokens with Basic auth, stores,
``POST /customers``, interest and property records) and the vendor notes ("CRM CareCloud"). Where the seed
document and the spec disagree on a request body (``customer_sources`` list vs ``customer_source`` object,
``zip`` as a number vs a string, ``additional_properties`` vs ``property_records``), the sandbox accepts the
spec's shape only: the forwarder's requests are validated against the spec.

Vendor routes, all under :data:`BASE_PATH` (a client's base URL is ``sandbox.url + BASE_PATH``):

* ``POST /tokens`` ``{"device": {device_id, device_system, device_name, device_type}, "setup": {language_id,
  allowed_gps, allowed_notifications}, "external_application_id", "push_token"?}`` -> ``201 {"data":
  {"token_id"}}``. A new token for the same ``device_id`` + ``external_application_id`` replaces the old one.
* ``GET /tests/connection?test_string=`` (no auth) -> ``{"data": {"test_string": <the string reversed>}}``.
* ``GET /stores``, ``GET /customer-sources``, ``GET /interests``, ``GET /customer-properties`` -> ``{"data":
  {"<resource>": [...], "total_items": n}}``, seeded on first start (see ``SEED_*`` and the id constants).
* ``POST /customers`` -> ``201 {"data": {"customer_id"}}``; ``GET /customers?email=&phone=&
  customer_source_id=&first_name=&last_name=&birthdate=&email_list[]=&customer_ids[]=`` ->
  ``{"data": {"customers": [...], "total_items": n}}``.
* ``GET /customers/{id}`` -> ``{"data": Customer}``; ``PUT /customers/{id}`` -> ``204``: **replaces the whole
  customer** (personal-information fields left out of the PUT are deleted), as the vendor documents.
* ``GET|POST /customers/{id}/property-records``, ``POST /customers/{id}/property-records/batch`` (``204``).
* ``GET|POST /customers/{id}/interest-records``.

Every list takes ``count`` (default 100, at least 1), ``offset`` (default 0), ``sort_field`` (a first-level
field of the listed items) and ``sort_direction`` (``ASC``/``DESC``).

Authentication, per the ``auth_scheme`` given to the constructor. ``"bearer"`` (the spec's current scheme):
``POST /tokens`` needs no header, every other route ``Authorization: Bearer <token_id>``. ``"basic"`` (the
seed's, deprecated): ``POST /tokens`` needs ``Authorization: Basic base64("<user>:")`` and every other route
``Authorization: Basic base64("<user>:<token_id>")``. The other scheme, no header, an unknown, replaced or
expired token -> 401. Tokens never expire by time; :meth:`CareCloudSandbox.expire_tokens` (admin route
``POST /_sandbox/tokens/expire``) invalidates every token issued so far.

Errors follow the spec: ``{"error": {"type", "exception", "title", "detail", "error_data"}}``. A 400 is the
spec's ``BadRequestErrorBody`` with ``error_data.invalid_params`` = ``[{"name", "reason", "message", "value"}]``
listing every problem of the request (``name`` is the parameter's path, e.g.
``customer.personal_information.email`` or ``property_records[2].property_value``; ``reason`` one of the
spec's generic codes ``already_exists``, ``empty``, ``not_found``, ``required``, ``not_allowed_value``,
``invalid_value_format``, ``relation_already_exists``). 404 and 405 carry the spec's ``error_data``
(``resource_name`` + ``resource_id``; ``http_method``), 405 also an ``Allow`` header; 401 has an empty
``error_data`` and a ``WWW-Authenticate`` header; a foreign ``external_application_id`` is 403.

Choices where the documents are silent (each one strict, so a forwarder is honestly tested):

* ``error.type`` is ``about:blank`` and ``error.exception`` is ``<kind>_exception`` by status
  (``bad_request_exception``, ``unauthorized_exception``, ``external_application_not_allowed_exception``,
  ``not_found_exception``, ``method_not_allowed_exception``, ...); the spec documents only their types.
* ``invalid_params[].value`` is the offending value as a string (the spec types it string): strings as sent,
  other JSON as compact JSON, missing values as ``""``; passwords and tokens are shown as ``***``.
* Unknown body fields and read-only fields (``customer_id``, ``last_change``, ``state``, ``photo_url``,
  ``property_record_id``, ...) are refused with ``not_allowed_value``: openapi-core refuses read-only
  properties in requests too, so a forwarder that writes back what it read must drop them first.
* Query parameters a route does not implement are refused with ``not_allowed_value`` (rather than silently
  ignored, which would return unfiltered results).
* Routing comes before authentication: an unknown route is 404 and a wrong method 405 even without a token;
  then 401; then body validation (400); then 403 for a foreign ``external_application_id``.
* Basic scheme: the password part of ``<user>:`` may be blank (the seed's own example encodes
  ``"customer_interface: "``, with a space); the token in ``<user>:<token_id>`` is trimmed.
* ``personal_information.email`` must match the spec's pattern, which allows lower-case letters only
  (``Jane@Example.com`` is refused; the domain is not looked up). E-mails are unique across customers
  (``already_exists``); look-ups by e-mail are case-insensitive. Phones need not be unique.
* ``language_id`` and ``address.country_code`` must be two lower-case letters (ISO 639-1 / 3166-1 as the
  examples write them); ``birthdate`` a real calendar date ``YYYY-MM-DD``; ``""`` for ``language_id``,
  ``store_id``, ids and sources is ``empty``. Consent ids are not checked against ``GET /consents`` (not
  seeded); a consent id sent twice keeps its last value. ``consents`` and ``agreement`` together: only
  ``consents`` is stored (the spec: "agreement is ignored entirely").
* ``gender: null`` (the spec marks gender nullable) means "not set": accepted, stored as absent and never
  answered as ``null``. Note that openapi-core refuses ``null`` there (the enum lists no null), so a
  forwarder validated against the spec should leave ``gender`` out instead.
* Consents carry a read-only ``last_change`` in answers (kept while the value is unchanged); like every
  read-only field it must be dropped before the consents are written back.
* ``salutation``: when a POST or PUT leaves it out, the sandbox generates one on read ("Dear Mr. Smith" for
  gender 1, "Dear Mrs. ..." 2, "Dear Miss ..." 3, otherwise "Dear <first> <last>" or "Dear customer";
  ``customer_short_salutation=true`` gives "Dear <first name>"). Writing back a generated salutation stores it.
* ``PUT /customers/{id}``: ``store_id`` left out keeps the stored one (the spec: it "can only be updated, not
  removed"); ``password`` and ``social_network_credentials`` left out are kept (the spec says so);
  ``property_records`` in a PUT set the listed properties and leave the others alone. The customer source
  cannot be changed by a PUT (the spec's PUT body has no ``customer_source``).
* ``POST /customers``: ``password`` needs 8+ characters, a digit and an upper-case letter and must not be a
  common password; ``referral_code`` is refused with ``not_found`` (the sandbox has no referral campaigns);
  ``social_network_credentials`` are checked and only the network id is kept (the token is never stored).
  The customer gets one customer-source record (``customer_source``); ``external_id`` need not be unique.
* Property records: ``property_value`` is required and must fit the property's ``data_type`` (string, date
  ``YYYY-MM-DD``, integer, float, boolean), else ``invalid_value_format``. The record id is
  ``<property_id>:<customer_id>``; posting a property the customer has replaces its value (still 201).
* ``property-records/batch``: at most 1000 records, at least one; ``error_processing`` 1 (default) answers
  400 with the first problem found and saves nothing (the spec: "returns the first error found and rollback");
  2 saves every valid record and, when some failed, answers 400 listing every failed record's problems (the
  spec promises "an error report" but documents only 204), else 204. A property listed twice: the last wins.
* ``interest_record.customer_id`` must equal the customer of the path (``not_allowed_value``); an interest
  the customer already has is ``relation_already_exists`` on ``interest_record.interest_id``.
* The seeded "Ice Cream HQ" store follows the seed document's sample, without its ``null`` address lines
  and empty ``phone_number``, which the spec's ``Store`` schema refuses (address lines are strings, the
  phone must match ``^[1-9][0-9]*$``).
* Ids: customers and interest records get 26 random hex characters, tokens 72. Datetimes are the process's
  local time, ``YYYY-MM-DD HH:MM:SS`` (from the ``clock`` given to the constructor).

Effects ledger (``framework.py``; collection ``effects``): ``upsert`` once per ``POST /customers`` or
``PUT /customers/{id}`` applied, keyed ``<email>|<op marker of the body>`` (a personal-information field whose
value starts with ``op:``; else a digest of the body). A retried upsert whose first ``POST`` was applied finds
the customer and ``PUT``s the same op: one key counted twice. Property and interest records are not counted
(interest records are unique per customer; a property record sets a value). Random faults spare
``POST /tokens``.

Test hooks and admin routes come from the shared framework (``framework.py``: faults, chaos, outages,
counters, latency, reset, the request log, tokens/expire, a paged read of the state under
``/_sandbox/state/<collection>``; collections ``customers``, ``tokens``, ``property_records``,
``interest_records``, ``stores``, ``customer_sources``, ``interests``, ``customer_properties``, ``effects``);
this sandbox adds ``GET /_sandbox/customers`` (``{"customers":
[Customer + customer_source_records + property_records + interest_records + password_set]}``). With a
``state_path`` customers, records, tokens and the seeded lists survive a restart.

Standalone: ``python -m forwarder_local.sandboxes.carecloud --port 8703 --external-application-id X
[--auth-scheme basic] [--user customer_interface] [--state-path FILE]``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal, get_args
from urllib.parse import unquote

from forwarder_local.sandboxes.framework import (
    REDACTED,
    AdminRoute,
    JsonObject,
    Request,
    Response,
    Sandbox,
    effect_key,
    phrase,
    serve_until_stopped,
    standalone_parser,
)
from forwarder_local.sandboxes.framework import quote_value as _quote

BASE_PATH: Final = "/webservice/rest-api/customer-interface/v1.0"
DEFAULT_USER: Final = "customer_interface"
AuthScheme = Literal["bearer", "basic"]
AUTH_SCHEMES: Final[tuple[str, ...]] = get_args(AuthScheme)

# -- seeded reference data (the forwarder resolves and validates ids against these) -----------------------

SEED_LAST_CHANGE: Final = "2018-12-19 16:12:56"
HQ_STORE_ID: Final = "86e05affc7a7abefc"  # the seed document's "Ice Cream HQ"
HQ_STORE_CODE: Final = "HQ01"
BRNO_STORE_ID: Final = "86e05affc7a7abf1d"
BRNO_STORE_CODE: Final = "BRNO01"
FORWARDER_SOURCE_ID: Final = "0b1788109b8"  # the seed document's customer source, named "Forwarder"
WEBSHOP_SOURCE_ID: Final = "0b1788109c2"
ICE_CREAM_INTEREST_ID: Final = "87d706e4864d02af7"  # the seed document's interest
SORBET_INTEREST_ID: Final = "87d706e4864d02b01"
FROZEN_YOGHURT_INTEREST_ID: Final = "87d706e4864d02b12"
WEDDING_DATE_PROPERTY: Final = "wedding_date"  # data_type date
LOYALTY_TIER_PROPERTY: Final = "loyalty_tier"  # data_type string
FAVOURITE_FLAVOUR_PROPERTY: Final = "favourite_flavour"  # data_type string
SCOOPS_PER_WEEK_PROPERTY: Final = "scoops_per_week"  # data_type integer


def _store(store_id: str, code: str, name: str, address: JsonObject, **extra: Any) -> JsonObject:
    return {
        "store_id": store_id,
        "store_code": code,
        "name": name,
        "store_address": address,
        "contact_email": extra["contact_email"],
        "manager_name": extra["manager_name"],
        "phone_number": extra["phone_number"],
        "partner_id": "86e05affc7a7abe",
        "system_id": extra["system_id"],
        "gps_coordinates": extra["gps_coordinates"],
        "url_address": "",
        "opening": [],
        "image_urls": [],
        "visibility_for_customer": 1,
        "last_change": SEED_LAST_CHANGE,
        "state": 1,
    }


SEED_STORES: Final[tuple[JsonObject, ...]] = (
    _store(
        HQ_STORE_ID,
        HQ_STORE_CODE,
        "Ice Cream HQ",
        {"address1": "Main", "address2": "18", "zip": "11000", "city": "Prague", "country_code": "cz"},
        contact_email="hq@icecream.example",
        manager_name="Jana Dvořáková",
        phone_number="420221634695",
        system_id="A23753",
        gps_coordinates={"gps_longitude": 14.4213, "gps_latitude": 50.0875},
    ),
    _store(
        BRNO_STORE_ID,
        BRNO_STORE_CODE,
        "Ice Cream Brno",
        {
            "address1": "Náměstí Svobody",
            "address2": "5",
            "zip": "60200",
            "city": "Brno",
            "country_code": "cz",
        },
        contact_email="brno@icecream.example",
        manager_name="Petr Novák",
        phone_number="420541000111",
        system_id="B10422",
        gps_coordinates={"gps_longitude": 16.6083, "gps_latitude": 49.1951},
    ),
)
SEED_CUSTOMER_SOURCES: Final[tuple[JsonObject, ...]] = (
    {
        "customer_source_id": FORWARDER_SOURCE_ID,
        "name": "Forwarder",
        "customer_source_text_id": "forwarder",
        "state": 1,
        "last_change": SEED_LAST_CHANGE,
    },
    {
        "customer_source_id": WEBSHOP_SOURCE_ID,
        "name": "Webshop registration",
        "customer_source_text_id": "webshop_registration",
        "state": 1,
        "last_change": SEED_LAST_CHANGE,
    },
)
SEED_INTERESTS: Final[tuple[JsonObject, ...]] = (
    {"interest_id": ICE_CREAM_INTEREST_ID, "name": "Ice cream"},
    {"interest_id": SORBET_INTEREST_ID, "name": "Sorbet"},
    {"interest_id": FROZEN_YOGHURT_INTEREST_ID, "name": "Frozen yoghurt"},
)


def _property(property_id: str, name: str, data_type: str) -> JsonObject:
    return {
        "property_id": property_id,
        "name": name,
        "description": name,
        "data_type": data_type,
        "items": [],
        "is_required": False,
        "is_unique": False,
        "last_change": SEED_LAST_CHANGE,
        "state": 1,
    }


SEED_CUSTOMER_PROPERTIES: Final[tuple[JsonObject, ...]] = (
    _property(WEDDING_DATE_PROPERTY, "Date of wedding", "date"),
    _property(LOYALTY_TIER_PROPERTY, "Loyalty tier", "string"),
    _property(FAVOURITE_FLAVOUR_PROPERTY, "Favourite flavour", "string"),
    _property(SCOOPS_PER_WEEK_PROPERTY, "Scoops per week", "integer"),
)

# -- state collections -------------------------------------------------------------------------------------

STORES: Final = "stores"
CUSTOMER_SOURCES: Final = "customer_sources"
INTERESTS: Final = "interests"
CUSTOMER_PROPERTIES: Final = "customer_properties"
TOKENS: Final = "tokens"
CUSTOMERS: Final = "customers"
PROPERTY_RECORDS: Final = "property_records"
INTEREST_RECORDS: Final = "interest_records"
TOKEN_REQUESTS: Final = "token_requests"
SEEDS: Final[tuple[tuple[str, str, tuple[JsonObject, ...]], ...]] = (
    (STORES, "store_id", SEED_STORES),
    (CUSTOMER_SOURCES, "customer_source_id", SEED_CUSTOMER_SOURCES),
    (INTERESTS, "interest_id", SEED_INTERESTS),
    (CUSTOMER_PROPERTIES, "property_id", SEED_CUSTOMER_PROPERTIES),
)

# -- validation vocabulary ---------------------------------------------------------------------------------

ALREADY_EXISTS: Final = "already_exists"
EMPTY: Final = "empty"
NOT_FOUND: Final = "not_found"
REQUIRED: Final = "required"
NOT_ALLOWED: Final = "not_allowed_value"
INVALID: Final = "invalid_value_format"
RELATION_EXISTS: Final = "relation_already_exists"

# The spec's PersonalInformation.email pattern, verbatim (lower-case letters only).
EMAIL_RE: Final = re.compile(
    r"^[-a-z0-9!#$%&'*+\\/=?^_`{|}~]+(\.[-a-z0-9!#$%&'*+\\/=?^_`{|}~]+)*@"
    r"([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])$"
)
PHONE_RE: Final = re.compile(r"^[1-9][0-9]*$")
DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DOTTED_DATE_RE: Final = re.compile(r"([0-9]{2})\.([0-9]{2})\.([0-9]{4})")
TWO_LETTERS_RE: Final = re.compile(r"[a-z]{2}")
INTEGER_RE: Final = re.compile(r"-?[0-9]+")
CONSENT_VALUES: Final = (0, 1, 2)
GENDERS: Final = (1, 2, 3, 4, 5)
ERROR_PROCESSING: Final = (1, 2)
MAX_BATCH: Final = 1000
COMMON_PASSWORDS: Final = frozenset(
    {"password", "password1", "password123", "12345678", "123456789", "1234567890", "qwerty123", "abc12345"}
)
SALUTATION_TITLES: Final[dict[int, str]] = {1: "Mr.", 2: "Mrs.", 3: "Miss"}

TOKEN_FIELDS: Final = frozenset({"device", "setup", "external_application_id", "push_token"})
DEVICE_FIELDS: Final = ("device_id", "device_system", "device_name", "device_type")
SETUP_FIELDS: Final = frozenset({"language_id", "allowed_gps", "allowed_notifications"})
POST_CUSTOMER_FIELDS: Final = frozenset(
    {
        "customer",
        "customer_source",
        "password",
        "autologin",
        "social_network_credentials",
        "property_records",
        "referral_code",
    }
)
PUT_CUSTOMER_FIELDS: Final = frozenset(
    {"customer", "password", "social_network_credentials", "property_records"}
)
CUSTOMER_FIELDS: Final = frozenset({"personal_information"})
CUSTOMER_READ_ONLY: Final = frozenset({"customer_id", "doi_email", "doi_phone", "last_change", "state"})
SOURCE_FIELDS: Final = frozenset({"customer_source_id", "external_id"})
SOURCE_READ_ONLY: Final = frozenset({"customer_source_record_id", "customer_id", "last_change"})
SOCIAL_FIELDS: Final = frozenset({"social_network_id", "social_network_token"})
PI_STRINGS: Final = ("salutation", "first_name", "last_name", "pre_nominals", "post_nominals")
#: PersonalInformation fields in the spec's order (also the order of the stored and returned object).
PI_ORDER: Final = (
    "salutation",
    "gender",
    "first_name",
    "last_name",
    "pre_nominals",
    "post_nominals",
    "birthdate",
    "email",
    "phone",
    "language_id",
    "store_id",
    "address",
    "agreement",
    "consents",
)
PI_FIELDS: Final = frozenset(PI_ORDER)
PI_READ_ONLY: Final = frozenset({"photo_url"})
ADDRESS_FIELDS: Final = (
    "address1",
    "address2",
    "address3",
    "address4",
    "address5",
    "address6",
    "address7",
    "zip",
    "city",
    "country_code",
)
AGREEMENT_FLAGS: Final = ("agreement_gtc", "agreement_profiling", "agreement_marketing_communication")
AGREEMENT_FIELDS: Final = frozenset({*AGREEMENT_FLAGS, "custom_agreements"})
CUSTOM_AGREEMENT_FIELDS: Final = frozenset({"agreement_id", "agreement_value"})
CONSENT_FIELDS: Final = frozenset({"consent_id", "consent_value"})
CONSENT_READ_ONLY: Final = frozenset({"last_change"})
PROPERTY_RECORD_FIELDS: Final = frozenset({"property_id", "property_value"})
PROPERTY_RECORD_READ_ONLY: Final = frozenset({"property_record_id", "property_name", "last_change"})
INTEREST_RECORD_FIELDS: Final = frozenset({"interest_id", "customer_id"})
INTEREST_RECORD_READ_ONLY: Final = frozenset({"interest_record_id", "last_change"})
BATCH_FIELDS: Final = frozenset({"property_records", "error_processing"})
PAGING_PARAMS: Final = frozenset({"count", "offset", "sort_field", "sort_direction"})
CUSTOMER_FILTERS: Final = frozenset(
    {
        "email",
        "phone",
        "customer_source_id",
        "first_name",
        "last_name",
        "birthdate",
        "email_list",
        "customer_ids",
        "customer_short_salutation",
    }
)

EXCEPTIONS: Final[dict[int, str]] = {
    400: "bad_request_exception",
    401: "unauthorized_exception",
    403: "forbidden_exception",
    404: "not_found_exception",
    405: "method_not_allowed_exception",
    413: "payload_too_large_exception",
    429: "too_many_requests_exception",
    500: "internal_server_error_exception",
    502: "bad_gateway_exception",
    503: "service_unavailable_exception",
    504: "gateway_timeout_exception",
}


def error_body(
    status: int,
    detail: str,
    *,
    exception: str | None = None,
    title: str | None = None,
    error_data: JsonObject | None = None,
) -> JsonObject:
    """The spec's error document: ``{"error": {"type", "exception", "title", "detail", "error_data"}}``."""
    return {
        "error": {
            "type": "about:blank",
            "exception": exception or EXCEPTIONS.get(status, "error_exception"),
            "title": title or phrase(status),
            "detail": detail,
            "error_data": error_data if error_data is not None else {},
        }
    }


# -- validation --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvalidParam:
    """One entry of ``error.error_data.invalid_params``."""

    name: str
    reason: str
    message: str
    value: str

    def to_dict(self) -> JsonObject:
        return {"name": self.name, "reason": self.reason, "message": self.message, "value": self.value}


def _render(value: object) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 200 else text[:197] + "..."


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_date(value: str) -> bool:
    if not DATE_RE.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _password_problem(password: str) -> str | None:
    if len(password) < 8:
        return "must be at least 8 characters long"
    if not any(char.isdigit() for char in password):
        return "must contain at least one number"
    if not any(char.isupper() for char in password):
        return "must contain at least one upper-case letter"
    if password.lower() in COMMON_PASSWORDS:
        return "is on the list of common passwords"
    return None


@dataclass
class _Check:
    """Collects every invalid parameter of one request, each with its name, reason and message."""

    problems: list[InvalidParam] = field(default_factory=list)

    def fail(
        self, name: str, reason: str, message: str, value: object = None, *, secret: bool = False
    ) -> None:
        shown = REDACTED if secret and value not in (None, "") else _render(value)
        self.problems.append(InvalidParam(name or "body", reason, f"{name or 'body'}: {message}", shown))

    def mark(self) -> int:
        return len(self.problems)

    def clean_since(self, mark: int) -> bool:
        return len(self.problems) == mark

    def fields(
        self, name: str, value: object, allowed: Iterable[str], read_only: Iterable[str] = ()
    ) -> JsonObject | None:
        """``value`` when it is a JSON object; unknown and read-only keys are recorded as problems."""
        if not isinstance(value, dict):
            self.fail(name, INVALID, "must be a JSON object", value)
            return None
        allowed_set, read_only_set = frozenset(allowed), frozenset(read_only)
        for key, item in value.items():
            where = _join(name, key)
            if key in read_only_set:
                self.fail(where, NOT_ALLOWED, "is read-only; it cannot be sent in a request", item)
            elif key not in allowed_set:
                expected = ", ".join(sorted(allowed_set))
                self.fail(where, NOT_ALLOWED, f"is not a parameter here (expected: {expected})", item)
        return value

    def string(
        self,
        name: str,
        obj: JsonObject,
        key: str,
        *,
        required: bool = False,
        non_empty: bool = False,
        pattern: re.Pattern[str] | None = None,
        shape: str = "",
        secret: bool = False,
    ) -> str | None:
        where = _join(name, key)
        if key not in obj:
            if required:
                self.fail(where, REQUIRED, "is required")
            return None
        value = obj[key]
        if not isinstance(value, str):
            self.fail(where, INVALID, "must be a string", value, secret=secret)
            return None
        if non_empty and not value.strip():
            self.fail(where, EMPTY, "must not be empty", value)
            return None
        if pattern is not None and not pattern.fullmatch(value):
            shown = "the value" if secret else _quote(value)
            self.fail(where, INVALID, f"{shown} is not {shape}", value, secret=secret)
            return None
        return value

    def boolean(self, name: str, obj: JsonObject, key: str, *, required: bool = False) -> bool | None:
        where = _join(name, key)
        if key not in obj:
            if required:
                self.fail(where, REQUIRED, "is required")
            return None
        value = obj[key]
        if not isinstance(value, bool):
            self.fail(where, INVALID, "must be a boolean (true or false)", value)
            return None
        return value

    def choice(
        self,
        name: str,
        obj: JsonObject,
        key: str,
        allowed: tuple[int, ...],
        *,
        required: bool = False,
        nullable: bool = False,
    ) -> tuple[bool, int | None]:
        """``(ok, value)`` for an integer enumeration; ``ok`` is False when absent or invalid."""
        where = _join(name, key)
        listed = ", ".join(str(item) for item in allowed) + (" or null" if nullable else "")
        if key not in obj:
            if required:
                self.fail(where, REQUIRED, f"is required; one of {listed}")
            return False, None
        value = obj[key]
        if value is None and nullable:
            return True, None
        if not _is_int(value):
            self.fail(where, INVALID, f"must be an integer, one of {listed}", value)
            return False, None
        if value not in allowed:
            self.fail(where, NOT_ALLOWED, f"{value} is not one of {listed}", value)
            return False, None
        return True, value

    def items(self, name: str, value: object, *, maximum: int = MAX_BATCH) -> list[Any] | None:
        if not isinstance(value, list):
            self.fail(name, INVALID, "must be a JSON array", value)
            return None
        if len(value) > maximum:
            self.fail(
                name, NOT_ALLOWED, f"holds {len(value)} items; at most {maximum} are allowed", len(value)
            )
            return None
        return value


@dataclass(frozen=True)
class _CustomerInput:
    personal_information: JsonObject
    store_id_sent: bool
    source: JsonObject | None
    password: str | None
    social_network_id: str | None
    property_records: list[tuple[str, Any]]


@dataclass(frozen=True)
class _Paging:
    count: int
    offset: int
    sort_field: str | None
    descending: bool


class _Validator(_Check):
    """Checks CareCloud request bodies against the spec's schemas and the sandbox's reference data."""

    def __init__(
        self,
        stores: dict[str, Any],
        sources: dict[str, Any],
        properties: dict[str, Any],
        interests: dict[str, Any],
    ) -> None:
        super().__init__()
        self.stores = stores
        self.sources = sources
        self.properties = properties
        self.interests = interests

    # -- customers -----------------------------------------------------------------------------------------

    def customer_body(self, body: object, *, create: bool) -> _CustomerInput | None:
        top = self.fields("", body, POST_CUSTOMER_FIELDS if create else PUT_CUSTOMER_FIELDS)
        if top is None:
            return None
        start = self.mark()
        info: JsonObject = {}
        store_id_sent = False
        if "customer" not in top:
            self.fail("customer", REQUIRED, 'is required: {"personal_information": {...}}')
        else:
            customer = self.fields("customer", top["customer"], CUSTOMER_FIELDS, CUSTOMER_READ_ONLY)
            if customer is not None:
                if "personal_information" not in customer:
                    self.fail("customer.personal_information", REQUIRED, "is required")
                else:
                    raw = customer["personal_information"]
                    store_id_sent = isinstance(raw, dict) and "store_id" in raw
                    info = self.personal_information("customer.personal_information", raw)
        source = self.customer_source(top) if create else None
        autologin = self.boolean("", top, "autologin", required=True) if create else None
        password = self.string("", top, "password", secret=True)
        if password is not None and (problem := _password_problem(password)) is not None:
            self.fail("password", INVALID, problem, password, secret=True)
        if autologin and "password" not in top:
            self.fail("password", REQUIRED, "is required when autologin is true")
        social_network_id = self.social_network(top)
        if create and "referral_code" in top:
            code = self.string("", top, "referral_code")
            if code is not None:
                self.fail(
                    "referral_code",
                    NOT_FOUND,
                    f"no referral campaign knows {_quote(code)} in the sandbox",
                    code,
                )
        records: list[tuple[str, Any]] = []
        if "property_records" in top:
            items = self.items("property_records", top["property_records"])
            for index, item in enumerate(items or []):
                record = self.property_record(f"property_records[{index}]", item)
                if record is not None:
                    records.append(record)
        if not self.clean_since(start):
            return None
        return _CustomerInput(info, store_id_sent, source, password, social_network_id, records)

    def customer_source(self, top: JsonObject) -> JsonObject | None:
        if "customer_source" not in top:
            self.fail("customer_source", REQUIRED, 'is required: {"customer_source_id": ...}')
            return None
        source = self.fields("customer_source", top["customer_source"], SOURCE_FIELDS, SOURCE_READ_ONLY)
        if source is None:
            return None
        source_id = self.string(
            "customer_source", source, "customer_source_id", required=True, non_empty=True
        )
        external_id = self.string("customer_source", source, "external_id")
        if source_id is not None and source_id not in self.sources:
            self.fail(
                "customer_source.customer_source_id",
                NOT_FOUND,
                f"no customer source {_quote(source_id)}; see GET /customer-sources",
                source_id,
            )
            return None
        if source_id is None:
            return None
        return {
            "customer_source_id": source_id,
            **({"external_id": external_id} if external_id is not None else {}),
        }

    def social_network(self, top: JsonObject) -> str | None:
        if "social_network_credentials" not in top:
            return None
        name = "social_network_credentials"
        credentials = self.fields(name, top[name], SOCIAL_FIELDS)
        if credentials is None:
            return None
        network = self.string(name, credentials, "social_network_id", required=True, non_empty=True)
        self.string(name, credentials, "social_network_token", required=True, non_empty=True, secret=True)
        return network

    def personal_information(self, name: str, value: object) -> JsonObject:
        obj = self.fields(name, value, PI_FIELDS, PI_READ_ONLY)
        if obj is None:
            return {}
        out: JsonObject = {}
        for key in PI_STRINGS:
            text = self.string(name, obj, key)
            if text is not None:
                out[key] = text
        ok, gender = self.choice(name, obj, "gender", GENDERS, nullable=True)
        if ok and gender is not None:  # null means "not set": stored as absent, never answered as null
            out["gender"] = gender
        birthdate = self.string(name, obj, "birthdate")
        if birthdate is not None:
            if _is_date(birthdate):
                out["birthdate"] = birthdate
            else:
                self.fail(
                    _join(name, "birthdate"),
                    INVALID,
                    f"{_quote(birthdate)} is not a date YYYY-MM-DD (ISO 8601)",
                    birthdate,
                )
        email = self.string(
            name,
            obj,
            "email",
            pattern=EMAIL_RE,
            shape="an e-mail address the spec's pattern accepts (lower case)",
        )
        if email is not None:
            out["email"] = email
        phone = self.string(
            name,
            obj,
            "phone",
            pattern=PHONE_RE,
            shape="a phone number: digits with the country prefix, e.g. 420221634695",
        )
        if phone is not None:
            out["phone"] = phone
        language = self.string(
            name,
            obj,
            "language_id",
            required=True,
            non_empty=True,
            pattern=TWO_LETTERS_RE,
            shape="an ISO 639-1 language code such as 'en'",
        )
        if language is not None:
            out["language_id"] = language
        store_id = self.string(name, obj, "store_id", non_empty=True)
        if store_id is not None:
            if store_id in self.stores:
                out["store_id"] = store_id
            else:
                self.fail(
                    _join(name, "store_id"),
                    NOT_FOUND,
                    f"no store {_quote(store_id)}; see GET /stores",
                    store_id,
                )
        if "address" in obj:
            address = self.address(_join(name, "address"), obj["address"])
            if address is not None:
                out["address"] = address
        agreement = self.agreement(_join(name, "agreement"), obj["agreement"]) if "agreement" in obj else None
        consents = self.consents(_join(name, "consents"), obj["consents"]) if "consents" in obj else None
        if consents is not None:
            out["consents"] = consents  # the spec: with both, consents wins and agreement is ignored
        elif agreement is not None:
            out["agreement"] = agreement
        return {key: out[key] for key in PI_ORDER if key in out}

    def address(self, name: str, value: object) -> JsonObject | None:
        obj = self.fields(name, value, ADDRESS_FIELDS)
        if obj is None:
            return None
        start = self.mark()
        out: JsonObject = {}
        for key in ADDRESS_FIELDS:
            if key == "country_code":
                text = self.string(
                    name,
                    obj,
                    key,
                    pattern=TWO_LETTERS_RE,
                    shape="a two-letter lower-case country code such as 'cz'",
                )
            else:
                text = self.string(name, obj, key)
            if text is not None:
                out[key] = text
        return out if self.clean_since(start) else None

    def agreement(self, name: str, value: object) -> JsonObject | None:
        obj = self.fields(name, value, AGREEMENT_FIELDS)
        if obj is None:
            return None
        start = self.mark()
        out: JsonObject = {}
        for key in AGREEMENT_FLAGS:
            ok, flag = self.choice(name, obj, key, CONSENT_VALUES)
            if ok:
                out[key] = flag
        if "custom_agreements" in obj:
            where = _join(name, "custom_agreements")
            custom: list[JsonObject] = []
            for index, item in enumerate(self.items(where, obj["custom_agreements"]) or []):
                here = f"{where}[{index}]"
                entry = self.fields(here, item, CUSTOM_AGREEMENT_FIELDS)
                if entry is None:
                    continue
                agreement_id = self.string(here, entry, "agreement_id", required=True, non_empty=True)
                ok, flag = self.choice(here, entry, "agreement_value", CONSENT_VALUES, required=True)
                if agreement_id is not None and ok:
                    custom.append({"agreement_id": agreement_id, "agreement_value": flag})
            out["custom_agreements"] = custom
        return out if self.clean_since(start) else None

    def consents(self, name: str, value: object) -> list[JsonObject] | None:
        items = self.items(name, value)
        if items is None:
            return None
        start = self.mark()
        consents: dict[str, JsonObject] = {}
        for index, item in enumerate(items):
            here = f"{name}[{index}]"
            entry = self.fields(here, item, CONSENT_FIELDS, CONSENT_READ_ONLY)
            if entry is None:
                continue
            consent_id = self.string(here, entry, "consent_id", required=True, non_empty=True)
            ok, consent_value = self.choice(here, entry, "consent_value", CONSENT_VALUES, required=True)
            if consent_id is not None and ok:
                consents.pop(consent_id, None)
                consents[consent_id] = {"consent_id": consent_id, "consent_value": consent_value}
        return list(consents.values()) if self.clean_since(start) else None

    # -- records -------------------------------------------------------------------------------------------

    def property_record(self, name: str, value: object) -> tuple[str, Any] | None:
        start = self.mark()
        obj = self.fields(name, value, PROPERTY_RECORD_FIELDS, PROPERTY_RECORD_READ_ONLY)
        if obj is None:
            return None
        property_id = self.string(name, obj, "property_id", required=True, non_empty=True)
        definition = self.properties.get(property_id) if property_id is not None else None
        if property_id is not None and definition is None:
            self.fail(
                _join(name, "property_id"),
                NOT_FOUND,
                f"no customer property {_quote(property_id)}; see GET /customer-properties",
                property_id,
            )
        where = _join(name, "property_value")
        if "property_value" not in obj:
            self.fail(where, REQUIRED, "is required")
        elif definition is not None:
            problem = _value_problem(definition["data_type"], obj["property_value"])
            if problem is not None:
                self.fail(where, INVALID, problem, obj["property_value"])
        if not self.clean_since(start) or property_id is None:
            return None
        return property_id, copy.deepcopy(obj["property_value"])

    def interest_record(self, name: str, value: object, customer_id: str) -> str | None:
        start = self.mark()
        obj = self.fields(name, value, INTEREST_RECORD_FIELDS, INTEREST_RECORD_READ_ONLY)
        if obj is None:
            return None
        interest_id = self.string(name, obj, "interest_id", required=True, non_empty=True)
        if interest_id is not None and interest_id not in self.interests:
            self.fail(
                _join(name, "interest_id"),
                NOT_FOUND,
                f"no interest {_quote(interest_id)}; see GET /interests",
                interest_id,
            )
        owner = self.string(name, obj, "customer_id", required=True, non_empty=True)
        if owner is not None and owner != customer_id:
            self.fail(
                _join(name, "customer_id"),
                NOT_ALLOWED,
                f"must be the customer of the path ({customer_id})",
                owner,
            )
        return interest_id if self.clean_since(start) else None


def _value_problem(data_type: str, value: object) -> str | None:
    """Why ``value`` does not fit a property of ``data_type``, or None."""
    if data_type == "string" and not isinstance(value, str):
        return "must be a string (the property's data type is string)"
    if data_type == "date" and not (isinstance(value, str) and _is_date(value)):
        return f"{_quote(value)} is not a date YYYY-MM-DD (the property's data type is date)"
    if data_type == "integer" and not _is_int(value):
        return f"{_quote(value)} is not an integer (the property's data type is integer)"
    if data_type == "float" and not (_is_int(value) or isinstance(value, float)):
        return f"{_quote(value)} is not a number (the property's data type is float)"
    if data_type == "boolean" and not isinstance(value, bool):
        return f"{_quote(value)} is not a boolean (the property's data type is boolean)"
    return None


def _salutation(info: JsonObject, short: bool) -> str:
    first, last = info.get("first_name", "").strip(), info.get("last_name", "").strip()
    if short and first:
        return f"Dear {first}"
    title = SALUTATION_TITLES.get(info.get("gender") or 0)
    if title and last:
        return f"Dear {title} {last}"
    full = f"{first} {last}".strip()
    return f"Dear {full}" if full else "Dear customer"


def _sort_key(value: object) -> tuple[int, int, Any]:
    if value is None:
        return (1, 0, "")
    if isinstance(value, bool | int | float):
        return (0, 0, float(value))
    if isinstance(value, str):
        return (0, 1, value)
    return (0, 2, json.dumps(value, sort_keys=True))


# -- the sandbox -------------------------------------------------------------------------------------------

Handler = Callable[[Request, tuple[str, ...]], Response]


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    template: str
    methods: dict[str, tuple[str, str]]  # method -> (handler name, auth: "token" | "token-request" | "none")


ROUTES: Final[tuple[_Route, ...]] = (
    _Route(re.compile(r"/tokens"), "/tokens", {"POST": ("_post_token", "token-request")}),
    _Route(re.compile(r"/tests/connection"), "/tests/connection", {"GET": ("_get_connection", "none")}),
    _Route(re.compile(r"/stores"), "/stores", {"GET": ("_get_stores", "token")}),
    _Route(
        re.compile(r"/customer-sources"), "/customer-sources", {"GET": ("_get_customer_sources", "token")}
    ),
    _Route(re.compile(r"/interests"), "/interests", {"GET": ("_get_interests", "token")}),
    _Route(
        re.compile(r"/customer-properties"),
        "/customer-properties",
        {"GET": ("_get_customer_properties", "token")},
    ),
    _Route(
        re.compile(r"/customers"),
        "/customers",
        {"GET": ("_get_customers", "token"), "POST": ("_post_customer", "token")},
    ),
    _Route(
        re.compile(r"/customers/([^/]+)"),
        "/customers/{customer_id}",
        {"GET": ("_get_customer", "token"), "PUT": ("_put_customer", "token")},
    ),
    _Route(
        re.compile(r"/customers/([^/]+)/property-records/batch"),
        "/customers/{customer_id}/property-records/batch",
        {"POST": ("_post_property_batch", "token")},
    ),
    _Route(
        re.compile(r"/customers/([^/]+)/property-records"),
        "/customers/{customer_id}/property-records",
        {"GET": ("_get_property_records", "token"), "POST": ("_post_property_record", "token")},
    ),
    _Route(
        re.compile(r"/customers/([^/]+)/interest-records"),
        "/customers/{customer_id}/interest-records",
        {"GET": ("_get_interest_records", "token"), "POST": ("_post_interest_record", "token")},
    ),
)
ROUTE_SUMMARY: Final = ", ".join(f"{method} {route.template}" for route in ROUTES for method in route.methods)


class CareCloudSandbox(Sandbox):
    """CareCloud's customer-interface REST API served over real HTTP on a daemon thread."""

    title = "CRM CareCloud sandbox"
    chaos_exempt = (BASE_PATH + "/tokens",)

    def __init__(
        self,
        *,
        user: str = DEFAULT_USER,
        external_application_id: str,
        auth_scheme: AuthScheme = "bearer",
        host: str = "127.0.0.1",
        port: int = 0,
        state_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not user or ":" in user:
            raise ValueError("user must be a non-empty name without ':'")
        if not external_application_id:
            raise ValueError("external_application_id must not be empty")
        if auth_scheme not in AUTH_SCHEMES:
            raise ValueError(f"auth_scheme must be one of {', '.join(AUTH_SCHEMES)}")
        self.user = user
        self.external_application_id = external_application_id
        self.auth_scheme: AuthScheme = auth_scheme
        self._clock = clock
        self._emails: dict[str, str] = {}
        self._device_tokens: dict[str, str] = {}
        self._property_keys: dict[str, dict[str, None]] = {}
        self._interest_keys: dict[str, dict[str, str]] = {}
        super().__init__(host, port, state_path)

    # -- framework hooks -----------------------------------------------------------------------------------

    def load(self) -> None:
        with self.state.batch():
            for collection, key, seeds in SEEDS:
                if not self.state.items(collection):
                    for seed in seeds:
                        self.state.put(collection, seed[key], copy.deepcopy(seed))
        self._emails = {}
        for customer in self.state.items(CUSTOMERS).values():
            email = customer["personal_information"].get("email")
            if email is not None:
                self._emails[email.lower()] = customer["customer_id"]
        self._device_tokens = {
            _device_key(token["device"]["device_id"], token["external_application_id"]): token_id
            for token_id, token in self.state.items(TOKENS).items()
        }
        self._property_keys = {}
        for key, record in self.state.items(PROPERTY_RECORDS).items():
            self._property_keys.setdefault(record["customer_id"], {})[key] = None
        self._interest_keys = {}
        for key, record in self.state.items(INTEREST_RECORDS).items():
            self._interest_keys.setdefault(record["customer_id"], {})[record["interest_id"]] = key

    def error(self, status: int, detail: str, path: str) -> Response:
        data: JsonObject = {"invalid_params": []} if status == 400 else {}
        return Response(status, error_body(status, detail, error_data=data))

    def expire_tokens(self) -> None:
        with self.lock, self.state.batch():
            for token_id in list(self.state.items(TOKENS)):
                self.state.delete(TOKENS, token_id)
            self._device_tokens = {}

    def admin(self) -> dict[str, tuple[tuple[str, ...], AdminRoute]]:
        return {"/_sandbox/customers": (("GET",), self._admin_customers)}

    def _admin_customers(self, request: Request) -> Response:
        return Response(200, {"customers": self.customers()})

    # -- state for tests -----------------------------------------------------------------------------------

    def token_requests(self) -> int:
        """How many tokens ``POST /tokens`` has issued (successful requests only)."""
        with self.lock:
            return self.state.counter(TOKEN_REQUESTS)

    def customers(self) -> list[JsonObject]:
        """Every customer in creation order: the ``GET /customers/{id}`` view plus ``customer_source_records``,
        ``property_records``, ``interest_records`` and ``password_set``."""
        with self.lock:
            return [self._admin_view(customer) for customer in self.state.items(CUSTOMERS).values()]

    def find(
        self, *, email: str | None = None, phone: str | None = None, customer_id: str | None = None
    ) -> JsonObject | None:
        """The customer matching every given identifier (e-mail case-insensitively), as :meth:`customers`
        shows it, or ``None``."""
        if email is None and phone is None and customer_id is None:
            raise TypeError("find() needs at least one of email, phone, customer_id")
        with self.lock:
            for customer in self.state.items(CUSTOMERS).values():
                info = customer["personal_information"]
                if (
                    (customer_id is None or customer["customer_id"] == customer_id)
                    and (email is None or str(info.get("email", "")).lower() == email.lower())
                    and (phone is None or info.get("phone") == phone)
                ):
                    return self._admin_view(customer)
        return None

    def property_records(self, customer_id: str) -> list[JsonObject]:
        """The customer's property records as ``GET .../property-records`` lists them (empty if unknown)."""
        with self.lock:
            return self._property_views(customer_id)

    def interest_records(self, customer_id: str) -> list[JsonObject]:
        """The customer's interest records as ``GET .../interest-records`` lists them (empty if unknown)."""
        with self.lock:
            return self._interest_views(customer_id)

    def stores(self) -> list[JsonObject]:
        return self._reference(STORES)

    def customer_sources(self) -> list[JsonObject]:
        return self._reference(CUSTOMER_SOURCES)

    def interests(self) -> list[JsonObject]:
        return self._reference(INTERESTS)

    def customer_properties(self) -> list[JsonObject]:
        return self._reference(CUSTOMER_PROPERTIES)

    def _reference(self, collection: str) -> list[JsonObject]:
        with self.lock:
            return copy.deepcopy(list(self.state.items(collection).values()))

    # -- dispatch and authentication -----------------------------------------------------------------------

    def vendor(self, request: Request) -> Response:
        path = request.path
        if path != BASE_PATH and not path.startswith(BASE_PATH + "/"):
            return self._route_not_found(request)
        sub = path[len(BASE_PATH) :].rstrip("/")
        for route in ROUTES:
            match = route.pattern.fullmatch(sub)
            if match is None:
                continue
            entry = route.methods.get(request.method)
            if entry is None:
                allowed = tuple(route.methods)
                detail = (
                    f"Method {request.method} is not allowed on {route.template}; use {', '.join(allowed)}."
                )
                body = error_body(405, detail, error_data={"http_method": request.method})
                return Response(405, body, {"Allow": ", ".join(allowed)})
            handler_name, auth = entry
            handler: Handler = getattr(self, handler_name)
            groups = tuple(unquote(group) for group in match.groups())
            with self.lock:
                denied = self._authenticate(request, auth)
                if denied is not None:
                    return denied
                return handler(request, groups)
        return self._route_not_found(request)

    def _route_not_found(self, request: Request) -> Response:
        detail = (
            f"No route matches {request.method} {request.path}. The sandbox serves, under {BASE_PATH}: "
            f"{ROUTE_SUMMARY}."
        )
        resource = (
            request.path[len(BASE_PATH) :].strip("/").split("/")[0]
            if request.path.startswith(BASE_PATH)
            else ""
        )
        return Response(404, error_body(404, detail, error_data={"resource_name": resource or request.path}))

    def _unauthorized(self, detail: str) -> Response:
        return Response(401, error_body(401, detail), {"WWW-Authenticate": self._challenge()})

    def _challenge(self) -> str:
        return (
            'Bearer realm="customer-interface"'
            if self.auth_scheme == "bearer"
            else 'Basic realm="customer-interface"'
        )

    def _authenticate(self, request: Request, auth: str) -> Response | None:
        if auth == "none" or (auth == "token-request" and self.auth_scheme == "bearer"):
            return None
        header = request.headers.get("authorization", "").strip()
        expected = "Bearer" if self.auth_scheme == "bearer" else "Basic"
        usage = (
            f"Authorization: Basic base64('{self.user}:')"
            if auth == "token-request"
            else (
                "Authorization: Bearer <token_id>"
                if self.auth_scheme == "bearer"
                else f"Authorization: Basic base64('{self.user}:<token_id>')"
            )
        )
        if not header:
            return self._unauthorized(f"The Authorization header is missing; send {usage}.")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != expected.lower():
            return self._unauthorized(
                f"This project accepts {expected} authentication, not {scheme or 'an empty scheme'}; send {usage}."
            )
        credentials = credentials.strip()
        if self.auth_scheme == "basic":
            decoded = _basic_credentials(credentials)
            if decoded is None:
                return self._unauthorized(
                    f"The Basic credentials are not base64 of '<user>:<token>'; send {usage}."
                )
            user, secret = decoded
            if not hmac.compare_digest(user.encode("utf-8"), self.user.encode("utf-8")):
                return self._unauthorized(
                    "The user name in the Basic credentials is not this project's API user."
                )
            if auth == "token-request":
                if secret.strip():
                    return self._unauthorized(
                        f"POST /tokens takes the user name only, with no token: send {usage}."
                    )
                return None
            token_id = secret.strip()
        else:
            token_id = credentials
        if not token_id or self.state.get(TOKENS, token_id) is None:
            return self._unauthorized(
                "The token is not valid: unknown, replaced by a newer token for the same device, or expired. "
                "Create a new one with POST /tokens."
            )
        return None

    # -- tokens --------------------------------------------------------------------------------------------

    def _post_token(self, request: Request, groups: tuple[str, ...]) -> Response:
        check = _Check()
        body = _json_body(request, check)
        parsed = _token_request(check, body) if not check.problems else None
        if check.problems or parsed is None:
            return _bad_request(check)
        device, setup, application_id, push_token = parsed
        if not hmac.compare_digest(
            application_id.encode("utf-8"), self.external_application_id.encode("utf-8")
        ):
            detail = (
                "The external application is not registered in this project; check external_application_id."
            )
            body_403 = error_body(
                403,
                detail,
                exception="external_application_not_allowed_exception",
                error_data={"invalid_resource_name": "tokens", "interface": "Customer"},
            )
            return Response(403, body_403)
        token_id = secrets.token_hex(36)
        device_key = _device_key(device["device_id"], application_id)
        token: JsonObject = {
            "token_id": token_id,
            "device": device,
            "setup": setup,
            "external_application_id": application_id,
            "created_at": self._now(),
        }
        if push_token is not None:
            token["push_token"] = push_token
        with self.state.batch():
            previous = self._device_tokens.get(device_key)
            if previous is not None:
                self.state.delete(TOKENS, previous)
            self.state.put(TOKENS, token_id, token)
            self.state.next_id(TOKEN_REQUESTS)
        self._device_tokens[device_key] = token_id
        return Response(201, {"data": {"token_id": token_id}})

    def _get_connection(self, request: Request, groups: tuple[str, ...]) -> Response:
        check = _Check()
        _reject_params(check, request, frozenset({"test_string"}))
        if check.problems:
            return _bad_request(check)
        text = request.param("test_string") or ""
        return Response(200, {"data": {"test_string": text[::-1]}})

    # -- reference lists -----------------------------------------------------------------------------------

    def _get_stores(self, request: Request, groups: tuple[str, ...]) -> Response:
        return self._reference_list(request, STORES, "stores", {})

    def _get_customer_sources(self, request: Request, groups: tuple[str, ...]) -> Response:
        return self._reference_list(
            request,
            CUSTOMER_SOURCES,
            "customer_sources",
            {"customer_source_text_id": lambda item, text: item["customer_source_text_id"] == text},
        )

    def _get_interests(self, request: Request, groups: tuple[str, ...]) -> Response:
        return self._reference_list(request, INTERESTS, "interests", {"name": _name_contains})

    def _get_customer_properties(self, request: Request, groups: tuple[str, ...]) -> Response:
        return self._reference_list(
            request, CUSTOMER_PROPERTIES, "customer_properties", {"name": _name_contains}
        )

    def _reference_list(
        self,
        request: Request,
        collection: str,
        key: str,
        filters: dict[str, Callable[[JsonObject, str], bool]],
    ) -> Response:
        items = list(self.state.items(collection).values())
        check = _Check()
        paging = _paging(check, request, _first_level(items), frozenset(filters))
        if check.problems or paging is None:
            return _bad_request(check)
        for name, matches in filters.items():
            value = request.param(name)
            if value is not None:
                items = [item for item in items if matches(item, value)]
        return _listing(key, items, paging)

    # -- customers -----------------------------------------------------------------------------------------

    def _validator(self) -> _Validator:
        return _Validator(
            self.state.items(STORES),
            self.state.items(CUSTOMER_SOURCES),
            self.state.items(CUSTOMER_PROPERTIES),
            self.state.items(INTERESTS),
        )

    def _check_email(self, check: _Check, info: JsonObject, customer_id: str | None) -> None:
        email = info.get("email")
        if email is None:
            return
        owner = self._emails.get(email.lower())
        if owner is not None and owner != customer_id:
            check.fail(
                "customer.personal_information.email",
                ALREADY_EXISTS,
                f"{_quote(email)} already belongs to another customer",
                email,
            )

    def _post_customer(self, request: Request, groups: tuple[str, ...]) -> Response:
        check = self._validator()
        body = _json_body(request, check)
        parsed = check.customer_body(body, create=True) if not check.problems else None
        if parsed is not None:
            self._check_email(check, parsed.personal_information, None)
        if check.problems or parsed is None or parsed.source is None:
            return _bad_request(check)
        now = self._now()
        _stamp_consents(parsed.personal_information, {}, now)
        customer_id = self._new_id(CUSTOMERS)
        customer: JsonObject = {
            "customer_id": customer_id,
            "personal_information": parsed.personal_information,
            "last_change": now,
            "state": 1,
            "customer_source_records": [
                {
                    "customer_source_record_id": secrets.token_hex(13),
                    **parsed.source,
                    "customer_id": customer_id,
                    "last_change": now,
                }
            ],
        }
        if parsed.password is not None:
            customer["password_sha256"] = hashlib.sha256(parsed.password.encode("utf-8")).hexdigest()
        if parsed.social_network_id is not None:
            customer["social_network_id"] = parsed.social_network_id
        with self.state.batch():
            self.state.put(CUSTOMERS, customer_id, customer)
            for property_id, value in parsed.property_records:
                self._put_property(customer_id, property_id, value, now)
            self.record_effect("upsert", effect_key(_who(customer), body))
        self._index_email(None, parsed.personal_information, customer_id)
        return Response(201, {"data": {"customer_id": customer_id}})

    def _get_customers(self, request: Request, groups: tuple[str, ...]) -> Response:
        check = _Check()
        paging = _paging(check, request, frozenset({"customer_id", "last_change", "state"}), CUSTOMER_FILTERS)
        short = _flag(check, request, "customer_short_salutation")
        birthdate = request.param("birthdate")
        if birthdate is not None:
            birthdate = _parse_birthdate(check, birthdate)
        if check.problems or paging is None:
            return _bad_request(check)
        email = request.param("email")
        phone = request.param("phone")
        source_id = request.param("customer_source_id")
        first_name = request.param("first_name")
        last_name = request.param("last_name")
        email_list = {value.lower() for value in _values(request, "email_list")}
        customer_ids = set(_values(request, "customer_ids"))
        matches: list[JsonObject] = []
        candidates: Iterable[JsonObject] = self.state.items(CUSTOMERS).values()
        if email is not None:  # e-mails are unique: the index names the only candidate (no scan of them all)
            owner = self._emails.get(email.lower())
            found = self.state.get(CUSTOMERS, owner) if owner is not None else None
            candidates = [found] if found is not None else []
        for customer in candidates:
            info = customer["personal_information"]
            if email is not None and str(info.get("email", "")).lower() != email.lower():
                continue
            if phone is not None and info.get("phone") != phone:
                continue
            if source_id is not None and not any(
                record["customer_source_id"] == source_id for record in customer["customer_source_records"]
            ):
                continue
            if first_name is not None and str(info.get("first_name", "")).lower() != first_name.lower():
                continue
            if last_name is not None and str(info.get("last_name", "")).lower() != last_name.lower():
                continue
            if birthdate is not None and info.get("birthdate") != birthdate:
                continue
            if email_list and str(info.get("email", "")).lower() not in email_list:
                continue
            if customer_ids and customer["customer_id"] not in customer_ids:
                continue
            matches.append(_customer_view(customer, short))
        return _listing("customers", matches, paging)

    def _customer_or_404(self, customer_id: str) -> JsonObject | Response:
        customer: JsonObject | None = self.state.get(CUSTOMERS, customer_id)
        if customer is None:
            detail = f"Customer {_quote(customer_id)} was not found."
            data = {"resource_name": "customers", "resource_id": customer_id}
            return Response(404, error_body(404, detail, error_data=data))
        return customer

    def _get_customer(self, request: Request, groups: tuple[str, ...]) -> Response:
        found = self._customer_or_404(groups[0])
        if isinstance(found, Response):
            return found
        check = _Check()
        _reject_params(check, request, frozenset({"customer_short_salutation"}))
        short = _flag(check, request, "customer_short_salutation")
        if check.problems:
            return _bad_request(check)
        return Response(200, {"data": _customer_view(found, short)})

    def _put_customer(self, request: Request, groups: tuple[str, ...]) -> Response:
        found = self._customer_or_404(groups[0])
        if isinstance(found, Response):
            return found
        customer_id = groups[0]
        check = self._validator()
        body = _json_body(request, check)
        parsed = check.customer_body(body, create=False) if not check.problems else None
        if parsed is not None:
            self._check_email(check, parsed.personal_information, customer_id)
        if check.problems or parsed is None:
            return _bad_request(check)
        old_info = found["personal_information"]
        info = dict(parsed.personal_information)
        if not parsed.store_id_sent and "store_id" in old_info:
            info["store_id"] = old_info["store_id"]  # the spec: store_id can be changed, not removed
            info = {key: info[key] for key in PI_ORDER if key in info}
        now = self._now()
        _stamp_consents(info, old_info, now)
        customer = copy.deepcopy(found)
        customer["personal_information"] = info
        customer["last_change"] = now
        if parsed.password is not None:
            customer["password_sha256"] = hashlib.sha256(parsed.password.encode("utf-8")).hexdigest()
        if parsed.social_network_id is not None:
            customer["social_network_id"] = parsed.social_network_id
        with self.state.batch():
            self.state.put(CUSTOMERS, customer_id, customer)
            for property_id, value in parsed.property_records:
                self._put_property(customer_id, property_id, value, now)
            self.record_effect("upsert", effect_key(_who(customer), body))
        self._index_email(old_info, info, customer_id)
        return Response(204)

    def _index_email(self, old: JsonObject | None, new: JsonObject, customer_id: str) -> None:
        if old is not None and old.get("email") is not None:
            self._emails.pop(old["email"].lower(), None)
        if new.get("email") is not None:
            self._emails[new["email"].lower()] = customer_id

    # -- property records ----------------------------------------------------------------------------------

    def _put_property(self, customer_id: str, property_id: str, value: Any, now: str) -> str:
        key = f"{property_id}:{customer_id}"
        record = {
            "property_record_id": key,
            "property_id": property_id,
            "customer_id": customer_id,
            "property_value": value,
            "last_change": now,
        }
        self.state.put(PROPERTY_RECORDS, key, record)
        self._property_keys.setdefault(customer_id, {})[key] = None
        return key

    def _property_views(self, customer_id: str) -> list[JsonObject]:
        views = []
        for key in self._property_keys.get(customer_id, {}):
            record = self.state.get(PROPERTY_RECORDS, key)
            definition = self.state.get(CUSTOMER_PROPERTIES, record["property_id"]) or {}
            views.append(
                {
                    "property_record_id": record["property_record_id"],
                    "property_id": record["property_id"],
                    "property_name": definition.get("name", record["property_id"]),
                    "property_value": copy.deepcopy(record["property_value"]),
                    "last_change": record["last_change"],
                }
            )
        return views

    def _get_property_records(self, request: Request, groups: tuple[str, ...]) -> Response:
        found = self._customer_or_404(groups[0])
        if isinstance(found, Response):
            return found
        check = _Check()
        fields = frozenset(
            {"property_record_id", "property_id", "property_name", "property_value", "last_change"}
        )
        paging = _paging(check, request, fields, frozenset())
        if check.problems or paging is None:
            return _bad_request(check)
        return _listing("property_records", self._property_views(groups[0]), paging)

    def _post_property_record(self, request: Request, groups: tuple[str, ...]) -> Response:
        found = self._customer_or_404(groups[0])
        if isinstance(found, Response):
            return found
        check = self._validator()
        body = _json_body(request, check)
        record = None
        if not check.problems:
            top = check.fields("", body, frozenset({"property_record"}))
            if top is not None and "property_record" not in top:
                check.fail("property_record", REQUIRED, 'is required: {"property_id", "property_value"}')
            elif top is not None:
                record = check.property_record("property_record", top["property_record"])
        if check.problems or record is None:
            return _bad_request(check)
        with self.state.batch():
            key = self._put_property(groups[0], record[0], record[1], self._now())
        return Response(201, {"data": {"property_record_id": key}})

    def _post_property_batch(self, request: Request, groups: tuple[str, ...]) -> Response:
        found = self._customer_or_404(groups[0])
        if isinstance(found, Response):
            return found
        check = self._validator()
        body = _json_body(request, check)
        top = check.fields("", body, BATCH_FIELDS) if not check.problems else None
        mode: int | None = 1
        items: list[Any] | None = None
        if top is not None:
            if "error_processing" in top:
                ok, mode = check.choice("", top, "error_processing", ERROR_PROCESSING)
                mode = mode if ok else None
            if "property_records" not in top:
                check.fail(
                    "property_records", REQUIRED, "is required: a list of {property_id, property_value}"
                )
            else:
                items = check.items("property_records", top["property_records"])
                if items is not None and not items:
                    check.fail("property_records", EMPTY, "must hold at least one property record", items)
                    items = None
        if check.problems or items is None or mode is None:
            return _bad_request(check)
        valid: list[tuple[str, Any]] = []
        for index, item in enumerate(items):
            record = check.property_record(f"property_records[{index}]", item)
            if record is not None:
                valid.append(record)
            elif mode == 1:
                first = _Check(check.problems[:1])
                return _bad_request(
                    first, "The batch stopped at its first invalid record; nothing was saved."
                )
        now = self._now()
        with self.state.batch():
            for property_id, value in valid:
                self._put_property(groups[0], property_id, value, now)
        if check.problems:
            saved = f"{len(valid)} of {len(items)} property records were saved; the others failed."
            return _bad_request(check, saved)
        return Response(204)

    # -- interest records ----------------------------------------------------------------------------------

    def _interest_views(self, customer_id: str) -> list[JsonObject]:
        return [
            copy.deepcopy(self.state.get(INTEREST_RECORDS, key))
            for key in self._interest_keys.get(customer_id, {}).values()
        ]

    def _get_interest_records(self, request: Request, groups: tuple[str, ...]) -> Response:
        found = self._customer_or_404(groups[0])
        if isinstance(found, Response):
            return found
        check = _Check()
        fields = frozenset({"interest_record_id", "interest_id", "customer_id", "last_change"})
        paging = _paging(check, request, fields, frozenset())
        if check.problems or paging is None:
            return _bad_request(check)
        return _listing("interest_records", self._interest_views(groups[0]), paging)

    def _post_interest_record(self, request: Request, groups: tuple[str, ...]) -> Response:
        customer_id = groups[0]
        found = self._customer_or_404(customer_id)
        if isinstance(found, Response):
            return found
        check = self._validator()
        body = _json_body(request, check)
        interest_id = None
        if not check.problems:
            top = check.fields("", body, frozenset({"interest_record"}))
            if top is not None and "interest_record" not in top:
                check.fail("interest_record", REQUIRED, 'is required: {"interest_id", "customer_id"}')
            elif top is not None:
                interest_id = check.interest_record("interest_record", top["interest_record"], customer_id)
        if interest_id is not None and interest_id in self._interest_keys.get(customer_id, {}):
            check.fail(
                "interest_record.interest_id",
                RELATION_EXISTS,
                f"the customer already has interest {_quote(interest_id)}",
                interest_id,
            )
        if check.problems or interest_id is None:
            return _bad_request(check)
        record_id = self._new_id(INTEREST_RECORDS)
        record = {
            "interest_record_id": record_id,
            "interest_id": interest_id,
            "customer_id": customer_id,
            "last_change": self._now(),
        }
        with self.state.batch():
            self.state.put(INTEREST_RECORDS, record_id, record)
        self._interest_keys.setdefault(customer_id, {})[interest_id] = record_id
        return Response(201, {"data": {"interest_record_id": record_id}})

    # -- helpers -------------------------------------------------------------------------------------------

    def _now(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._clock()))

    def _new_id(self, collection: str) -> str:
        while True:
            candidate = secrets.token_hex(13)
            if self.state.get(collection, candidate) is None:
                return candidate

    def _admin_view(self, customer: JsonObject) -> JsonObject:
        customer_id = customer["customer_id"]
        view = _customer_view(customer, short=False)
        view["customer_source_records"] = copy.deepcopy(customer["customer_source_records"])
        view["property_records"] = self._property_views(customer_id)
        view["interest_records"] = self._interest_views(customer_id)
        view["password_set"] = "password_sha256" in customer
        if "social_network_id" in customer:
            view["social_network_id"] = customer["social_network_id"]
        return view


# -- request helpers ---------------------------------------------------------------------------------------


def _who(customer: JsonObject) -> str:
    """Who a ledger effect is about: the customer's e-mail (lower case), else its id."""
    email = customer["personal_information"].get("email")
    return str(email).lower() if email else f"id:{customer['customer_id']}"


def _device_key(device_id: str, application_id: str) -> str:
    return json.dumps([device_id, application_id])


def _token_request(check: _Check, body: object) -> tuple[JsonObject, JsonObject, str, str | None] | None:
    """``(device, setup, external_application_id, push_token)`` of a ``POST /tokens`` body, or None."""
    top = check.fields("", body, TOKEN_FIELDS)
    if top is None:
        return None
    device: JsonObject = {}
    if "device" not in top:
        check.fail("device", REQUIRED, "is required: {device_id, device_system, device_name, device_type}")
    elif (raw_device := check.fields("device", top["device"], DEVICE_FIELDS)) is not None:
        for key in DEVICE_FIELDS:
            device[key] = check.string("device", raw_device, key, required=True, non_empty=True)
    setup: JsonObject = {}
    if "setup" not in top:
        check.fail("setup", REQUIRED, "is required: {language_id, allowed_gps, allowed_notifications}")
    elif (raw_setup := check.fields("setup", top["setup"], SETUP_FIELDS)) is not None:
        setup["language_id"] = check.string("setup", raw_setup, "language_id", required=True, non_empty=True)
        setup["allowed_gps"] = check.boolean("setup", raw_setup, "allowed_gps", required=True)
        setup["allowed_notifications"] = check.boolean(
            "setup", raw_setup, "allowed_notifications", required=True
        )
    application_id = check.string("", top, "external_application_id", required=True, non_empty=True)
    push_token = check.string("", top, "push_token", secret=True)
    if check.problems or application_id is None:
        return None
    return device, setup, application_id, push_token


def _basic_credentials(encoded: str) -> tuple[str, str] | None:
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, colon, secret = text.partition(":")
    return (user, secret) if colon else None


def _json_body(request: Request, check: _Check) -> Any:
    if request.body_error is not None:
        check.fail("body", INVALID, f"is not valid JSON ({request.body_error})")
        return None
    if not request.raw.strip():
        check.fail("body", REQUIRED, "a JSON object is required")
        return None
    return request.body


def _bad_request(check: _Check, detail: str | None = None) -> Response:
    problems = check.problems
    count = len(problems)
    summary = f"{count} invalid parameter{'s' if count != 1 else ''}"
    first = f"; first: {problems[0].message}" if problems else ""
    body = error_body(
        400,
        detail or f"The request has {summary}{first}",
        title="Invalid request parameters",
        error_data={"invalid_params": [problem.to_dict() for problem in problems]},
    )
    return Response(400, body)


def _values(request: Request, name: str) -> list[str]:
    return [*request.query.get(name, []), *request.query.get(f"{name}[]", [])]


def _reject_params(check: _Check, request: Request, accepted: frozenset[str]) -> None:
    for name in request.query:
        base = name[:-2] if name.endswith("[]") else name
        if base not in accepted:
            supported = ", ".join(sorted(accepted)) or "none"
            check.fail(
                name,
                NOT_ALLOWED,
                f"is not a query parameter of this route (supported: {supported})",
                request.param(name),
            )


def _int_param(check: _Check, request: Request, name: str, default: int, minimum: int) -> int | None:
    raw = request.param(name)
    if raw is None:
        return default
    if not INTEGER_RE.fullmatch(raw.strip()):
        check.fail(name, INVALID, f"{_quote(raw)} is not an integer", raw)
        return None
    value = int(raw)
    if value < minimum:
        check.fail(name, NOT_ALLOWED, f"must be at least {minimum}", raw)
        return None
    return value


def _paging(
    check: _Check, request: Request, sort_fields: frozenset[str], filters: frozenset[str]
) -> _Paging | None:
    _reject_params(check, request, PAGING_PARAMS | filters)
    count = _int_param(check, request, "count", 100, 1)
    offset = _int_param(check, request, "offset", 0, 0)
    sort_field = request.param("sort_field")
    if sort_field is not None and sort_field not in sort_fields:
        check.fail(
            "sort_field",
            NOT_ALLOWED,
            f"must be a first-level field: {', '.join(sorted(sort_fields))}",
            sort_field,
        )
    direction = request.param("sort_direction") or "ASC"
    if direction not in ("ASC", "DESC"):
        check.fail("sort_direction", NOT_ALLOWED, "must be ASC or DESC", direction)
    if count is None or offset is None:
        return None
    return _Paging(count, offset, sort_field, direction == "DESC")


def _flag(check: _Check, request: Request, name: str) -> bool:
    raw = request.param(name)
    if raw is None:
        return False
    if raw not in ("true", "false", "1", "0"):
        check.fail(name, INVALID, "must be true or false", raw)
        return False
    return raw in ("true", "1")


def _parse_birthdate(check: _Check, raw: str) -> str | None:
    dotted = DOTTED_DATE_RE.fullmatch(raw)
    candidate = f"{dotted.group(3)}-{dotted.group(2)}-{dotted.group(1)}" if dotted else raw
    if not _is_date(candidate):
        check.fail("birthdate", INVALID, f"{_quote(raw)} is not a date YYYY-MM-DD or DD.MM.YYYY", raw)
        return None
    return candidate


def _first_level(items: list[JsonObject]) -> frozenset[str]:
    return frozenset(key for item in items for key in item)


def _name_contains(item: JsonObject, text: str) -> bool:
    return text.lower() in str(item.get("name", "")).lower()


def _listing(key: str, items: list[JsonObject], paging: _Paging) -> Response:
    if paging.sort_field is not None:
        name = paging.sort_field
        items = sorted(items, key=lambda item: _sort_key(item.get(name)), reverse=paging.descending)
    page = copy.deepcopy(items[paging.offset : paging.offset + paging.count])
    return Response(200, {"data": {key: page, "total_items": len(items)}})


def _stamp_consents(info: JsonObject, old_info: JsonObject, now: str) -> None:
    """Give each consent its read-only ``last_change``: kept when the value did not change, else now."""
    before = {consent["consent_id"]: consent for consent in old_info.get("consents", [])}
    for consent in info.get("consents", []):
        previous = before.get(consent["consent_id"])
        unchanged = previous is not None and previous["consent_value"] == consent["consent_value"]
        consent["last_change"] = previous["last_change"] if unchanged and previous else now


def _customer_view(customer: JsonObject, short: bool) -> JsonObject:
    info = copy.deepcopy(customer["personal_information"])
    if "salutation" not in info:
        info = {"salutation": _salutation(info, short), **info}
    return {
        "customer_id": customer["customer_id"],
        "personal_information": info,
        "last_change": customer["last_change"],
        "state": customer["state"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sandbox in the foreground until interrupted (Ctrl-C or SIGTERM)."""
    parser = standalone_parser("carecloud", "Local CRM CareCloud customer-interface sandbox.", 8703)
    parser.add_argument(
        "--external-application-id",
        default=os.environ.get("CARECLOUD_SANDBOX_EXTERNAL_APPLICATION_ID"),
        help="the id POST /tokens must carry (default: $CARECLOUD_SANDBOX_EXTERNAL_APPLICATION_ID)",
    )
    parser.add_argument("--auth-scheme", choices=AUTH_SCHEMES, default="bearer", help="default bearer")
    parser.add_argument(
        "--user", default=DEFAULT_USER, help=f"API user of the basic scheme (default {DEFAULT_USER})"
    )
    args = parser.parse_args(argv)
    if not args.external_application_id:
        parser.error("--external-application-id (or CARECLOUD_SANDBOX_EXTERNAL_APPLICATION_ID) is required")
    sandbox = CareCloudSandbox(
        user=args.user,
        external_application_id=args.external_application_id,
        auth_scheme=args.auth_scheme,
        host=args.host,
        port=args.port,
        state_path=args.state_path,
    )
    serve_until_stopped(
        sandbox,
        f"CareCloud sandbox listening on {{url}} (API at {{url}}{BASE_PATH}, {args.auth_scheme} tokens; "
        "admin routes under /_sandbox/)",
    )


if __name__ == "__main__":
    main()
