"""Convertlab DM Hub REST client: tokens, customers, customer events and every list call of seed 003.

Where each call comes from:

* token, new-version apps: ``GET /v2/oauth2/token?app_id=&secret=&grant_type=client_credentials`` (seed 000);
  old-version apps: ``GET /security/accesstoken?grant_type=client_credentials&appid=&secret=`` (not in the
  seeds: DM Hub's public v1 reference, see vendor-notes).
* lists (seed 003): ``POST /v1/lists``, ``DELETE /v1/lists/{id}``, ``GET /v1/lists``, ``POST /v1/listMembers``,
  ``DELETE /v1/listMembers/{id}``, ``POST /v1/listservice/removeFromList``, ``POST /v1/listMembersBatch``,
  ``GET /v1/listMembers``, ``GET /v1/listservice/memberCount``.
* customers and events (not in the seeds: DM Hub's public v1 reference): ``POST /v1/customerandidentities``,
  ``GET /v1/customeridentities``, ``DELETE /v1/customers/{id}``, ``POST /v1/customerevents``.

v1 calls carry the token in the query string (``?access_token=``), v2 in an ``Authorization: Bearer``
header. Either way a URL or header with the token never leaves this module: errors name the call by its
route (``GET /v1/lists``) and the vendor's error code and words, nothing else.

DM Hub reports errors as ``{"error_code": n, "error_description"}`` (v1, often with HTTP 200) or
``{"success": false, "error": {"code", "message"}}`` (v2). Both are errors, whatever the HTTP status.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, quote_plus

from forwarder.integrations.base import Budget, Outcome, TokenError, parse_retry_after, sent_unanswered

if TYPE_CHECKING:
    import requests

#: Error codes that mean "this token is no good" (invalid, replaced by a newer one, expired). DM Hub does
#: not publish its code list; these are the codes its v1 API and the sandbox use. Configurable per
#: integration (``token_error_codes``).
TOKEN_ERROR_CODES = (40001, 40014, 42001)
#: v2's "call quota / rate exceeded": retried like a 429.
RATE_LIMIT_CODES = (400013,)
#: "permission is not enough": the application lacks an API permission; a configuration problem, retried.
PERMISSION_CODES = (40201,)
#: The sandbox's answer to an event whose ``externalId`` DM Hub already holds for the customer (DM Hub says
#: only that events have a unique constraint): the event exists, which is what a retry wants.
DUPLICATE_EVENT_CODES = (40901,)
#: Unknown id (list, member, customer).
NOT_FOUND_CODES = (40400,)

ApiVersion = Literal["v1", "v2"]


class OutOfTime(Exception):
    """The invocation's budget does not allow another vendor call."""


@dataclass
class DmHubError(Exception):
    """A DM Hub call failed. ``route`` is ``METHOD /path`` (never a URL: v1 URLs carry the token)."""

    route: str
    status: int
    code: int | None
    message: str
    retry_after: float | None = None
    token_codes: tuple[int, ...] = field(default=TOKEN_ERROR_CODES)
    ambiguous: bool = False  # no answer came: the request may have been applied

    def __str__(self) -> str:
        code = f" error_code {self.code}" if self.code is not None else ""
        return f"DM Hub answered HTTP {self.status}{code} to {self.route}: {self.message}"

    @property
    def token_refused(self) -> bool:
        return self.status == 401 or (self.code is not None and self.code in self.token_codes)

    @property
    def not_found(self) -> bool:
        return self.status == 404 or (self.code is not None and self.code in NOT_FOUND_CODES)

    @property
    def duplicate(self) -> bool:
        return self.code is not None and self.code in DUPLICATE_EVENT_CODES

    def outcome(self) -> Outcome:
        """Delivered / retry / rejected, as the deliver flow reads it."""
        reason = str(self)
        if self.token_refused:
            return Outcome.refused_token(f"{reason} (the token is renewed once)", status=self.status)
        if self.status == 429 or (self.code is not None and self.code in RATE_LIMIT_CODES):
            return Outcome.retry(
                f"DM Hub throttled the request ({reason})", retry_after=self.retry_after, status=self.status
            )
        if self.status >= 500 or self.status == 408:
            return Outcome.unavailable(
                f"DM Hub is unavailable ({reason})",
                retry_after=self.retry_after,
                status=self.status,
                ambiguous=self.ambiguous,
            )
        if self.status == 403 or (self.code is not None and self.code in PERMISSION_CODES):
            return Outcome.retry(
                f"{reason}; grant the application this API permission in DM Hub", status=self.status
            )
        return Outcome.rejected(reason, [self.message] if self.message else [], status=self.status)


