"""ExpertSender CDP sandbox: a local HTTP server that behaves like the vendor's ``/customers`` API.

Contract source: the vendor document ``004_45a8ca4daedd9684.txt`` (Polish, "Klienci - metody API").

Vendor routes (all need the ``x-api-key`` header, compared in constant time, never echoed):

* ``POST /customers`` with ``{"mode": "Add"|"Update"|"AddOrUpdate", "matchBy": "Email"|"PhoneNumber"|
  "CrmId"|"GUID"|"VisitorId", "data": [customer, ...]}`` -> ``201``.
* ``GET /customers/{id|email|phone|crmId}/{value}`` -> ``200 {"status": 200, "data": customer}``.
* ``DELETE /customers/{id|email|phone|crmId}/{value}?withAnonymization=true|false`` -> ``200``.

Errors are RFC 7807 problem documents ``{type, title, status, detail, instance}``; validation errors add
``errors`` (a list of strings such as ``"data[1].email: 'x' is not a valid e-mail address"``), and
customer look-ups add ``substatus`` (``"CustomerNotFound"``, ``"CustomerInvalidModelState"``).

Choices where the document is silent (each one strict, so a forwarder is honestly tested):

* The document only says ``201 Created`` for ``POST``. The sandbox answers
  ``{"status": 201, "data": [{"id": n, "email": ..., "phone": ..., "crmId": ...}, ...]}`` with one item
  per input record, in input order, listing the platform id and the identifiers the customer holds.
* The document shows no body for ``DELETE`` 200: the sandbox answers with an empty body.
* A request is atomic: if any record is invalid (shape or semantics) the answer is 400 and nothing is
  stored. Records of one batch are applied in order, so a later record sees the earlier ones.
* Enum values (mode, matchBy, gender, consent value) are case-sensitive, spelled as documented.
* ``null`` in an optional customer field means "not provided" (an update leaves the field unchanged).
* ``dateOfBirth`` must be a date-time with seconds (``2023-07-25T12:35:54.712Z``); a bare date is rejected.
* Identifiers (email, phone, crmId, visitorId) are unique across customers: a record that would give a
  customer an identifier another customer holds is rejected. Email comparison is case-insensitive,
  everything else is case-sensitive.
* ``matchBy: GUID`` matches on the platform-assigned ``id`` field of the record (an integer, or a string
  of digits); since ids are assigned by the platform, ``Add`` with ``GUID`` is rejected and
  ``AddOrUpdate`` can only update. ``matchBy: VisitorId`` requires a ``visitorId`` string in each record.
  A record may carry ``id`` only with ``matchBy: GUID``.
* Update and merge replace the provided fields, merge ``customAttributes`` by name and consents by id;
  ``force`` and ``confirmationMessageId`` are per-request instructions and are not stored.
* Authentication is checked before routing, so an unknown route without a key answers 401.
* ``GET /customers/id/abc`` answers 404; ``DELETE /customers/id/abc`` answers 400 (the document types
  that path parameter as int32 for DELETE only).

Effects ledger (``framework.py``; ``GET /_sandbox/state/effects``): ``upsert`` once per customer record a
``POST /customers`` applies, keyed ``<email>|<op marker of the record>`` (the value of a custom attribute such
as ``op`` that starts with ``op:``; else a digest of the record); ``delete`` once per customer a ``DELETE``
removes, keyed ``<email>|<op marker of the data it removed>``. No random faults are spared (no token route).

Test hooks and admin routes come from the shared framework (``framework.py``: faults, chaos, outages,
latency, reset, the request log, counters, a paged read of the state under ``/_sandbox/state/customers``); this sandbox adds
``GET /_sandbox/customers`` (``{"customers": [...], "deleted": [...]}``). With a ``state_path`` the customers
survive a restart.

Standalone: ``python -m forwarder_local.sandboxes.expertsender --port 8701 --api-key KEY``.
"""

from __future__ import annotations

