"""A local API Gateway (REST, AWS_IAM): authenticates SigV4 as API Gateway does (``authorizer.py``), turns
each request into a REST proxy event with the caller's identity in ``requestContext.identity`` and invokes the
ingest handler. A refusal is a 403 with API Gateway's ``{"message"}`` and ``x-amzn-ErrorType``, plus a stable
``code``. Web-form hooks (``POST|OPTIONS /v1/hooks/{hook_id}``) are served without SigV4, as their API
Gateway methods have no authorisation: the handler checks their token or signature. The status route
(``GET /v1/requests/{request_id}``) is signed like the others."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from forwarder.auth.sigv4 import SignatureError
from forwarder.contract import ROUTES, STATUS_METHOD, STATUS_RESOURCE, status_request_id
from forwarder.hooks import HOOK_METHODS, HOOK_RESOURCE, hook_id_of
from forwarder_local.authorizer import IamAuthorizer
from forwarder_local.poller import LambdaContext

ACCOUNT_ID = "000000000000"
MAX_PAYLOAD = 10 * 1024 * 1024  # API Gateway's payload limit
BODY_TIMEOUT_SECONDS = 30.0
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


class _Server(ThreadingHTTPServer):
    # http.server listens with a backlog of 5: a burst of clients would be reset. API Gateway takes them all.
    request_queue_size = 1024


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

            timeout = BODY_TIMEOUT_SECONDS  # a client that announces more body than it sends is answered

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                gateway._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

        self._server = _Server((host, port), _RequestHandler)
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
        request_id = str(uuid.uuid4())
        try:
            self._serve_checked(request, request_id)
        except Exception:  # a bug here, never the client's input: logged with the request id, answered 500
            logger.exception("gateway: unexpected error (request id %s)", request_id)
            self._reply(request, 500, {"message": f"Internal server error (request id {request_id})"}, None)

    def _read_body(self, request: BaseHTTPRequestHandler) -> bytes | None:
        """The body, or None after answering the request: a Content-Length that is not one decimal number,
        a chunked body (send its length), more than API Gateway's 10 MB, or fewer bytes than announced."""
        values = request.headers.get_all("Content-Length") or []
        chunked = "chunked" in (request.headers.get("Transfer-Encoding") or "").lower()
        if chunked:
            self._reply(
                request, 411, {"message": "Length Required: send the body with a Content-Length"}, None
            )
            request.close_connection = True
            return None
        if not values:
            return b""
        if len(set(values)) != 1 or not values[0].strip().isdigit() or not values[0].strip().isascii():
            self._reply(
                request, 400, {"message": "Invalid Content-Length: send the body's length in bytes"}, None
            )
            request.close_connection = True
            return None
        length = int(values[0])
        if length > MAX_PAYLOAD:
            self._reply(request, 413, {"message": "Request Too Long"}, "RequestTooLongException")
            request.close_connection = True
            return None
        try:
            body = request.rfile.read(length) if length else b""
        except TimeoutError:
            body = b""
        if len(body) < length:
            self._reply(
                request,
                400,
                {
                    "message": f"the body ended after {len(body)} of the {length} bytes its Content-Length announced"
                },
                None,
            )
            request.close_connection = True
            return None
        return body

    def _serve_checked(self, request: BaseHTTPRequestHandler, request_id: str) -> None:
        body = self._read_body(request)
        if body is None:
            return
        split = urlsplit(request.path)
        route = (request.command, split.path)
        headers = list(request.headers.items())
        hook_id = hook_id_of(unquote(split.path)) if request.command in HOOK_METHODS else None
        if hook_id is not None:  # no authorisation on the hook methods (AuthorizationType NONE)
            self._invoke(request, request_id, split.path, split.query, headers, body, None, None, hook_id)
            return
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
        request_id_param = (
            status_request_id(unquote(split.path)) if request.command == STATUS_METHOD else None
        )
        if route not in ROUTES and request_id_param is None:
            # API Gateway answers an unknown resource or method this way, signed or not.
            self._reply(
                request,
                403,
                {"message": "Missing Authentication Token", "code": "MISSING_AUTHENTICATION_TOKEN"},
                "MissingAuthenticationTokenException",
            )
            return
        self._invoke(
            request,
            request_id,
            split.path,
            split.query,
            headers,
            body,
            caller.access_key,
            caller.user_arn,
            None,
            request_id_param,
        )

    def _invoke(
        self,
        request: BaseHTTPRequestHandler,
        request_id: str,
        raw_path: str,
        raw_query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        access_key: str | None,
        user_arn: str | None,
        hook_id: str | None,
        status_of: str | None = None,
    ) -> None:
        resource, parameters = None, None
        if hook_id is not None:
            resource, parameters = HOOK_RESOURCE, {"hook_id": hook_id}
        elif status_of is not None:
            resource, parameters = STATUS_RESOURCE, {"request_id": status_of}
        event = proxy_event(
            method=request.command,
            raw_path=raw_path,
            raw_query=raw_query,
            headers=headers,
            body=body,
            access_key=access_key,
            user_arn=user_arn,
            source_ip=request.client_address[0],
            resource=resource,
            path_parameters=parameters,
        )
        event["requestContext"]["requestId"] = request_id
        try:
            response = self.handler(event, LambdaContext(function_name="IngestFunction"))
        except Exception:  # the Lambda failed: API Gateway answers 502
            logger.exception("gateway: the ingest function failed (request id %s)", request_id)
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
