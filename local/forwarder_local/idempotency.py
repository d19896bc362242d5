"""Powertools Idempotency's persistence layer in SQLite (``idempotency.db`` in the state folder): what
``DynamoDBPersistenceLayer`` does on AWS, for the embedded stack.

The same record shape as the DynamoDB table (``id``, ``status``, ``expiration`` in epoch seconds,
``in_progress_expiration`` in epoch milliseconds, ``data``, ``validation``) and the same conditional put: a
record is written only when none exists for the key, it has expired, or it is INPROGRESS past its invocation's
deadline. The check and the write run in one ``BEGIN IMMEDIATE`` transaction, so every thread and process on
the state folder sees one winner. Like DynamoDB's ``ReturnValuesOnConditionCheckFailure``, a refused put hands
the existing record back (checking its payload hash first), saving the read.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer, IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS, DataRecord

_COLUMNS = "id, status, expiration, in_progress_expiration, data, validation"


class SqliteIdempotencyLayer(BasePersistenceLayer):
    """Idempotency records in SQLite. ``clock`` (epoch seconds) decides whether a stored record has expired;
    Powertools itself stamps the expirations from the system clock."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Powertools leaves it unannotated
        self._clock = clock
        self._lock = threading.Lock()
        self._configure_lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS idempotency (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
            "expiration INTEGER NOT NULL, in_progress_expiration INTEGER, data TEXT, validation TEXT)"
        )
        # DynamoDB's TTL, at each start: records past their 24 hours are removed.
        self._db.execute("CREATE INDEX IF NOT EXISTS idempotency_expiration ON idempotency (expiration)")
        self._db.execute("DELETE FROM idempotency WHERE expiration < ?", (int(self._clock()),))

    def configure(
        self, config: IdempotencyConfig, function_name: str | None = None, key_prefix: str | None = None
    ) -> None:
        # Powertools marks the layer configured before it copies the settings: a second thread's first request
        # could otherwise hash its key with none of them (the embedded gateway serves requests concurrently).
        with self._configure_lock:
            super().configure(config, function_name, key_prefix)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _record(row: tuple[str, str, int, int | None, str | None, str | None]) -> DataRecord:
        key, status, expiration, in_progress_expiration, data, validation = row
        return DataRecord(
            idempotency_key=key,
            status=status,
            expiry_timestamp=expiration,
            in_progress_expiry_timestamp=in_progress_expiration,
            response_data=data or "",
            payload_hash=validation or "",
        )

    def _get_record(self, idempotency_key: str) -> DataRecord:
        try:
            with self._lock:
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM idempotency WHERE id = ?",  # noqa: S608 - constant columns
                    (idempotency_key,),
                ).fetchone()
        except sqlite3.Error as error:
            raise IdempotencyPersistenceLayerError(
                f"local idempotency store: {type(error).__name__}"
            ) from None
        if row is None:
            raise IdempotencyItemNotFoundError()
        return self._record(row)

    def _put_record(self, data_record: DataRecord) -> None:
        now = self._clock()
        validation = data_record.payload_hash if self.payload_validation_enabled else None
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")  # the write lock first: check and write are one step
                try:
                    row = self._db.execute(
                        f"SELECT {_COLUMNS} FROM idempotency WHERE id = ?",  # noqa: S608 - constant columns
                        (data_record.idempotency_key,),
                    ).fetchone()
                    existing = None if row is None or self._replaceable(row, now) else self._record(row)
                    if existing is None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO idempotency (id, status, expiration, in_progress_expiration, "
                            "data, validation) VALUES (?, ?, ?, ?, NULL, ?)",
                            (
                                data_record.idempotency_key,
                                data_record.status,
                                data_record.expiry_timestamp,
                                data_record.in_progress_expiry_timestamp,
                                validation or None,
                            ),
                        )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as error:
            raise IdempotencyPersistenceLayerError(
                f"local idempotency store: {type(error).__name__}"
            ) from None
        if existing is not None:
            # A different payload under the same key raises IdempotencyValidationError here, as on DynamoDB.
            self._validate_payload(data_payload=data_record, stored_data_record=existing)
            raise IdempotencyItemAlreadyExistsError(old_data_record=existing)

    @staticmethod
    def _replaceable(row: tuple[str, str, int, int | None, str | None, str | None], now: float) -> bool:
        """DynamoDBPersistenceLayer's put condition: expired, or in progress past the invocation's deadline."""
        _, status, expiration, in_progress_expiration, _, _ = row
        if expiration < int(now):
            return True
        return (
            status == STATUS_CONSTANTS["INPROGRESS"]
            and in_progress_expiration is not None
            and in_progress_expiration < int(now * 1000)
        )

    def _update_record(self, data_record: DataRecord) -> None:
        validation = data_record.payload_hash if self.payload_validation_enabled else None
        try:
            with self._lock:
                self._db.execute(
                    "UPDATE idempotency SET data = ?, expiration = ?, status = ?, "
                    "validation = COALESCE(?, validation) WHERE id = ?",
                    (
                        data_record.response_data,
                        data_record.expiry_timestamp,
                        data_record.status,
                        validation,
                        data_record.idempotency_key,
                    ),
                )
        except sqlite3.Error as error:
            raise IdempotencyPersistenceLayerError(
                f"local idempotency store: {type(error).__name__}"
            ) from None

    def _delete_record(self, data_record: DataRecord) -> None:
        try:
            with self._lock:
                self._db.execute("DELETE FROM idempotency WHERE id = ?", (data_record.idempotency_key,))
        except sqlite3.Error as error:
            raise IdempotencyPersistenceLayerError(
                f"local idempotency store: {type(error).__name__}"
            ) from None
