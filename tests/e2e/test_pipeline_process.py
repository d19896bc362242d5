"""The embedded stack in two processes (``forwarder run``'s default): the gateway here, the pipeline (pollers,
token schedule, sandboxes) in a child process that dies with the stack and is started again if it dies alone."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_aws4auth import AWS4Auth

from forwarder_local import stack as stack_module
from forwarder_local.stack import EmbeddedStack, StackOptions, StateInUse
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]


def _options(state: Path) -> StackOptions:
    return StackOptions(
        state_dir=state,
        port=0,
        sandbox_port=0,
        retry_base_seconds=0.2,
        retry_max_seconds=1.0,
        poll_window_seconds=0.05,
        with_console=False,
        pipeline_process=True,
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(_options(tmp_path / "state")) as running:
        yield running


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper has died)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _send(stack: EmbeddedStack, email: str) -> str:
    first = stack.first_client()
    assert first is not None and stack.gateway is not None
    _, group_key, access_key, secret_key = first
    response = requests.post(
        stack.gateway.url + "/v1/contacts",
        json={"group_key": group_key, "data": {"email": email, "first_name": "Ada"}},
        auth=AWS4Auth(access_key, secret_key, "us-east-1", "execute-api"),
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["request_id"])


def _customer(stack: EmbeddedStack, email: str) -> dict[str, Any] | None:
    answer = requests.get(stack.sandbox_urls["expertsender"] + "/_sandbox/customers", timeout=10)
    return next((found for found in answer.json()["customers"] if found.get("email") == email), None)


def test_the_pipeline_runs_in_a_process_of_its_own_and_delivers(stack: EmbeddedStack) -> None:
    # given a stack with its pipeline in a second process
    pid = stack.pipeline_pid
    assert pid is not None and pid != os.getpid() and _alive(pid)
    assert stack.pollers == [] and stack.sandboxes == {}, (
        "nothing of the pipeline runs in the stack's process"
    )
    assert json.loads((stack.options.state_dir / "stack.json").read_text())["pipeline_pid"] == pid
    # when a signed contact is sent to the gateway
    _send(stack, "two.processes@example.com")
    # then the pipeline process validates and delivers it to the sandbox it runs
    found = wait_for(lambda: _customer(stack, "two.processes@example.com"), what="the delivered contact")
    assert found["firstName"] == "Ada"
    # and stopping the stack stops its pipeline process
    stack.stop()
    assert not _alive(pid)


def test_a_pipeline_process_that_dies_is_started_again_and_what_it_held_is_delivered_at_once(
    stack: EmbeddedStack,
) -> None:
    # given a vendor that answers slowly, and a contact its delivery is waiting on
    requests.post(stack.sandbox_urls["expertsender"] + "/_sandbox/latency", json={"seconds": 30}, timeout=10)
    _send(stack, "held@example.com")
    wait_for(lambda: stack.store.counts("delivery")["in_flight"], what="the delivery in flight")
    first = stack.pipeline_pid
    assert first is not None
    # when the pipeline process dies alone (kill -9)
    os.kill(first, signal.SIGKILL)
    # then the stack starts another one
    wait_for(
        lambda: stack.pipeline_restarts == 1 and stack.pipeline_pid not in (None, first), what="a restart"
    )
    second = stack.pipeline_pid
    assert second is not None and _alive(second)
    assert json.loads((stack.options.state_dir / "stack.json").read_text())["pipeline_pid"] == second
    # and the delivery the dead one held is made now, not after its 180 s visibility timeout
    found = wait_for(lambda: _customer(stack, "held@example.com"), timeout=20, what="the held delivery")
    assert found["firstName"] == "Ada"
    # and the new one takes new records too
    _send(stack, "after@example.com")
    wait_for(lambda: _customer(stack, "after@example.com"), what="a record sent after the restart")
    # and stopping the stack stops the new one as it stops the first: asked, after its batches (exit code 0),
    # not killed with the thread that started it
    stack.stop()
    assert stack.pipeline_exit_code == 0


def test_a_stack_refuses_a_state_folder_whose_earlier_pipeline_process_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the pipeline lock of a state folder held, as an orphaned pipeline process would hold it
    monkeypatch.setattr(stack_module, "ORPHAN_WAIT_SECONDS", 0.2)
    state = tmp_path / "state"
    state.mkdir()
    with open(state / "pipeline.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        # when a stack starts on it, then it refuses, saying why and what to do
        with pytest.raises(StateInUse, match=r"pipeline process of an earlier stack .* still runs"):
            EmbeddedStack(_options(state))
    # and once that process is gone, the stack starts
    EmbeddedStack(_options(state)).start().stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_kill_9_of_the_stack_takes_its_pipeline_process_along(tmp_path: Path) -> None:
    # given `forwarder run` (two processes by default)
    state = tmp_path / "state"
    env = {**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "forwarder_local.cli", "run", "--state-dir", str(state)]
    command += ["--port", str(_free_port()), "--sandbox-port", "0", "--console-port", "0"]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        banner = []
        for line in process.stdout:
            banner.append(line)
            if line.startswith("Ctrl-C"):
                break
        assert any("ExpertSender" in line for line in banner), "".join(banner)
        pid = json.loads((state / "stack.json").read_text())["pipeline_pid"]
        assert _alive(pid)
        # when the stack is killed with SIGKILL (no shutdown of its own)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        # then its pipeline process dies too: no orphan goes on consuming the queues
        wait_for(lambda: not _alive(pid), timeout=10, what="the pipeline process to die")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_concurrent_requests_share_syncs_and_each_202_waits_for_one(stack: EmbeddedStack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # given the stack's queue, counting its syncs
    synced_before = stack.store.durable_transactions
    # when 8 clients send 25 contacts each at once
    with ThreadPoolExecutor(8) as clients:
        ids = list(clients.map(lambda n: _send(stack, f"shared.{n}@example.com"), range(200)))
    # then every one was accepted and is delivered
    assert len(set(ids)) == 200
    wait_for(
        lambda: all(_customer(stack, f"shared.{n}@example.com") for n in (0, 99, 199)), what="the deliveries"
    )
    # and the gateway synced the queue for them together: fewer syncs than answers, at least one
    syncs = stack.store.durable_transactions - synced_before
    assert 1 <= syncs < 200


def test_a_record_that_cannot_be_synced_is_answered_503_not_202(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a disk that fails the queue's sync
    def failing() -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(stack.store, "sync", failing)
    first = stack.first_client()
    assert first is not None and stack.gateway is not None
    _, group_key, access_key, secret_key = first
    # when a contact is sent
    response = requests.post(
        stack.gateway.url + "/v1/contacts",
        json={"group_key": group_key, "data": {"email": "unsynced@example.com"}},
        auth=AWS4Auth(access_key, secret_key, "us-east-1", "execute-api"),
        timeout=10,
    )
    # then the client is told to retry rather than that it was accepted
    assert response.status_code == 503
    assert response.json() == {
        "message": "the record could not be stored durably; retry",
        "code": "UNAVAILABLE",
    }


def test_a_stack_that_cannot_start_leaves_no_pipeline_process_behind(tmp_path: Path) -> None:
    import multiprocessing

    # given the gateway's port taken
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        options = _options(tmp_path / "state")
        options.port = taken.getsockname()[1]
        # when a two-process stack starts, then it fails
        with pytest.raises(OSError):
            EmbeddedStack(options).start()
    # and no pipeline process is left consuming the queues, and the state folder is free again
    assert multiprocessing.active_children() == []
    options.port = 0
    EmbeddedStack(options).start().stop()


def test_a_keyed_request_is_on_disk_before_its_answer_is_kept_for_retries(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forwarder_local import queue as queue_module

    first = stack.first_client()
    assert first is not None and stack.gateway is not None
    _, group_key, access_key, secret_key = first
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")

    def send() -> requests.Response:
        assert stack.gateway is not None
        return requests.post(
            stack.gateway.url + "/v1/contacts",
            json={"group_key": group_key, "data": {"email": "keyed@example.com"}},
            headers={"Idempotency-Key": "order-1"},
            auth=auth,
            timeout=10,
        )

    # given a disk that fails the queue's next sync
    real = queue_module.os.fdatasync

    def fails_once(fd: int) -> None:
        monkeypatch.setattr(queue_module.os, "fdatasync", real)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(queue_module.os, "fdatasync", fails_once)
    # when a request with an Idempotency-Key is sent, then it is not answered 202
    assert send().status_code == 503
    # and its retry is not answered 202 from the idempotency record either: the store, which cannot know what
    # reached the disk, refuses sends until the stack restarts
    retried = send()
    assert retried.status_code == 503, retried.text


def test_a_second_forwarder_run_on_the_folder_names_the_running_stack_before_any_port(
    stack: EmbeddedStack,
) -> None:
    from click.testing import CliRunner

    from forwarder_local.cli import main

    assert stack.gateway is not None
    # when `forwarder run` starts on the folder of a running stack, on the same (taken) ports
    started = CliRunner().invoke(
        main,
        ["run", "--state-dir", str(stack.options.state_dir), "--port", stack.gateway.url.rsplit(":", 1)[1]],
    )
    # then it refuses with the real reason and the running stack's gateway, not with a port to move
    assert started.exit_code == 1
    assert "another embedded stack is running on" in started.output
    assert stack.gateway.url in started.output
    assert "is in use" not in started.output


def test_a_keyed_request_waiting_for_the_disk_does_not_hold_up_the_others(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    # given a disk that takes 2 s to sync the queue for requests that sync in their handler (keyed ones)
    real = stack.store._sync_wal

    def slow_for_the_keyed() -> None:
        if threading.current_thread().name.startswith("gateway-syncing"):
            time.sleep(2.0)
        real()

    monkeypatch.setattr(stack.store, "_sync_wal", slow_for_the_keyed)
    first = stack.first_client()
    assert first is not None and stack.gateway is not None
    _, group_key, access_key, secret_key = first
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
    url = stack.gateway.url + "/v1/contacts"
    keyed: list[int] = []
    sender = threading.Thread(
        target=lambda: keyed.append(
            requests.post(
                url,
                json={"group_key": group_key, "data": {"email": "keyed.slow@example.com"}},
                headers={"Idempotency-Key": "slow-1"},
                auth=auth,
                timeout=10,
            ).status_code
        )
    )
    # when a keyed request is waiting for its sync and another client sends a contact
    sender.start()
    time.sleep(0.3)
    started = time.monotonic()
    _send(stack, "not.held@example.com")
    # then the other client's answer does not wait for the keyed request's disk
    assert time.monotonic() - started < 1.2
    sender.join(10)
    assert keyed == [202]
