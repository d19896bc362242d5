"""A durable local message queue with Amazon SQS (standard queue) semantics.

Embedded mode runs every flow's Lambda handler on one machine; the SQS queues between them are
replaced by this store: one SQLite file (stdlib ``sqlite3``) holding any number of queues.

Durability: the database runs in WAL mode and transactions commit with ``synchronous=NORMAL``: a commit survives
the process's death (``kill -9``) at once. A send then fdatasyncs the WAL, after the file lock is released (so
other processes write meanwhile) and before it returns: a send that has returned is on disk and survives a power
cut too (as far as the disk keeps its promises), as with ``synchronous=FULL``. Receives, deletes and visibility
changes reach the disk with the next send's sync or checkpoint. A power cut
can only undo the last of them, never a send and never out of order (the WAL is replayed as a prefix): a
message whose delete is undone is received again, which at-least-once delivery allows and the delivery log
recognises. ``durable_transactions`` counts the synced commits.

Concurrency: one connection per store guarded by a lock (safe across threads); every state change
runs in a ``BEGIN IMMEDIATE`` transaction and SQLite's busy timeout makes other processes wait for
it (safe across processes). Stores also take an ``flock`` on ``<file>.writer`` around each write transaction:
a writer of another process waits in the kernel and wakes the moment the lock is free, where SQLite's busy
handler sleeps 1, 2, 5, 10 ms... between tries (the embedded stack's two processes write the same file).
A receive selects and hides its messages in one transaction, so two receivers never get the same message
while it is in flight.

Group commit: sends, receives, deletes and visibility changes that threads of one store make at the same
time share one transaction, so one sync: whoever takes the connection commits every write queued while
it waited, each in a savepoint of its own (one that fails is rolled back alone). None of them returns
before that ``COMMIT`` has returned, and no send before the sync after it, so a send that returned is on disk;
only the syncs are shared. ``transactions`` and ``writes`` count them. The one exception is a thread that takes
the sync upon itself (``syncs_owed``: the embedded gateway, which answers many requests with one sync).

A sync that fails leaves its transaction committed, and Linux reports a failed write-back of a file only once:
a later sync could succeed over frames that never reached the disk. So after one failed sync the store refuses
every send and sync (``OSError``) until it is opened again: the stack must be restarted.

SQS semantics reproduced:

* receive hides messages for the visibility timeout, increments the receive count and hands out a
  fresh receipt handle each time; a handle from an earlier receive is stale once the message has
  been received again (:class:`ReceiptHandleInvalid`);
* per-message ``delay_seconds``; retention (a message older than the queue's retention period,
  counted from its original send, vanishes);
* redrive: a message already received ``max_receive_count`` times is moved, atomically and instead
  of being received again, to the queue's dead-letter queue. It keeps its message id, body,
  attributes and original sent timestamp (so the dead-letter queue's retention counts from the
  first send, as in SQS); its receive count starts again from zero there and the source queue's
  ARN is kept (``DeadLetterQueueSourceArn`` in a Lambda event);
* long polling (``wait_seconds``): a send through any store on the same file in this process wakes
  a waiting receiver at once; sends from other processes are seen within :data:`POLL_INTERVAL`.

* SQS's limits: a message (body plus attributes) of at most 256 KiB, at most 10 entries and 256 KiB in one
  batch, delays up to 15 minutes, visibility up to 12 hours; what SQS refuses, the store refuses
  (``ValueError``), so a test on the embedded stack meets the same limits as the deployment;
* FIFO queues (``QueueSpec(fifo=True)``, SQS FIFO semantics): each message has a message group; a group's
  messages are received in send order, and while one of them is in flight (or hidden again by a visibility
  change: a backoff) the later ones of its group wait; other groups are not held up. A message deduplication
  id sent again within 5 minutes is accepted and not enqueued twice. Per-message delays are refused, as SQS
  FIFO refuses them.

Order in a standard queue is by availability time, then send order (SQS standard queues promise no order).
Time for message state comes from the injectable ``clock`` (epoch seconds); the long-poll wait
itself is measured in real (monotonic) time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ACCOUNT_ID",
    "POLL_INTERVAL",
    "REGION",
    "DurableQueueStore",
    "Entry",
    "QueueNotFound",
    "QueueSpec",
    "ReceiptHandleInvalid",
    "ReceivedMessage",
    "SyncBatcher",
    "SyncOwed",
]

REGION = "local"
ACCOUNT_ID = "000000000000"
POLL_INTERVAL = 0.05
"""Seconds between re-checks of the database while a receive long-polls."""
BUSY_TIMEOUT_MS = 30_000
MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_TIMEOUT = 43_200
MAX_MESSAGE_BYTES = 262_144
"""SQS's limit for one message, and for one batch: its body plus each attribute's name, type and value."""
MAX_BATCH_ENTRIES = 10
DEDUPLICATION_SECONDS = 300
_ARN_PREFIX = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name               TEXT PRIMARY KEY,
    visibility_timeout REAL NOT NULL,
    max_receive_count  INTEGER,
    dead_letter_queue  TEXT,
    retention_seconds  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    queue                TEXT NOT NULL,
    message_id           TEXT NOT NULL,
    body                 TEXT NOT NULL,
    attributes           TEXT NOT NULL,
    md5_of_body          TEXT NOT NULL,
    sent_ts_ms           INTEGER NOT NULL,
    visible_at           REAL NOT NULL,
    receive_count        INTEGER NOT NULL DEFAULT 0,
    first_receive_ts_ms  INTEGER,
    receipt_token        TEXT,
    dlq_source_arn       TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_availability ON messages (queue, visible_at, seq);
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (queue, sent_ts_ms);
CREATE TABLE IF NOT EXISTS deduplication (
    queue        TEXT NOT NULL,
    dedup_id     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    sent_ts_ms   INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_id)
);
CREATE INDEX IF NOT EXISTS deduplication_by_age ON deduplication (sent_ts_ms);
"""

