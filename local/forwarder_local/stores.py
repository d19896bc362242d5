"""Embedded adapters for the ports: queues on the durable local store, a local secret store, and the
local IAM / STS stand-in that issues callers' access keys and temporary credentials (what an AWS account
holds, kept in the state folder)."""

from __future__ import annotations

import copy
import fcntl
import hashlib
import hmac
import json
import os
import secrets as random_secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forwarder.ports.deliveries import (
    DeliveryKey,
    DeliveryLog,
    DeliveryLogError,
    DeliveryRecord,
    DeliveryState,
    RequestRecord,
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
        def put(document: dict[str, Any]) -> None:
            document[key] = value

        self.modify(put)

    def modify(self, change: Callable[[dict[str, Any]], Any]) -> None:
        """Apply ``change`` to a copy of the document and write it, as one step for every thread and every
        process using the file (the CLI issues keys while the stack reads them)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        with self._lock, os.fdopen(descriptor, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            document = copy.deepcopy(self.read())
            change(document)
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


class CredentialsError(ValueError):
    """An access key cannot be issued or revoked as asked; the message says why (never a secret)."""


#: STS GetSessionToken's limits and default for ``DurationSeconds`` (15 minutes to 36 hours, 12 hours).
SESSION_MIN_SECONDS, SESSION_MAX_SECONDS, SESSION_DEFAULT_SECONDS = 900, 129_600, 43_200
#: How long an expired temporary credential stays on file, refused as expired, before it is dropped.
_EXPIRED_KEPT_SECONDS = 86_400
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_ms(moment: float) -> str:
    """A moment to the millisecond: keys issued within one second still sort by when they were issued."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    """An access key the embedded IAM / STS issued, as it may be shown: never its secret or session token."""

    access_key_id: str
    user_arn: str
    created_at: str | None
    #: issued by ``forwarder clients session`` (an ``ASIA`` key with a session token and an expiry)
    temporary: bool = False
    expires_at: str | None = None
    #: the long-term key a temporary one was issued with
    issued_from: str | None = None
    revoked_at: str | None = None

    def state(self, now: float) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at:
            return "revoked"
        if self.expires_at and now >= _epoch(self.expires_at):
            return "expired"
        return "active"


@dataclass(frozen=True)
class SessionCredentials:
    """Temporary credentials, as STS GetSessionToken returns them (shown once, never stored in clear)."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expires_at: str
    issued_from: str


class LocalCredentials:
    """Callers' SigV4 credentials, the embedded stand-in of IAM access keys and STS GetSessionToken.

    ``credentials.json`` (mode 0600) maps each access key id to its secret and the IAM user it belongs to;
    a temporary key (``ASIA...``) also holds the SHA-256 of its session token, its expiry and the long-term
    key it was issued with. A revoked key keeps its entry (so the gateway can say it was revoked) without
    its secret. The gateway reads the file on every request, so a key issued or revoked by the CLI counts
    at once, with no restart."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self._file = _JsonFile(Path(path))
        self._clock = clock

    # --- what the gateway reads ---------------------------------------------------------------------------

    def _entry(self, access_key_id: str) -> dict[str, Any] | None:
        entry = self._file.read().get(access_key_id)
        return entry if isinstance(entry, dict) else None

    def secret_for(self, access_key_id: str) -> str | None:
        """The secret of a key that is not revoked (an expired temporary key's too: the gateway then says
        it expired, rather than that it does not exist)."""
        entry = self._entry(access_key_id)
        if entry is None or entry.get("revoked_at") or "secret_access_key" not in entry:
            return None
        return str(entry["secret_access_key"])

    def user_arn(self, access_key_id: str) -> str | None:
        entry = self._entry(access_key_id)
        return str(entry["user_arn"]) if entry is not None else None

    def lookup(self, access_key_id: str) -> IssuedKey | None:
        entry = self._entry(access_key_id)
        return _issued(access_key_id, entry) if entry is not None else None

    def session_token_matches(self, access_key_id: str, session_token: str) -> bool:
        """Whether ``session_token`` is the one issued with this temporary key."""
        entry = self._entry(access_key_id)
        digest = entry.get("session_token_sha256") if entry is not None else None
        return isinstance(digest, str) and hmac.compare_digest(digest, _token_digest(session_token))

    def issued(self) -> list[IssuedKey]:
        """Every key on file, revoked and expired ones included, in access key id order."""
        return [
            _issued(key, entry) for key, entry in sorted(self._file.read().items()) if isinstance(entry, dict)
        ]

    def for_user(self, user_arn: str) -> tuple[str, str] | None:
        """The user's oldest active long-term key and its secret."""
        entries = sorted(self._file.read().items(), key=lambda item: (_created(item[1]), item[0]))
        for access_key_id, entry in entries:
            if (
                isinstance(entry, dict)
                and entry.get("user_arn") == user_arn
                and not entry.get("revoked_at")
                and not entry.get("session_token_sha256")
                and "secret_access_key" in entry
            ):
                return access_key_id, str(entry["secret_access_key"])
        return None

    # --- what the stack and the CLI change ----------------------------------------------------------------

    def ensure(self, user_arn: str) -> tuple[str, str] | None:
        """The user's access key, issuing one (like ``aws iam create-access-key``) when the user never had
        one here. A user whose keys were all revoked gets none: ``forwarder clients create`` issues a new one."""
        existing = self.for_user(user_arn)
        if existing:
            return existing
        if any(key.user_arn == user_arn and not key.temporary for key in self.issued()):
            return None  # every key of the user was revoked: it stays so
        return self.create_key(user_arn)

    def create_key(self, user_arn: str) -> tuple[str, str]:
        """A new long-term access key (``AKIA...``) and its secret for the IAM user ``user_arn``."""
        access_key_id = self._new_key_id("AKIA")
        secret_access_key = random_secrets.token_urlsafe(30)[:40]
        self._file.update(
            access_key_id,
            {
                "secret_access_key": secret_access_key,
                "user_arn": user_arn,
                "created_at": _iso_ms(self._clock()),
            },
        )
        return access_key_id, secret_access_key

    def create_session(
        self, access_key_id: str, duration_seconds: int = SESSION_DEFAULT_SECONDS
    ) -> SessionCredentials:
        """Temporary credentials for the user of the active long-term key ``access_key_id``, valid
        ``duration_seconds``, as STS GetSessionToken issues them."""
        parent = self.lookup(access_key_id)
        now = self._clock()
        if parent is None:
            raise CredentialsError(f"access key {access_key_id} was not issued here")
        if parent.temporary:
            raise CredentialsError(
                f"access key {access_key_id} is temporary: temporary credentials are issued with a long-term key"
            )
        if parent.state(now) != "active":
            raise CredentialsError(f"access key {access_key_id} is {parent.state(now)}")
        if duration_seconds <= 0:
            raise CredentialsError("the duration must be positive")
        session = SessionCredentials(
            access_key_id=self._new_key_id("ASIA"),
            secret_access_key=random_secrets.token_urlsafe(30)[:40],
            session_token=random_secrets.token_urlsafe(96),
            expires_at=_iso(now + duration_seconds),
            issued_from=access_key_id,
        )

        def add(document: dict[str, Any]) -> None:
            for key, entry in list(document.items()):  # long-expired temporary keys are dropped
                expires = entry.get("expires_at") if isinstance(entry, dict) else None
                if isinstance(expires, str) and now - _epoch(expires) > _EXPIRED_KEPT_SECONDS:
                    del document[key]
            document[session.access_key_id] = {
                "secret_access_key": session.secret_access_key,
                "user_arn": parent.user_arn,
                "created_at": _iso_ms(now),
                "session_token_sha256": _token_digest(session.session_token),
                "expires_at": session.expires_at,
                "issued_from": access_key_id,
            }

        self._file.modify(add)
        return session

    def revoke(self, access_key_id: str) -> list[str]:
        """Revoke a key and the temporary keys issued with it; returns the keys revoked, ``access_key_id``
        first. Their secrets are wiped from the file; their entries stay, marked revoked."""
        revoked: list[str] = []

        def mark(document: dict[str, Any]) -> None:
            entry = document.get(access_key_id)
            if not isinstance(entry, dict):
                raise CredentialsError(f"access key {access_key_id} was not issued here")
            if entry.get("revoked_at"):
                raise CredentialsError(f"access key {access_key_id} is revoked already")
            moment = _iso_ms(self._clock())
            for key, item in document.items():
                covered = key == access_key_id or (
                    isinstance(item, dict) and item.get("issued_from") == access_key_id
                )
                if covered and isinstance(item, dict) and not item.get("revoked_at"):
                    item.pop("secret_access_key", None)
                    item["revoked_at"] = moment
                    revoked.append(key)
            revoked.sort(key=lambda key: key != access_key_id)

        self._file.modify(mark)
        return revoked

    def _new_key_id(self, prefix: str) -> str:
        while True:
            key = prefix + "".join(random_secrets.choice(_KEY_ALPHABET) for _ in range(16))
            if self._entry(key) is None:
                return key


def _created(entry: Any) -> str:
    return str(entry.get("created_at") or "") if isinstance(entry, dict) else ""


def _issued(access_key_id: str, entry: dict[str, Any]) -> IssuedKey:
    return IssuedKey(
        access_key_id=access_key_id,
        user_arn=str(entry.get("user_arn", "")),
        created_at=entry.get("created_at"),
        temporary="session_token_sha256" in entry,
        expires_at=entry.get("expires_at"),
        issued_from=entry.get("issued_from"),
        revoked_at=entry.get("revoked_at"),
    )


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


def _request_of(row: tuple[Any, ...]) -> RequestRecord:
    return RequestRecord(
        request_id=row[0],
        client=row[1],
        group_key=row[2],
        action=row[3],
        received_at=row[4],
        validated_at=float(row[5]),
        planned=RequestRecord.parse_planned(row[6]),
        reason=row[7],
    )


class LocalDeliveryLog(DeliveryLog):
    """The delivery log in SQLite (``deliveries.db`` in the state folder), with DynamoDB's rules: a final
    state is never replaced; ``begin`` counts an attempt and keeps the first attempt's time."""

    def __init__(self, path: str | Path, ttl_days: int = 30, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (request_id TEXT NOT NULL, delivery TEXT NOT NULL,"
            " state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, first_attempt_at REAL,"
            " updated_at REAL NOT NULL, reason TEXT NOT NULL DEFAULT '', PRIMARY KEY (request_id, delivery))"
        )
        # The requests validate handled: their client and plan (the status route's), newest first for the console.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, client TEXT NOT NULL,"
            " group_key TEXT NOT NULL, action TEXT NOT NULL, received_at TEXT NOT NULL,"
            " validated_at REAL NOT NULL, planned TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '')"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS requests_by_time ON requests (validated_at)")
        # The request records' own connection: WAL with synchronous=NORMAL (see record_requests).
        self._unsynced = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._unsynced.execute("PRAGMA synchronous=NORMAL")
        # Kept 30 days, as DynamoDB's TTL keeps them: what is older goes when the stack starts.
        horizon = clock() - ttl_days * 86400
        self._db.execute("DELETE FROM requests WHERE validated_at < ?", (horizon,))
        self._db.execute("DELETE FROM deliveries WHERE updated_at < ?", (horizon,))

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

    def _write(self, statement: str, rows: list[tuple[Any, ...]], *, fsync: bool = True) -> None:
        db = self._db if fsync else self._unsynced
        try:
            with self._lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(statement, rows)
                finally:
                    db.execute("COMMIT")
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

    def record_requests(self, requests: list[RequestRecord]) -> None:
        self._write(
            "INSERT OR REPLACE INTO requests (request_id, client, group_key, action, received_at, validated_at,"
            " planned, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    record.request_id,
                    record.client,
                    record.group_key,
                    record.action,
                    record.received_at,
                    record.validated_at,
                    record.planned_json(),
                    record.reason[:1000],
                )
                for record in requests
            ],
            # WAL with synchronous=NORMAL: it survives the stack's crash, and only a power cut may lose the
            # last moments' records (a status, never a delivery: the deliveries' writes stay fsynced).
            fsync=False,
        )

    def request(self, request_id: str) -> tuple[RequestRecord | None, dict[DeliveryKey, DeliveryRecord]]:
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT request_id, client, group_key, action, received_at, validated_at, planned, reason"
                    " FROM requests WHERE request_id = ?",
                    (request_id,),
                ).fetchone()
                rows = self._db.execute(
                    "SELECT delivery, state, attempts, first_attempt_at, updated_at, reason FROM deliveries"
                    " WHERE request_id = ?",
                    (request_id,),
                ).fetchall()
        except sqlite3.Error as error:
            raise DeliveryLogError(f"local delivery log: {type(error).__name__}") from None
        deliveries: dict[DeliveryKey, DeliveryRecord] = {}
        for delivery, state, attempts, first, updated, reason in rows:
            integration, _, operation = str(delivery).partition("#")
            deliveries[DeliveryKey(request_id, integration, operation)] = DeliveryRecord(
                DeliveryState(state), int(attempts), first, float(updated), reason
            )
        return (_request_of(row) if row else None), deliveries

    def recent(self, limit: int = 50) -> list[RequestRecord]:
        """The requests validate handled last, newest first (the embedded console lists them)."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT request_id, client, group_key, action, received_at, validated_at, planned, reason"
                    " FROM requests ORDER BY validated_at DESC LIMIT ?",
                    (limit,),
                ).fetchall()
        except sqlite3.Error as error:
            raise DeliveryLogError(f"local delivery log: {type(error).__name__}") from None
        return [_request_of(row) for row in rows]

    def close(self) -> None:
        self._db.close()
        self._unsynced.close()
