"""How a backfill treats the API's answers, against a scripted HTTP server: what is retried, what stops the
run, and that a run stopped by a refusal of every row sends those rows once it is fixed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from forwarder_local.backfill import backfill


class ScriptedApi:
    """Answers POST /v1/contacts with the next scripted (status, body, headers) for the row's e-mail, then 202."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = {}
        self.refuse_all: tuple[int, dict[str, Any]] | None = None
        self.received: list[tuple[str, str]] = []  # (e-mail, Idempotency-Key)
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                email = body["data"]["email"]
                api.received.append((email, self.headers.get("Idempotency-Key", "")))
                if api.refuse_all:
                    status, answer, headers = *api.refuse_all, {}
                elif api.script.get(email):
                    status, answer, headers = api.script[email].pop(0)
                else:
                    status, answer, headers = 202, {"request_id": f"r-{email}", "status": "accepted"}, {}
                data = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    scripted = ScriptedApi()
    yield scripted
    scripted.server.shutdown()
    scripted.server.server_close()


def run(api: ScriptedApi, path: Path, state: Path) -> Any:
    return backfill(
        path,
        url=api.url,
        method="POST",
        route="/v1/contacts",
        group_key="demo",
        auth=None,
        state_dir=state,
        concurrency=2,
        rate=0,
        show_progress=False,
    )


def test_unavailable_and_throttled_rows_are_retried_until_accepted(api: ScriptedApi, tmp_path: Path) -> None:
    # given an API that answers one row 503 and another 429 with Retry-After, then accepts them
    path = tmp_path / "customers.csv"
    path.write_text("email\na@example.com\nb@example.com\nc@example.com\n")
    api.script["a@example.com"] = [(503, {"code": "UNAVAILABLE", "message": "try again"}, {})]
    api.script["b@example.com"] = [(429, {"message": "slow down"}, {"Retry-After": "0"})]

    summary = run(api, path, tmp_path / "state")

    # then every row is accepted, the retries with the row's own key
    assert summary.accepted == 3 and summary.refused_count == 0 and summary.left == 0
    keys = {email: {key for sent, key in api.received if sent == email} for email, _ in api.received}
    assert all(len(found) == 1 for found in keys.values())
    assert [email for email, _ in api.received].count("a@example.com") == 2


def test_a_row_the_api_never_accepts_is_left_for_the_next_run(api: ScriptedApi, tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_text("email\na@example.com\nb@example.com\n")
    api.script["b@example.com"] = [
        (503, {"code": "UNAVAILABLE", "message": "down"}, {"Retry-After": "0"})
    ] * 5

    first = run(api, path, tmp_path / "state")
    assert (first.accepted, first.unsent, first.left) == (1, [3], 1)
    assert any("left      1 (the API did not accept them after 5 attempts" in line for line in first.lines())

    second = run(api, path, tmp_path / "state")
    assert (second.accepted, second.accepted_before, second.left, second.sent) == (2, 1, 0, 1)


def test_a_refusal_of_every_row_stops_the_run_and_the_rows_are_sent_once_it_is_fixed(
    api: ScriptedApi, tmp_path: Path
) -> None:
    # given credentials the API refuses
    path = tmp_path / "customers.csv"
    path.write_text("email\n" + "".join(f"c{number}@example.com\n" for number in range(50)))
    api.refuse_all = (403, {"code": "UNKNOWN_ACCESS_KEY", "message": "The security token is invalid."})

    stopped = run(api, path, tmp_path / "state")

    # then the run stops after the rows in flight, saying why, and refuses no row for it
    assert stopped.fatal is not None and "403 UNKNOWN_ACCESS_KEY" in stopped.fatal
    assert len(api.received) <= 8 and stopped.refused_count == 0 and stopped.accepted == 0
    left = next(line for line in stopped.lines() if line.strip().startswith("left"))
    assert "the backfill stopped: every row would get the refusal below" in left, left
    # and once fixed, the same command sends every row
    api.refuse_all = None
    fixed = run(api, path, tmp_path / "state")
    assert fixed.accepted == 50 and fixed.left == 0