# Columns added after the first release: added to an older file when it is opened.
_MIGRATIONS = (
    ("queues", "fifo", "INTEGER NOT NULL DEFAULT 0"),
    ("messages", "group_id", "TEXT"),
    # 1 while a receive holds the message (in flight); 0 once a visibility change (a backoff) set its time.
    ("messages", "leased", "INTEGER NOT NULL DEFAULT 0"),
)
_FIFO_INDEX = "CREATE INDEX IF NOT EXISTS messages_by_group ON messages (queue, group_id, seq)"

_COLUMNS = (
    "seq, message_id, body, attributes, md5_of_body, sent_ts_ms, visible_at, receive_count,"
    " first_receive_ts_ms, receipt_token, dlq_source_arn, group_id"
)
_SELECT_AVAILABLE = (
    f"SELECT {_COLUMNS} FROM messages"  # noqa: S608 - a constant column list, no input
    " WHERE queue = ? AND visible_at <= ? AND seq NOT IN (SELECT value FROM json_each(?))"
    " ORDER BY visible_at, seq LIMIT ?"
)
# FIFO: in send order, and only messages no earlier message of their group is hidden before (in flight or
# backing off): a group waits for its head.
_SELECT_AVAILABLE_FIFO = (
    f"SELECT {_COLUMNS} FROM messages m"  # noqa: S608 - a constant column list, no input
    " WHERE queue = ? AND visible_at <= ? AND seq NOT IN (SELECT value FROM json_each(?))"
    " AND NOT EXISTS (SELECT 1 FROM messages b WHERE b.queue = m.queue AND b.group_id = m.group_id"
    " AND b.seq < m.seq AND b.visible_at > ?)"
    " ORDER BY seq LIMIT ?"
)
_SELECT_PEEK = (
    f"SELECT {_COLUMNS} FROM messages WHERE queue = ? AND sent_ts_ms > ? ORDER BY visible_at, seq LIMIT ?"  # noqa: S608
)
_ANY_VISIBLE = (
    "SELECT EXISTS (SELECT 1 FROM queues WHERE name = ?),"
    " EXISTS (SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ?)"
)
_REDRIVE = (
    "UPDATE messages SET queue = ?, receive_count = 0, first_receive_ts_ms = NULL, receipt_token = NULL,"
    " visible_at = ?, dlq_source_arn = ?, leased = 0 WHERE seq = ?"
)


class QueueNotFound(Exception):
    """The named queue does not exist in the store."""


class ReceiptHandleInvalid(Exception):
    """The receipt handle is malformed, belongs to another queue, or is stale (received again since)."""


@dataclass(frozen=True)
class QueueSpec:
    name: str
    visibility_timeout: float = 30
    max_receive_count: int | None = None
    dead_letter_queue: str | None = None
    retention_seconds: int = 345600
    fifo: bool = False


@dataclass(frozen=True)
class Entry:
    """One message to send: for a FIFO queue ``group_id`` is required and ``dedup_id`` deduplicates."""

    body: str
    attributes: Mapping[str, str] | None = None
    delay_seconds: float = 0
    group_id: str | None = None
    dedup_id: str | None = None