import copy
import hmac
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from forwarder_local.sandboxes.framework import (
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

API_KEY_HEADER: Final = "x-api-key"
CUSTOMERS: Final = "customers"
DELETED: Final = "deleted"
CUSTOMER_ID: Final = "customer_id"
DELETION: Final = "deletion"

MODES: Final = ("Add", "Update", "AddOrUpdate")
MATCH_BY_FIELD: Final[dict[str, str]] = {
    "Email": "email",
    "PhoneNumber": "phone",
    "CrmId": "crmId",
    "GUID": "id",
    "VisitorId": "visitorId",
}
GENDERS: Final = ("Male", "Female", "NotSpecified")
CONSENT_VALUES: Final = ("False", "AwaitingConfirmation", "True")
IDENTIFIER_FIELDS: Final = ("email", "phone", "crmId", "visitorId")
STRING_FIELDS: Final = ("firstName", "lastName")
CUSTOMER_FIELDS: Final = frozenset(
    {*IDENTIFIER_FIELDS, *STRING_FIELDS, "id", "dateOfBirth", "gender", "customAttributes", "consentsData"}
)
REQUEST_FIELDS: Final = frozenset({"mode", "matchBy", "data"})
LOOKUP_FIELD: Final[dict[str, str]] = {"id": "id", "email": "email", "phone": "phone", "crmid": "crmId"}
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

EMAIL_RE: Final = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
PHONE_RE: Final = re.compile(r"\+?[0-9]+")
DATETIME_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,7})?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
DIGITS_RE: Final = re.compile(r"[0-9]+")
COLLECTION_RE: Final = re.compile(r"/customers/?")
ITEM_RE: Final = re.compile(r"/customers/([^/]+)/([^/]+)/?")

PROBLEM_TYPES: Final[dict[int, str]] = {
    400: "https://tools.ietf.org/html/rfc7231#section-6.5.1",
    401: "https://tools.ietf.org/html/rfc7235#section-3.1",
    404: "https://tools.ietf.org/html/rfc7231#section-6.5.4",
    405: "https://tools.ietf.org/html/rfc7231#section-6.5.5",
    413: "https://tools.ietf.org/html/rfc7231#section-6.5.11",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    500: "https://tools.ietf.org/html/rfc7231#section-6.6.1",
    502: "https://tools.ietf.org/html/rfc7231#section-6.6.3",
    503: "https://tools.ietf.org/html/rfc7231#section-6.6.4",
    504: "https://tools.ietf.org/html/rfc7231#section-6.6.5",
}
VALIDATION_TITLE: Final = "One or more validation errors occurred."


def problem(
    status: int,
    detail: str,
    instance: str,
    *,
    title: str | None = None,
    substatus: str | None = None,
    errors: list[str] | None = None,
) -> JsonObject:
    """Build an RFC 7807 problem document shaped like the vendor's examples."""
    body: JsonObject = {
        "type": PROBLEM_TYPES.get(status, "about:blank"),
        "title": title if title is not None else phrase(status),
        "status": status,
    }
    if substatus is not None:
        body["substatus"] = substatus
    body["detail"] = detail
    body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return body


def _index_key(field_name: str, value: object) -> str:
    if field_name == "email":
        return str(value).lower()
    return str(value)


