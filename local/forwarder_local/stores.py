"""Embedded adapters for the ports: queues on the durable local store, a local secret store, and the
local IAM stand-in that issues callers' access keys (what an AWS account holds, kept in the state folder)."""

from __future__ import annotations

import json
import os
import secrets as random_secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from forwarder.ports.deliveries import (
    DeliveryKey,
    DeliveryLog,
    DeliveryLogError,
    DeliveryRecord,
    DeliveryState,
)
from forwarder.ports.ledger import DeletionLedger, LedgerError
from forwarder.ports.locks import LockError, LockPort
from forwarder.ports.queues import OutgoingMessage, QueueError, QueuePort, batches
from forwarder.ports.secrets import SecretNotFoundError, SecretsPort, SecretStoreError
from forwarder_local.queue import DurableQueueStore, Entry, QueueNotFound, ReceiptHandleInvalid


class EmbeddedQueues(QueuePort):
    """The queue port on a DurableQueueStore; logical names are the store's queue names."""

    def __init__(self, store: DurableQueueStore) -> None:
        self.store = store

    def send(self, queue: str, messages: list[OutgoingMessage]) -> list[str]:
        """Send in SendMessageBatch-sized calls, as the SQS adapter does; what SQS would refuse (a message over
        256 KiB, a delay on a FIFO queue) is refused here too."""
        ids: list[str] = []
        try:
            for batch in batches(messages):
                ids.extend(
                    self.store.send_batch(
                        queue,
                        [
                            Entry(
                                message.body,
                                message.attributes or None,
                                message.delay_seconds,
                                message.group_id,
                                message.dedup_id,
                            )
                            for message in batch
                        ],
                    )
                )
        except (QueueNotFound, OSError, ValueError) as error:
            raise QueueError(f"queue '{queue}': {type(error).__name__}: {error}") from error
        return ids

    def change_visibility(self, queue: str, receipt_handle: str, seconds: int) -> None:
        try:
            self.store.change_visibility(queue, receipt_handle, seconds)
        except (QueueNotFound, ReceiptHandleInvalid) as error:
            raise QueueError(f"queue '{queue}': {type(error).__name__}") from error


class _JsonFile:
    """A small JSON document on disk, readable only by its owner, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    def read(self) -> dict[str, Any]:
        """The document, parsed again only when the file changed (the gateway reads it per request)."""
        try:
            stat = self.path.stat()
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # writes replace the file: a new inode
            if self._cached is not None and self._cached[0] == version:
                return self._cached[1]
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as error:
            raise SecretStoreError(f"cannot read {self.path.name}: {type(error).__name__}") from None
        document = document if isinstance(document, dict) else {}
        self._cached = (version, document)
        return document

    def update(self, key: str, value: Any) -> None:
        with self._lock:
            document = dict(self.read())
            document[key] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)


class LocalSecretStore(SecretsPort):
    """Secrets Manager stand-in: named JSON secrets in ``secrets.json`` (mode 0600) in the state folder."""

    def __init__(self, path: str | Path) -> None:
        self._file = _JsonFile(Path(path))

    def get(self, name: str, *, max_age_seconds: int = 300) -> dict[str, Any]:
        value = self._file.read().get(name)
        if value is None:
            raise SecretNotFoundError(f"secret '{name}' does not exist in the local secret store")
        if not isinstance(value, dict):
            raise SecretStoreError(f"secret '{name}' is not a JSON object")
        return dict(value)

    def put(self, name: str, value: dict[str, Any]) -> None:
        self._file.update(name, value)

    def names(self) -> list[str]:
        return sorted(self._file.read())


class LocalCredentials:
    """Callers' SigV4 credentials: access key id -> secret key and the IAM user it belongs to."""

    def __init__(self, path: str | Path) -> None:
        self._file = _JsonFile(Path(path))

    def secret_for(self, access_key_id: str) -> str | None:
        entry = self._file.read().get(access_key_id)
        return str(entry["secret_access_key"]) if isinstance(entry, dict) else None

    def user_arn(self, access_key_id: str) -> str | None:
        entry = self._file.read().get(access_key_id)
        return str(entry["user_arn"]) if isinstance(entry, dict) else None

    def for_user(self, user_arn: str) -> tuple[str, str] | None:
        for access_key_id, entry in self._file.read().items():
            if isinstance(entry, dict) and entry.get("user_arn") == user_arn:
                return access_key_id, str(entry["secret_access_key"])
        return None

    def ensure(self, user_arn: str) -> tuple[str, str]:
        """The user's access key, issuing one (like ``aws iam create-access-key``) when it has none."""
        existing = self.for_user(user_arn)
        if existing:
            return existing
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
        access_key_id = "AKIA" + "".join(random_secrets.choice(alphabet) for _ in range(16))
        secret_access_key = random_secrets.token_urlsafe(30)[:40]
        self._file.update(access_key_id, {"secret_access_key": secret_access_key, "user_arn": user_arn})
        return access_key_id, secret_access_key


