"""The machinery every vendor sandbox shares: a threaded HTTP server, the request log, fault injection,
latency, expiring tokens, state that survives a restart, and the ``/_sandbox/`` admin routes.

A vendor sandbox subclasses :class:`Sandbox` and implements :meth:`Sandbox.vendor` (its documented routes,
auth included), optionally :meth:`Sandbox.admin` (extra admin routes) and :meth:`Sandbox.load` (rebuild
in-memory indexes from :attr:`Sandbox.state` after a restart). Everything else is here, once.

Admin routes (no credentials; never logged, delayed nor faulted), common to every sandbox:

* ``POST /_sandbox/faults`` ``{"status", "times", "retry_after", "method", "path_prefix", "body"}``
* ``POST /_sandbox/latency`` ``{"seconds": 0.5}``
* ``POST /_sandbox/chaos`` ``{"rate": 0.2, "statuses": [503, 429], "retry_after": 2, "slow_rate": 0.01,
  "slow_seconds": 3, "slow_methods": ["POST", ...], "exempt": ["/tokens"], "seed": 7}``: random faults
  (``{"rate": 0}`` turns them off); ``GET /_sandbox/chaos`` shows the settings and the outage left
* ``POST /_sandbox/outage`` ``{"seconds": 60, "retry_after": null}``: every vendor request answers 503 until then
* ``GET /_sandbox/counters``: vendor requests answered since the state began (persisted), by route and fault
* ``POST /_sandbox/reset``
* ``POST /_sandbox/tokens/expire`` (sandboxes with tokens): every token issued so far stops working
* ``GET /_sandbox/requests`` ``{"requests": [...]}`` (credentials redacted)
* ``GET /_sandbox/state/{collection}?offset=0&limit=100`` ``{"items", "total", "offset", "next_offset"}``:
  a paged read of the persisted state (``GET /_sandbox/state`` lists the collections).

Chaos, for proving delivery guarantees (``make chaos``). A vendor request (admin routes never) is answered,
in this order of precedence: by an injected fault (``inject``: explicit, counted down); during an outage,
503 before anything is applied; with probability ``slow_rate`` (for ``slow_methods``, by default the writes),
**applied normally and answered only after** ``slow_seconds`` (past the client's read timeout, the vendor did
the work and the client does not know it: the case that tests exactly-once); with probability ``rate``, one
of ``statuses`` before anything is applied (a 429 with ``Retry-After: retry_after``). Paths starting with a
sandbox's :attr:`Sandbox.chaos_exempt` prefixes (its token endpoints) get no random faults, so the chaos is
about deliveries; an outage spares nothing.

The effects ledger: a vendor module calls :meth:`Sandbox.record_effect` (``kind``, ``key``) in the same state
batch as the change it applies, so it persists with the change and survives a kill. A (kind, key) counted
twice is one request applied twice. Keys end in the request's op marker (:func:`op_marker`: the first string
of the applied document starting with ``op:``, which a test harness puts in every record), else a digest of
the applied document. The ledger reads back as the ``effects`` collection (``GET /_sandbox/state/effects``,
items ``{"kind", "key", "count"}``) and through :meth:`Sandbox.effects`.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Final, Self
from urllib.parse import parse_qs, urlsplit

JsonObject = dict[str, Any]

REDACTED: Final = "***"
MAX_BODY_BYTES: Final = 10 * 1024 * 1024
FAULT_FIELDS: Final = frozenset({"status", "times", "retry_after", "method", "path_prefix", "body"})
CHAOS_FIELDS: Final = frozenset(
    {"rate", "statuses", "retry_after", "slow_rate", "slow_seconds", "slow_methods", "exempt", "seed"}
)
OUTAGE_FIELDS: Final = frozenset({"seconds", "retry_after"})
WRITE_METHODS: Final = ("POST", "PUT", "PATCH", "DELETE")
#: The collection of the effects ledger, and the prefix of an op marker in an applied document.
EFFECTS: Final = "effects"
OP_PREFIX: Final = "op:"
#: Persisted counters of answered vendor requests (``<prefix>`` total, ``<prefix>:<fault>``, by route).
REQUESTS_COUNTER: Final = "sandbox.requests"
ROUTE_COUNTER: Final = "sandbox.route."
_ID_SEGMENT: Final = re.compile(r"[0-9]+|.*[@%].*|[0-9a-fA-F-]{16,}|.*[0-9]{6,}.*")
#: Header names and query parameters whose values the request log never keeps.
SECRET_HEADERS: Final = frozenset({"authorization", "x-api-key", "cookie"})
SECRET_PARAMS: Final = frozenset({"access_token", "secret", "app_id", "appid", "password", "token"})


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def quote_value(value: object, limit: int = 80) -> str:
    """Render a client value for an error message: quoted, one line, bounded."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'"


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"


