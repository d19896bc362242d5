"""The embedded gateway's HTTP front door: a malformed Content-Length, a body shorter than announced or a
chunked body is answered with a 4xx saying what to fix, never left hanging or answered 5xx; a failure of its
own is logged with a request id."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from forwarder_local.gateway import LocalGateway


def refuse_everything(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise AssertionError("the handler must not be reached")


class NeverAsked:
    """An authorizer the gateway must not reach: these requests are refused before authentication."""

    def authenticate(self, **request: Any) -> Any:
        raise AssertionError("the request must be refused before it is authenticated")


@pytest.fixture
def gateway() -> Iterator[LocalGateway]:
    running = LocalGateway(refuse_everything, NeverAsked()).start()  # type: ignore[arg-type]
    yield running
    running.stop()


def exchange(
    gateway: LocalGateway, head: str, body: bytes = b"", *, close_write: bool = False
) -> tuple[int, str]:
    """Send raw bytes; returns the status and the whole answer."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode("latin-1") + b"\r\n" + body)
        if close_write:
            conn.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    text = answer.decode("latin-1")
    return int(text.split(" ", 2)[1]), text


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def request_head(*headers: str) -> str:
    return "\r\n".join(["POST /v1/contacts HTTP/1.1", "Host: localhost", *headers, ""])


@pytest.mark.parametrize("value", ["abc", "-5", "1e3", "12, 13", " ", "0x10"])
def test_a_content_length_that_is_not_a_number_is_refused_with_400(gateway: LocalGateway, value: str) -> None:
    status, answer = exchange(gateway, request_head(f"Content-Length: {value}"))
    assert status == 400
    assert "Content-Length" in answer


def test_two_different_content_lengths_are_refused(gateway: LocalGateway) -> None:
    status, _ = exchange(gateway, request_head("Content-Length: 2", "Content-Length: 3"), b"{}")
    assert status == 400


def test_a_body_shorter_than_its_content_length_is_refused_not_waited_for_forever(
    gateway: LocalGateway,
) -> None:
    status, answer = exchange(gateway, request_head("Content-Length: 100"), b'{"data": 1}', close_write=True)
    assert status == 400
    assert "11 of the 100 bytes" in answer


def test_a_chunked_body_is_asked_for_its_length(gateway: LocalGateway) -> None:
    status, answer = exchange(gateway, request_head("Transfer-Encoding: chunked"), b"2\r\n{}\r\n0\r\n\r\n")
    assert status == 411
    assert "Content-Length" in answer


def test_a_body_over_api_gateways_limit_is_refused_with_413(gateway: LocalGateway) -> None:
    status, _ = exchange(gateway, request_head(f"Content-Length: {10 * 1024 * 1024 + 1}"))
    assert status == 413


def test_a_failure_of_the_gateway_itself_is_logged_with_a_request_id_and_answered_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def authenticate(self, **request: Any) -> Any:
            raise RuntimeError("credential store broke")

    running = LocalGateway(refuse_everything, Broken()).start()  # type: ignore[arg-type]
    try:
        now = datetime.now(UTC)
        head = request_head(
            "Content-Length: 2",
            f"X-Amz-Date: {now:%Y%m%dT%H%M%SZ}",
            f"Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{now:%Y%m%d}/us-east-1/execute-api/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        )
        with caplog.at_level(logging.ERROR, logger="forwarder_local.gateway"):
            status, answer = exchange(running, head, b"{}")
    finally:
        running.stop()
    assert status == 500
    [record] = [record for record in caplog.records if "unexpected error" in record.getMessage()]
    request_id = record.getMessage().split("request id ")[1].rstrip(")")
    assert request_id in answer
    assert record.exc_info is not None


@pytest.fixture
def unsigned_gateway(tmp_path: Any) -> Iterator[LocalGateway]:
    """A gateway with the real authorizer and no keys issued: every request is refused with API Gateway's 403."""
    from forwarder_local.authorizer import IamAuthorizer
    from forwarder_local.stores import LocalCredentials

    authorizer = IamAuthorizer(LocalCredentials(tmp_path / "credentials.json"), "us-east-1")
    running = LocalGateway(refuse_everything, authorizer, body_timeout=0.5).start()
    yield running
    running.stop()


def read_response(conn: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One response from a kept-alive connection: (head, body by its Content-Length, bytes after it)."""
    answer = buffered
    while b"\r\n\r\n" not in answer:
        chunk = conn.recv(65536)
        assert chunk, "the connection closed before a response"
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "the connection closed before the whole body"
        rest += chunk
    return head, rest[:length], rest[length:]


def test_a_head_answer_has_no_body_and_the_next_answer_on_the_connection_is_intact(
    unsigned_gateway: LocalGateway,
) -> None:
    # given a kept-alive connection
    host, port = unsigned_gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        # when a HEAD and then a POST are sent on it, back to back
        conn.sendall(
            b"HEAD /v1/contacts HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"POST /v1/contacts HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        first, _, rest = data.partition(b"\r\n\r\n")
        second, body, _ = read_response(conn, rest)
    # then the HEAD answer announces its length but carries no body, and the POST answer follows it whole
    assert first.startswith(b"HTTP/1.1 403")
    assert b"content-length:" in first.lower()
    assert second.startswith(b"HTTP/1.1 403")
    assert b"Missing Authentication Token" in body


def test_two_hundred_simultaneous_clients_are_all_answered(unsigned_gateway: LocalGateway) -> None:
    # given 200 clients connected at once, before the server accepted any of them
    host, port = unsigned_gateway.url.removeprefix("http://").split(":")
    clients = [socket.create_connection((host, int(port)), timeout=30) for _ in range(200)]
    try:
        # when each sends a request
        for conn in clients:
            conn.sendall(b"POST /v1/contacts HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
        # then every one of them is answered (none is reset)
        statuses = []
        for conn in clients:
            head, _, _ = read_response(conn)
            statuses.append(head.split(b" ", 2)[1])
    finally:
        for conn in clients:
            conn.close()
    assert statuses == [b"403"] * 200


def test_a_client_that_stops_sending_its_body_is_answered_after_the_read_timeout(
    unsigned_gateway: LocalGateway,
) -> None:
    # given a client that announces 100 bytes, sends 11 and then waits without closing
    host, port = unsigned_gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request_head("Content-Length: 100").encode() + b"\r\n" + b'{"data": 1}')
        # when the gateway's body read timeout passes, then it answers 400 saying what arrived, and closes
        head, body, _ = read_response(conn)
        assert head.startswith(b"HTTP/1.1 400")
        assert b"11 of the 100 bytes" in body
        assert conn.recv(1) == b""


def test_requests_on_one_kept_alive_connection_are_each_answered(unsigned_gateway: LocalGateway) -> None:
    host, port = unsigned_gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        rest = b""
        for _ in range(3):
            conn.sendall(b"POST /v1/contacts HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
            head, body, rest = read_response(conn, rest)
            assert head.startswith(b"HTTP/1.1 403")
            assert b"Missing Authentication Token" in body