class LocalDeletionLedger(DeletionLedger):
    """The deletion ledger in SQLite (``ledger.db`` in the state folder); entries expire after ``ttl_days``."""

    def __init__(self, path: str | Path, ttl_days: int = 30, clock: Any = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._ttl = ttl_days * 86400
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deletes (pk TEXT PRIMARY KEY, deleted_at TEXT NOT NULL, expires_at REAL)"
        )

    def record_deletes(self, entries: dict[str, str]) -> None:
        expires = self._clock() + self._ttl
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO deletes (pk, deleted_at, expires_at) VALUES (?, ?, ?) ON CONFLICT(pk) DO UPDATE "
                    "SET deleted_at = excluded.deleted_at, expires_at = excluded.expires_at "
                    "WHERE excluded.deleted_at > deletes.deleted_at",
                    [(key, moment, expires) for key, moment in entries.items()],
                )
                self._db.execute("COMMIT")
        except sqlite3.Error as error:
            raise LedgerError(f"local deletion ledger: {type(error).__name__}") from None

    def deleted_since(self, keys: list[str], received_at: str) -> str | None:
        if not keys:
            return None
        try:
            with self._lock:
                for start in range(0, len(keys), 500):
                    chunk = keys[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    found = {
                        row[0]
                        for row in self._db.execute(
                            f"SELECT pk FROM deletes WHERE pk IN ({marks}) AND deleted_at > ? AND expires_at > ?",  # noqa: S608
                            [*chunk, received_at, self._clock()],
                        )
                    }
                    for key in chunk:
                        if key in found:
                            return key
        except sqlite3.Error as error:
            raise LedgerError(f"local deletion ledger: {type(error).__name__}") from None
        return None

    def close(self) -> None:
        self._db.close()


class LocalLocks(LockPort):
    """Lease locks in SQLite (``locks.db`` in the state folder): every thread and process of the embedded
    stack, and any tool run beside it, sees the same leases (BEGIN IMMEDIATE makes acquire a compare-and-set)."""

    def __init__(self, path: str | Path, clock: Any = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL)"
        )

    def acquire(self, name: str, owner: str, lease_seconds: float) -> bool:
        now = self._clock()
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute("SELECT expires_at FROM locks WHERE name = ?", (name,)).fetchone()
                    if row is not None and row[0] >= now:
                        return False
                    self._db.execute(
                        "INSERT OR REPLACE INTO locks (name, owner, expires_at) VALUES (?, ?, ?)",
                        (name, owner, now + lease_seconds),
                    )
                    return True
                finally:
                    self._db.execute("COMMIT")
        except sqlite3.Error as error:
            raise LockError(f"local locks: {type(error).__name__}") from None

    def release(self, name: str, owner: str) -> None:
        try:
            with self._lock:
                self._db.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))
        except sqlite3.Error as error:
            raise LockError(f"local locks: {type(error).__name__}") from None

    def close(self) -> None:
        self._db.close()


class LocalDeliveryLog(DeliveryLog):
    """The delivery log in SQLite (``deliveries.db`` in the state folder), with DynamoDB's rules: a final
    state is never replaced; ``begin`` counts an attempt and keeps the first attempt's time."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (request_id TEXT NOT NULL, delivery TEXT NOT NULL,"
            " state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, first_attempt_at REAL,"
            " updated_at REAL NOT NULL, reason TEXT NOT NULL DEFAULT '', PRIMARY KEY (request_id, delivery))"
        )

    def get(self, keys: list[DeliveryKey]) -> dict[DeliveryKey, DeliveryRecord]:
        found: dict[DeliveryKey, DeliveryRecord] = {}
        try:
            with self._lock:
                for key in dict.fromkeys(keys):
                    row = self._db.execute(
                        "SELECT state, attempts, first_attempt_at, updated_at, reason FROM deliveries"
                        " WHERE request_id = ? AND delivery = ?",
                        (key.request_id, key.sort_key),
                    ).fetchone()
                    if row is not None:
                        found[key] = DeliveryRecord(
                            DeliveryState(row[0]), int(row[1]), row[2], float(row[3]), row[4]
                        )
        except sqlite3.Error as error:
            raise DeliveryLogError(f"local delivery log: {type(error).__name__}") from None
        return found

    def _write(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(statement, rows)
                finally:
                    self._db.execute("COMMIT")
        except sqlite3.Error as error:
            raise DeliveryLogError(f"local delivery log: {type(error).__name__}") from None

    def begin(self, keys: list[DeliveryKey], now: float) -> None:
        self._write(
            "INSERT INTO deliveries (request_id, delivery, state, attempts, first_attempt_at, updated_at)"
            " VALUES (?, ?, 'sending', 1, ?, ?) ON CONFLICT (request_id, delivery) DO UPDATE SET"
            " state = 'sending', attempts = attempts + 1, updated_at = excluded.updated_at,"
            " first_attempt_at = COALESCE(first_attempt_at, excluded.first_attempt_at)"
            " WHERE state NOT IN ('delivered', 'rejected', 'superseded')",
            [(key.request_id, key.sort_key, now, now) for key in dict.fromkeys(keys)],
        )

    def finish(self, results: dict[DeliveryKey, tuple[DeliveryState, str]], now: float) -> None:
        self._write(
            "INSERT INTO deliveries (request_id, delivery, state, updated_at, reason) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (request_id, delivery) DO UPDATE SET state = excluded.state,"
            " reason = excluded.reason, updated_at = excluded.updated_at"
            " WHERE state NOT IN ('delivered', 'rejected', 'superseded')",
            [
                (key.request_id, key.sort_key, state.value, now, reason[:1000])
                for key, (state, reason) in results.items()
            ],
        )

    def forget(self, keys: list[DeliveryKey]) -> None:
        self._write(
            "DELETE FROM deliveries WHERE request_id = ? AND delivery = ?",
            [(key.request_id, key.sort_key) for key in dict.fromkeys(keys)],
        )

    def close(self) -> None:
        self._db.close()
