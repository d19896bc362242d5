"""The embedded stack's console: one server-rendered page (no JavaScript) at ``/_console/`` on its own port.

It shows the queues' depths, the latest requests with their status per integration (the status route's
view), the rejects trail and the dead letters with their reasons, and has one button that changes anything:
replay the dead letters (as ``forwarder replay dead-letters``). It needs the stack's admin secret, generated
into the state folder (``console-secret``, mode 0600) on the first start and printed by ``forwarder run``;
it is never logged. A browser signs in once with it (a session cookie: HttpOnly, SameSite=Strict); a script
may send it as ``Authorization: Bearer <secret>``. Secrets are compared in constant time; the replay form
carries the session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import os
import secrets as random_secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from forwarder import status
from forwarder_local.queue import DurableQueueStore
from forwarder_local.replay import replay
from forwarder_local.stores import LocalDeliveryLog

PREFIX = "/_console/"
COOKIE = "forwarder_console"
SECRET_FILE = "console-secret"
#: Rows each table shows (the newest first for requests; the trails in their queue order).
ROWS = 50
MAX_FORM_BYTES = 4096
logger = logging.getLogger(__name__)


def admin_secret(state_dir: Path) -> str:
    """The console's admin secret: read from the state folder, or generated there on the first start."""
    path = state_dir / SECRET_FILE
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    secret = random_secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secret + "\n")
    return secret


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.delivered{color:#176b2c}.pending{color:#8a6d00}
.rejected,.dead_lettered{color:#a31515}.superseded{color:#555}small{color:#666}
"""


def _page(title: str, body: str) -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    ).encode()


class LocalConsole:
    """The console's HTTP server on ``host:port`` (0 picks a free port)."""

    def __init__(
        self,
        store: DurableQueueStore,
        deliveries: LocalDeliveryLog,
        secret: str,
        *,
        queues: Callable[[], list[str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.store = store
        self.deliveries = deliveries
        self._secret = secret
        self._queues = queues or store.list_queues
        self._sessions: dict[str, str] = {}  # sha256 of a session token -> its CSRF token
        self._lock = threading.Lock()
        console = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return  # a request line may carry a query; nothing of a request is logged

            def do_GET(self) -> None:
                console._serve(self, "GET")

            def do_POST(self) -> None:
                console._serve(self, "POST")

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}{PREFIX}"

    def start(self) -> LocalConsole:
        self._thread = threading.Thread(target=self._server.serve_forever, name="console", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- requests ---------------------------------------------------------------------------------------

    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        try:
            self._route(request, method)
        except Exception:  # a defect here: answered 500, logged without the request
            logger.exception("console: unexpected error")
            self._send(
                request, 500, _page("Error", "<h1>Something went wrong</h1><p>See the stack's log.</p>")
            )

    def _route(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(request.path).path
        if path in ("/_console", "/"):
            self._send(request, 303, b"", {"Location": PREFIX})
            return
        if method == "POST" and path == PREFIX + "login":
            self._login(request)
            return
        session = self._session(request)
        if session is None:
            self._send(request, 401, self._login_page())
            return
        if method == "GET" and path == PREFIX:
            query = parse_qs(urlsplit(request.path).query)
            self._send(request, 200, self._dashboard(session, query.get("replayed", [""])[0]))
        elif method == "POST" and path == PREFIX + "replay":
            self._replay(request, session)
        elif method == "POST" and path == PREFIX + "logout":
            self._forget(request)
            self._send(request, 303, b"", {"Location": PREFIX, "Set-Cookie": self._cookie("", 0)})
        else:
            self._send(request, 404, _page("Not found", "<h1>Not found</h1>"))

    def _form(self, request: BaseHTTPRequestHandler) -> dict[str, str]:
        try:
            length = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = request.rfile.read(min(max(length, 0), MAX_FORM_BYTES)) if length > 0 else b""
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0] for name, values in fields.items() if values}

    def _login(self, request: BaseHTTPRequestHandler) -> None:
        given = self._form(request).get("secret", "").strip()
        if not hmac.compare_digest(given.encode(), self._secret.encode()):
            self._send(request, 401, self._login_page("That is not the admin secret."))
            return
        token, csrf = random_secrets.token_urlsafe(32), random_secrets.token_urlsafe(16)
        with self._lock:
            self._sessions[_digest(token)] = csrf
        self._send(request, 303, b"", {"Location": PREFIX, "Set-Cookie": self._cookie(token, 12 * 3600)})

    @staticmethod
    def _cookie(token: str, max_age: int) -> str:
        return f"{COOKIE}={token}; Path={PREFIX}; HttpOnly; SameSite=Strict; Max-Age={max_age}"

    def _token(self, request: BaseHTTPRequestHandler) -> str | None:
        for part in (request.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value:
                return value
        return None

    def _session(self, request: BaseHTTPRequestHandler) -> str | None:
        """The session's CSRF token, "" for a script that sent the secret itself, None when not signed in."""
        authorization = request.headers.get("Authorization") or ""
        if authorization.startswith("Bearer "):
            given = authorization[len("Bearer ") :].strip()
            return "" if hmac.compare_digest(given.encode(), self._secret.encode()) else None
        token = self._token(request)
        if token is None:
            return None
        with self._lock:
            return self._sessions.get(_digest(token))

    def _forget(self, request: BaseHTTPRequestHandler) -> None:
        token = self._token(request)
        if token is not None:
            with self._lock:
                self._sessions.pop(_digest(token), None)

    def _replay(self, request: BaseHTTPRequestHandler, csrf: str) -> None:
        form = self._form(request)
        if csrf and not hmac.compare_digest(form.get("csrf", "").encode(), csrf.encode()):
            self._send(
                request, 403, _page("Refused", "<h1>Refused</h1><p>Reload the console and try again.</p>")
            )
            return
        done = replay(self.store, "delivery-dlq", integration=form.get("integration") or None)
        self._send(request, 303, b"", {"Location": f"{PREFIX}?replayed={done.moved}"})

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler, code: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        request.send_response(code)
        request.send_header("Content-Type", "text/html; charset=utf-8")
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Cache-Control", "no-store")
        request.send_header("X-Frame-Options", "DENY")
        request.send_header(
            "Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
        )
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)

    # --- pages ------------------------------------------------------------------------------------------

    @staticmethod
    def _login_page(problem: str = "") -> bytes:
        note = f'<p class="rejected" id="problem">{html.escape(problem)}</p>' if problem else ""
        return _page(
            "Forwarder console: sign in",
            "<h1>Forwarder console</h1>"
            f"{note}<p>Give the admin secret <code>forwarder run</code> printed (it is in the state folder's "
            f"<code>{SECRET_FILE}</code>).</p>"
            f'<form method="post" action="{PREFIX}login"><label>Admin secret '
            '<input type="password" name="secret" id="secret" autocomplete="current-password" required>'
            '</label> <button type="submit" id="sign-in">Sign in</button></form>',
        )

    def _dashboard(self, csrf: str, replayed: str) -> bytes:
        parts = ["<h1>Forwarder console</h1>"]
        if replayed.isascii() and replayed.isdigit():
            parts.append(
                f'<p id="replayed">Replayed {int(replayed)} dead letter(s) to the delivery queue.</p>'
            )
        parts.append('<p><a href="/_console/">Refresh</a></p>')
        parts.append(self._queue_table())
        parts.append(self._requests_table())
        parts.append(self._rejects_table())
        parts.append(self._dead_letters_section(csrf))
        parts.append(
            f'<form method="post" action="{PREFIX}logout"><button type="submit">Sign out</button></form>'
        )
        return _page("Forwarder console", "".join(parts))

    def _queue_table(self) -> str:
        rows = []
        for name in self._queues():
            counts = self.store.counts(name)
            rows.append(
                f'<tr id="queue-{html.escape(name)}"><td>{html.escape(name)}</td><td>{counts["visible"]}</td>'
                f"<td>{counts['in_flight']}</td><td>{counts['delayed']}</td></tr>"
            )
        return (
            '<h2>Queues</h2><table id="queues"><tr><th>queue</th><th>visible</th><th>in flight</th>'
            f"<th>delayed</th></tr>{''.join(rows)}</table>"
        )

    def _requests_table(self) -> str:
        rows = []
        for record in self.deliveries.recent(ROWS):
            _, deliveries = self.deliveries.request(record.request_id)
            document = status.view(record, deliveries)
            cells = []
            for entry in document["integrations"]:
                why = entry.get("reason") or entry.get("last_error") or ""
                errors = "".join(
                    f"<br><small>{html.escape(error)}</small>" for error in entry.get("errors", [])
                )
                cells.append(
                    f'<span class="{html.escape(entry["status"])}">{html.escape(entry["integration"])}: '
                    f"{html.escape(entry['status'])}</span> <small>({entry['attempts']} attempt(s))</small>"
                    + (f"<br><small>{html.escape(why)}</small>" if why else "")
                    + errors
                )
            if document.get("reason"):
                cells.append(f'<span class="rejected">rejected: {html.escape(document["reason"])}</span>')
            rows.append(
                f'<tr class="request" data-request-id="{html.escape(record.request_id)}">'
                f"<td>{html.escape(record.received_at)}</td><td><code>{html.escape(record.request_id)}</code></td>"
                f"<td>{html.escape(record.client)}</td><td>{html.escape(record.group_key)}</td>"
                f"<td>{html.escape(record.action)}</td>"
                f'<td class="{html.escape(document["status"])}">{html.escape(document["status"])}</td>'
                f"<td>{'<br>'.join(cells)}</td></tr>"
            )
        return (
            f'<h2>Recent requests</h2><table id="requests"><tr><th>received</th><th>request id</th><th>client</th>'
            f"<th>group key</th><th>action</th><th>status</th><th>per integration</th></tr>{''.join(rows)}</table>"
        )

    def _rejects_table(self) -> str:
        rows = []
        for entry in self.store.peek("rejects", ROWS):
            document = _document(entry["body"])
            where = " ".join(
                str(part)
                for part in (document.get("stage"), document.get("integration") or document.get("source"))
                if part
            )
            errors = "".join(
                f"<br><small>{html.escape(str(error))}</small>" for error in document.get("errors", [])
            )
            rows.append(
                f'<tr class="reject" data-request-id="{html.escape(str(document.get("request_id", "")))}">'
                f"<td>{html.escape(str(document.get('rejected_at', '')))}</td>"
                f"<td><code>{html.escape(str(document.get('request_id', '')))}</code></td>"
                f"<td>{html.escape(where)}</td><td>{html.escape(str(document.get('reason', '')))}{errors}</td></tr>"
            )
        return (
            '<h2>Rejected for good</h2><table id="rejects"><tr><th>rejected</th><th>request id</th><th>where</th>'
            f"<th>reason</th></tr>{''.join(rows)}</table>"
        )

    def _dead_letters_section(self, csrf: str) -> str:
        rows = []
        integrations: set[str] = set()
        for entry in self.store.peek("delivery-dlq", ROWS):
            document = _document(entry["body"])
            # a dead letter the deliver flow wrote carries its delivery; one the redrive policy moved is one
            delivery = document.get("delivery") or (document if document.get("kind") == "delivery" else {})
            integration = str(delivery.get("integration", ""))
            integrations.add(integration)
            rows.append(
                f'<tr class="dead-letter" data-request-id="{html.escape(str(delivery.get("request_id", "")))}">'
                f"<td>{html.escape(str(document.get('dead_lettered_at', '')))}</td>"
                f"<td><code>{html.escape(str(delivery.get('request_id', '')))}</code></td>"
                f"<td>{html.escape(integration)}</td><td>{html.escape(str(document.get('attempts', '')))}</td>"
                f"<td>{html.escape(str(document.get('reason', 'moved by the redrive policy: no reason recorded')))}</td>"
                "</tr>"
            )
        options = "".join(
            f'<option value="{html.escape(name)}">{html.escape(name)}</option>'
            for name in sorted(integrations)
            if name
        )
        button = (
            f'<form method="post" action="{PREFIX}replay" id="replay-form">'
            f'<input type="hidden" name="csrf" value="{html.escape(csrf)}">'
            f'<label>Integration <select name="integration"><option value="">all</option>{options}</select></label> '
            '<button type="submit" id="replay">Replay dead letters</button></form>'
            if rows
            else "<p>No dead letters.</p>"
        )
        return (
            '<h2>Dead letters</h2><table id="dead-letters"><tr><th>dead-lettered</th><th>request id</th>'
            f"<th>integration</th><th>attempts</th><th>reason</th></tr>{''.join(rows)}</table>{button}"
        )


def _document(body: str) -> dict[str, Any]:
    try:
        found = json.loads(body)
    except json.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}
