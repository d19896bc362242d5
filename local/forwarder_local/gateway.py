"""A local API Gateway (REST, AWS_IAM): authenticates SigV4 as API Gateway does (``authorizer.py``), turns
each request into a REST proxy event with the caller's identity in ``requestContext.identity`` and invokes the
ingest handler. A refusal is a 403 with API Gateway's ``{"message"}`` and ``x-amzn-ErrorType``, plus a stable
``code``."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from forwarder.auth.sigv4 import SignatureError
from forwarder.contract import ROUTES
from forwarder_local.authorizer import IamAuthorizer
from forwarder_local.poller import LambdaContext

ACCOUNT_ID = "000000000000"
MAX_PAYLOAD = 10 * 1024 * 1024  # API Gateway's payload limit
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
) -> dict[str, Any]:
    """An API Gateway REST proxy event (payload format 1.0), as API Gateway builds it for an IAM-signed call."""
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
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": query_single,
        "multiValueQueryStringParameters": query_multi or None,
        "pathParameters": None,
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
            "resourcePath": path,
            "stage": stage,
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


class LocalGateway:
    """HTTP server on ``host:port`` (0 picks a free port) that fronts the ingest handler."""

    def __init__(
        self,
        handler: Handler,
        authorizer: IamAuthorizer,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.handler = handler
        self.authorizer = authorizer
        self.clock = clock
        gateway = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stall between headers and body

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                gateway._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

        self._server = ThreadingHTTPServer((host, port), _RequestHandler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"

    def start(self) -> LocalGateway:
        self._thread = threading.Thread(target=self._server.serve_forever, name="gateway", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        if length > MAX_PAYLOAD:
            self._reply(request, 413, {"message": "Request Too Long"}, "RequestTooLongException")
            return
        body = request.rfile.read(length) if length else b""
        split = urlsplit(request.path)
        route = (request.command, split.path)
        headers = list(request.headers.items())
        try:
            caller = self.authorizer.authenticate(
                method=request.command,
                raw_path=split.path,
                raw_query=split.query,
                headers=headers,
                body=body,
                now=datetime.fromtimestamp(self.clock(), UTC),
            )
        except SignatureError as error:
            self._reply(
                request, error.status, {"message": error.message, "code": error.code}, error.error_type
            )
            return
        if route not in ROUTES:
            # API Gateway answers an unknown resource or method this way, signed or not.
            self._reply(
                request,
                403,
                {"message": "Missing Authentication Token", "code": "MISSING_AUTHENTICATION_TOKEN"},
                "MissingAuthenticationTokenException",
            )
            return
        event = proxy_event(
            method=request.command,
            raw_path=split.path,
            raw_query=split.query,
            headers=headers,
            body=body,
            access_key=caller.access_key,
            user_arn=caller.user_arn,
            source_ip=request.client_address[0],
        )
        try:
            response = self.handler(event, LambdaContext(function_name="IngestFunction"))
        except Exception:  # the Lambda failed: API Gateway answers 502
            self._reply(request, 502, {"message": "Internal server error"}, None)
            return
        self._write(request, response)

    @staticmethod
    def _reply(
        request: BaseHTTPRequestHandler, status: int, body: dict[str, Any], error_type: str | None
    ) -> None:
        payload = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        if error_type:
            request.send_header("x-amzn-ErrorType", error_type)
        request.end_headers()
        request.wfile.write(payload)

    @staticmethod
    def _write(request: BaseHTTPRequestHandler, response: dict[str, Any]) -> None:
        raw = response.get("body") or ""
        payload = base64.b64decode(raw) if response.get("isBase64Encoded") else str(raw).encode()
        request.send_response(int(response.get("statusCode", 200)))
        for name, value in (response.get("headers") or {}).items():
            request.send_header(name, str(value))
        for name, values in (response.get("multiValueHeaders") or {}).items():
            for value in values:
                request.send_header(name, str(value))
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)