@dataclass(frozen=True)
class Request:
    """One vendor request as the sandbox sees it; ``body`` is parsed JSON (or None), ``form`` a parsed form."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes
    body: Any = None
    body_error: str | None = None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass(frozen=True)
class RecordedRequest:
    """One vendor request as the sandbox saw it (credentials redacted)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    status: int
    received_at: float

    def to_dict(self) -> JsonObject:
        return {
            "method": self.method,
            "path": self.path,
            "query": copy.deepcopy(self.query),
            "headers": dict(self.headers),
            "body": copy.deepcopy(self.body),
            "status": self.status,
            "received_at": self.received_at,
        }


@dataclass
class Fault:
    status: int
    remaining: int
    retry_after: int | None
    method: str | None
    path_prefix: str | None
    body: JsonObject | None

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)


@dataclass(frozen=True)
class Chaos:
    """Random faults (see the module docstring); ``rate`` and ``slow_rate`` are probabilities per request."""

    rate: float = 0.0
    statuses: tuple[int, ...] = (503, 429)
    retry_after: int | None = 2
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    slow_methods: frozenset[str] = frozenset(WRITE_METHODS)
    exempt: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.rate > 0 or self.slow_rate > 0

    def to_dict(self) -> JsonObject:
        return {
            "rate": self.rate,
            "statuses": list(self.statuses),
            "retry_after": self.retry_after,
            "slow_rate": self.slow_rate,
            "slow_seconds": self.slow_seconds,
            "slow_methods": sorted(self.slow_methods),
            "exempt": list(self.exempt),
        }


def op_marker(document: Any) -> str | None:
    """The first string in ``document`` (depth first, in order) that starts with ``op:``, or None."""
    if isinstance(document, str):
        return document if document.startswith(OP_PREFIX) else None
    if isinstance(document, dict):
        values: list[Any] | tuple[Any, ...] = list(document.values())
    elif isinstance(document, list | tuple):
        values = document
    else:
        return None
    for value in values:
        found = op_marker(value)
        if found is not None:
            return found
    return None


def digest(document: Any) -> str:
    """A short, stable digest of a JSON document (key order does not matter)."""
    text = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return "#" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def effect_key(identity: str, applied: Any) -> str:
    """``<identity>|<op marker of applied>``, or ``<identity>|#<digest of applied>`` when it has none."""
    return f"{identity}|{op_marker(applied) or digest(applied)}"


def route_of(path: str) -> str:
    """``/v1/customers/12`` -> ``/v1/customers/{id}``: count requests by route, not by record."""
    return "/".join("{id}" if _ID_SEGMENT.fullmatch(part) else part for part in path.split("/"))