def message_size(body: str, attributes: Mapping[str, str] | None) -> int:
    """Bytes SQS counts for a message: its body plus each attribute's name, data type and value."""
    size = len(body.encode("utf-8"))
    for name, value in (attributes or {}).items():
        size += len(name.encode("utf-8")) + len("String") + len(value.encode("utf-8"))
    return size


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    attributes: dict[str, str]
    """Message attributes (all of SQS data type String)."""
    receive_count: int
    sent_timestamp_ms: int
    first_receive_timestamp_ms: int
    md5_of_body: str
    dead_letter_source_arn: str | None = None
    """ARN of the queue this message was redriven from, when it sits in a dead-letter queue."""
    group_id: str | None = None
    """The message group (FIFO queues)."""


def md5_of_body(body: str) -> str:
    return hashlib.md5(body.encode("utf-8"), usedforsecurity=False).hexdigest()


def _queue_name(queue: str) -> str:
    """Accept a queue name or its local ARN."""
    return queue[len(_ARN_PREFIX) :] if queue.startswith(_ARN_PREFIX) else queue


def _encode_handle(seq: int, token: str) -> str:
    return base64.urlsafe_b64encode(f"{seq}:{token}".encode()).decode("ascii")


def _decode_handle(handle: str) -> tuple[int, str]:
    try:
        seq_text, token = base64.urlsafe_b64decode(handle.encode("ascii")).decode("ascii").split(":", 1)
        return int(seq_text), token
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise ReceiptHandleInvalid(f"malformed receipt handle {handle!r}") from exc


class _Signal:
    """Wakes long-polling receivers of one queue, in every store on its database file in this process (only
    that queue's: a send wakes no receiver of another queue)."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.generation = 0

    def notify(self) -> None:
        with self.condition:
            self.generation += 1
            self.condition.notify_all()


_T = TypeVar("_T")


class SyncOwed:
    """Whether sends made in a ``DurableQueueStore.syncs_owed`` block still wait for a sync."""

    __slots__ = ("sync",)

    def __init__(self) -> None:
        self.sync = False


class SyncBatcher:
    """One sync of a store's log for every caller waiting on it at the time, run off the event loop: an
    asyncio server whose handlers commit sends in ``syncs_owed`` blocks awaits ``durable()`` before it answers.
    A caller never rides on a sync that began before it asked (its commit might not be in it)."""

    def __init__(self, store: DurableQueueStore) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-sync")
        self._waiting: list[asyncio.Future[None]] = []
        self._draining = False

    async def durable(self) -> None:
        """Return once every transaction committed before the call is on disk; raises OSError if the sync
        failed."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        if not self._draining:
            self._draining = True
            self._drain_task = loop.create_task(self._drain())
        await waiter

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await loop.run_in_executor(self._executor, self.store.sync)
                except Exception as error:  # OSError; anything else must not leave its callers waiting
                    for waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(error)
                    continue
                for waiter in batch:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._draining = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _SyncTicket:
    """The sync a group commit's sends wait for: run by the thread that committed them, after it has let go of
    the connection (other threads commit meanwhile)."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: OSError | None = None

    def run(self, store: DurableQueueStore) -> None:
        try:
            store.sync()
        except Exception as error:  # committed, but not known to be on disk: its senders are told
            self.error = error if isinstance(error, OSError) else OSError(f"the sync failed: {error}")
        finally:
            self.done.set()


class _PendingWrite:
    """One thread's write waiting for the next group commit, and its outcome."""

    __slots__ = ("done", "durable", "error", "result", "ticket", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], Any], durable: bool) -> None:
        self.work = work
        self.durable = durable
        self.ticket: _SyncTicket | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


_signals: dict[str, _Signal] = {}
_signals_lock = threading.Lock()


def _signal_for(path: str, queue: str) -> _Signal:
    with _signals_lock:
        return _signals.setdefault(f"{path}\n{queue}", _Signal())


