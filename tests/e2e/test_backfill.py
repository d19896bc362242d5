"""Backfill: `forwarder send contacts --file customers.csv` against the embedded gateway, killed midway and
resumed; every row is accepted exactly once.

The stack runs its gateway and ingest only (its pollers are stopped), so the ingest queue holds exactly what
the gateway accepted: the test counts records there rather than waiting for vendor delivery."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from forwarder_local.cli import main
from forwarder_local.stack import EmbeddedStack, StackOptions
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
EXPERTSENDER_ONLY = Path(__file__).resolve().parents[2] / "config" / "examples" / "expertsender-only.yaml"
ROWS = 10_000
CONCURRENCY = 8


@pytest.fixture
def front_door(tmp_path: Path) -> Iterator[tuple[EmbeddedStack, list[int]]]:
    """The embedded gateway and ingest (no pollers), and a counter of the requests ingest answered."""
    stack = EmbeddedStack(
        StackOptions(
            state_dir=tmp_path / "state", config_path=EXPERTSENDER_ONLY, port=0, with_sandboxes=False
        )
    ).start()
    for poller in stack.pollers:
        poller.stop(timeout=5)
    assert stack.gateway is not None
    calls = [0]
    handler = stack.gateway.handler

    def counted(event: dict[str, Any], context: Any) -> Any:
        calls[0] += 1
        return handler(event, context)

    stack.gateway.handler = counted
    try:
        yield stack, calls
    finally:
        stack.stop()


def ingested(stack: EmbeddedStack) -> list[dict[str, Any]]:
    return [json.loads(entry["body"]) for entry in stack.store.peek("ingest", limit=ROWS * 2)]


def progress_lines(state: Path) -> int:
    return sum(len(path.read_text().splitlines()) for path in (state / "backfill").glob("*.jsonl"))


def write_customers(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name", "phone", "tags", "city"])
        for number in range(rows):
            writer.writerow(
                [
                    f"customer{number}@example.com",
                    f"Name {number}",
                    f"0047{number:06d}",
                    '["vip"]' if number % 2 else "",
                    "Oslo, Norway" if number % 3 else "",
                ]
            )


@pytest.mark.timeout(600)
def test_a_backfill_killed_midway_and_resumed_is_accepted_exactly_once_per_row(
    front_door: tuple[EmbeddedStack, list[int]], tmp_path: Path
) -> None:
    stack, calls = front_door
    assert stack.gateway is not None
    state = stack.options.state_dir
    customers = tmp_path / "customers.csv"
    write_customers(customers, ROWS)
    command = [
        "send", "contacts", "-g", "demo", "--file", str(customers), "--url", stack.gateway.url,
        "--state-dir", str(state), "--rate", "0", "--concurrency", str(CONCURRENCY),
    ]  # fmt: skip

    # given a backfill of 10,000 rows killed (SIGKILL: no chance to tidy up) after about a third of them
    process = subprocess.Popen(
        [sys.executable, "-m", "forwarder_local.cli", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        wait_for(
            lambda: progress_lines(state) > ROWS // 3 or process.poll() is not None,
            timeout=300,
            what="a third of the rows sent",
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    time.sleep(0.5)  # the gateway answers the requests the killed process had in flight
    first_run_calls = calls[0]
    assert first_run_calls < ROWS

    # when the same command runs again
    resumed = CliRunner().invoke(main, command)

    # then it finishes, says so, and sent again only what was in flight at the kill
    assert resumed.exit_code == 0, resumed.output
    assert f"accepted  {ROWS:,} (" in resumed.output
    assert "in an earlier run)" in resumed.output
    assert "refused   0" in resumed.output
    resent = calls[0] - ROWS
    assert 0 <= resent <= 2 * CONCURRENCY, f"{resent} rows sent twice: the resumed run did not skip done rows"
    # and the ingest queue holds each row once, with its data as the file has it
    records = ingested(stack)
    emails = [record["data"]["email"] for record in records]
    assert len(records) == ROWS
    assert set(emails) == {f"customer{number}@example.com" for number in range(ROWS)}
    by_email = {record["data"]["email"]: record["data"] for record in records}
    assert by_email["customer1@example.com"] == {
        "email": "customer1@example.com",
        "first_name": "Name 1",
        "phone": "0047000001",
        "tags": ["vip"],
        "city": "Oslo, Norway",
    }
    assert "tags" not in by_email["customer0@example.com"] and "city" not in by_email["customer0@example.com"]


def test_refused_rows_are_summed_up_by_code_with_their_lines_and_not_sent_again(
    front_door: tuple[EmbeddedStack, list[int]], tmp_path: Path
) -> None:
    stack, calls = front_door
    assert stack.gateway is not None
    # given a file with good rows, rows the API refuses (an object in a list) and a row with a cell too many
    customers = tmp_path / "customers.csv"
    customers.write_text(
        "email,tags\n"
        "good1@example.com,\n"
        'nested1@example.com,"[{""a"": 1}]"\n'
        'good2@example.com,"[""vip""]"\n'
        'nested2@example.com,"[{""b"": 2}]"\n'
        "extra@example.com,x,y\n",
        encoding="utf-8",
    )
    command = [
        "send", "contacts", "-g", "demo", "--file", str(customers), "--url", stack.gateway.url,
        "--state-dir", str(stack.options.state_dir),
    ]  # fmt: skip

    # when it is backfilled
    result = CliRunner().invoke(main, command)

    # then the good rows are accepted, and the summary names each refusal's code, lines and reason
    assert result.exit_code == 1, result.output
    assert "accepted  2" in result.output
    assert "refused   3" in result.output
    assert "NESTED_ATTRIBUTE  2 row(s), lines 3, 5: " in result.output
    assert "attribute 'data.tags[0]' is an object" in result.output
    assert "INVALID_ROW  1 row(s), line 6: 3 cells, but the header names 2 attributes" in result.output
    assert calls[0] == 4, "the row with a cell too many is not sent"
    assert len(ingested(stack)) == 2

    # and a second run sends nothing again: every row was answered for good
    again = CliRunner().invoke(main, command)
    assert calls[0] == 4
    assert "accepted  2 (2 in an earlier run)" in again.output
    assert "NESTED_ATTRIBUTE  2 row(s), lines 3, 5" in again.output