class SandboxState:
    """Named collections of JSON documents and counters, persisted to a journal file when ``path`` is given.

    Every change is appended to the journal as one JSON line and flushed, so the state survives a restart
    (and the kill of the process); opening replays the journal and compacts it into one snapshot line.
    Callers serialise access (the sandbox's lock); :meth:`batch` writes several changes in one append.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._collections: dict[str, dict[str, Any]] = {}
        self._counters: dict[str, int] = {}
        self._pending: list[JsonObject] | None = None
        self._file: Any = None
        if self.path is not None:
            self._open()

    # -- persistence ---------------------------------------------------------------------------------------

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with self.path.open(encoding="utf-8") as journal:
                for line in journal:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        self._replay(json.loads(line))
                    except (ValueError, KeyError, TypeError):
                        break  # a torn last line (killed mid-write): everything before it stands
        snapshot = {"op": "snapshot", "collections": self._collections, "counters": self._counters}
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(snapshot, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def _replay(self, entry: JsonObject) -> None:
        op = entry["op"]
        if op == "snapshot":
            self._collections = {name: dict(items) for name, items in entry["collections"].items()}
            self._counters = {name: int(value) for name, value in entry["counters"].items()}
        elif op == "put":
            self._collections.setdefault(entry["c"], {})[entry["k"]] = entry["v"]
        elif op == "delete":
            self._collections.get(entry["c"], {}).pop(entry["k"], None)
        elif op == "counter":
            self._counters[entry["k"]] = int(entry["v"])
        elif op == "clear":
            self._collections, self._counters = {}, {}
        elif op == "batch":
            for item in entry["ops"]:
                self._replay(item)

    def _log(self, entry: JsonObject) -> None:
        if self._file is None:
            return
        if self._pending is not None:
            self._pending.append(entry)
            return
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Write the changes made inside the block as one journal line (all of them or none)."""
        if self._pending is not None:
            yield
            return
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if pending:
                self._log({"op": "batch", "ops": pending})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- reads and writes ----------------------------------------------------------------------------------

    def get(self, collection: str, key: str) -> Any:
        return self._collections.get(collection, {}).get(key)

    def items(self, collection: str) -> dict[str, Any]:
        """The live mapping of a collection (read it; change it only through put / delete)."""
        return self._collections.get(collection, {})

    def put(self, collection: str, key: str, value: Any) -> None:
        self._collections.setdefault(collection, {})[key] = value
        self._log({"op": "put", "c": collection, "k": key, "v": value})

    def delete(self, collection: str, key: str) -> None:
        if self._collections.get(collection, {}).pop(key, None) is not None:
            self._log({"op": "delete", "c": collection, "k": key})

    def counter(self, name: str) -> int:
        return self._counters.get(name, 0)

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def set_counter(self, name: str, value: int) -> None:
        self._counters[name] = value
        self._log({"op": "counter", "k": name, "v": value})

    def next_id(self, name: str) -> int:
        """Increment a counter (starting at 1) and return it."""
        value = self.counter(name) + 1
        self.set_counter(name, value)
        return value

    def collections(self) -> list[str]:
        return sorted(self._collections)

    def clear(self) -> None:
        self._collections, self._counters = {}, {}
        self._log({"op": "clear"})

    def page(self, collection: str, offset: int, limit: int) -> tuple[list[Any], int]:
        """Items in insertion order from ``offset``, at most ``limit``, and the collection's size."""
        values = list(self._collections.get(collection, {}).values())
        return copy.deepcopy(values[offset : offset + limit]), len(values)