def _error_of(response: requests.Response) -> tuple[int | None, str] | None:
    """(code, message) when the answer is an error (v1 or v2 shape, any HTTP status), else None."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("error_code")
        if code not in (None, 0, "0"):
            return _int_or_none(code), str(body.get("error_description") or "")[:300]
        if body.get("success") is False:
            error = body.get("error") if isinstance(body.get("error"), dict) else {}
            assert isinstance(error, dict)
            message = str(error.get("message") or "")
            field_errors = error.get("fieldErrors")
            if field_errors:
                message += f" ({field_errors})"
            return _int_or_none(error.get("code")), message[:300]
    if response.status_code >= 400:
        text = response.text.strip().replace("\n", " ")[:200]
        return None, text or (response.reason or "")
    return None


def _without(text: str, secret: str) -> str:
    """``text`` without ``secret`` (as is or URL-encoded): a vendor or a proxy may echo the request URL,
    which on v1 carries the token (and on the token call, the secret), in its error text."""
    for form in {secret, quote(secret, safe=""), quote_plus(secret, safe="")}:
        if form:
            text = text.replace(form, "***")
    return text


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def fetch_token(
    base_url: str, api_version: ApiVersion, app_id: str, secret: str, http: requests.Session, timeout: float
) -> tuple[str, float]:
    """A new access token and its lifetime in seconds. Raises TokenError (never naming the secret)."""
    if api_version == "v2":
        route, url = "GET /v2/oauth2/token", f"{base_url}/v2/oauth2/token"
        params = {"app_id": app_id, "secret": secret, "grant_type": "client_credentials"}
    else:
        route, url = "GET /security/accesstoken", f"{base_url}/security/accesstoken"
        params = {"grant_type": "client_credentials", "appid": app_id, "secret": secret}
    import requests  # deferred: importing requests costs cold starts that send nothing

    try:
        response = http.get(
            url, params=params, headers={"Accept": "application/json"}, timeout=(3.05, timeout)
        )
    except requests.RequestException as error:
        raise TokenError(f"DM Hub token call {route} failed: {type(error).__name__}") from None
    problem = _error_of(response)
    if problem is not None:
        code, message = problem
        message = _without(message, secret)
        shown = f" error_code {code}" if code is not None else ""
        raise TokenError(f"DM Hub refused a token ({route}: HTTP {response.status_code}{shown}: {message})")
    try:
        body = response.json()
        token = str(body["access_token"])
        lifetime = float(body.get("expires_in") or 7200)
    except (ValueError, KeyError, TypeError):
        raise TokenError(f"DM Hub answered {route} without an access_token") from None
    if not token:
        raise TokenError(f"DM Hub answered {route} with an empty access_token")
    return token, lifetime


class DmHubClient:
    """One application's calls with one token. Methods return the vendor's JSON and raise DmHubError."""

    def __init__(
        self,
        base_url: str,
        api_version: ApiVersion,
        token: str,
        http: requests.Session,
        *,
        timeout: float = 10.0,
        budget: Budget | None = None,
        token_codes: tuple[int, ...] = TOKEN_ERROR_CODES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self._token = token
        self.http = http
        self.timeout = timeout
        self.budget = budget or Budget()
        self.token_codes = token_codes
        self.calls = 0

    def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> Any:
        route = f"{method} {path.split('?')[0]}"
        if not self.budget.allows(3.05 + self.timeout):
            raise OutOfTime(route)
        query = {key: value for key, value in (params or {}).items() if value is not None}
        headers = {"Accept": "application/json"}
        if self.api_version == "v2":
            headers["Authorization"] = f"Bearer {self._token}"
        else:
            query["access_token"] = self._token
        self.calls += 1
        import requests  # deferred: importing requests costs cold starts that send nothing

        try:
            response = self.http.request(
                method,
                f"{self.base_url}{path}",
                params=query,
                json=json,
                headers=headers,
                timeout=(3.05, self.timeout),
            )
        except requests.RequestException as error:
            # The exception's text holds the URL, and a v1 URL holds the token: only its type is kept.
            raise DmHubError(
                route, 503, None, f"no answer ({type(error).__name__})", ambiguous=sent_unanswered(error)
            ) from None
        problem = _error_of(response)
        if problem is not None:
            code, message = problem
            raise DmHubError(
                route,
                response.status_code,
                code,
                _without(message, self._token),
                parse_retry_after(response.headers.get("Retry-After")),
                self.token_codes,
            )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise DmHubError(route, response.status_code, None, "the answer is not JSON") from None

    # --- customers and events --------------------------------------------------------------------------------

    def upsert_customer(self, customer: dict[str, Any], identities: list[dict[str, Any]]) -> dict[str, Any]:
        """Identify or create the customer (a bound identity updates its customer; fields are never blanked)."""
        body = self.request(
            "POST", "/v1/customerandidentities", json={"customer": customer, "customerIdentities": identities}
        )
        return dict(body or {})

    def find_customer(self, identity_type: str, identity_value: str) -> int | None:
        """The id of the customer the identity is bound to, or None."""
        found = self.request(
            "GET",
            "/v1/customeridentities",
            params={"identityType": identity_type, "identityValue": identity_value},
        )
        rows = found.get("rows", []) if isinstance(found, dict) else found
        for row in rows or []:
            if isinstance(row, dict) and row.get("customerId") is not None:
                return int(row["customerId"])
        return None

    def delete_customer(self, customer_id: int) -> None:
        self.request("DELETE", f"/v1/customers/{int(customer_id)}")

    def create_event(self, event: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/customerevents", json=event) or {})

    # --- lists: every call of seed 003 ---------------------------------------------------------------------

    def create_list(self, name: str) -> dict[str, Any]:
        """``POST /v1/lists``: DM Hub does not check that names are unique."""
        return dict(self.request("POST", "/v1/lists", json={"name": name}) or {})

    def delete_list(self, list_id: int) -> None:
        """``DELETE /v1/lists/{id}``: the list goes, its customers stay."""
        self.request("DELETE", f"/v1/lists/{int(list_id)}")

    def lists_page(
        self, *, rows: int | None = None, page: int = 1, sidx: str | None = None, sord: str | None = None
    ) -> dict[str, Any]:
        """``GET /v1/lists``: ``{"page", "records", "rows", "total"}`` (``total`` counts pages)."""
        return dict(
            self.request("GET", "/v1/lists", params={"rows": rows, "page": page, "sidx": sidx, "sord": sord})
            or {}
        )

    def iter_lists(self, rows: int = 100) -> Iterator[dict[str, Any]]:
        """Every list, page after page."""
        page = 1
        while True:
            answer = self.lists_page(rows=rows, page=page)
            found = answer.get("rows") or []
            yield from found
            pages = int(answer.get("total") or 0)
            if not found or page >= pages:
                return
            page += 1

    def add_member(self, customer_id: int, list_id: int) -> dict[str, Any]:
        """``POST /v1/listMembers``: one customer into one list."""
        body = self.request(
            "POST", "/v1/listMembers", json={"data": {"customerId": customer_id, "listId": list_id}}
        )
        return dict((body or {}).get("data") or {})

    def add_members(self, items: list[dict[str, int]]) -> list[dict[str, Any]]:
        """``POST /v1/listMembersBatch``: ``[{"customerId", "listId"}, ...]`` in one call."""
        body = self.request("POST", "/v1/listMembersBatch", json={"items": items})
        return list((body or {}).get("items") or [])

    def remove_member(self, member_id: int) -> None:
        """``DELETE /v1/listMembers/{id}`` (the membership's id, not the customer's)."""
        self.request("DELETE", f"/v1/listMembers/{int(member_id)}")

    def remove_members(self, list_id: int, customer_ids: list[int]) -> Any:
        """``POST /v1/listservice/removeFromList``: several customers out of one list."""
        return self.request(
            "POST",
            "/v1/listservice/removeFromList",
            params={"customerIds": ",".join(str(int(value)) for value in customer_ids), "listId": list_id},
        )

    def members_page(
        self,
        *,
        list_id: int | None = None,
        customer_id: int | None = None,
        since_id: int | None = None,
        rows: int | None = None,
        sidx: str | None = None,
        sord: str | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /v1/listMembers``: one page of memberships, keyset-paged by ``since_id`` on ``sidx``."""
        if rows is not None and not 1 <= rows <= 10000:
            raise ValueError("rows must be between 1 and 10000 (DM Hub's limit)")
        body = self.request(
            "GET",
            "/v1/listMembers",
            params={
                "listId": list_id,
                "customerId": customer_id,
                "sinceId": since_id,
                "rows": rows,
                "sidx": sidx,
                "sord": sord,
            },
        )
        return list((body or {}).get("items") or [])

    def iter_members(self, list_id: int, rows: int = 1000) -> Iterator[dict[str, Any]]:
        """Every membership of a list, by ascending member id (keyset paging: ``sinceId`` = last id seen)."""
        since: int | None = None
        while True:
            page = self.members_page(list_id=list_id, since_id=since, rows=rows, sidx="id", sord="asc")
            yield from page
            if len(page) < rows:
                return
            since = int(page[-1]["id"])

    def member_count(
        self, list_id: int, *, joined_since: str | None = None, joined_to: str | None = None
    ) -> int:
        """``GET /v1/listservice/memberCount``; the window's bounds are UTC ``2016-11-11T11:11:11``."""
        body = self.request(
            "GET",
            "/v1/listservice/memberCount",
            params={"listId": list_id, "joinListDateSince": joined_since, "joinListDateTo": joined_to},
        )
        if isinstance(body, dict):
            return int(body.get("count") or body.get("total") or 0)
        return int(body or 0)
