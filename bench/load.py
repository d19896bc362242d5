"""The bench's load generator: a separate process that sends pre-built HTTP/1.1 requests over raw kept-alive
sockets, so that what it costs per request (tens of microseconds) does not compete with the stack it measures
for the machine's two cores the way ``requests`` + ``AWS4Auth`` (about half a millisecond) would.

Requests are signed with botocore's SigV4 before the clock starts (a signature is good for 15 minutes, far
longer than a run), exactly as an SDK signs them; the gateway verifies each one as usual.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event as MpEvent


def _wire(method: str, netloc: str, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {netloc}"]
    head.extend(
        f"{name}: {value}" for name, value in headers if name.lower() not in ("host", "content-length")
    )
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def signed_requests(
    url: str, access_key: str, secret: str, region: str, envelopes: list[dict[str, Any]]
) -> list[bytes]:
    """``POST url`` of each envelope, SigV4-signed (service execute-api) by botocore, as bytes on the wire."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signer = SigV4Auth(Credentials(access_key, secret), "execute-api", region)
    parts = urlsplit(url)
    wires: list[bytes] = []
    for envelope in envelopes:
        body = json.dumps(envelope).encode()
        request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
        signer.add_auth(request)
        headers = [(str(name), str(value)) for name, value in request.headers.items()]
        wires.append(_wire("POST", parts.netloc, parts.path, headers, body))
    return wires


def plain_requests(url: str, envelopes: list[dict[str, Any]]) -> list[bytes]:
    """``POST url`` of each envelope, unsigned (for the gateway's no-op path)."""
    parts = urlsplit(url)
    return [
        _wire(
            "POST", parts.netloc, parts.path, [("Content-Type", "application/json")], json.dumps(e).encode()
        )
        for e in envelopes
    ]


def _read_answer(conn: socket.socket, buffered: bytes) -> tuple[int, bool, bytes]:
    """(status, connection kept open, bytes after the answer) of one answer."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionResetError("the connection closed before an answer")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, keep = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value)
        elif lowered == b"connection" and value.strip().lower() == b"close":
            keep = False
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionResetError("the connection closed in the middle of an answer")
        rest += chunk
    return status, keep, rest[length:]


def run_load(host: str, port: int, wires: list[bytes], threads: int, timeout_s: float) -> dict[str, Any]:
    """``threads`` clients, each on one kept-alive connection, send ``wires`` between them one at a time."""
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []

    def take() -> int | None:
        with lock:
            if next_index[0] >= len(wires):
                return None
            next_index[0] += 1
            return next_index[0] - 1

    def worker(deadline: float) -> None:
        conn: socket.socket | None = None
        rest = b""
        mine: list[float] = []
        codes: Counter[str] = Counter()
        try:
            while time.perf_counter() < deadline and (index := take()) is not None:
                started = time.perf_counter()
                try:
                    if conn is None:
                        conn = socket.create_connection((host, port), timeout=30)
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        rest = b""
                    conn.sendall(wires[index])
                    status, keep, rest = _read_answer(conn, rest)
                    codes[str(status)] += 1
                    if not keep:
                        conn.close()
                        conn = None
                except OSError as error:
                    codes[type(error).__name__] += 1
                    if len(errors) < 5:
                        errors.append(repr(error))
                    if conn is not None:
                        conn.close()
                    conn = None
                mine.append(time.perf_counter() - started)
        finally:
            if conn is not None:
                conn.close()
            with lock:
                latencies.extend(mine)
                statuses.update(codes)

    start = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(start + timeout_s,)) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return {
        "elapsed": time.perf_counter() - start,
        "latencies": latencies,
        "statuses": dict(statuses),
        "errors": errors,
    }


def run_burst(host: str, port: int, wires: list[bytes]) -> dict[str, Any]:
    """As many clients as ``wires``, connecting at the same moment, each sending its request once. A client
    whose connection is refused or reset, or closed before an answer, counts as reset."""
    barrier = threading.Barrier(len(wires))
    lock = threading.Lock()
    statuses: Counter[str] = Counter()
    resets = [0]

    def client(wire: bytes) -> None:
        try:
            barrier.wait(30)
            with socket.create_connection((host, port), timeout=30) as conn:
                conn.sendall(wire)
                status, _, _ = _read_answer(conn, b"")
            with lock:
                statuses[str(status)] += 1
        except (OSError, threading.BrokenBarrierError) as error:
            with lock:
                resets[0] += 1
                statuses[type(error).__name__] += 1

    threads = [threading.Thread(target=client, args=(wire,)) for wire in wires]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"statuses": dict(statuses), "resets": resets[0]}


def client_main(
    kind: str,
    host: str,
    port: int,
    wires: list[bytes],
    threads: int,
    timeout_s: float,
    ready: MpEvent,
    go: MpEvent,
    results: Connection,
) -> None:
    """The client process: waits for ``go``, runs the load (``kind`` "load") or the burst ("burst"), and
    sends its figures back."""
    ready.set()
    if not go.wait(120):
        results.send({"error": "never told to start"})
        return
    if kind == "burst":
        results.send(run_burst(host, port, wires))
    else:
        results.send(run_load(host, port, wires, threads, timeout_s))