class _BodyError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms Nagle/ACK stall

    def version_string(self) -> str:
        server = self.server
        assert isinstance(server, _Server)
        return f"{type(server.sandbox).__name__}/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        path = urlsplit(self.path).path
        try:
            raw = self._read_body()
        except _BodyError as exc:
            self.close_connection = True
            self._send(server.sandbox.error(exc.status, exc.detail, path))
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            response = server.sandbox.handle(self.command, self.path, headers, raw)
        except Exception as exc:
            response = server.sandbox.error(500, f"sandbox internal error: {type(exc).__name__}: {exc}", path)
        self._send(response)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise _BodyError(400, "The Content-Length header is not a number.") from None
        if length < 0:
            raise _BodyError(400, "The Content-Length header is negative.")
        if length > MAX_BODY_BYTES:
            raise _BodyError(413, f"The request body exceeds {MAX_BODY_BYTES} bytes.")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, "Malformed chunked request body.") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyError(413, f"The request body exceeds {MAX_BODY_BYTES} bytes.")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def _send(self, response: Response) -> None:
        data = b"" if response.body is None else json.dumps(response.body, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(response.status)
            if data:
                self.send_header("Content-Type", response.content_type)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if data and self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


AdminRoute = Callable[[Request], Response]


class Sandbox(abc.ABC):
    """A vendor sandbox: real HTTP on a daemon thread, state in :attr:`state` (persisted when ``state_path``
    is given), faults, latency and a request log. Subclasses hold ``self.lock`` while they touch state."""

    title: ClassVar[str] = "sandbox"
    #: Path prefixes that random faults spare by default (a sandbox's token endpoints).
    chaos_exempt: ClassVar[tuple[str, ...]] = ()

    def __init__(self, host: str = "127.0.0.1", port: int = 0, state_path: str | Path | None = None) -> None:
        self._host = host
        self._port = port
        self.lock = threading.RLock()
        self.state = SandboxState(state_path)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._faults: list[Fault] = []
        self._latency = 0.0
        self._requests: list[RecordedRequest] = []
        self._chaos = Chaos(exempt=self.chaos_exempt)
        self._rng = random.Random()
        self._outage_until = 0.0
        self._outage_retry_after: int | None = None
        with self.lock:
            self.load()

    # -- what a vendor module provides ---------------------------------------------------------------------

    @abc.abstractmethod
    def vendor(self, request: Request) -> Response:
        """Answer one vendor request (authentication included)."""

    def admin(self) -> dict[str, tuple[tuple[str, ...], AdminRoute]]:
        """Extra admin routes: path -> (methods, handler)."""
        return {}

    def load(self) -> None:
        """Rebuild in-memory indexes from :attr:`state` (at start-up and after a reset)."""
        return None

    def error(self, status: int, detail: str, path: str) -> Response:
        """The vendor's error body for a failure the framework detects (bad body, internal error, fault)."""
        return Response(
            status, {"status": status, "title": phrase(status), "detail": detail, "instance": path}
        )

    def expire_tokens(self) -> None:
        """Make every token issued so far stop working (sandboxes with tokens override this)."""
        raise NotImplementedError(f"{self.title} issues no tokens")

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        server = _Server((self._host, self._port), self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with self.lock:
            self.state.close()

    def __enter__(self) -> Self:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("sandbox not started")
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"http://{host_text}:{port}"

    # -- test hooks ----------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Vendor requests received so far (admin routes excluded), oldest first."""
        with self.lock:
            return list(self._requests)

    def inject(
        self,
        *,
        status: int,
        times: int = 1,
        retry_after: int | None = None,
        method: str | None = None,
        path_prefix: str | None = None,
        body: JsonObject | None = None,
    ) -> None:
        """Answer the next ``times`` matching vendor requests with ``status`` (before auth/validation)."""
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise ValueError("status must be an integer HTTP status between 200 and 599")
        if not isinstance(times, int) or isinstance(times, bool) or times < 1:
            raise ValueError("times must be a positive integer")
        if retry_after is not None and (
            not isinstance(retry_after, int) or isinstance(retry_after, bool) or retry_after < 0
        ):
            raise ValueError("retry_after must be a non-negative integer (seconds)")
        if method is not None and (not isinstance(method, str) or not method):
            raise ValueError("method must be a non-empty string")
        if path_prefix is not None and (not isinstance(path_prefix, str) or not path_prefix.startswith("/")):
            raise ValueError("path_prefix must be a string starting with '/'")
        if body is not None and not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        fault = Fault(status, times, retry_after, method, path_prefix, copy.deepcopy(body))
        with self.lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Drop the injected faults not used up yet."""
        with self.lock:
            self._faults = []

    def set_latency(self, seconds: float) -> None:
        """Sleep ``seconds`` before answering every vendor request."""
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise ValueError("seconds must be a finite, non-negative number")
        with self.lock:
            self._latency = float(seconds)

    def set_chaos(
        self,
        rate: float = 0.0,
        *,
        statuses: tuple[int, ...] | list[int] = (503, 429),
        retry_after: int | None = 2,
        slow_rate: float = 0.0,
        slow_seconds: float = 0.0,
        slow_methods: tuple[str, ...] | list[str] = WRITE_METHODS,
        exempt: tuple[str, ...] | list[str] | None = None,
        seed: int | None = None,
    ) -> None:
        """Random faults from now on (see the module docstring); ``set_chaos(0)`` turns them off.

        ``rate``: probability that a vendor request is answered with one of ``statuses`` (drawn evenly) before
        anything is applied, 429s with ``Retry-After: retry_after``. ``slow_rate``: probability that a request
        whose method is in ``slow_methods`` is applied and answered only after ``slow_seconds``. ``exempt``:
        path prefixes spared (default :attr:`chaos_exempt`). ``seed`` makes the draws repeatable."""
        for name, value in (("rate", rate), ("slow_rate", slow_rate)):
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number between 0 and 1")
        if rate + slow_rate > 1:
            raise ValueError("rate + slow_rate must not exceed 1")
        if not isinstance(statuses, list | tuple) or not statuses:
            raise ValueError("statuses must be a non-empty list of HTTP statuses")
        for status in statuses:
            if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
                raise ValueError("statuses must be integer HTTP error statuses (400-599)")
        if retry_after is not None and (
            not isinstance(retry_after, int) or isinstance(retry_after, bool) or retry_after < 0
        ):
            raise ValueError("retry_after must be a non-negative integer (seconds) or null")
        if not _is_number(slow_seconds) or slow_seconds < 0:
            raise ValueError("slow_seconds must be a finite, non-negative number")
        if slow_rate > 0 and slow_seconds <= 0:
            raise ValueError("slow_seconds must be positive when slow_rate is")
        if not isinstance(slow_methods, list | tuple) or not all(
            isinstance(method, str) and method for method in slow_methods
        ):
            raise ValueError("slow_methods must be a list of HTTP methods")
        if exempt is not None and (
            not isinstance(exempt, list | tuple)
            or not all(isinstance(prefix, str) and prefix.startswith("/") for prefix in exempt)
        ):
            raise ValueError("exempt must be a list of path prefixes starting with '/'")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError("seed must be an integer")
        chaos = Chaos(
            rate=float(rate),
            statuses=tuple(statuses),
            retry_after=retry_after,
            slow_rate=float(slow_rate),
            slow_seconds=float(slow_seconds),
            slow_methods=frozenset(method.upper() for method in slow_methods),
            exempt=tuple(exempt) if exempt is not None else self.chaos_exempt,
        )
        with self.lock:
            self._chaos = chaos
            if seed is not None:
                self._rng = random.Random(seed)

    @property
    def chaos(self) -> Chaos:
        with self.lock:
            return self._chaos

    def outage(self, seconds: float, *, retry_after: int | None = None) -> None:
        """Answer every vendor request (token endpoints included) with 503 for ``seconds`` from now, before
        anything is applied; ``outage(0)`` ends it. Not persisted: a restarted sandbox is up again."""
        if not _is_number(seconds) or seconds < 0:
            raise ValueError("seconds must be a finite, non-negative number")
        if retry_after is not None and (
            not isinstance(retry_after, int) or isinstance(retry_after, bool) or retry_after < 0
        ):
            raise ValueError("retry_after must be a non-negative integer (seconds) or null")
        with self.lock:
            self._outage_until = time.monotonic() + float(seconds)
            self._outage_retry_after = retry_after

    def outage_left(self) -> float:
        """Seconds of the current outage still to come (0: none)."""
        with self.lock:
            return max(0.0, self._outage_until - time.monotonic())

    def record_effect(self, kind: str, key: str) -> int:
        """Count one change the vendor applied (``kind``: upsert, delete, event, ...; ``key``: what it was
        applied for, see :func:`effect_key`) and return the count so far. Call it with ``self.lock`` held,
        inside the state batch of the change, so the two are persisted together."""
        entry_key = f"{kind}:{key}"
        found = self.state.get(EFFECTS, entry_key)
        count = (int(found["count"]) if found else 0) + 1
        self.state.put(EFFECTS, entry_key, {"kind": kind, "key": key, "count": count})
        return count

    def effects(self) -> list[JsonObject]:
        """The effects ledger: ``{"kind", "key", "count"}`` per change applied, in first-applied order."""
        with self.lock:
            return copy.deepcopy(list(self.state.items(EFFECTS).values()))

    def request_counts(self) -> JsonObject:
        """Vendor requests answered since the state began (persisted, so a kill does not reset them):
        ``{"requests", "faulted", "injected", "outage", "chaos", "slow", "by_route": {"POST /x": n}}``."""
        with self.lock:
            counters = self.state.counters()
        counts: JsonObject = {"requests": counters.get(REQUESTS_COUNTER, 0)}
        for kind in ("injected", "outage", "chaos", "slow"):
            counts[kind] = counters.get(f"{REQUESTS_COUNTER}:{kind}", 0)
        counts["faulted"] = counts["injected"] + counts["outage"] + counts["chaos"]
        counts["by_route"] = {
            name[len(ROUTE_COUNTER) :]: value
            for name, value in sorted(counters.items())
            if name.startswith(ROUTE_COUNTER)
        }
        return counts

    def reset(self) -> None:
        """Forget the state (effects and counters too), faults, chaos, outage, latency and the request log."""
        with self.lock:
            self.state.clear()
            self._faults = []
            self._latency = 0.0
            self._requests = []
            self._chaos = Chaos(exempt=self.chaos_exempt)
            self._outage_until = 0.0
            self.load()

    # -- request handling ----------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], raw_body: bytes) -> Response:
        """Answer one HTTP request (``headers`` with lower-case names); used by the HTTP handler."""
        split = urlsplit(target)
        body: Any = None
        body_error: str | None = None
        if raw_body:
            try:
                body = json.loads(raw_body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                body_error = str(exc)
        request = Request(
            method,
            split.path,
            parse_qs(split.query, keep_blank_values=True),
            headers,
            raw_body,
            body,
            body_error,
        )
        if split.path == "/_sandbox" or split.path.startswith("/_sandbox/"):
            return self._admin(request)
        with self.lock:
            latency = self._latency
        if latency > 0:
            time.sleep(latency)
        fault = self._take_fault(method, split.path)
        kind: str | None = "injected"
        faulted: Response | None = self._fault_response(fault, split.path) if fault is not None else None
        if faulted is None:
            faulted, kind = self._chaos_response(method, split.path)
        response = faulted if faulted is not None else self.vendor(request)
        recorded = RecordedRequest(
            method,
            split.path,
            {
                name: ([REDACTED] if name.lower() in SECRET_PARAMS else list(values))
                for name, values in request.query.items()
            },
            {name: (REDACTED if name in SECRET_HEADERS else value) for name, value in headers.items()},
            _redacted(body),
            response.status,
            time.time(),
        )
        with self.lock:
            self._requests.append(recorded)
            with self.state.batch():
                self.state.next_id(REQUESTS_COUNTER)
                self.state.next_id(f"{ROUTE_COUNTER}{method} {route_of(split.path)}")
                if kind is not None:
                    self.state.next_id(f"{REQUESTS_COUNTER}:{kind}")
            slow = self._chaos.slow_seconds if kind == "slow" else 0.0
        if slow > 0:
            time.sleep(slow)  # applied already: the answer comes after the client's read timeout
        return response

    def _chaos_response(self, method: str, path: str) -> tuple[Response | None, str | None]:
        """An outage's or a random fault's answer (``None``: let the vendor answer), and the fault's kind."""
        with self.lock:
            if time.monotonic() < self._outage_until:
                response = self.error(503, "Outage: the service is unavailable (sandbox outage).", path)
                if self._outage_retry_after is not None:
                    response.headers["Retry-After"] = str(self._outage_retry_after)
                return response, "outage"
            chaos = self._chaos
            if not chaos.active or path.startswith(chaos.exempt):
                return None, None
            draw = self._rng.random()
            if draw < chaos.slow_rate and method.upper() in chaos.slow_methods:
                return None, "slow"
            if chaos.slow_rate <= draw < chaos.slow_rate + chaos.rate:
                status = chaos.statuses[self._rng.randrange(len(chaos.statuses))]
            else:
                return None, None
        response = self.error(status, f"Chaos: a random {status} (sandbox chaos).", path)
        if status == 429 and chaos.retry_after is not None:
            response.headers["Retry-After"] = str(chaos.retry_after)
        return response, "chaos"

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _fault_response(self, fault: Fault, path: str) -> Response:
        extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.body is not None:
            return Response(fault.status, copy.deepcopy(fault.body), extra)
        response = self.error(
            fault.status, f"Injected fault: the sandbox was told to answer {fault.status}.", path
        )
        response.headers.update(extra)
        return response

    @staticmethod
    def not_allowed(method: str, path: str, allowed: tuple[str, ...], body: Any) -> Response:
        return Response(405, body, {"Allow": ", ".join(allowed)})

    def _admin(self, request: Request) -> Response:
        routes: dict[str, tuple[tuple[str, ...], AdminRoute]] = {
            "/_sandbox/faults": (("POST",), self._admin_faults),
            "/_sandbox/latency": (("POST",), self._admin_latency),
            "/_sandbox/reset": (("POST",), self._admin_reset),
            "/_sandbox/requests": (("GET",), self._admin_requests),
            "/_sandbox/tokens/expire": (("POST",), self._admin_expire),
            "/_sandbox/state": (("GET",), self._admin_state),
            "/_sandbox/chaos": (("GET", "POST"), self._admin_chaos),
            "/_sandbox/outage": (("POST",), self._admin_outage),
            "/_sandbox/counters": (("GET",), self._admin_counters),
            **self.admin(),
        }
        route = request.path.rstrip("/")
        if route.startswith("/_sandbox/state/"):
            route_entry = routes["/_sandbox/state"]
        elif route in routes:
            route_entry = routes[route]
        else:
            return Response(
                404,
                {"error": f"No sandbox admin route {request.path}; try {', '.join(sorted(routes))}."},
            )
        methods, handler = route_entry
        if request.method not in methods:
            return Response(
                405,
                {
                    "error": f"Method {request.method} is not allowed on {request.path}; use {', '.join(methods)}."
                },
                {"Allow": ", ".join(methods)},
            )
        try:
            return handler(request)
        except (TypeError, ValueError) as exc:
            return Response(400, {"error": str(exc)})

    @staticmethod
    def _json_object(request: Request) -> JsonObject:
        if request.body_error is not None or not isinstance(request.body, dict):
            raise ValueError("The body must be a JSON object.")
        return request.body

    def _admin_faults(self, request: Request) -> Response:
        body = self._json_object(request)
        unknown = sorted(set(body) - FAULT_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {unknown}; expected {sorted(FAULT_FIELDS)}")
        if "status" not in body:
            raise ValueError("status is required")
        self.inject(**body)
        return Response(200, {"ok": True})

    def _admin_latency(self, request: Request) -> Response:
        body = self._json_object(request)
        if set(body) != {"seconds"}:
            raise ValueError('expected exactly {"seconds": <number>}')
        self.set_latency(body["seconds"])
        return Response(200, {"ok": True})

    def _admin_chaos(self, request: Request) -> Response:
        if request.method == "POST":
            body = self._json_object(request)
            unknown = sorted(set(body) - CHAOS_FIELDS)
            if unknown:
                raise ValueError(f"unknown fields {unknown}; expected {sorted(CHAOS_FIELDS)}")
            self.set_chaos(**body)
        return Response(200, {**self.chaos.to_dict(), "outage_seconds_left": round(self.outage_left(), 1)})

    def _admin_outage(self, request: Request) -> Response:
        body = self._json_object(request)
        unknown = sorted(set(body) - OUTAGE_FIELDS)
        if unknown or "seconds" not in body:
            raise ValueError('expected {"seconds": <number>} and optionally "retry_after"')
        self.outage(body["seconds"], retry_after=body.get("retry_after"))
        return Response(200, {"ok": True, "outage_seconds_left": round(self.outage_left(), 1)})

    def _admin_counters(self, request: Request) -> Response:
        return Response(200, self.request_counts())

    def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return Response(200, {"ok": True})

    def _admin_requests(self, request: Request) -> Response:
        return Response(200, {"requests": [record.to_dict() for record in self.requests]})

    def _admin_expire(self, request: Request) -> Response:
        try:
            self.expire_tokens()
        except NotImplementedError as exc:
            return Response(404, {"error": str(exc)})
        return Response(200, {"ok": True})

    def _admin_state(self, request: Request) -> Response:
        name = request.path.rstrip("/")[len("/_sandbox/state") :].strip("/")
        if not name:
            with self.lock:
                return Response(200, {"collections": self.state.collections()})
        offset = _non_negative(request.param("offset"), "offset", 0)
        limit = _non_negative(request.param("limit"), "limit", 100)
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        with self.lock:
            items, total = self.state.page(name, offset, limit)
        next_offset = offset + len(items) if offset + len(items) < total else None
        return Response(200, {"items": items, "total": total, "offset": offset, "next_offset": next_offset})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _non_negative(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise ValueError(f"{name} must be a non-negative integer")
    return int(value)


def _redacted(value: Any) -> Any:
    """A JSON body with the values of secret-named fields (``password``, ``*_token``, ...) replaced."""
    if isinstance(value, dict):
        return {
            key: REDACTED
            if isinstance(key, str)
            and (key.lower() in SECRET_PARAMS or key.lower().endswith(("_token", "password", "_secret")))
            else _redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


# -- running a sandbox on its own ------------------------------------------------------------------------------


def standalone_parser(module: str, description: str, port: int) -> argparse.ArgumentParser:
    """The command line every sandbox shares (``--host``, ``--port``, ``--state-path``); vendors add theirs."""
    parser = argparse.ArgumentParser(
        prog=f"python -m forwarder_local.sandboxes.{module}", description=description
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=port, help=f"port to bind; 0 picks a free one (default {port})"
    )
    parser.add_argument(
        "--state-path", default=None, help="journal file that keeps the state across restarts"
    )
    return parser


def serve_until_stopped(sandbox: Sandbox, banner: str) -> None:
    """Run ``sandbox`` in the foreground until Ctrl-C or SIGTERM; ``banner`` may use ``{url}``."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with contextlib.suppress(ValueError):  # signal handlers can only be set from the main thread
        signal.signal(signal.SIGTERM, _on_signal)
    with sandbox:
        print(banner.format(url=sandbox.url), flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
