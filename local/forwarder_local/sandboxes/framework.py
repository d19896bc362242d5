"""The machinery every vendor sandbox shares: a threaded HTTP server, the request log, fault injection,
latency, expiring tokens, state that survives a restart, and the ``/_sandbox/`` admin routes.

A vendor sandbox subclasses :class:`Sandbox` and implements :meth:`Sandbox.vendor` (its documented routes,
auth included), optionally :meth:`Sandbox.admin` (extra admin routes) and :meth:`Sandbox.load` (rebuild
in-memory indexes from :attr:`Sandbox.state` after a restart). Everything else is here, once.

Admin routes (no credentials; never logged, delayed nor faulted), common to every sandbox:

* ``POST /_sandbox/faults`` ``{"status", "times", "retry_after", "method", "path_prefix", "body"}``
* ``POST /_sandbox/latency`` ``{"seconds": 0.5}``
* ``POST /_sandbox/reset``
* ``POST /_sandbox/tokens/expire`` (sandboxes with tokens): every token issued so far stops working
* ``GET /_sandbox/requests`` ``{"requests": [...]}`` (credentials redacted)
* ``GET /_sandbox/state/{collection}?offset=0&limit=100`` ``{"items", "total", "offset", "next_offset"}``:
  a paged read of the persisted state (``GET /_sandbox/state`` lists the collections).
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import copy
import json
import math
import os
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

    def reset(self) -> None:
        """Forget the state, faults, latency and the request log."""
        with self.lock:
            self.state.clear()
            self._faults = []
            self._latency = 0.0
            self._requests = []
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
        response = self._fault_response(fault, split.path) if fault is not None else self.vendor(request)
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
        return response

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
