"""The embedded-mode durable queue (SQS semantics) and its SQS event-source poller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from forwarder_local.poller import LambdaContext, SqsPoller, sqs_event
from forwarder_local.queue import (
    DurableQueueStore,
    QueueNotFound,
    QueueSpec,
    ReceiptHandleInvalid,
    ReceivedMessage,
)

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE_SQS_EVENT = Path("/work/shared/conformance/aws-events/sqsEvent.json")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queues.db"


@pytest.fixture
def store(db: Path, clock: FakeClock):
    s = DurableQueueStore(db, clock=clock)
    s.create_queue(QueueSpec("dlq"))
    s.create_queue(QueueSpec("q", visibility_timeout=30, max_receive_count=3, dead_letter_queue="dlq"))
    s.create_queue(QueueSpec("plain", visibility_timeout=30))
    yield s
    s.close()


# -- store: basics ----------------------------------------------------------------------------------


def test_send_receive_delete(store: DurableQueueStore, clock: FakeClock) -> None:
    # given a message sent with attributes
    message_id = store.send("plain", "hello", {"flow": "orders"})

    # when it is received
    [msg] = store.receive("plain")

    # then it carries what was sent and is hidden while in flight
    assert msg.message_id == message_id
    assert msg.body == "hello"
    assert msg.attributes == {"flow": "orders"}
    assert msg.receive_count == 1
    assert msg.sent_timestamp_ms == int(clock.now * 1000)
    assert msg.first_receive_timestamp_ms == int(clock.now * 1000)
    assert msg.md5_of_body == "5d41402abc4b2a76b9719d911017c592"
    assert store.counts("plain") == {"visible": 0, "in_flight": 1, "delayed": 0}
    assert store.receive("plain") == []

    # and when it is deleted it is gone for good
    store.delete("plain", msg.receipt_handle)
    clock.advance(3600)
    assert store.receive("plain") == []
    assert store.counts("plain") == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_receive_respects_max_messages_and_send_order(store: DurableQueueStore) -> None:
    # given five messages
    ids = store.send_batch("plain", [(f"m{i}", None, 0) for i in range(5)])

    # when received in two rounds of at most three
    first = store.receive("plain", max_messages=3)
    second = store.receive("plain", max_messages=3)

    # then every message comes exactly once, in send order
    assert [m.message_id for m in first + second] == ids
    assert len(first) == 3


def test_unknown_queue_raises(store: DurableQueueStore) -> None:
    with pytest.raises(QueueNotFound):
        store.send("nope", "x")
    with pytest.raises(QueueNotFound):
        store.receive("nope")
    with pytest.raises(QueueNotFound):
        store.counts("nope")


def test_create_queue_is_idempotent_and_updates_settings(store: DurableQueueStore, clock: FakeClock) -> None:
    # given a queued message
    store.send("plain", "x")

    # when the queue is created again with another visibility timeout
    store.create_queue(QueueSpec("plain", visibility_timeout=5))

    # then the message survived and the new timeout applies
    assert store.get_queue("plain").visibility_timeout == 5
    assert len(store.receive("plain")) == 1
    clock.advance(5)
    assert store.receive("plain")[0].receive_count == 2


def test_dead_letter_queue_must_exist(store: DurableQueueStore) -> None:
    with pytest.raises(QueueNotFound):
        store.create_queue(QueueSpec("x", max_receive_count=2, dead_letter_queue="missing"))


def test_queue_arn_and_arn_as_queue_name(store: DurableQueueStore) -> None:
    arn = store.queue_arn("plain")
    assert arn == "arn:aws:sqs:local:000000000000:plain"
    store.send(arn, "via arn")
    assert store.receive("plain")[0].body == "via arn"


# -- store: visibility, receipt handles ------------------------------------------------------------


def test_visibility_timeout_expiry_redelivers_with_receive_count_2(
    store: DurableQueueStore, clock: FakeClock
) -> None:
    # given a received message
    store.send("plain", "x")
    [first] = store.receive("plain")

    # when just under the visibility timeout passes it stays hidden
    clock.advance(29.9)
    assert store.receive("plain") == []

    # then once it has passed the message comes back, received a second time
    clock.advance(0.1)
    [second] = store.receive("plain")
    assert second.message_id == first.message_id
    assert second.receive_count == 2
    assert second.first_receive_timestamp_ms == first.first_receive_timestamp_ms
    assert second.receipt_handle != first.receipt_handle


def test_receive_with_explicit_visibility_timeout(store: DurableQueueStore, clock: FakeClock) -> None:
    store.send("plain", "x")
    store.receive("plain", visibility_timeout=2)
    clock.advance(2)
    assert len(store.receive("plain")) == 1


def test_stale_receipt_handle_cannot_delete_a_message_received_again(
    store: DurableQueueStore, clock: FakeClock
) -> None:
    # given a message received, expired and received again
    store.send("plain", "x")
    [first] = store.receive("plain")
    clock.advance(30)
    [second] = store.receive("plain")

    # when the first receipt handle is used to delete it
    with pytest.raises(ReceiptHandleInvalid):
        store.delete("plain", first.receipt_handle)
    with pytest.raises(ReceiptHandleInvalid):
        store.change_visibility("plain", first.receipt_handle, 0)

    # then the message is still there, and the current handle deletes it
    assert store.counts("plain")["in_flight"] == 1
    store.delete("plain", second.receipt_handle)
    assert store.counts("plain") == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_malformed_or_foreign_receipt_handle(store: DurableQueueStore) -> None:
    store.send("plain", "x")
    [msg] = store.receive("plain")
    with pytest.raises(ReceiptHandleInvalid):
        store.delete("plain", "not-a-handle")
    with pytest.raises(ReceiptHandleInvalid):
        store.delete("q", msg.receipt_handle)
    assert store.counts("plain")["in_flight"] == 1


def test_deleting_an_already_deleted_message_is_a_no_op(store: DurableQueueStore) -> None:
    store.send("plain", "x")
    [msg] = store.receive("plain")
    store.delete("plain", msg.receipt_handle)
    store.delete("plain", msg.receipt_handle)  # as SQS: succeeds
    with pytest.raises(ReceiptHandleInvalid):
        store.change_visibility("plain", msg.receipt_handle, 10)


def test_change_visibility_extends_and_releases(store: DurableQueueStore, clock: FakeClock) -> None:
    # given a received message whose visibility is extended to 100 s
    store.send("plain", "x")
    [msg] = store.receive("plain")
    store.change_visibility("plain", msg.receipt_handle, 100)

    # when the queue's 30 s timeout passes it is still hidden
    clock.advance(99)
    assert store.receive("plain") == []

    # then after 100 s it is back; and a visibility of 0 releases it at once
    clock.advance(1)
    [again] = store.receive("plain")
    store.change_visibility("plain", again.receipt_handle, 0)
    assert store.receive("plain")[0].receive_count == 3


# -- store: delay, retention, redrive --------------------------------------------------------------


def test_delay_seconds(store: DurableQueueStore, clock: FakeClock) -> None:
    # given a message sent with a 10 s delay
    store.send("plain", "later", delay_seconds=10)

    # then it is delayed, not visible, until 10 s have passed
    assert store.counts("plain") == {"visible": 0, "in_flight": 0, "delayed": 1}
    clock.advance(9.9)
    assert store.receive("plain") == []
    clock.advance(0.1)
    assert [m.body for m in store.receive("plain")] == ["later"]


def test_retention_expires_messages(db: Path, clock: FakeClock) -> None:
    with DurableQueueStore(db, clock=clock) as s:
        # given a queue retaining messages for 60 s and a message sent 60 s ago
        s.create_queue(QueueSpec("short", retention_seconds=60))
        s.send("short", "old")
        clock.advance(30)
        s.send("short", "new")
        clock.advance(30)

        # then only the newer message is left
        assert s.counts("short")["visible"] == 1
        assert [m["body"] for m in s.peek("short")] == ["new"]
        assert [m.body for m in s.receive("short")] == ["new"]


def test_redrive_to_dead_letter_queue_after_max_receive_count(
    store: DurableQueueStore, clock: FakeClock
) -> None:
    # given a message in a queue with max_receive_count 3
    sent_at_ms = int(clock.now * 1000)
    message_id = store.send("q", "poison", {"k": "v"})

    # when it is received three times without being deleted
    for expected in (1, 2, 3):
        [msg] = store.receive("q")
        assert msg.receive_count == expected
        clock.advance(30)

    # then the fourth receive moves it to the dead-letter queue instead of returning it
    assert store.receive("q") == []
    assert store.counts("q") == {"visible": 0, "in_flight": 0, "delayed": 0}
    assert store.counts("dlq")["visible"] == 1
    [dead] = store.receive("dlq")
    assert dead.message_id == message_id
    assert dead.body == "poison"
    assert dead.attributes == {"k": "v"}
    assert dead.sent_timestamp_ms == sent_at_ms
    assert dead.receive_count == 1
    assert dead.dead_letter_source_arn == store.queue_arn("q")


def test_redrive_does_not_count_against_max_messages(store: DurableQueueStore, clock: FakeClock) -> None:
    # given one exhausted message ahead of a fresh one
    store.send("q", "poison")
    for _ in range(3):
        store.receive("q")
        clock.advance(30)
    store.send("q", "fresh")

    # when one message is asked for
    got = store.receive("q", max_messages=1)

    # then the poison one went to the DLQ and the fresh one is returned
    assert [m.body for m in got] == ["fresh"]
    assert store.counts("dlq")["visible"] == 1


def test_dead_letter_queue_retention_counts_from_original_send(db: Path, clock: FakeClock) -> None:
    with DurableQueueStore(db, clock=clock) as s:
        s.create_queue(QueueSpec("dlq", retention_seconds=100))
        s.create_queue(QueueSpec("src", visibility_timeout=60, max_receive_count=1, dead_letter_queue="dlq"))
        s.send("src", "x")
        s.receive("src")
        clock.advance(60)
        assert s.receive("src") == []  # redriven now, 60 s after the send
        assert s.counts("dlq")["visible"] == 1
        clock.advance(40)  # 100 s after the original send
        assert s.counts("dlq")["visible"] == 0
        assert s.receive("dlq") == []


def test_send_batch_is_all_or_nothing(store: DurableQueueStore) -> None:
    with pytest.raises(ValueError):
        store.send_batch("plain", [("ok", None, 0), ("", None, 0)])
    assert store.counts("plain")["visible"] == 0


def test_peek_does_not_receive_and_purge_empties(store: DurableQueueStore) -> None:
    store.send("plain", "a")
    store.send("plain", "b", delay_seconds=5)
    peeked = store.peek("plain")
    assert [(m["body"], m["state"], m["receive_count"]) for m in peeked] == [
        ("a", "visible", 0),
        ("b", "delayed", 0),
    ]
    assert len(store.receive("plain")) == 1  # peek left it visible
    store.purge("plain")
    assert store.counts("plain") == {"visible": 0, "in_flight": 0, "delayed": 0}


# -- store: durability and concurrency --------------------------------------------------------------


def test_state_survives_reopening(db: Path, clock: FakeClock) -> None:
    # given a store with one queued and one in-flight message
    with DurableQueueStore(db, clock=clock) as s:
        s.create_queue(QueueSpec("q", visibility_timeout=30))
        s.send("q", "in flight")
        s.receive("q")
        s.send("q", "queued")

    # when the file is opened again
    with DurableQueueStore(db, clock=clock) as reopened:
        # then the queued message is there and the in-flight one stays hidden until its timeout
        assert reopened.counts("q") == {"visible": 1, "in_flight": 1, "delayed": 0}
        [queued] = reopened.receive("q")
        assert queued.body == "queued"
        reopened.delete("q", queued.receipt_handle)
        clock.advance(30)
        [back] = reopened.receive("q")
        assert (back.body, back.receive_count) == ("in flight", 2)


def test_the_file_is_in_wal_mode(db: Path) -> None:
    import sqlite3

    with DurableQueueStore(db) as s:
        assert s._conn is not None
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _run_then_kill_9(code: str, db: Path, ready: str) -> None:
    """Run ``code`` (``python -c``, the store's path as its argument) until it prints ``ready``, then SIGKILL it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "local"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == ready
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_acknowledged_sends_survive_kill_9(db: Path) -> None:
    # given a process that sends N messages, reports it, and is then killed with SIGKILL
    n = 50
    code = (
        "import sys, time\n"
        "from forwarder_local.queue import DurableQueueStore, QueueSpec\n"
        "s = DurableQueueStore(sys.argv[1])\n"
        "s.create_queue(QueueSpec('q'))\n"
        f"for i in range({n}):\n"
        "    s.send('q', f'm{i}')\n"
        "print('sent', flush=True)\n"
        "time.sleep(60)\n"
    )
    _run_then_kill_9(code, db, "sent")

    # when the parent opens the store
    with DurableQueueStore(db) as s:
        # then every acknowledged message is there
        assert s.counts("q")["visible"] == n
        bodies = sorted(m["body"] for m in s.peek("q", limit=1000))
        assert bodies == sorted(f"m{i}" for i in range(n))


def test_only_sends_wait_for_the_disk(db: Path) -> None:
    # given a store with a queue
    with DurableQueueStore(db) as s:
        s.create_queue(QueueSpec("q"))
        before, durable_before = s.transactions, s.durable_transactions
        # when a message is sent, received, hidden again and deleted
        s.send("q", "m")
        (message,) = s.receive("q")
        s.change_visibility("q", message.receipt_handle, 0)
        (message,) = s.receive("q")
        s.delete("q", message.receipt_handle)
        # then five transactions committed and only the send's was followed by a sync of the log
        assert s.transactions - before == 5
        assert s.durable_transactions - durable_before == 1


def test_an_idle_long_poll_writes_nothing(db: Path) -> None:
    # given a store with an empty queue and a message in flight in another
    with DurableQueueStore(db) as s:
        s.create_queue(QueueSpec("idle"))
        s.create_queue(QueueSpec("busy", visibility_timeout=60))
        s.send("busy", "m")
        assert s.receive("busy")
        before = s.transactions
        # when pollers long-poll both for a while
        assert s.receive("idle", wait_seconds=0.3) == []
        assert s.receive("busy", wait_seconds=0.3) == []
        # then no write transaction ran (no lock on the file, no WAL growth), and a queue that does not exist
        # is still refused
        assert s.transactions == before
        with pytest.raises(QueueNotFound):
            s.receive("missing")


def test_unsynced_receives_and_deletes_survive_kill_9(db: Path) -> None:
    # given a process that sends 20 messages, deletes 10 and holds 5 more in flight (neither fsynced at commit),
    # reports it and is killed with SIGKILL
    code = (
        "import sys, time\n"
        "from forwarder_local.queue import DurableQueueStore, QueueSpec\n"
        "s = DurableQueueStore(sys.argv[1])\n"
        "s.create_queue(QueueSpec('q', visibility_timeout=600))\n"
        "s.send_batch('q', [(f'm{i}', None, 0) for i in range(10)])\n"
        "s.send_batch('q', [(f'm{i}', None, 0) for i in range(10, 20)])\n"
        "s.delete_batch('q', [m.receipt_handle for m in s.receive('q', max_messages=10)])\n"
        "held = s.receive('q', max_messages=5)\n"
        "print('done', flush=True)\n"
        "time.sleep(60)\n"
    )
    _run_then_kill_9(code, db, "done")

    # when the parent opens the store
    with DurableQueueStore(db) as s:
        # then the deletes and the receives happened: 10 left, 5 of them still in flight
        assert s.counts("q") == {"visible": 5, "in_flight": 5, "delayed": 0}
        assert sorted(m["body"] for m in s.peek("q", limit=100)) == sorted(f"m{i}" for i in range(10, 20))


def test_concurrent_sends_share_one_fsynced_transaction_and_none_returns_before_it_commits(db: Path) -> None:
    import sqlite3

    # given a store, and another process's writer holding the database's write lock
    store = DurableQueueStore(db)
    store.create_queue(QueueSpec("q"))
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    before = store.transactions
    returned: dict[int, str] = {}
    failed: dict[int, BaseException] = {}

    def send(index: int) -> None:
        try:
            returned[index] = store.send("q" if index else "no-such-queue", f"m{index}")
        except BaseException as error:
            failed[index] = error

    # when 8 threads send at once (one of them to a queue that does not exist)
    threads = [threading.Thread(target=send, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    waited = 0.0
    while store.pending_writes < 8 and waited < 20:
        time.sleep(0.01)
        waited += 0.01

    # then none is acknowledged while its transaction cannot commit
    assert store.pending_writes == 8
    assert returned == {} and failed == {}
    assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0

    # and once the lock is free, one transaction (one fsync) carries all of them
    other.execute("ROLLBACK")
    for thread in threads:
        thread.join(30)
    assert store.transactions - before == 1
    assert sorted(returned) == list(range(1, 8))
    assert isinstance(failed[0], QueueNotFound)  # its savepoint was rolled back alone
    bodies = {row[0] for row in other.execute("SELECT body FROM messages")}
    assert bodies == {f"m{index}" for index in range(1, 8)}
    other.close()
    store.close()


def test_sends_acknowledged_under_concurrency_survive_kill_9(db: Path) -> None:
    # given a process whose 8 threads send without pause and print each message once its send returned
    code = (
        "import sys, threading\n"
        "from forwarder_local.queue import DurableQueueStore, QueueSpec\n"
        "s = DurableQueueStore(sys.argv[1])\n"
        "s.create_queue(QueueSpec('q'))\n"
        "out = threading.Lock()\n"
        "def send(t):\n"
        "    for i in range(100000):\n"
        "        s.send('q', f't{t}-{i}')\n"
        "        with out:\n"
        "            print(f't{t}-{i}', flush=True)\n"
        "for t in range(8):\n"
        "    threading.Thread(target=send, args=(t,), daemon=True).start()\n"
        "threading.Event().wait()\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "local"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True, env=env)
    acknowledged: list[str] = []
    try:
        assert proc.stdout is not None
        while len(acknowledged) < 300:
            line = proc.stdout.readline()
            assert line, "the sending process ended early"
            acknowledged.append(line.strip())
        # when it is killed while its threads are mid-send
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # then every message it acknowledged is in the store, once
    with DurableQueueStore(db) as s:
        bodies = [m["body"] for m in s.peek("q", limit=1_000_000)]
    assert set(acknowledged) <= set(bodies)
    assert len(bodies) == len(set(bodies))


@pytest.mark.parametrize("shared_store", [True, False], ids=["one-store", "store-per-thread"])
def test_concurrent_receivers_never_share_an_in_flight_message(db: Path, shared_store: bool) -> None:
    # given 200 messages
    n, threads = 200, 8
    with DurableQueueStore(db) as setup:
        setup.create_queue(QueueSpec("q", visibility_timeout=300))
        for start in range(0, n, 10):  # SendMessageBatch takes 10 at most
            setup.send_batch("q", [(f"m{i}", None, 0) for i in range(start, start + 10)])

    shared = DurableQueueStore(db) if shared_store else None
    got: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(index: int) -> None:
        s = shared or DurableQueueStore(db)
        try:
            barrier.wait()
            while batch := s.receive("q", max_messages=3):
                got[index].extend(m.message_id for m in batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            if shared is None:
                s.close()

    # when several threads receive concurrently
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    if shared is not None:
        shared.close()

    # then each message was received exactly once
    assert errors == []
    all_ids = [i for ids in got for i in ids]
    assert len(all_ids) == n
    assert len(set(all_ids)) == n


def test_long_poll_is_woken_by_a_send(store: DurableQueueStore) -> None:
    # given a receiver long-polling an empty queue
    result: list[ReceivedMessage] = []
    receiver = threading.Thread(target=lambda: result.extend(store.receive("plain", wait_seconds=5)))
    started = time.monotonic()
    receiver.start()
    time.sleep(0.05)

    # when a message is sent
    store.send("plain", "wake up")
    receiver.join(5)

    # then the receiver returns it well before its wait ends
    assert [m.body for m in result] == ["wake up"]
    assert time.monotonic() - started < 2


def test_long_poll_times_out_empty(store: DurableQueueStore) -> None:
    started = time.monotonic()
    assert store.receive("plain", wait_seconds=0.2) == []
    assert 0.15 <= time.monotonic() - started < 2


# -- sqs_event and LambdaContext --------------------------------------------------------------------


def test_sqs_event_has_the_shape_of_a_lambda_sqs_event(store: DurableQueueStore) -> None:
    # given a received message with a message attribute
    store.send("plain", '{"message": "foo"}', {"testAttr": "100"})
    messages = store.receive("plain")

    # when an event is built
    event = sqs_event(store.queue_arn("plain"), messages)

    # then its record has the keys of the conformance sample, with string-valued attributes
    sample = json.loads(CONFORMANCE_SQS_EVENT.read_text())["Records"][0]
    [record] = event["Records"]
    assert set(record) == set(sample)
    assert set(record["attributes"]) == set(sample["attributes"])
    assert all(isinstance(v, str) for v in record["attributes"].values())
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"] == {
        "testAttr": {
            "stringValue": "100",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        }
    }
    assert record["messageId"] == messages[0].message_id
    assert record["receiptHandle"] == messages[0].receipt_handle
    assert record["md5OfBody"] == messages[0].md5_of_body
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:local:000000000000:plain"
    assert record["awsRegion"] == "local"


def test_sqs_event_of_a_redriven_message_names_its_source_queue(
    store: DurableQueueStore, clock: FakeClock
) -> None:
    store.send("q", "x")
    for _ in range(3):
        store.receive("q")
        clock.advance(30)
    store.receive("q")
    record = sqs_event(store.queue_arn("dlq"), store.receive("dlq"))["Records"][0]
    assert record["attributes"]["DeadLetterQueueSourceArn"] == store.queue_arn("q")


def test_sqs_event_parses_with_powertools_data_class(store: DurableQueueStore) -> None:
    from aws_lambda_powertools.utilities.data_classes import SQSEvent

    store.send("plain", "b", {"a": "1"})
    event = SQSEvent(sqs_event(store.queue_arn("plain"), store.receive("plain")))
    [record] = list(event.records)
    assert record.body == "b"
    assert record.message_attributes["a"].string_value == "1"
    assert record.attributes.approximate_receive_count == "1"


def test_lambda_context_is_accepted_by_powertools_logger_and_metrics(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aws_lambda_powertools import Logger, Metrics

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    logger = Logger(service="test-local", level="INFO")
    metrics = Metrics(namespace="ForwarderLocal", service="test-local")

    @logger.inject_lambda_context
    @metrics.log_metrics(capture_cold_start_metric=True)
    def handler(event: dict[str, Any], context: Any) -> str:
        logger.info("hi")
        metrics.add_metric(name="Invocations", unit="Count", value=1)
        return context.aws_request_id  # type: ignore[no-any-return]

    context = LambdaContext("fn", timeout_seconds=3)
    assert handler({}, context) == context.aws_request_id
    out = capsys.readouterr().out
    assert '"function_name":"fn"' in out.replace(" ", "")
    assert context.aws_request_id in out
    assert 0 < context.get_remaining_time_in_millis() <= 3000
    assert context.invoked_function_arn == "arn:aws:lambda:local:000000000000:function:fn"
    assert LambdaContext("fn").aws_request_id != LambdaContext("fn").aws_request_id


# -- poller ----------------------------------------------------------------------------------------


def make_poller(store: DurableQueueStore, queue: str, handler: Any, **kwargs: Any) -> SqsPoller:
    errors = kwargs.pop("errors", None)
    return SqsPoller(
        store,
        queue,
        handler,
        function_name="fn",
        max_batching_window=0,
        on_error=errors.append if errors is not None else None,
        **kwargs,
    )


def test_poller_deletes_a_successful_batch(store: DurableQueueStore) -> None:
    # given three messages and a handler that succeeds
    store.send_batch("plain", [(f"m{i}", None, 0) for i in range(3)])
    events: list[dict[str, Any]] = []
    contexts: list[Any] = []

    def handler(event: dict[str, Any], context: Any) -> None:
        events.append(event)
        contexts.append(context)

    # when the poller polls once
    handled = make_poller(store, "plain", handler).poll_once()

    # then the handler got one event with all three, and they are deleted
    assert handled == 3
    assert [r["body"] for r in events[0]["Records"]] == ["m0", "m1", "m2"]
    assert contexts[0].function_name == "fn"
    assert store.counts("plain") == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_poller_partial_batch_failure_leaves_only_the_failed_message(
    store: DurableQueueStore, clock: FakeClock
) -> None:
    # given three messages and a handler reporting the second as failed
    store.send_batch("plain", [(f"m{i}", None, 0) for i in range(3)])

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}

    # when polled
    assert make_poller(store, "plain", handler).poll_once() == 3

    # then only the failed message is left, in flight, and it comes back after its timeout
    assert store.counts("plain") == {"visible": 0, "in_flight": 1, "delayed": 0}
    clock.advance(30)
    [back] = store.receive("plain")
    assert (back.body, back.receive_count) == ("m1", 2)


def test_poller_handler_exception_leaves_every_message(store: DurableQueueStore, clock: FakeClock) -> None:
    # given two messages and a handler that raises
    store.send_batch("plain", [("a", None, 0), ("b", None, 0)])
    errors: list[BaseException] = []

    def handler(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("boom")

    # when polled
    assert make_poller(store, "plain", handler, errors=errors).poll_once() == 2

    # then nothing was deleted and the error was reported
    assert [str(e) for e in errors] == ["boom"]
    assert store.counts("plain") == {"visible": 0, "in_flight": 2, "delayed": 0}
    clock.advance(30)
    assert sorted(m.body for m in store.receive("plain")) == ["a", "b"]


@pytest.mark.parametrize(
    "failures",
    [
        [{"itemIdentifier": "not-in-this-batch"}],
        [{"itemIdentifier": ""}],
        [{"itemIdentifier": None}],
        [{"wrongKey": "x"}],
        "not a list",
    ],
    ids=["unknown-id", "empty-id", "null-id", "bad-key", "not-a-list"],
)
def test_poller_invalid_batch_item_failure_fails_the_whole_batch(
    store: DurableQueueStore, failures: Any
) -> None:
    # given two messages and a handler naming an identifier Lambda would reject
    store.send_batch("plain", [("a", None, 0), ("b", None, 0)])
    errors: list[BaseException] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"batchItemFailures": failures}

    # when polled
    make_poller(store, "plain", handler, errors=errors).poll_once()

    # then the whole batch is failed: nothing deleted
    assert len(errors) == 1
    assert store.counts("plain") == {"visible": 0, "in_flight": 2, "delayed": 0}


@pytest.mark.parametrize("response", [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}])
def test_poller_empty_responses_mean_success(store: DurableQueueStore, response: Any) -> None:
    store.send("plain", "a")
    make_poller(store, "plain", lambda e, c: response).poll_once()
    assert store.counts("plain")["in_flight"] == 0


def test_poller_without_report_batch_item_failures_deletes_all(store: DurableQueueStore) -> None:
    store.send_batch("plain", [("a", None, 0), ("b", None, 0)])

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}

    make_poller(store, "plain", handler, report_batch_item_failures=False).poll_once()
    assert store.counts("plain") == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_poller_failed_message_keeps_the_visibility_the_handler_set(
    store: DurableQueueStore, clock: FakeClock
) -> None:
    # given a handler that sets a 5 s visibility on the message it reports failed
    store.send("plain", "retry soon")

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        record = event["Records"][0]
        store.change_visibility("plain", record["receiptHandle"], 5)
        return {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}

    # when polled
    make_poller(store, "plain", handler).poll_once()

    # then the message is back after 5 s, not the queue's 30 s
    clock.advance(4.9)
    assert store.receive("plain") == []
    clock.advance(0.1)
    assert [m.body for m in store.receive("plain")] == ["retry soon"]


def test_poller_retries_then_redrives_to_dlq(store: DurableQueueStore, clock: FakeClock) -> None:
    # given a handler that always fails one message of queue q (max_receive_count 3)
    store.send("q", "poison")
    store.send("q", "good")
    seen: list[tuple[str, str]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        failed = []
        for record in event["Records"]:
            seen.append((record["body"], record["attributes"]["ApproximateReceiveCount"]))
            if record["body"] == "poison":
                failed.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failed}

    poller = make_poller(store, "q", handler)

    # when polled, with the visibility timeout passing between polls
    for _ in range(5):
        poller.poll_once()
        clock.advance(30)

    # then poison was tried three times, then moved to the DLQ; good was delivered once
    assert seen == [("poison", "1"), ("good", "1"), ("poison", "2"), ("poison", "3")]
    assert store.counts("q") == {"visible": 0, "in_flight": 0, "delayed": 0}
    assert [m["body"] for m in store.peek("dlq")] == ["poison"]


def test_poller_batch_size(store: DurableQueueStore) -> None:
    store.send_batch("plain", [(f"m{i}", None, 0) for i in range(5)])
    sizes: list[int] = []
    poller = make_poller(store, "plain", lambda e, c: sizes.append(len(e["Records"])), batch_size=2)
    while poller.poll_once():
        pass
    assert sizes == [2, 2, 1]


def test_poller_batching_window_gathers_late_messages(store: DurableQueueStore) -> None:
    # given one message now and one sent 0.1 s later, within a 1 s batching window
    store.send("plain", "early")
    sizes: list[int] = []
    poller = SqsPoller(
        store,
        "plain",
        lambda e, c: sizes.append(len(e["Records"])),
        function_name="fn",
        batch_size=2,
        max_batching_window=1.0,
    )
    timer = threading.Timer(0.1, lambda: store.send("plain", "late"))
    timer.start()

    # when polled once
    started = time.monotonic()
    poller.poll_once()
    timer.join()

    # then both arrive in one invocation, which did not wait out the window once the batch was full
    assert sizes == [2]
    assert time.monotonic() - started < 0.9


def test_the_first_record_after_an_idle_spell_does_not_go_alone(store: DurableQueueStore) -> None:
    # given a poller with a 0.3 s batching window that has been waiting on an empty queue for longer than that
    sizes: list[int] = []
    invoked = threading.Event()

    def handler(event: dict[str, Any], context: Any) -> None:
        sizes.append(len(event["Records"]))
        invoked.set()

    poller = SqsPoller(store, "plain", handler, function_name="fn", batch_size=10, max_batching_window=0.3)
    waiting = threading.Thread(target=poller._poll, args=(5.0,))
    waiting.start()
    time.sleep(0.6)

    # when a burst of two records arrives, the second 0.1 s behind the first
    store.send("plain", "first")
    time.sleep(0.1)
    store.send("plain", "second")
    waiting.join(10)

    # then they go together: the window opened with the first record, not with the idle wait
    assert invoked.is_set()
    assert sizes == [2]


def test_poller_handler_over_timeout_fails_the_batch(store: DurableQueueStore) -> None:
    store.send("plain", "slow")
    errors: list[BaseException] = []
    poller = make_poller(store, "plain", lambda e, c: time.sleep(0.15), timeout_seconds=0.1, errors=errors)
    poller.poll_once()
    assert len(errors) == 1 and isinstance(errors[0], TimeoutError)
    assert store.counts("plain")["in_flight"] == 1


def test_poller_thread_processes_messages_and_survives_errors(store: DurableQueueStore) -> None:
    # given a running poller whose handler fails on "bad"
    done = threading.Event()
    bodies: list[str] = []
    errors: list[BaseException] = []

    def handler(event: dict[str, Any], context: Any) -> None:
        for record in event["Records"]:
            if record["body"] == "bad":
                raise ValueError("bad message")
            bodies.append(record["body"])
            if record["body"] == "last":
                done.set()

    poller = make_poller(store, "plain", handler, errors=errors, batch_size=1)
    poller.start()
    try:
        # when a bad message and then good ones are sent
        store.send("plain", "bad")
        store.send("plain", "good")
        store.send("plain", "last")

        # then the loop kept going past the error
        assert done.wait(5)
    finally:
        poller.stop()
    assert not poller.running
    assert bodies == ["good", "last"]
    assert [str(e) for e in errors] == ["bad message"]


def test_release_in_flight_makes_received_messages_visible_but_not_delayed_ones(tmp_path: Path) -> None:
    store = DurableQueueStore(tmp_path / "q.db")
    store.create_queue(QueueSpec("work", visibility_timeout=300))
    store.send("work", "received")
    store.send("work", "delayed", delay_seconds=300)
    [message] = store.receive("work")
    assert store.receive("work") == []
    assert store.release_in_flight("work") == 1
    [again] = store.receive("work")
    assert again.body == "received" and again.receive_count == 2
    assert message.message_id == again.message_id


def test_a_restart_keeps_a_backoff_but_releases_what_was_in_flight(tmp_path: Path) -> None:
    # given two messages received by a consumer that then died: one it had already put into a backoff
    store = DurableQueueStore(tmp_path / "q.db")
    store.create_queue(QueueSpec("work", visibility_timeout=300))
    store.send("work", "in flight")
    store.send("work", "backing off")
    received = {message.body: message for message in store.receive("work")}
    store.change_visibility("work", received["backing off"].receipt_handle, 600)
    # when the stack starts again
    released = store.release_in_flight("work")
    # then only the message that was truly in flight is retried at once; the backoff is kept
    assert released == 1
    assert [message.body for message in store.receive("work")] == ["in flight"]


# --- SQS's limits ------------------------------------------------------------------------------------------------


def test_what_sqs_refuses_the_local_queue_refuses(store: DurableQueueStore) -> None:
    # a message over 256 KiB (body plus attributes)
    with pytest.raises(ValueError, match="exceeds the 262144-byte limit"):
        store.send("plain", "x" * 262_000, {"request_id": "r" * 200})
    # eleven entries in one batch, or ten whose total is over 256 KiB
    with pytest.raises(ValueError, match="at most 10"):
        store.send_batch("plain", [("m", None, 0)] * 11)
    with pytest.raises(ValueError, match=r"batch of .* exceeds"):
        store.send_batch("plain", [("y" * 30_000, None, 0)] * 10)
    # a delay over 15 minutes, a visibility over 12 hours
    with pytest.raises(ValueError, match="delay_seconds"):
        store.send("plain", "m", delay_seconds=901)
    with pytest.raises(ValueError, match="visibility_timeout"):
        store.receive("plain", visibility_timeout=43_201)
    # and nothing of it was stored
    assert store.counts("plain") == {"visible": 0, "in_flight": 0, "delayed": 0}
    # while a message of exactly 256 KiB is taken
    store.send("plain", "z" * 262_144)


# --- FIFO queues -------------------------------------------------------------------------------------------------


@pytest.fixture
def fifo(db: Path, clock: FakeClock):
    s = DurableQueueStore(db, clock=clock)
    s.create_queue(QueueSpec("fifo-dlq", fifo=True))
    s.create_queue(
        QueueSpec("fifo", visibility_timeout=30, max_receive_count=5, dead_letter_queue="fifo-dlq", fifo=True)
    )
    yield s
    s.close()


def test_a_fifo_group_is_received_in_order_and_waits_while_its_head_is_in_flight(
    fifo: DurableQueueStore,
) -> None:
    # given jane's delete then upsert, and john's upsert, in one FIFO queue
    fifo.send("fifo", "jane: delete", group_id="jane")
    fifo.send("fifo", "jane: upsert", group_id="jane")
    fifo.send("fifo", "john: upsert", group_id="john")
    # when a consumer receives one message
    [first] = fifo.receive("fifo", max_messages=1)
    assert first.body == "jane: delete" and first.group_id == "jane"
    # then while it is in flight, jane's upsert waits, and john's is not held up
    assert [message.body for message in fifo.receive("fifo", max_messages=10)] == ["john: upsert"]
    # and once the delete is done, jane's upsert comes
    fifo.delete("fifo", first.receipt_handle)
    assert [message.body for message in fifo.receive("fifo")] == ["jane: upsert"]


def test_a_fifo_group_waits_out_its_heads_backoff_while_other_groups_flow(
    fifo: DurableQueueStore, clock: FakeClock
) -> None:
    fifo.send("fifo", "jane: delete", group_id="jane")
    fifo.send("fifo", "jane: upsert", group_id="jane")
    [delete] = fifo.receive("fifo", max_messages=1)
    # the delete failed: its receiver hides it for a 60 s backoff
    fifo.change_visibility("fifo", delete.receipt_handle, 60)
    fifo.send("fifo", "john: upsert", group_id="john")
    # jane's upsert must not overtake her delete; john is free
    [john] = fifo.receive("fifo", max_messages=10)
    assert john.body == "john: upsert"
    fifo.delete("fifo", john.receipt_handle)
    clock.advance(61)
    # after the backoff the delete comes first, then (in the same receive) the upsert behind it
    assert [message.body for message in fifo.receive("fifo", max_messages=10)] == [
        "jane: delete",
        "jane: upsert",
    ]


def test_one_receive_takes_a_groups_messages_in_order(fifo: DurableQueueStore) -> None:
    for body in ("a1", "b1", "a2", "a3", "b2"):
        fifo.send("fifo", body, group_id=body[0])
    bodies = [message.body for message in fifo.receive("fifo", max_messages=10)]
    assert bodies == ["a1", "b1", "a2", "a3", "b2"]


def test_a_fifo_deduplication_id_sent_again_within_five_minutes_is_not_enqueued_twice(
    fifo: DurableQueueStore, clock: FakeClock
) -> None:
    first = fifo.send("fifo", "jane: upsert", group_id="jane", dedup_id="request-1:es")
    again = fifo.send("fifo", "jane: upsert", group_id="jane", dedup_id="request-1:es")
    assert again == first
    [received] = fifo.receive("fifo", max_messages=10)
    fifo.delete("fifo", received.receipt_handle)
    clock.advance(301)
    fifo.send("fifo", "jane: upsert", group_id="jane", dedup_id="request-1:es")
    assert fifo.counts("fifo")["visible"] == 1


def test_a_fifo_queue_refuses_messages_without_a_group_and_per_message_delays(
    fifo: DurableQueueStore,
) -> None:
    with pytest.raises(ValueError, match="message group id"):
        fifo.send("fifo", "no group")
    with pytest.raises(ValueError, match="no per-message delay"):
        fifo.send("fifo", "delayed", delay_seconds=5, group_id="g")


def test_a_redriven_head_frees_its_group(fifo: DurableQueueStore) -> None:
    fifo.send("fifo", "poison", group_id="g")
    fifo.send("fifo", "next", group_id="g")
    for _ in range(5):
        [message] = fifo.receive("fifo", max_messages=1)
        assert message.body == "poison"
        fifo.change_visibility("fifo", message.receipt_handle, 0)
    # the sixth receive moves the poison message to the DLQ and the group goes on
    assert [message.body for message in fifo.receive("fifo", max_messages=10)] == ["next"]
    assert [message["body"] for message in fifo.peek("fifo-dlq")] == ["poison"]


def test_a_standard_queue_turned_fifo_keeps_its_messages(db: Path) -> None:
    # given an older state folder whose delivery queue was a standard queue, holding a message
    with DurableQueueStore(db) as old:
        old.create_queue(QueueSpec("delivery-dlq"))
        old.create_queue(QueueSpec("delivery", max_receive_count=5, dead_letter_queue="delivery-dlq"))
        old.send("delivery", "waiting since the last run")
    # when the new version makes it FIFO
    with DurableQueueStore(db) as new:
        new.create_queue(QueueSpec("delivery-dlq", fifo=True))
        new.create_queue(
            QueueSpec("delivery", max_receive_count=5, dead_letter_queue="delivery-dlq", fifo=True)
        )
        # then the message is still there, in a group of its own
        [message] = new.receive("delivery")
        assert message.body == "waiting since the last run" and message.group_id


def test_concurrent_pollers_on_a_fifo_queue_keep_each_group_in_order_and_never_share_it(
    tmp_path: Path,
) -> None:
    # given a FIFO queue with 4 groups of 15 messages each, interleaved
    store = DurableQueueStore(tmp_path / "fifo.db")
    store.create_queue(QueueSpec("lanes", fifo=True, visibility_timeout=30))
    for index in range(15):
        for group in "abcd":
            store.send("lanes", f"{group}{index}", group_id=group, dedup_id=f"{group}{index}")
    seen: dict[str, list[int]] = {group: [] for group in "abcd"}
    holding: set[str] = set()
    shared: list[str] = []
    threads: set[str] = set()
    lock = threading.Lock()
    done = threading.Event()

    def handler(event: dict[str, Any], context: Any) -> None:
        groups = {record["attributes"]["MessageGroupId"] for record in event["Records"]}
        with lock:
            threads.add(threading.current_thread().name)
            shared.extend(groups & holding)
            holding.update(groups)
        time.sleep(0.02)  # long enough for the other workers to try for the same groups
        with lock:
            for record in event["Records"]:
                seen[record["body"][0]].append(int(record["body"][1:]))
            holding.difference_update(groups)
            if sum(len(values) for values in seen.values()) == 60:
                done.set()

    # when 3 workers poll it at once, 2 messages per batch
    poller = make_poller(store, "lanes", handler, batch_size=2, concurrency=3)
    poller.start()
    try:
        assert done.wait(10)
    finally:
        poller.stop()
        store.close()

    # then more than one worker took batches, no group was held by two at once, and each group kept its order
    assert len(threads) > 1
    assert shared == []
    assert seen == {group: list(range(15)) for group in "abcd"}
    assert not poller.running


def test_sends_in_a_syncs_owed_block_commit_without_waiting_for_the_disk(db: Path) -> None:
    # given a store
    with DurableQueueStore(db) as s:
        s.create_queue(QueueSpec("q"))
        before = s.durable_transactions
        # when a thread sends within a syncs_owed block
        with s.syncs_owed() as owed:
            s.send("q", "m")
        # then the send is committed (visible) but not synced, and the block says a sync is owed
        assert owed.sync is True
        assert s.durable_transactions == before
        assert s.counts("q")["visible"] == 1
        # and sync() settles it; outside the block a send syncs itself again
        s.sync()
        assert s.durable_transactions == before + 1
        with s.syncs_owed() as nothing:
            s.receive("q")
        assert nothing.sync is False, "only sends owe a sync"
        s.send("q", "n")
        assert s.durable_transactions == before + 2


class _SlowSyncs:
    """A store stand-in whose syncs block until released, counting them."""

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.syncs = 0
        self.fail = False

    def sync(self) -> None:
        self.started.release()
        self.release.acquire()
        self.syncs += 1
        if self.fail:
            raise OSError(5, "I/O error")


def test_the_sync_batcher_shares_syncs_but_never_one_that_began_before_the_caller_asked() -> None:
    import asyncio

    from forwarder_local.queue import SyncBatcher

    store = _SlowSyncs()
    batcher = SyncBatcher(store)  # type: ignore[arg-type]

    async def scenario() -> list[str]:
        order: list[str] = []

        async def wait(name: str) -> None:
            await batcher.durable()
            order.append(name)

        first = asyncio.create_task(wait("a"))
        await asyncio.to_thread(store.started.acquire)  # the first sync runs
        later = [asyncio.create_task(wait(name)) for name in ("b", "c", "d")]
        await asyncio.sleep(0.05)
        assert order == []
        store.release.release()  # the first sync ends: only the caller that asked before it began is done
        await first
        await asyncio.sleep(0.05)
        assert order == ["a"]
        await asyncio.to_thread(store.started.acquire)  # one more sync, for the three that came later
        store.release.release()
        await asyncio.gather(*later)
        return order

    try:
        order = asyncio.run(scenario())
    finally:
        batcher.close()
    # then four callers took two syncs, in the order they asked
    assert order == ["a", "b", "c", "d"]
    assert store.syncs == 2


def test_a_failed_sync_is_raised_to_every_caller_waiting_on_it() -> None:
    import asyncio

    from forwarder_local.queue import SyncBatcher

    store = _SlowSyncs()
    store.fail = True
    batcher = SyncBatcher(store)  # type: ignore[arg-type]

    async def scenario() -> list[BaseException | None]:
        task = asyncio.create_task(batcher.durable())
        await asyncio.to_thread(store.started.acquire)
        store.release.release()
        return list(await asyncio.gather(task, return_exceptions=True))

    try:
        (outcome,) = asyncio.run(scenario())
    finally:
        batcher.close()
    assert isinstance(outcome, OSError)


def test_after_a_failed_sync_the_store_refuses_sends_until_it_is_opened_again(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import forwarder_local.queue as queue_module

    # given a store whose next sync of its log fails
    real = queue_module.os.fdatasync
    with DurableQueueStore(db) as s:
        s.create_queue(QueueSpec("q"))
        s.send("q", "before")

        def fails(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(queue_module.os, "fdatasync", fails)
        # when a send's sync fails, then the send raises
        with pytest.raises(OSError, match="Input/output error"):
            s.send("q", "unsure")
        # and later sends are refused before they commit, even once the disk answers again: a successful sync
        # could cover frames that never reached the disk
        monkeypatch.setattr(queue_module.os, "fdatasync", real)
        with pytest.raises(OSError, match="restart the stack"):
            s.send("q", "after")
        with pytest.raises(OSError, match="restart the stack"):
            s.sync()
        assert sorted(m["body"] for m in s.peek("q")) == ["before", "unsure"]
        # and receives go on (what is queued is delivered)
        assert s.receive("q", max_messages=10)
    # and a store opened again sends
    with DurableQueueStore(db) as again:
        again.send("q", "reopened")