class DurableQueueStore:
    """Any number of SQS-like queues in one SQLite file. See the module docstring for semantics."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._pending: list[_PendingWrite] = []
        self._pending_lock = threading.Lock()
        self.transactions = 0
        """Group-committed write transactions so far."""
        self.writes = 0
        """Writes (sends, receives, deletes, visibility changes) those transactions carried."""
        self.durable_transactions = 0
        """Syncs of the log so far: one after each transaction with a send, or one per ``sync()``."""
        self._sync_failed: OSError | None = None
        self._resolved = str(self.path.resolve())
        self._signals: dict[str, _Signal] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL mode (got {mode})")
            conn.execute(
                "PRAGMA synchronous = NORMAL"
            )  # what must reach the disk is synced by hand: _sync_wal
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                for table, column, declaration in _MIGRATIONS:
                    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if column not in present:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                conn.execute(_FIFO_INDEX)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._writer = os.open(f"{self.path}.writer", os.O_RDWR | os.O_CREAT, 0o600)
        self._wal: int | None = None
        self._wal_lock = threading.Lock()
        self._owed = threading.local()
        self._dedup_purged = 0.0

    # -- plumbing ---------------------------------------------------------------------------------

    def __enter__(self) -> DurableQueueStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                os.close(self._writer)
            with self._wal_lock:
                if self._wal is not None:
                    os.close(self._wal)
                    self._wal = None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """This process's turn to write the file, among every store's on it (see Concurrency above)."""
        fcntl.flock(self._writer, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writer, fcntl.LOCK_UN)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("DurableQueueStore is closed")
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def _sync_wal(self) -> None:
        """fdatasync the write-ahead log: every transaction committed so far is then on disk (what
        ``synchronous=FULL`` does at each commit, done here after the file lock is released). The WAL holds
        committed transactions as a prefix, and a checkpoint syncs what it moves to the database file before
        the WAL is reused, so one sync covers every commit before it."""
        wal = f"{self.path}-wal"
        with self._wal_lock:
            self._refuse_after_failed_sync()
            try:
                self._sync_wal_now(wal)
            except OSError as error:
                self._sync_failed = error
                raise

    def _refuse_after_failed_sync(self) -> None:
        failed = self._sync_failed
        if failed is not None:
            raise OSError(
                failed.errno,
                f"an earlier sync of {self.path.name}'s log failed ({failed.strerror}): its records may not be "
                "on disk; restart the stack",
            )

    def _sync_wal_now(self, wal: str) -> None:
        """One sync of ``wal`` (with ``_wal_lock`` held)."""
        while True:
            if self._wal is None:
                self._wal = os.open(wal, os.O_RDONLY)
            os.fdatasync(self._wal)
            try:
                if os.fstat(self._wal).st_ino == os.stat(wal).st_ino:
                    return
            except FileNotFoundError:
                pass
            os.close(self._wal)  # the file was replaced (every connection to it closed meanwhile): again
            self._wal = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("DurableQueueStore is closed")
            with self._writing():  # queue settings and in-flight releases: nothing a sender waits for
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")

    @contextmanager
    def syncs_owed(self) -> Iterator[SyncOwed]:
        """Within this block, this thread's sends return once committed, before they are on disk; the
        returned ``SyncOwed`` says whether one did, and then ``sync()`` (or a ``SyncBatcher``) must run before
        anyone is told the send happened. The embedded gateway answers many requests with one sync this way."""
        owed = SyncOwed()
        self._owed.current = owed
        try:
            yield owed
        finally:
            self._owed.current = None

    def sync(self) -> None:
        """Put every transaction committed so far on disk (see ``syncs_owed``)."""
        self._sync_wal()
        self.durable_transactions += 1

    def _grouped(self, work: Callable[[sqlite3.Connection], _T], *, durable: bool = False) -> _T:
        """Run ``work`` in a write transaction shared with the writes other threads are waiting to make on
        this store (group commit); returns its result, or raises its error, once the transaction is
        committed (and on disk when ``durable``, unless the thread owes the sync: ``syncs_owed``) or rolled
        back."""
        owed: SyncOwed | None = getattr(self._owed, "current", None)
        if durable:
            self._refuse_after_failed_sync()
        if durable and owed is not None:
            owed.sync, durable = True, False
        pending = _PendingWrite(work, durable)
        with self._pending_lock:
            self._pending.append(pending)
        ticket: _SyncTicket | None = None
        with self._lock:
            if not pending.done:  # else an earlier holder of the connection committed it with its own
                ticket = self._commit_pending()
        if (
            ticket is not None
        ):  # this thread committed sends: it syncs for them, the connection free meanwhile
            ticket.run(self)
        if pending.ticket is not None:  # a send: returns once on disk (its committer's sync)
            pending.ticket.done.wait()
            if pending.ticket.error is not None:
                raise pending.ticket.error
        if pending.error is not None:
            raise pending.error
        result: _T = pending.result
        return result

    def _commit_pending(self) -> _SyncTicket | None:
        """With the connection held: one transaction for every write queued so far, each in a savepoint.
        Returns the sync its sends wait for, which the caller runs once it has let go of the connection."""
        batch: list[_PendingWrite] = []
        ticket: _SyncTicket | None = None
        try:
            if self._conn is None:
                raise RuntimeError("DurableQueueStore is closed")
            conn = self._conn
            sync = False
            with self._writing():  # first: a writer of another process may hold the file
                conn.execute("BEGIN IMMEDIATE")  # may wait for another process's writer: more writes queue up
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                try:
                    if len(batch) == 1:  # alone: its transaction is its savepoint
                        only = batch[0]
                        try:
                            only.result = only.work(conn)
                        except Exception as error:
                            conn.execute("ROLLBACK")
                            only.error = error
                            return None
                    else:
                        for item in batch:
                            conn.execute("SAVEPOINT write")
                            try:
                                item.result = item.work(conn)
                            except Exception as error:
                                conn.execute("ROLLBACK TO write")
                                item.error = error
                            conn.execute("RELEASE write")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                self.transactions += 1
                self.writes += len(batch)
                sync = any(item.durable and item.error is None for item in batch)
            if sync:  # other processes, and this one's other threads, write on while it waits for the disk
                ticket = _SyncTicket()
                for item in batch:
                    if item.durable and item.error is None:
                        item.ticket = ticket
        except BaseException as error:  # nothing was committed: every write queued so far fails with it
            with self._pending_lock:
                batch, self._pending = [*batch, *self._pending], []
            for item in batch:
                item.result, item.error = None, error
        finally:
            for item in batch:
                item.done = True
        return ticket

    @property
    def pending_writes(self) -> int:
        """Writes waiting for the next group commit."""
        with self._pending_lock:
            return len(self._pending)

    def _signal(self, queue: str) -> _Signal:
        found = self._signals.get(queue)
        if found is None:
            found = self._signals[queue] = _signal_for(self._resolved, queue)
        return found

    def _now(self) -> float:
        return float(self._clock())

    @staticmethod
    def _spec(conn: sqlite3.Connection, queue: str) -> QueueSpec:
        row = conn.execute(
            "SELECT name, visibility_timeout, max_receive_count, dead_letter_queue, retention_seconds, fifo"
            " FROM queues WHERE name = ?",
            (queue,),
        ).fetchone()
        if row is None:
            raise QueueNotFound(queue)
        return QueueSpec(
            name=row[0],
            visibility_timeout=row[1],
            max_receive_count=row[2],
            dead_letter_queue=row[3],
            retention_seconds=row[4],
            fifo=bool(row[5]),
        )

    @staticmethod
    def _expiry_cutoff_ms(spec: QueueSpec, now: float) -> int:
        """Messages sent at or before this instant (ms) are past the queue's retention period."""
        return int((now - spec.retention_seconds) * 1000)

    # -- queues -----------------------------------------------------------------------------------

    def create_queue(self, spec: QueueSpec) -> None:
        """Create the queue, or update its settings if it exists. The dead-letter queue must exist."""
        if not _NAME_RE.match(spec.name):
            raise ValueError(f"invalid queue name {spec.name!r}")
        if not 0 <= spec.visibility_timeout <= MAX_VISIBILITY_TIMEOUT:
            raise ValueError(f"visibility_timeout must be within 0..{MAX_VISIBILITY_TIMEOUT}")
        if spec.retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        dlq = _queue_name(spec.dead_letter_queue) if spec.dead_letter_queue else None
        if (spec.max_receive_count is None) != (dlq is None):
            raise ValueError("max_receive_count and dead_letter_queue go together")
        if spec.max_receive_count is not None and spec.max_receive_count < 1:
            raise ValueError("max_receive_count must be at least 1")
        if dlq == spec.name:
            raise ValueError("a queue cannot be its own dead-letter queue")
        with self._write() as conn:
            if dlq is not None and self._spec(conn, dlq).fifo != spec.fifo:
                raise ValueError(
                    "a FIFO queue's dead-letter queue is FIFO too, and a standard one's standard"
                )
            # A queue turned FIFO (an older state folder) keeps its messages: each becomes a group of its own.
            conn.execute(
                "UPDATE messages SET group_id = message_id WHERE queue = ? AND group_id IS NULL AND ?",
                (spec.name, int(spec.fifo)),
            )
            conn.execute(
                "INSERT INTO queues (name, visibility_timeout, max_receive_count, dead_letter_queue,"
                " retention_seconds, fifo) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET visibility_timeout = excluded.visibility_timeout,"
                " max_receive_count = excluded.max_receive_count,"
                " dead_letter_queue = excluded.dead_letter_queue,"
                " retention_seconds = excluded.retention_seconds, fifo = excluded.fifo",
                (
                    spec.name,
                    float(spec.visibility_timeout),
                    spec.max_receive_count,
                    dlq,
                    spec.retention_seconds,
                    int(spec.fifo),
                ),
            )

    def get_queue(self, name: str) -> QueueSpec:
        with self._read() as conn:
            return self._spec(conn, _queue_name(name))

    def list_queues(self) -> list[str]:
        with self._read() as conn:
            return [row[0] for row in conn.execute("SELECT name FROM queues ORDER BY name")]

    def queue_arn(self, name: str) -> str:
        return f"{_ARN_PREFIX}{_queue_name(name)}"

    # -- messages ---------------------------------------------------------------------------------

    def send(
        self,
        queue: str,
        body: str,
        attributes: Mapping[str, str] | None = None,
        delay_seconds: float = 0,
        *,
        group_id: str | None = None,
        dedup_id: str | None = None,
    ) -> str:
        """Enqueue one message; returns its message id once it is durably on disk."""
        return self.send_batch(queue, [Entry(body, attributes, delay_seconds, group_id, dedup_id)])[0]

    def send_batch(
        self, queue: str, entries: Sequence[Entry | tuple[str, Mapping[str, str] | None, float]]
    ) -> list[str]:
        """Enqueue entries (``Entry`` or (body, attributes, delay_seconds)) in one transaction, as SQS's
        SendMessageBatch: at most 10 entries and 256 KiB in all. Returns their ids; a FIFO entry whose
        deduplication id was sent in the last 5 minutes is not enqueued again and gets the first one's id."""
        name = _queue_name(queue)
        batch = [entry if isinstance(entry, Entry) else Entry(*entry) for entry in entries]
        if len(batch) > MAX_BATCH_ENTRIES:
            raise ValueError(f"a batch holds at most {MAX_BATCH_ENTRIES} messages, not {len(batch)}")
        total = 0
        for entry in batch:
            if not isinstance(entry.body, str) or not entry.body:
                raise ValueError("message body must be a non-empty string")
            if not 0 <= entry.delay_seconds <= MAX_DELAY_SECONDS:
                raise ValueError(f"delay_seconds must be within 0..{MAX_DELAY_SECONDS}")
            attrs = dict(entry.attributes or {})
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
                raise ValueError("message attributes must map str to str")
            size = message_size(entry.body, attrs)
            if size > MAX_MESSAGE_BYTES:
                raise ValueError(f"a message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
            total += size
        if total > MAX_MESSAGE_BYTES:
            raise ValueError(f"a batch of {total} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
        if not batch:
            return []
        ids = self._grouped(lambda conn: self._insert(conn, name, batch), durable=True)
        self._signal(name).notify()
        return ids

    def _insert(self, conn: sqlite3.Connection, name: str, batch: list[Entry]) -> list[str]:
        ids: list[str] = []
        spec = self._spec(conn, name)
        now = self._now()
        rows: list[tuple[Any, ...]] = []
        for entry in batch:
            if spec.fifo:
                if not entry.group_id:
                    raise ValueError(f"FIFO queue {name!r} needs a message group id for every message")
                if entry.delay_seconds:
                    raise ValueError("a FIFO queue takes no per-message delay")
                if entry.dedup_id:
                    cutoff_ms = int((now - DEDUPLICATION_SECONDS) * 1000)
                    if now - self._dedup_purged > 1.0:  # expired ids go about once a second
                        conn.execute("DELETE FROM deduplication WHERE sent_ts_ms <= ?", (cutoff_ms,))
                        self._dedup_purged = now
                    seen = conn.execute(
                        "SELECT message_id FROM deduplication WHERE queue = ? AND dedup_id = ?"
                        " AND sent_ts_ms > ?",
                        (name, entry.dedup_id, cutoff_ms),
                    ).fetchone()
                    if seen is not None:
                        ids.append(str(seen[0]))
                        continue
            message_id = str(uuid.uuid4())
            ids.append(message_id)
            if spec.fifo and entry.dedup_id:
                conn.execute(
                    "INSERT OR REPLACE INTO deduplication (queue, dedup_id, message_id, sent_ts_ms)"
                    " VALUES (?, ?, ?, ?)",
                    (name, entry.dedup_id, message_id, int(now * 1000)),
                )
            rows.append(
                (
                    name,
                    message_id,
                    entry.body,
                    json.dumps(dict(entry.attributes or {})),
                    md5_of_body(entry.body),
                    int(now * 1000),
                    now + entry.delay_seconds,
                    entry.group_id if spec.fifo else None,
                )
            )
        conn.executemany(
            "INSERT INTO messages (queue, message_id, body, attributes, md5_of_body, sent_ts_ms,"
            " visible_at, group_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return ids

    def receive(
        self,
        queue: str,
        max_messages: int = 10,
        visibility_timeout: float | None = None,
        wait_seconds: float = 0.0,
    ) -> list[ReceivedMessage]:
        """Receive up to ``max_messages`` visible messages, hiding them for the visibility timeout.

        With ``wait_seconds`` > 0 this long-polls: it returns as soon as at least one message is
        available, or an empty list once ``wait_seconds`` (real time) have passed.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if visibility_timeout is not None and not 0 <= visibility_timeout <= MAX_VISIBILITY_TIMEOUT:
            raise ValueError(f"visibility_timeout must be within 0..{MAX_VISIBILITY_TIMEOUT}")
        name = _queue_name(queue)
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        signal = self._signal(name)
        while True:
            generation = signal.generation
            messages = self._receive_now(name, max_messages, visibility_timeout)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            with signal.condition:
                if signal.generation == generation:
                    signal.condition.wait(min(remaining, POLL_INTERVAL))

    def _receive_now(
        self, queue: str, max_messages: int, visibility_timeout: float | None
    ) -> list[ReceivedMessage]:
        if not self._anything_visible(queue):
            return []  # a read, not a write transaction: an idle poller neither locks nor writes the file
        received, moved_to = self._grouped(
            lambda conn: self._hide(conn, queue, max_messages, visibility_timeout)
        )
        if moved_to:
            self._signal(moved_to).notify()
        return received

    def _anything_visible(self, queue: str) -> bool:
        """Whether ``queue`` holds a message visible now (raises QueueNotFound for a queue that does not exist).
        A receive with nothing to receive ends here; expired messages wait for the next receive that writes."""
        with self._read() as conn:
            known, visible = conn.execute(_ANY_VISIBLE, (queue, queue, self._now())).fetchone()
        if not known:
            raise QueueNotFound(queue)
        return bool(visible)

    def _hide(
        self, conn: sqlite3.Connection, queue: str, max_messages: int, visibility_timeout: float | None
    ) -> tuple[list[ReceivedMessage], str | None]:
        """(messages received, the dead-letter queue when some were moved there instead)."""
        moved: str | None = None
        received: list[ReceivedMessage] = []
        spec = self._spec(conn, queue)
        now = self._now()
        now_ms = int(now * 1000)
        conn.execute(
            "DELETE FROM messages WHERE queue = ? AND sent_ts_ms <= ?",
            (queue, self._expiry_cutoff_ms(spec, now)),
        )
        hide_for = spec.visibility_timeout if visibility_timeout is None else visibility_timeout
        dlq = spec.dead_letter_queue
        redrive_after = spec.max_receive_count if dlq is not None else None
        if dlq is not None and not conn.execute("SELECT 1 FROM queues WHERE name = ?", (dlq,)).fetchone():
            redrive_after = None  # dead-letter queue gone from the file: deliver rather than lose messages
        seen: list[int] = []
        while len(received) < max_messages:
            wanted = max_messages - len(received)
            rows = (
                conn.execute(_SELECT_AVAILABLE_FIFO, (queue, now, json.dumps(seen), now, wanted))
                if spec.fifo
                else conn.execute(_SELECT_AVAILABLE, (queue, now, json.dumps(seen), wanted))
            ).fetchall()
            if not rows:
                break
            for row in rows:
                seq, message_id, body, attributes, md5, sent_ts_ms, _, receive_count, first_ms = row[:9]
                seen.append(seq)
                if redrive_after is not None and receive_count >= redrive_after:
                    conn.execute(_REDRIVE, (dlq, now, self.queue_arn(queue), seq))
                    moved = dlq
                    continue
                token = uuid.uuid4().hex
                first_ms = now_ms if first_ms is None else first_ms
                conn.execute(
                    "UPDATE messages SET receive_count = receive_count + 1, visible_at = ?,"
                    " receipt_token = ?, first_receive_ts_ms = ?, leased = 1 WHERE seq = ?",
                    (now + hide_for, token, first_ms, seq),
                )
                received.append(
                    ReceivedMessage(
                        message_id=message_id,
                        receipt_handle=_encode_handle(seq, token),
                        body=body,
                        attributes=json.loads(attributes),
                        receive_count=receive_count + 1,
                        sent_timestamp_ms=sent_ts_ms,
                        first_receive_timestamp_ms=first_ms,
                        md5_of_body=md5,
                        dead_letter_source_arn=row[10],
                        group_id=row[11],
                    )
                )
        return received, moved

    def _check_handle(self, conn: sqlite3.Connection, queue: str, handle: str) -> tuple[int, bool]:
        """(seq, exists) for a handle; raises ReceiptHandleInvalid when it is stale or foreign."""
        seq, token = _decode_handle(handle)
        row = conn.execute("SELECT queue, receipt_token FROM messages WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return seq, False
        if row[0] != queue or row[1] != token:
            raise ReceiptHandleInvalid(f"receipt handle is stale or belongs to another queue: {handle!r}")
        return seq, True

    def delete(self, queue: str, receipt_handle: str) -> None:
        """Delete a received message. A handle of a message that is already gone is a no-op (as SQS)."""
        self.delete_batch(queue, [receipt_handle], raise_invalid=True)

    def delete_batch(
        self, queue: str, receipt_handles: list[str], *, raise_invalid: bool = False
    ) -> list[str]:
        """Delete several received messages in one transaction; returns the handles found invalid."""
        name = _queue_name(queue)

        def work(conn: sqlite3.Connection) -> list[str]:
            invalid: list[str] = []
            self._spec(conn, name)
            for handle in receipt_handles:
                try:
                    seq, exists = self._check_handle(conn, name, handle)
                except ReceiptHandleInvalid:
                    if raise_invalid:
                        raise
                    invalid.append(handle)
                    continue
                if exists:
                    conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))
            return invalid

        return self._grouped(work)

    def change_visibility(self, queue: str, receipt_handle: str, seconds: float) -> None:
        """Make a received message visible again ``seconds`` from now (0: at once)."""
        if not 0 <= seconds <= MAX_VISIBILITY_TIMEOUT:
            raise ValueError(f"visibility timeout must be within 0..{MAX_VISIBILITY_TIMEOUT}")
        name = _queue_name(queue)

        def work(conn: sqlite3.Connection) -> None:
            self._spec(conn, name)
            seq, exists = self._check_handle(conn, name, receipt_handle)
            if not exists:
                raise ReceiptHandleInvalid(f"message of receipt handle {receipt_handle!r} no longer exists")
            # A visibility the receiver chose (a backoff, a Retry-After) outlives the receiver's process.
            conn.execute(
                "UPDATE messages SET visible_at = ?, leased = 0 WHERE seq = ?", (self._now() + seconds, seq)
            )

        self._grouped(work)
        if seconds == 0:
            self._signal(name).notify()

    def release_in_flight(self, queue: str) -> int:
        """Make every message of ``queue`` that a receive still holds visible now; returns how many.

        Not an SQS operation: the embedded stack calls it at start-up, when whoever received those messages
        died with the previous process, so they need not wait out their visibility timeouts. A message whose
        visibility its receiver set (a backoff, a Retry-After) keeps it: that wait is the vendor's, not the
        dead process's."""
        name = _queue_name(queue)
        with self._write() as conn:
            self._spec(conn, name)
            cursor = conn.execute(
                "UPDATE messages SET visible_at = ?, leased = 0"
                " WHERE queue = ? AND leased = 1 AND receive_count > 0 AND visible_at > ?",
                (self._now(), name, self._now()),
            )
            released = cursor.rowcount
        if released:
            self._signal(name).notify()
        return released

    def counts(self, queue: str) -> dict[str, int]:
        """{"visible", "in_flight", "delayed"} message counts (unexpired messages only)."""
        name = _queue_name(queue)
        with self._read() as conn:
            spec = self._spec(conn, name)
            now = self._now()
            row = conn.execute(
                "SELECT"
                " COALESCE(SUM(visible_at <= :now), 0),"
                " COALESCE(SUM(visible_at > :now AND receive_count > 0), 0),"
                " COALESCE(SUM(visible_at > :now AND receive_count = 0), 0)"
                " FROM messages WHERE queue = :queue AND sent_ts_ms > :cutoff",
                {"now": now, "queue": name, "cutoff": self._expiry_cutoff_ms(spec, now)},
            ).fetchone()
        return {"visible": int(row[0]), "in_flight": int(row[1]), "delayed": int(row[2])}

    def peek(self, queue: str, limit: int = 100) -> list[dict[str, Any]]:
        """Read messages without receiving them (no state change), in delivery order."""
        name = _queue_name(queue)
        with self._read() as conn:
            spec = self._spec(conn, name)
            now = self._now()
            rows = conn.execute(_SELECT_PEEK, (name, self._expiry_cutoff_ms(spec, now), limit)).fetchall()
        result: list[dict[str, Any]] = []
        for row in rows:
            visible_at, receive_count = row[6], row[7]
            state = "visible" if visible_at <= now else "in_flight" if receive_count > 0 else "delayed"
            result.append(
                {
                    "message_id": row[1],
                    "body": row[2],
                    "attributes": json.loads(row[3]),
                    "md5_of_body": row[4],
                    "sent_timestamp_ms": row[5],
                    "visible_at": visible_at,
                    "receive_count": receive_count,
                    "first_receive_timestamp_ms": row[8],
                    "dead_letter_source_arn": row[10],
                    "group_id": row[11],
                    "state": state,
                }
            )
        return result

    def purge(self, queue: str) -> None:
        """Delete every message of the queue, in flight or not."""
        name = _queue_name(queue)
        with self._write() as conn:
            self._spec(conn, name)
            conn.execute("DELETE FROM messages WHERE queue = ?", (name,))
