"""A local API Gateway (REST, AWS_IAM): authenticates SigV4 as API Gateway does (``authorizer.py``), turns
each request into a REST proxy event with the caller's identity in ``requestContext.identity`` and invokes the
ingest handler. A refusal is a 403 with API Gateway's ``{"message"}`` and ``x-amzn-ErrorType``, plus a stable
``code``. Web-form hooks (``POST|OPTIONS /v1/hooks/{hook_id}``) are served without SigV4, as their API
Gateway methods have no authorisation: the handler checks their token or signature. The status route
(``GET /v1/requests/{request_id}``) is signed like the others."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from forwarder.auth.sigv4 import SignatureError
from forwarder.contract import ROUTES, STATUS_METHOD, STATUS_RESOURCE, status_request_id
from forwarder.hooks import HOOK_METHODS, HOOK_RESOURCE, hook_id_of
from forwarder_local import resolver_threads
from forwarder_local.authorizer import IamAuthorizer
from forwarder_local.poller import LambdaContext
from forwarder_local.queue import SyncBatcher

ACCOUNT_ID = "000000000000"
MAX_PAYLOAD = 10 * 1024 * 1024  # API Gateway's payload limit
BODY_TIMEOUT_SECONDS = 30.0
"""A client that announces more body than it sends is answered 400 after this long without it."""
BACKLOG = 2048
"""Connections the kernel holds for the server while it accepts (http.server's default was 5)."""
KEEP_ALIVE_SECONDS = 60
HANDLER_THREADS = 16
OWN_SYNC_THREADS = 4
"""Threads for the requests a loop-run gateway hands off: those whose handler waits for the disk itself."""
logger = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def proxy_event(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    access_key: str | None,
    user_arn: str | None,
    source_ip: str,
    stage: str = "local",
    resource: str | None = None,
    path_parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event (payload format 1.0), as API Gateway builds it for an IAM-signed call
    (``resource`` and ``path_parameters`` for a route with a path parameter, e.g. a hook's)."""
    path = unquote(raw_path)
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value
        multi.setdefault(name, []).append(value)
    query_pairs = parse_qsl(raw_query, keep_blank_values=True)
    query_single = {key: value for key, value in query_pairs} or None
    query_multi: dict[str, list[str]] = {}
    for key, value in query_pairs:
        query_multi.setdefault(key, []).append(value)
    try:
        text: str | None = body.decode("utf-8") if body else None
        encoded = False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    now = datetime.now(UTC)
    user_agent = single.get("User-Agent") or single.get("user-agent")
    return {
        "resource": resource or path,
        "path": path,
        "httpMethod": method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": query_single,
        "multiValueQueryStringParameters": query_multi or None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "local",
            "domainName": single.get("Host") or single.get("host") or "localhost",
            "extendedRequestId": str(uuid.uuid4()),
            "httpMethod": method,
            "identity": {
                "accessKey": access_key,
                "accountId": ACCOUNT_ID if access_key else None,
                "caller": user_arn.rsplit("/", 1)[-1] if user_arn else None,
                "sourceIp": source_ip,
                "user": user_arn.rsplit("/", 1)[-1] if user_arn else None,
                "userAgent": user_agent,
                "userArn": user_arn,
            },
            "path": f"/{stage}{path}",
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "resourceId": "local",
            "resourcePath": resource or path,
            "stage": stage,
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def _may_share_sync(method: str, raw_path: str, headers: list[tuple[str, str]]) -> bool:
    """Whether a request's answer may wait for a sync shared with others after the handler has returned
    (``LocalGateway.syncs``). Not when the handler records its answer elsewhere before it returns: a request
    with an ``Idempotency-Key``, and a hook (its signature is its key), whose answer the idempotency store keeps
    durably for retries; their sends are on disk before the handler returns, as outside the gateway. Those run
    in a small pool of threads, not on the loop (the other routes, reads, go there too)."""
    if (method, raw_path) not in ROUTES:
        return False
    return not any(name.lower() == "idempotency-key" for name, _ in headers)


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with two answers API Gateway's clients are owed: a request the parser
    refuses says why (``Invalid character in Content-Length``), and a client that half-closes its side mid
    body (EOF) is answered, not dropped."""

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this while handling the parser's error: its text says what to fix.
        error = sys.exc_info()[1]
        detail = str(error) if isinstance(error, httptools.HttpParserError) else msg
        super().send_400_response(f"Bad Request: {detail}".encode("ascii", "replace").decode("ascii"))

    def eof_received(self) -> bool | None:  # type: ignore[override]
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body:
            cycle.more_body = False  # the body ended: the gateway answers what it got
            cycle.message_event.set()
            return True  # keep the write side open for that answer
        return None


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, headers, body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    close: bool = False

    @classmethod
    def json(
        cls, status: int, body: dict[str, Any], error_type: str | None = None, *, close: bool = False
    ) -> Reply:
        headers = [("Content-Type", "application/json")]
        if error_type:
            headers.append(("x-amzn-ErrorType", error_type))
        return cls(status, headers, json.dumps(body).encode(), close)


class LocalGateway:
    """HTTP server on ``host:port`` (0 picks a free port) that fronts the ingest handler.

    The server is uvicorn (httptools' parser, asyncio) in a thread of its own: it reads requests without
    holding a thread per connection (a backlog of 2,048, keep-alive, a body read timeout, HEAD without a
    body), and runs each request's checks and the ingest handler in a pool of ``threads`` threads, so
    concurrent requests queue their records together (the durable queue's group commit). With ``threads=0``
    they run on the event loop itself, one request at a time: what a process with no other Python threads to
    share its GIL with does fastest (the embedded stack's front process, ``pipeline_process``)."""

    def __init__(
        self,
        handler: Handler,
        authorizer: IamAuthorizer,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        *,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
        threads: int = HANDLER_THREADS,
        noop_path: str | None = None,
        syncs: SyncBatcher | None = None,
    ) -> None:
        resolver_threads.install()  # with threads > 0 the handler runs in several threads of this process at once
        self.handler = handler
        self.authorizer = authorizer
        self.clock = clock
        self.body_timeout = body_timeout
        #: a path answered 200 at once, with no work: what the server stack itself costs (``make bench``)
        self.noop_path = noop_path
        #: with ``threads=0``: the queue whose sends the handler makes without waiting for the disk; the answer
        #: waits for a sync shared with the other requests answered meanwhile (group commit, on one thread)
        self.syncs = syncs
        # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on each connection (it checks the protocol):
        # else an answer's body waits behind its head for the client's delayed ACK (40 ms).
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(BACKLOG)
        self._pool = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway") if threads else None
        )
        #: with ``threads=0`` and ``syncs``: the requests that wait for the disk in the handler (keyed, hooks)
        self._own_syncs = ThreadPoolExecutor(
            max_workers=OWN_SYNC_THREADS, thread_name_prefix="gateway-syncing"
        )
        config = uvicorn.Config(
            self._asgi,
            http=_HttpProtocol,
            ws="none",
            lifespan="off",
            interface="asgi3",
            backlog=BACKLOG,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=5,
            log_config=None,  # leave the process's logging alone
            log_level="error",  # a request the parser refuses is answered 400, not logged as a warning
            access_log=False,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalGateway:
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._server.serve([self._socket]),), name="gateway", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self._server.started:
            raise RuntimeError(f"the gateway did not start on {self.url}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._own_syncs.shutdown(wait=False, cancel_futures=True)
        if self.syncs is not None:
            self.syncs.close()
        self._socket.close()

    # -- the event loop's part: the front door ---------------------------------------------------------

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request_id = str(uuid.uuid4())
        try:
            reply = await self._answer(scope, receive, request_id)
        except Exception:  # a bug here, never the client's input: logged with the request id, answered 500
            logger.exception("gateway: unexpected error (request id %s)", request_id)
            reply = Reply.json(500, {"message": f"Internal server error (request id {request_id})"})
        if reply is None:
            return
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers]
        headers.append((b"content-length", str(len(reply.body)).encode()))
        if reply.close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _answer(self, scope: dict[str, Any], receive: Any, request_id: str) -> Reply | None:
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
        body = await self._read_body(headers, receive)
        if not isinstance(body, bytes):
            return body
        raw_path = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
        if raw_path == self.noop_path:
            return Reply(200, [("Content-Type", "application/json")], b"{}")
        client = scope.get("client")
        arguments = (
            scope["method"],
            raw_path,
            scope["query_string"].decode("latin-1"),
            headers,
            body,
            client[0] if client else "127.0.0.1",
            request_id,
        )
        if self._pool is None:  # threads=0: on the event loop
            if self.syncs is None:
                return self._serve(*arguments)
            if not _may_share_sync(scope["method"], raw_path, headers):
                # Waits for the disk in the handler (its answer is kept for retries): in a thread of its own,
                # so that the loop serves the other requests meanwhile.
                return await asyncio.get_running_loop().run_in_executor(
                    self._own_syncs, self._serve, *arguments
                )
            with self.syncs.store.syncs_owed() as owed:
                reply = self._serve(*arguments)
            if owed.sync:  # the record is committed: the answer waits until it is on disk, with others'
                try:
                    await self.syncs.durable()
                except OSError:
                    logger.exception("gateway: the queue could not be synced (request id %s)", request_id)
                    return Reply.json(
                        503,
                        {"message": "the record could not be stored durably; retry", "code": "UNAVAILABLE"},
                    )
            return reply
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._serve, *arguments)

    async def _read_body(self, headers: list[tuple[str, str]], receive: Any) -> bytes | Reply | None:
        """The body, or the refusal to answer instead: a chunked body (send its length), more than API
        Gateway's 10 MB, or fewer bytes than the Content-Length announced (the client half-closed, or sent
        nothing more for ``body_timeout`` seconds). None: the client is gone. The parser has refused a
        Content-Length that is not one decimal number, or two of them."""
        length = 0
        for name, value in headers:
            lowered = name.lower()
            if lowered == "transfer-encoding" and "chunked" in value.lower():
                return Reply.json(
                    411, {"message": "Length Required: send the body with a Content-Length"}, close=True
                )
            if lowered == "content-length":
                length = int(value)
        if length > MAX_PAYLOAD:
            return Reply.json(413, {"message": "Request Too Long"}, "RequestTooLongException", close=True)
        chunks: list[bytes] = []
        deadline = time.monotonic() + self.body_timeout
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                break
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if len(body) < length:
            return Reply.json(
                400,
                {
                    "message": f"the body ended after {len(body)} of the {length} bytes its Content-Length announced"
                },
                close=True,
            )
        return body

    # -- a pool thread's part: SigV4, the route, the ingest handler ------------------------------------

    def _serve(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        source_ip: str,
        request_id: str,
    ) -> Reply:
        try:
            return self._serve_checked(method, raw_path, raw_query, headers, body, source_ip, request_id)
        except Exception:  # a bug here, never the client's input: logged with the request id, answered 500
            logger.exception("gateway: unexpected error (request id %s)", request_id)
            return Reply.json(500, {"message": f"Internal server error (request id {request_id})"})

    def _serve_checked(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        source_ip: str,
        request_id: str,
    ) -> Reply:
        hook_id = hook_id_of(unquote(raw_path)) if method in HOOK_METHODS else None
        if hook_id is not None:  # no authorisation on the hook methods (AuthorizationType NONE)
            return self._invoke(
                method, request_id, raw_path, raw_query, headers, body, None, None, hook_id, source_ip
            )
        try:
            caller = self.authorizer.authenticate(
                method=method,
                raw_path=raw_path,
                raw_query=raw_query,
                headers=headers,
                body=body,
                now=datetime.fromtimestamp(self.clock(), UTC),
            )
        except SignatureError as error:
            return Reply.json(error.status, {"message": error.message, "code": error.code}, error.error_type)
        request_id_param = status_request_id(unquote(raw_path)) if method == STATUS_METHOD else None
        if (method, raw_path) not in ROUTES and request_id_param is None:
            # API Gateway answers an unknown resource or method this way, signed or not.
            return Reply.json(
                403,
                {"message": "Missing Authentication Token", "code": "MISSING_AUTHENTICATION_TOKEN"},
                "MissingAuthenticationTokenException",
            )
        return self._invoke(
            method,
            request_id,
            raw_path,
            raw_query,
            headers,
            body,
            caller.access_key,
            caller.user_arn,
            None,
            source_ip,
            request_id_param,
        )

    def _invoke(
        self,
        method: str,
        request_id: str,
        raw_path: str,
        raw_query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        access_key: str | None,
        user_arn: str | None,
        hook_id: str | None,
        source_ip: str,
        status_of: str | None = None,
    ) -> Reply:
        resource, parameters = None, None
        if hook_id is not None:
            resource, parameters = HOOK_RESOURCE, {"hook_id": hook_id}
        elif status_of is not None:
            resource, parameters = STATUS_RESOURCE, {"request_id": status_of}
        event = proxy_event(
            method=method,
            raw_path=raw_path,
            raw_query=raw_query,
            headers=headers,
            body=body,
            access_key=access_key,
            user_arn=user_arn,
            source_ip=source_ip,
            resource=resource,
            path_parameters=parameters,
        )
        event["requestContext"]["requestId"] = request_id
        try:
            response = self.handler(event, LambdaContext(function_name="IngestFunction"))
        except Exception:  # the Lambda failed: API Gateway answers 502
            logger.exception("gateway: the ingest function failed (request id %s)", request_id)
            return Reply.json(502, {"message": "Internal server error"})
        raw = response.get("body") or ""
        payload = base64.b64decode(raw) if response.get("isBase64Encoded") else str(raw).encode()
        out = [(name, str(value)) for name, value in (response.get("headers") or {}).items()]
        for name, values in (response.get("multiValueHeaders") or {}).items():
            out.extend((name, str(value)) for value in values)
        return Reply(int(response.get("statusCode", 200)), out, payload)