class _Validator:
    """Validates one ``POST /customers`` body, collecting every error with its location."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.errors: list[str] = []

    def request(self, body: object) -> tuple[str, str, list[JsonObject]] | None:
        if not isinstance(body, dict):
            self.errors.append("body: must be a JSON object with mode, matchBy and data")
            return None
        for name in sorted(set(body) - REQUEST_FIELDS):
            self.errors.append(f"{name}: unknown field (expected mode, matchBy, data)")
        mode = self._enum(body, "mode", "mode", MODES)
        match_by = self._enum(body, "matchBy", "matchBy", tuple(MATCH_BY_FIELD))
        data = body.get("data")
        records: list[JsonObject] = []
        if data is None:
            self.errors.append("data: required; a non-empty list of customers")
        elif not isinstance(data, list):
            self.errors.append("data: must be a list of customers")
        elif not data:
            self.errors.append("data: must contain at least one customer")
        elif len(data) > self.max_batch:
            self.errors.append(
                f"data: {len(data)} customers exceed the limit of {self.max_batch} per request"
            )
        else:
            for index, item in enumerate(data):
                record = self.customer(f"data[{index}]", item, match_by, mode)
                if record is not None:
                    records.append(record)
        if self.errors or mode is None or match_by is None:
            return None
        return mode, match_by, records

    def _enum(self, obj: JsonObject, key: str, where: str, allowed: tuple[str, ...]) -> str | None:
        value = obj.get(key)
        if value is None:
            self.errors.append(f"{where}: required; one of {', '.join(allowed)}")
            return None
        if not isinstance(value, str) or value not in allowed:
            self.errors.append(f"{where}: {_quote(value)} is not one of {', '.join(allowed)}")
            return None
        return value

    def customer(self, where: str, item: object, match_by: str | None, mode: str | None) -> JsonObject | None:
        if not isinstance(item, dict):
            self.errors.append(f"{where}: must be a JSON object")
            return None
        before = len(self.errors)
        record: JsonObject = {}
        for name in sorted(set(item) - CUSTOMER_FIELDS):
            self.errors.append(f"{where}.{name}: unknown field")
        key_field = MATCH_BY_FIELD.get(match_by) if match_by is not None else None
        if key_field is not None and item.get(key_field) in (None, ""):
            self.errors.append(f"{where}.{key_field}: required when matchBy is {match_by}")
        if "id" in item and item["id"] is not None:
            if match_by != "GUID":
                self.errors.append(
                    f"{where}.id: allowed only with matchBy GUID (ids are assigned by the platform)"
                )
            elif mode == "Add":
                self.errors.append(
                    f"{where}: mode Add cannot match by GUID; customer ids are assigned by the platform"
                )
            else:
                self._customer_id(where, item["id"], record)
        for name in (*IDENTIFIER_FIELDS, *STRING_FIELDS, "dateOfBirth", "gender"):
            value = item.get(name)
            if value is None or (value == "" and name == key_field):
                continue
            if not isinstance(value, str):
                self.errors.append(f"{where}.{name}: must be a string")
                continue
            self._scalar(f"{where}.{name}", name, value)
            record[name] = value
        if item.get("customAttributes") is not None:
            record["customAttributes"] = self._attributes(
                f"{where}.customAttributes", item["customAttributes"]
            )
        if item.get("consentsData") is not None:
            record["consentsData"] = self._consents_data(f"{where}.consentsData", item["consentsData"])
        return record if len(self.errors) == before else None

    def _customer_id(self, where: str, value: object, record: JsonObject) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            record["id"] = value
        elif isinstance(value, str) and DIGITS_RE.fullmatch(value) and int(value) > 0:
            record["id"] = int(value)
        else:
            self.errors.append(f"{where}.id: {_quote(value)} is not a customer id (a positive integer)")

    def _scalar(self, where: str, name: str, value: str) -> None:
        if name == "email" and not EMAIL_RE.fullmatch(value):
            self.errors.append(f"{where}: {_quote(value)} is not a valid e-mail address")
        elif name == "phone" and not PHONE_RE.fullmatch(value):
            self.errors.append(
                f"{where}: {_quote(value)} is not a valid phone number"
                " (digits, optional leading +, no spaces)"
            )
        elif name in ("crmId", "visitorId") and not value.strip():
            self.errors.append(f"{where}: must not be empty")
        elif name == "dateOfBirth" and not _is_datetime(value):
            self.errors.append(
                f"{where}: {_quote(value)} is not an ISO 8601 date-time such as 2023-07-25T12:35:54.712Z"
            )
        elif name == "gender" and value not in GENDERS:
            self.errors.append(f"{where}: {_quote(value)} is not one of {', '.join(GENDERS)}")

    def _attributes(self, where: str, value: object) -> list[JsonObject]:
        if not isinstance(value, list):
            self.errors.append(f"{where}: must be a list of {{name, value}} objects")
            return []
        merged: dict[str, JsonObject] = {}
        for index, attribute in enumerate(value):
            here = f"{where}[{index}]"
            if not isinstance(attribute, dict):
                self.errors.append(f"{here}: must be an object with name and value")
                continue
            for name in sorted(set(attribute) - {"name", "value"}):
                self.errors.append(f"{here}.{name}: unknown field")
            name = attribute.get("name")
            if not isinstance(name, str) or not name:
                self.errors.append(f"{here}.name: required; a string of at least 1 character")
                continue
            attr_value = attribute.get("value")
            if attr_value is not None and not isinstance(attr_value, str):
                self.errors.append(f"{here}.value: must be a string")
                continue
            merged[name] = {"name": name, "value": attr_value}
        return list(merged.values())

    def _consents_data(self, where: str, value: object) -> JsonObject:
        if not isinstance(value, dict):
            self.errors.append(f"{where}: must be an object with consents, force, confirmationMessageId")
            return {}
        for name in sorted(set(value) - {"consents", "force", "confirmationMessageId"}):
            self.errors.append(f"{where}.{name}: unknown field")
        force = value.get("force")
        if force is not None and not isinstance(force, bool):
            self.errors.append(f"{where}.force: must be a boolean")
        message_id = value.get("confirmationMessageId")
        if message_id is not None and not _is_int32(message_id):
            self.errors.append(f"{where}.confirmationMessageId: {_quote(message_id)} is not a 32-bit integer")
        consents: dict[int, JsonObject] = {}
        raw = value.get("consents")
        if raw is not None and not isinstance(raw, list):
            self.errors.append(f"{where}.consents: must be a list of {{id, value}} objects")
        elif raw is not None:
            for index, consent in enumerate(raw):
                here = f"{where}.consents[{index}]"
                if not isinstance(consent, dict):
                    self.errors.append(f"{here}: must be an object with id and value")
                    continue
                for name in sorted(set(consent) - {"id", "value"}):
                    self.errors.append(f"{here}.{name}: unknown field")
                consent_id = consent.get("id")
                consent_value = consent.get("value")
                ok = True
                if consent_id is None:
                    self.errors.append(f"{here}.id: required; a 32-bit integer")
                    ok = False
                elif not _is_int32(consent_id):
                    self.errors.append(f"{here}.id: {_quote(consent_id)} is not a 32-bit integer")
                    ok = False
                if consent_value is None:
                    self.errors.append(f"{here}.value: required; one of {', '.join(CONSENT_VALUES)}")
                    ok = False
                elif consent_value not in CONSENT_VALUES:
                    self.errors.append(
                        f"{here}.value: {_quote(consent_value)} is not one of {', '.join(CONSENT_VALUES)}"
                    )
                    ok = False
                if ok and isinstance(consent_id, int):
                    consents[consent_id] = {"id": consent_id, "value": consent_value}
        return {"consents": list(consents.values())}


def _is_int32(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and INT32_MIN <= value <= INT32_MAX


def _is_datetime(value: str) -> bool:
    if not DATETIME_RE.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


class ExpertSenderSandbox(Sandbox):
    """ExpertSender CDP ``/customers`` API served over real HTTP on a daemon thread."""

    title = "ExpertSender CDP sandbox"

    def __init__(
        self,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_batch: int = 1000,
        state_path: str | Path | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._api_key = api_key.encode("utf-8")
        self.max_batch = max_batch
        self._index: dict[str, dict[str, int]] = {}
        super().__init__(host, port, state_path)

    def load(self) -> None:
        self._index = {name: {} for name in (*IDENTIFIER_FIELDS, "id")}
        for customer in self.state.items(CUSTOMERS).values():
            for name in (*IDENTIFIER_FIELDS, "id"):
                if customer.get(name) is not None:
                    self._index[name][_index_key(name, customer[name])] = customer["id"]

    def error(self, status: int, detail: str, path: str) -> Response:
        return _problem_response(status, problem(status, detail, path))

    # -- state for tests -------------------------------------------------------------------------------

    def customers(self) -> list[JsonObject]:
        """Current customers (deep copies), in id order."""
        with self.lock:
            stored = self.state.items(CUSTOMERS)
            return [copy.deepcopy(stored[key]) for key in sorted(stored, key=int)]

    @property
    def deleted(self) -> list[JsonObject]:
        """Deletions so far: ``{"id": n, "anonymized": bool}``, in order."""
        with self.lock:
            return copy.deepcopy(list(self.state.items(DELETED).values()))

    def find(
        self,
        *,
        email: str | None = None,
        phone: str | None = None,
        crm_id: str | None = None,
        id: int | None = None,
    ) -> JsonObject | None:
        """The customer matching every given identifier (email case-insensitively), or ``None``."""
        criteria = {"email": email, "phone": phone, "crmId": crm_id, "id": id}
        given = {name: value for name, value in criteria.items() if value is not None}
        if not given:
            raise TypeError("find() needs at least one of email, phone, crm_id, id")
        with self.lock:
            found: set[int] | None = None
            for name, value in given.items():
                key = self._index[name].get(_index_key(name, value))
                hits = {key} if key is not None else set()
                found = hits if found is None else found & hits
            if not found:
                return None
            customer: JsonObject = copy.deepcopy(self.state.get(CUSTOMERS, str(found.pop())))
            return customer

    # -- request handling ------------------------------------------------------------------------------

    def vendor(self, request: Request) -> Response:
        method, path = request.method, request.path
        is_delete = method == "DELETE"
        supplied = request.headers.get(API_KEY_HEADER, "")
        if not supplied or not hmac.compare_digest(supplied.encode("utf-8"), self._api_key):
            detail = (
                "The x-api-key header is missing."
                if not supplied
                else "The API key supplied in the x-api-key header is not valid."
            )
            return _problem_response(
                401, problem(401, detail, path, substatus="Unauthorized" if is_delete else None)
            )
        if COLLECTION_RE.fullmatch(path):
            if method != "POST":
                return self._not_allowed(method, path, ("POST",))
            return self._post_customers(path, request.body, request.body_error)
        item = ITEM_RE.fullmatch(path)
        if item is None:
            return self.error(404, f"No route matches {method} {path}.", path)
        field_name = LOOKUP_FIELD.get(item.group(1).lower())
        if field_name is None:
            return self.error(
                404, f"Unknown lookup {_quote(item.group(1))}; use id, email, phone or crmId.", path
            )
        value = unquote(item.group(2))
        if method == "GET":
            return self._get_customer(path, field_name, value)
        if method == "DELETE":
            return self._delete_customer(path, field_name, value, request.query)
        return self._not_allowed(method, path, ("GET", "DELETE"))

    def _not_allowed(self, method: str, path: str, allowed: tuple[str, ...]) -> Response:
        response = self.error(
            405, f"Method {method} is not allowed on {path}; use {', '.join(allowed)}.", path
        )
        response.headers["Allow"] = ", ".join(allowed)
        return response

    def _validation_failed(self, path: str, errors: list[str]) -> Response:
        count = len(errors)
        detail = f"{count} validation error{'s' if count != 1 else ''}; first: {errors[0]}"
        return _problem_response(400, problem(400, detail, path, title=VALIDATION_TITLE, errors=errors))

    def _post_customers(self, path: str, body: Any, body_error: str | None) -> Response:
        if body_error is not None:
            return self._validation_failed(path, [f"body: not valid JSON ({body_error})"])
        if body is None:
            return self._validation_failed(
                path, ["body: required; a JSON object with mode, matchBy and data"]
            )
        validator = _Validator(self.max_batch)
        parsed = validator.request(body)
        if parsed is None:
            return self._validation_failed(path, validator.errors)
        mode, match_by, records = parsed
        with self.lock:
            errors, results = self._apply(mode, match_by, records)
        if errors:
            return self._validation_failed(path, errors)
        return Response(201, {"status": 201, "data": results})

    def _apply(
        self, mode: str, match_by: str, records: list[JsonObject]
    ) -> tuple[list[str], list[JsonObject]]:
        """Apply records to a working copy; commit only when every record succeeds (lock held)."""
        key_field = MATCH_BY_FIELD[match_by]
        stored = self.state.items(CUSTOMERS)
        customers: dict[int, JsonObject] = {}  # the records' customers, copied before any change
        # The changes are kept apart and applied on success: copying every index per request made a request
        # cost as much as the sandbox held customers.
        index = {name: _IndexChanges(keys) for name, keys in self._index.items()}
        next_id = self.state.counter(CUSTOMER_ID) + 1
        errors: list[str] = []
        results: list[JsonObject] = []
        applied: list[tuple[JsonObject, JsonObject]] = []  # (customer, record) per record, for the ledger
        for position, record in enumerate(records):
            where = f"data[{position}]"
            key_value = record[key_field]
            existing_id = index[key_field].get(_index_key(key_field, key_value))
            shown = f"{key_field} {_quote(key_value)}"
            if existing_id is not None and mode == "Add":
                errors.append(f"{where}: customer with {shown} already exists")
                continue
            if existing_id is None and (mode == "Update" or key_field == "id"):
                errors.append(f"{where}: no customer with {shown}")
                continue
            conflicts = [
                f"{where}.{name}: {_quote(record[name])} already belongs to customer {owner}"
                for name in IDENTIFIER_FIELDS
                if name in record
                and (owner := index[name].get(_index_key(name, record[name]))) is not None
                and owner != existing_id
            ]
            if conflicts:
                errors.extend(conflicts)
                continue
            if existing_id is None:
                new_id, next_id = next_id, next_id + 1
                customer: JsonObject = {
                    "id": new_id,
                    "customAttributes": [],
                    "consentsData": {"consents": []},
                }
                customers[new_id] = customer
                index["id"][str(new_id)] = new_id
            else:
                if existing_id not in customers:
                    customers[existing_id] = copy.deepcopy(stored[str(existing_id)])
                customer = customers[existing_id]
            _merge(customer, record, index)
            applied.append((customer, record))
            results.append(
                {
                    "id": customer["id"],
                    **{name: customer[name] for name in IDENTIFIER_FIELDS if name in customer},
                }
            )
        if errors:
            return errors, []
        with self.state.batch():
            self.state.set_counter(CUSTOMER_ID, next_id - 1)
            for customer_id, customer in customers.items():
                self.state.put(CUSTOMERS, str(customer_id), customer)
            for customer, record in applied:
                self.record_effect("upsert", effect_key(_identity(customer), record))
        for changes in index.values():
            changes.apply()
        return [], copy.deepcopy(results)

    def _lookup(self, field_name: str, value: str) -> int | None:
        if field_name == "id" and not DIGITS_RE.fullmatch(value):
            return None
        key = str(int(value)) if field_name == "id" else _index_key(field_name, value)
        return self._index[field_name].get(key)

    def _get_customer(self, path: str, field_name: str, value: str) -> Response:
        with self.lock:
            customer_id = self._lookup(field_name, value)
            if customer_id is None:
                return self._not_found(path, field_name, value)
            return Response(200, {"status": 200, "data": _view(self.state.get(CUSTOMERS, str(customer_id)))})

    def _not_found(self, path: str, field_name: str, value: str) -> Response:
        detail = f"Customer with {field_name} {_quote(value)} was not found."
        return _problem_response(404, problem(404, detail, path, substatus="CustomerNotFound"))

    def _delete_customer(
        self, path: str, field_name: str, value: str, query: dict[str, list[str]]
    ) -> Response:
        invalid: list[str] = []
        if field_name == "id" and not (DIGITS_RE.fullmatch(value) and int(value) <= INT32_MAX):
            invalid.append(f"id: {_quote(value)} is not a valid int32 customer id")
        flag = {name.lower(): values for name, values in query.items()}.get("withanonymization", ["false"])
        anonymize = flag[-1].lower() == "true"
        if flag[-1].lower() not in ("true", "false"):
            invalid.append(f"withAnonymization: {_quote(flag[-1])} is not a boolean (true or false)")
        if invalid:
            detail = f"{len(invalid)} validation error{'s' if len(invalid) != 1 else ''}; first: {invalid[0]}"
            body = problem(
                400,
                detail,
                path,
                title=VALIDATION_TITLE,
                substatus="CustomerInvalidModelState",
                errors=invalid,
            )
            return _problem_response(400, body)
        with self.lock:
            customer_id = self._lookup(field_name, value)
            if customer_id is None:
                return self._not_found(path, field_name, value)
            customer = self.state.get(CUSTOMERS, str(customer_id))
            with self.state.batch():
                self.state.delete(CUSTOMERS, str(customer_id))
                sequence = self.state.next_id(DELETION)
                self.state.put(DELETED, str(sequence), {"id": customer_id, "anonymized": anonymize})
                self.record_effect("delete", effect_key(_identity(customer), customer))
            for name in (*IDENTIFIER_FIELDS, "id"):
                if name in customer:
                    self._index[name].pop(_index_key(name, customer[name]), None)
        return Response(200)

    def admin(self) -> dict[str, tuple[tuple[str, ...], AdminRoute]]:
        return {"/_sandbox/customers": (("GET",), self._admin_customers)}

    def _admin_customers(self, request: Request) -> Response:
        return Response(200, {"customers": self.customers(), "deleted": self.deleted})


def _identity(customer: JsonObject) -> str:
    """Who a ledger effect is about: the customer's e-mail (lower case), else its platform id."""
    email = customer.get("email")
    return str(email).lower() if email else f"id:{customer['id']}"


def _problem_response(status: int, body: JsonObject, headers: dict[str, str] | None = None) -> Response:
    return Response(status, body, headers or {}, "application/problem+json; charset=utf-8")


class _IndexChanges:
    """Changes to one identifier index made while records are applied, over the index itself: lookups see
    them, the index is untouched until ``apply()``."""

    __slots__ = ("base", "changes")

    def __init__(self, base: dict[str, int]) -> None:
        self.base = base
        self.changes: dict[str, int | None] = {}  # None: removed

    def get(self, key: str) -> int | None:
        if key in self.changes:
            return self.changes[key]
        return self.base.get(key)

    def __setitem__(self, key: str, value: int) -> None:
        self.changes[key] = value

    def pop(self, key: str, default: None = None) -> int | None:
        found = self.get(key)
        self.changes[key] = None
        return found if found is not None else default

    def apply(self) -> None:
        for key, value in self.changes.items():
            if value is None:
                self.base.pop(key, None)
            else:
                self.base[key] = value


def _merge(customer: JsonObject, record: JsonObject, index: dict[str, _IndexChanges]) -> None:
    """Replace provided fields, merge attributes by name and consents by id; keep indexes in step."""
    for name, value in record.items():
        if name == "id":
            continue
        if name == "customAttributes":
            attributes = {item["name"]: item for item in customer["customAttributes"]}
            for item in value:
                attributes[item["name"]] = dict(item)
            customer["customAttributes"] = list(attributes.values())
        elif name == "consentsData":
            consents = {item["id"]: item for item in customer["consentsData"]["consents"]}
            for item in value.get("consents", []):
                consents[item["id"]] = dict(item)
            customer["consentsData"] = {"consents": list(consents.values())}
        else:
            if name in IDENTIFIER_FIELDS:
                if name in customer:
                    index[name].pop(_index_key(name, customer[name]), None)
                index[name][_index_key(name, value)] = customer["id"]
            customer[name] = value


def _view(customer: JsonObject) -> JsonObject:
    """The GET representation: every documented field, with platform-computed metrics at defaults."""
    view: JsonObject = {
        "id": customer["id"],
        "email": customer.get("email"),
        "phone": customer.get("phone"),
        "crmId": customer.get("crmId"),
    }
    if "visitorId" in customer:
        view["visitorId"] = customer["visitorId"]
    view.update(
        {
            "firstName": customer.get("firstName"),
            "lastName": customer.get("lastName"),
            "dateOfBirth": customer.get("dateOfBirth"),
            "gender": customer.get("gender"),
            "rfmSegment": None,
            "totalSpent": 0,
            "totalOrders": 0,
            "totalOrderReturns": 0,
            "avgOrder": 0,
            "avgPricePoint": 0,
            "lastOrder": None,
            "avgTimeBetweenOrdersInDays": 0,
            "currencySymbol": None,
            "customAttributes": copy.deepcopy(customer["customAttributes"]),
            "consentsData": copy.deepcopy(customer["consentsData"]),
        }
    )
    return view


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sandbox in the foreground until interrupted (Ctrl-C or SIGTERM)."""
    parser = standalone_parser("expertsender", "Local ExpertSender CDP /customers sandbox.", 8701)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("EXPERTSENDER_SANDBOX_API_KEY"),
        help="the key clients must send in x-api-key (default: $EXPERTSENDER_SANDBOX_API_KEY)",
    )
    parser.add_argument("--max-batch", type=int, default=1000, help="customers per POST (default 1000)")
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("--api-key (or EXPERTSENDER_SANDBOX_API_KEY) is required")
    sandbox = ExpertSenderSandbox(
        args.api_key, host=args.host, port=args.port, max_batch=args.max_batch, state_path=args.state_path
    )
    serve_until_stopped(sandbox, "ExpertSender sandbox listening on {url} (admin routes under /_sandbox/)")


if __name__ == "__main__":
    main()
