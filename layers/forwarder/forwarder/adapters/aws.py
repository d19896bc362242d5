"""AWS adapters: SQS behind the queue port, Secrets Manager behind the secrets port, DynamoDB behind the
deletion ledger, lock and delivery log ports.

SDK errors never leave this module: they become ``QueueError``, ``SecretNotFoundError``,
``SecretStoreError``, ``LedgerError`` or ``LockError``, whose messages name the queue, secret or table and the AWS error
code, never a message body, a secret value or a ledger key (keys hold e-mail addresses). boto3 clients
are created lazily (first use), or injected (tests, shared clients).
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Self

from botocore.exceptions import BotoCoreError, ClientError

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

#: Logical queue name -> the environment variable holding its URL (set by template.yaml's Globals).
QUEUE_URL_ENV_VARS: Mapping[str, str] = {
    "ingest": "FORWARDER_QUEUE_URL_INGEST",
    "delivery": "FORWARDER_QUEUE_URL_DELIVERY",
    "delivery-dlq": "FORWARDER_QUEUE_URL_DELIVERY_DLQ",
    "rejects": "FORWARDER_QUEUE_URL_REJECTS",
}

_STRING = "String"


#: Timeouts of every AWS SDK call, so that a slow call ends as the designed error (a 503, a retried record)
#: before the function's own timeout: attempts x (connect + read) = 2 x (1 + 3) = 8 s fits the 10 s ones.
AWS_CONNECT_TIMEOUT_ENV_VAR = "FORWARDER_AWS_CONNECT_TIMEOUT_SECONDS"
AWS_READ_TIMEOUT_ENV_VAR = "FORWARDER_AWS_READ_TIMEOUT_SECONDS"
AWS_MAX_ATTEMPTS_ENV_VAR = "FORWARDER_AWS_MAX_ATTEMPTS"
AWS_CALL_DEFAULTS = {
    AWS_CONNECT_TIMEOUT_ENV_VAR: 1.0,
    AWS_READ_TIMEOUT_ENV_VAR: 3.0,
    AWS_MAX_ATTEMPTS_ENV_VAR: 2,
}


def aws_client_config(env: Mapping[str, str] | None = None) -> Any:
    """botocore's Config for this function: explicit connect and read timeouts (botocore's default is 60 s
    each) and the standard retry mode (backoff with jitter, retry quota) with a bounded number of attempts
    (the first one included). ``FORWARDER_AWS_*`` variables override the defaults per function."""
    from botocore.config import Config

    source = os.environ if env is None else env

    def number(name: str) -> float:
        raw = source.get(name)
        try:
            value = float(raw) if raw else float(AWS_CALL_DEFAULTS[name])
        except ValueError:
            raise RuntimeError(f"{name} must be a number of seconds, not {raw!r}") from None
        if value <= 0:
            raise RuntimeError(f"{name} must be positive, not {raw!r}")
        return value

    return Config(
        connect_timeout=number(AWS_CONNECT_TIMEOUT_ENV_VAR),
        read_timeout=number(AWS_READ_TIMEOUT_ENV_VAR),
        retries={"mode": "standard", "total_max_attempts": int(number(AWS_MAX_ATTEMPTS_ENV_VAR))},
    )


def _create_client(service: str) -> Any:
    """A boto3 client with explicit timeouts and the standard retry mode, imported lazily."""
    # Deferred: cold starts only pay for boto3 on the code paths that talk to AWS.
    import boto3

    return boto3.client(service, config=aws_client_config())


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error") or {}
    return str(error.get("Code") or "Unknown")


# ----------------------------------------------------------------------------------------------------
# SQS
# ----------------------------------------------------------------------------------------------------


def _entry(entry_id: str, message: OutgoingMessage) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": entry_id, "MessageBody": message.body}
    if message.attributes:
        entry["MessageAttributes"] = {
            name: {"DataType": _STRING, "StringValue": value} for name, value in message.attributes.items()
        }
    if message.delay_seconds:
        entry["DelaySeconds"] = message.delay_seconds
    if message.group_id:
        entry["MessageGroupId"] = message.group_id
    if message.dedup_id:
        entry["MessageDeduplicationId"] = message.dedup_id
    return entry


class SqsQueues(QueuePort):
    """The queue port on Amazon SQS. Logical names (``ingest``, ``delivery``, ...) map to queue URLs.

    ``send`` is at-least-once: when SQS refuses part of a batch the whole call raises ``QueueError``, and
    a caller that retries may enqueue the accepted messages twice (deliveries are idempotent downstream).
    """

    def __init__(self, queue_urls: Mapping[str, str], client: Any | None = None) -> None:
        self._queue_urls = dict(queue_urls)
        self._client_instance = client

    @classmethod
    def from_environment(cls, env: Mapping[str, str], client: Any | None = None) -> Self:
        """Queue URLs from ``FORWARDER_QUEUE_URL_*`` (e.g. ``os.environ`` in a deployed function).

        Unset variables leave their queue unconfigured; using it raises ``QueueError`` naming the variable.
        """
        urls = {queue: env[var] for queue, var in QUEUE_URL_ENV_VARS.items() if env.get(var)}
        return cls(urls, client)

    @property
    def _client(self) -> Any:
        if self._client_instance is None:
            self._client_instance = _create_client("sqs")
        return self._client_instance

    def _url(self, queue: str) -> str:
        try:
            return self._queue_urls[queue]
        except KeyError:
            hint = f" (set {QUEUE_URL_ENV_VARS[queue]})" if queue in QUEUE_URL_ENV_VARS else ""
            raise QueueError(f"no URL configured for queue {queue!r}{hint}") from None

    def send(self, queue: str, messages: list[OutgoingMessage]) -> list[str]:
        url = self._url(queue)
        message_ids: list[str] = []
        for batch in batches(messages):
            entries = [_entry(str(index), message) for index, message in enumerate(batch)]
            try:
                response: dict[str, Any] = self._client.send_message_batch(QueueUrl=url, Entries=entries)
            except ClientError as exc:
                raise QueueError(f"SQS refused a batch for queue {queue!r}: {_error_code(exc)}") from exc
            except BotoCoreError as exc:
                raise QueueError(f"SQS unreachable for queue {queue!r}: {type(exc).__name__}") from exc
            failed: list[dict[str, Any]] = response.get("Failed") or []
            if failed:
                codes = ", ".join(sorted({str(entry.get("Code") or "Unknown") for entry in failed}))
                raise QueueError(
                    f"SQS refused {len(failed)} of {len(entries)} messages for queue {queue!r}: {codes}"
                )
            accepted = {str(ok["Id"]): str(ok["MessageId"]) for ok in response.get("Successful") or []}
            if len(accepted) != len(entries):
                raise QueueError(f"SQS acknowledged {len(accepted)} of {len(entries)} messages for {queue!r}")
            message_ids.extend(accepted[entry["Id"]] for entry in entries)
        return message_ids

    def change_visibility(self, queue: str, receipt_handle: str, seconds: int) -> None:
        url = self._url(queue)
        try:
            self._client.change_message_visibility(
                QueueUrl=url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )
        except ClientError as exc:
            raise QueueError(
                f"SQS refused to change a message's visibility on queue {queue!r}: {_error_code(exc)}"
            ) from exc
        except BotoCoreError as exc:
            raise QueueError(f"SQS unreachable for queue {queue!r}: {type(exc).__name__}") from exc


# ----------------------------------------------------------------------------------------------------
# Secrets Manager
# ----------------------------------------------------------------------------------------------------


class SecretsManagerSecrets(SecretsPort):
    """The secrets port on AWS Secrets Manager: JSON-object secrets, cached in-process per name.

    Why a boto3 client and our own cache rather than Powertools' ``parameters.get_secret(max_age=...,
    transform="json")``: Powertools re-raises every failure as ``GetParameterError(str(exc))``, so telling
    a missing secret from an outage would mean matching message strings; ``get_secret`` caches in a
    module-global provider shared by every caller in the process (tests and the embedded runtime would
    leak values across instances); and ``put`` must refresh that same cache. A dict of
    ``name -> (fetched_at, value)`` is a few lines, keeps the client injectable and the clock testable.
    """

    def __init__(
        self,
        client: Any | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        kms_key_id: str | None = None,
    ) -> None:
        self._client_instance = client
        self._clock = clock
        #: The key a secret this store creates is encrypted with (the stack's KmsKeyArn); None: Secrets
        #: Manager's AWS managed key. A new version of an existing secret keeps that secret's key.
        self._kms_key_id = kms_key_id
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    @property
    def _client(self) -> Any:
        if self._client_instance is None:
            self._client_instance = _create_client("secretsmanager")
        return self._client_instance

    def get(self, name: str, *, max_age_seconds: int = 300) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and now - cached[0] < max_age_seconds:
            return copy.deepcopy(cached[1])
        value = self._fetch(name)
        with self._lock:
            # Aged from before the request: a cached value is never younger than it claims.
            self._cache[name] = (now, value)
        return copy.deepcopy(value)

    def put(self, name: str, value: dict[str, Any]) -> None:
        secret_string = json.dumps(value)
        try:
            self._client.put_secret_value(SecretId=name, SecretString=secret_string)
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise SecretStoreError(
                    f"Secrets Manager refused to write secret {name!r}: {_error_code(exc)}"
                ) from exc
            self._create(name, secret_string)
        except BotoCoreError as exc:
            raise SecretStoreError(
                f"Secrets Manager unreachable writing {name!r}: {type(exc).__name__}"
            ) from exc
        with self._lock:
            self._cache[name] = (self._clock(), copy.deepcopy(value))

    def _create(self, name: str, secret_string: str) -> None:
        try:
            key = {"KmsKeyId": self._kms_key_id} if self._kms_key_id else {}
            self._client.create_secret(Name=name, SecretString=secret_string, **key)
        except ClientError as exc:
            if _error_code(exc) != "ResourceExistsException":
                raise SecretStoreError(
                    f"Secrets Manager refused to create secret {name!r}: {_error_code(exc)}"
                ) from exc
            # Another writer created it meanwhile: store ours as the newer version.
            try:
                self._client.put_secret_value(SecretId=name, SecretString=secret_string)
            except ClientError as retry_exc:
                raise SecretStoreError(
                    f"Secrets Manager refused to write secret {name!r}: {_error_code(retry_exc)}"
                ) from retry_exc

    def _fetch(self, name: str) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self._client.get_secret_value(SecretId=name)
        except ClientError as exc:
            code = _error_code(exc)
            if code == "ResourceNotFoundException":
                raise SecretNotFoundError(f"secret {name!r} not found in Secrets Manager") from exc
            raise SecretStoreError(f"Secrets Manager refused to read secret {name!r}: {code}") from exc
        except BotoCoreError as exc:
            raise SecretStoreError(
                f"Secrets Manager unreachable reading {name!r}: {type(exc).__name__}"
            ) from exc
        secret_string = response.get("SecretString")
        if not isinstance(secret_string, str):
            raise SecretStoreError(f"secret {name!r} has no SecretString (binary secrets are not supported)")
        try:
            value: object = json.loads(secret_string)
        except ValueError:
            # from None: a JSONDecodeError carries the whole document (the secret) in its ``doc``.
            raise SecretStoreError(f"secret {name!r} is not valid JSON") from None
        if not isinstance(value, dict):
            raise SecretStoreError(f"secret {name!r} is not a JSON object")
        return value


# ----------------------------------------------------------------------------------------------------
# DynamoDB
# ----------------------------------------------------------------------------------------------------

#: The environment variable holding the deletion ledger's table name (set by template.yaml's Globals).
LEDGER_TABLE_ENV_VAR = "FORWARDER_LEDGER_TABLE"
#: How long a delivered delete blocks older upserts: longer than the DLQ's 14-day retention, so an upsert
#: replayed from the DLQ is still blocked (tests/unit/test_template.py checks it against the template).
LEDGER_TTL_DAYS = 30
#: BatchGetItem reads at most 100 keys a call.
DYNAMODB_BATCH_GET_MAX_KEYS = 100
#: Calls per chunk while DynamoDB returns UnprocessedKeys (throttling), with exponential backoff between.
LEDGER_BATCH_GET_ATTEMPTS = 5
LEDGER_BATCH_GET_BACKOFF_SECONDS = 0.05

_SECONDS_PER_DAY = 86400
# Attribute names go through placeholders: no clash with DynamoDB's reserved words, now or later.
_LEDGER_NAMES = {"#pk": "pk", "#deleted": "deleted_at", "#expires": "expires_at"}


class _DynamoDbTable:
    """What the DynamoDB adapters share: their table's name and a client created on first use (or injected)."""

    _table: str
    _client_instance: Any

    @property
    def _client(self) -> Any:
        if self._client_instance is None:
            self._client_instance = _create_client("dynamodb")
        return self._client_instance


class DynamoDbDeletionLedger(_DynamoDbTable, DeletionLedger):
    """The deletion ledger port on a DynamoDB table: partition key ``pk`` (S), the latest delete's
    ``deleted_at`` (S, ISO 8601 UTC) and ``expires_at`` (N, epoch seconds; the table's TTL attribute).

    TTL deletion is lazy (DynamoDB removes expired items within days), so reads ignore expired items
    themselves. Reads are strongly consistent: a delete recorded a moment ago must block an upsert now.
    """

    def __init__(
        self,
        table_name: str,
        client: Any | None = None,
        *,
        ttl_days: int = LEDGER_TTL_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_days <= 0:
            raise ValueError(f"ttl_days must be positive, not {ttl_days}")
        self._table = table_name
        self._client_instance = client
        self._ttl_seconds = ttl_days * _SECONDS_PER_DAY
        self._clock = clock

    @classmethod
    def from_environment(cls, env: Mapping[str, str], client: Any | None = None) -> Self:
        """The table named by ``FORWARDER_LEDGER_TABLE`` (e.g. ``os.environ`` in a deployed function)."""
        table_name = env.get(LEDGER_TABLE_ENV_VAR)
        if not table_name:
            raise LedgerError(f"no deletion ledger table configured (set {LEDGER_TABLE_ENV_VAR})")
        return cls(table_name, client)

    def record_deletes(self, entries: dict[str, str]) -> None:
        now = self._clock()
        expires_at = str(int(now + self._ttl_seconds))
        for key, deleted_at in entries.items():
            try:
                self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": key}},
                    UpdateExpression="SET #deleted = :t, #expires = :e",
                    # Never lower a newer delete's time; an expired entry (TTL deletion lags) counts as none.
                    ConditionExpression="attribute_not_exists(#deleted) OR #deleted < :t OR #expires <= :now",
                    ExpressionAttributeNames={"#deleted": "deleted_at", "#expires": "expires_at"},
                    ExpressionAttributeValues={
                        ":t": {"S": deleted_at},
                        ":e": {"N": expires_at},
                        ":now": {"N": str(int(now))},
                    },
                )
            except ClientError as exc:
                if _error_code(exc) == "ConditionalCheckFailedException":
                    continue  # a newer delete of this customer is recorded already
                raise LedgerError(
                    f"DynamoDB refused to record a delete in table {self._table!r}: {_error_code(exc)}"
                ) from exc
            except BotoCoreError as exc:
                raise LedgerError(
                    f"DynamoDB unreachable for table {self._table!r}: {type(exc).__name__}"
                ) from exc

    def deleted_since(self, keys: list[str], received_at: str) -> str | None:
        # Duplicate keys would fail the whole BatchGetItem call (ValidationException).
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), DYNAMODB_BATCH_GET_MAX_KEYS):
            chunk = unique[start : start + DYNAMODB_BATCH_GET_MAX_KEYS]
            deleted = self._deleted_after(chunk, received_at)
            # Chunks keep the keys' order: the first chunk with a hit holds the first key deleted since.
            for key in chunk:
                if key in deleted:
                    return key
        return None

    def _deleted_after(self, keys: list[str], received_at: str) -> set[str]:
        """The keys (at most 100) whose unexpired entry records a delete received after ``received_at``."""
        request: dict[str, Any] = {
            self._table: {
                "Keys": [{"pk": {"S": key}} for key in keys],
                "ConsistentRead": True,
                "ProjectionExpression": "#pk, #deleted, #expires",
                "ExpressionAttributeNames": _LEDGER_NAMES,
            }
        }
        items: list[dict[str, Any]] = []
        for attempt in range(LEDGER_BATCH_GET_ATTEMPTS):
            if attempt:
                time.sleep(LEDGER_BATCH_GET_BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                response: dict[str, Any] = self._client.batch_get_item(RequestItems=request)
            except ClientError as exc:
                raise LedgerError(
                    f"DynamoDB refused to read table {self._table!r}: {_error_code(exc)}"
                ) from exc
            except BotoCoreError as exc:
                raise LedgerError(
                    f"DynamoDB unreachable for table {self._table!r}: {type(exc).__name__}"
                ) from exc
            items.extend((response.get("Responses") or {}).get(self._table) or [])
            unprocessed: dict[str, Any] = response.get("UnprocessedKeys") or {}
            if not (unprocessed.get(self._table) or {}).get("Keys"):
                break
            request = unprocessed
        else:
            left = len(request[self._table]["Keys"])
            raise LedgerError(
                f"DynamoDB left {left} of {len(keys)} keys unread in table {self._table!r} "
                f"after {LEDGER_BATCH_GET_ATTEMPTS} attempts (throttled)"
            )
        now = self._clock()
        deleted: set[str] = set()
        for item in items:
            expires_at = (item.get("expires_at") or {}).get("N")
            if expires_at is not None and float(expires_at) <= now:
                continue  # expired, not yet removed by TTL
            if str((item.get("deleted_at") or {}).get("S", "")) > received_at:
                deleted.add(str(item["pk"]["S"]))
        return deleted


#: The environment variable holding the token lock table's name (set by template.yaml's Globals).
LOCKS_TABLE_ENV_VAR = "FORWARDER_LOCKS_TABLE"


class DynamoDbLocks(_DynamoDbTable, LockPort):
    """The lock port on a DynamoDB table: partition key ``pk`` (S), the holder's ``owner`` (S) and the lease's
    end ``expires_at`` (N, epoch seconds; also the table's TTL attribute, so stale leases disappear).

    ``acquire`` is one conditional PutItem: it succeeds when no lease exists or the existing one has run out,
    which is a compare-and-set every Lambda container sees the same way.
    """

    def __init__(
        self, table_name: str, client: Any | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._table = table_name
        self._client_instance = client
        self._clock = clock

    @classmethod
    def from_environment(cls, env: Mapping[str, str], client: Any | None = None) -> Self:
        """The table named by ``FORWARDER_LOCKS_TABLE``. Required: without it every container would fetch its
        own token, and DM Hub's new token invalidates the others' (raises naming the variable)."""
        table_name = env.get(LOCKS_TABLE_ENV_VAR)
        if not table_name:
            raise LockError(f"no token lock table configured (set {LOCKS_TABLE_ENV_VAR})")
        return cls(table_name, client)

    def acquire(self, name: str, owner: str, lease_seconds: float) -> bool:
        now = self._clock()
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": name},
                    "owner": {"S": owner},
                    "expires_at": {"N": str(int(now + lease_seconds) + 1)},
                },
                ConditionExpression="attribute_not_exists(#pk) OR #expires < :now",
                ExpressionAttributeNames={"#pk": "pk", "#expires": "expires_at"},
                ExpressionAttributeValues={":now": {"N": str(int(now))}},
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise LockError(f"DynamoDB refused a lock in table {self._table!r}: {_error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise LockError(f"DynamoDB unreachable for table {self._table!r}: {type(exc).__name__}") from exc
        return True

    def release(self, name: str, owner: str) -> None:
        try:
            self._client.delete_item(
                TableName=self._table,
                Key={"pk": {"S": name}},
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return  # the lease ran out and someone else holds it now
            raise LockError(
                f"DynamoDB refused to release a lock in {self._table!r}: {_error_code(exc)}"
            ) from exc
        except BotoCoreError as exc:
            raise LockError(f"DynamoDB unreachable for table {self._table!r}: {type(exc).__name__}") from exc


#: The environment variable holding the delivery log table's name (set by template.yaml's Globals).
DELIVERY_LOG_TABLE_ENV_VAR = "FORWARDER_DELIVERY_LOG_TABLE"
#: How long a delivery's record is kept: longer than any retry horizon (24 h) and the DLQ's 14 days, so a
#: replayed dead letter still finds whether it was delivered.
DELIVERY_LOG_TTL_DAYS = 30
#: The sort key of a request's own record (its client and plan) next to its deliveries: integration names
#: cannot start with '#', so it never meets a delivery's ``integration#operation``.
REQUEST_SORT_KEY = "#request"
#: BatchWriteItem writes at most 25 items a call.
DYNAMODB_BATCH_WRITE_MAX_ITEMS = 25
_LOG_NAMES = {
    "#state": "state",
    "#attempts": "attempts",
    "#first": "first_attempt_at",
    "#updated": "updated_at",
    "#reason": "reason",
    "#expires": "expires_at",
}


class DynamoDbDeliveryLog(_DynamoDbTable, DeliveryLog):
    """The delivery log on a DynamoDB table: partition key ``request_id`` (S), sort key ``delivery`` (S,
    ``integration#operation``), so one Query returns a request's status at every integration. Conditional
    writes keep a final state final; reads are strongly consistent."""

    def __init__(
        self, table_name: str, client: Any | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._table = table_name
        self._client_instance = client
        self._clock = clock

    @classmethod
    def from_environment(cls, env: Mapping[str, str], client: Any | None = None) -> Self:
        """The table named by ``FORWARDER_DELIVERY_LOG_TABLE``. Required: without it a redelivered message
        would be sent to the vendor again (raises naming the variable)."""
        table_name = env.get(DELIVERY_LOG_TABLE_ENV_VAR)
        if not table_name:
            raise DeliveryLogError(f"no delivery log table configured (set {DELIVERY_LOG_TABLE_ENV_VAR})")
        return cls(table_name, client)

    @staticmethod
    def _key(key: DeliveryKey) -> dict[str, Any]:
        return {"request_id": {"S": key.request_id}, "delivery": {"S": key.sort_key}}

    def _fail(self, what: str, exc: Exception) -> DeliveryLogError:
        detail = _error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
        return DeliveryLogError(f"DynamoDB could not {what} table {self._table!r}: {detail}")

    def get(self, keys: list[DeliveryKey]) -> dict[DeliveryKey, DeliveryRecord]:
        unique = list(dict.fromkeys(keys))
        by_id = {(key.request_id, key.sort_key): key for key in unique}
        found: dict[DeliveryKey, DeliveryRecord] = {}
        for start in range(0, len(unique), DYNAMODB_BATCH_GET_MAX_KEYS):
            request: dict[str, Any] = {
                self._table: {
                    "Keys": [self._key(key) for key in unique[start : start + DYNAMODB_BATCH_GET_MAX_KEYS]],
                    "ConsistentRead": True,
                }
            }
            for attempt in range(LEDGER_BATCH_GET_ATTEMPTS):
                if attempt:
                    time.sleep(LEDGER_BATCH_GET_BACKOFF_SECONDS * 2 ** (attempt - 1))
                try:
                    response: dict[str, Any] = self._client.batch_get_item(RequestItems=request)
                except (ClientError, BotoCoreError) as exc:
                    raise self._fail("read", exc) from exc
                for item in (response.get("Responses") or {}).get(self._table) or []:
                    key = by_id.get((item["request_id"]["S"], item["delivery"]["S"]))
                    if key is not None:
                        found[key] = DeliveryRecord(
                            state=DeliveryState(item["state"]["S"]),
                            attempts=int(item.get("attempts", {}).get("N", "0")),
                            first_attempt_at=(
                                float(item["first_attempt_at"]["N"]) if "first_attempt_at" in item else None
                            ),
                            updated_at=float(item.get("updated_at", {}).get("N", "0")),
                            reason=str(item.get("reason", {}).get("S", "")),
                        )
                unprocessed: dict[str, Any] = response.get("UnprocessedKeys") or {}
                if not (unprocessed.get(self._table) or {}).get("Keys"):
                    break
                request = unprocessed
            else:
                raise DeliveryLogError(f"DynamoDB left keys unread in table {self._table!r} (throttled)")
        return found

    def _update(self, key: DeliveryKey, expression: str, values: dict[str, Any]) -> None:
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._key(key),
                UpdateExpression=expression,
                ConditionExpression="attribute_not_exists(#state) OR NOT #state IN (:d, :r, :s)",
                # DynamoDB refuses names an expression does not use
                ExpressionAttributeNames={
                    name: value
                    for name, value in _LOG_NAMES.items()
                    if name in expression or name == "#state"
                },
                ExpressionAttributeValues={
                    **values,
                    ":d": {"S": DeliveryState.DELIVERED.value},
                    ":r": {"S": DeliveryState.REJECTED.value},
                    ":s": {"S": DeliveryState.SUPERSEDED.value},
                    ":e": {"N": str(int(self._clock() + DELIVERY_LOG_TTL_DAYS * _SECONDS_PER_DAY))},
                },
            )
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":  # final already: left as it is
                raise self._fail("write", exc) from exc
        except BotoCoreError as exc:
            raise self._fail("write", exc) from exc

    def begin(self, keys: list[DeliveryKey], now: float) -> None:
        for key in dict.fromkeys(keys):
            self._update(
                key,
                "SET #state = :sending, #updated = :now, #first = if_not_exists(#first, :now), #expires = :e, "
                "#reason = if_not_exists(#reason, :empty) ADD #attempts :one",
                {
                    ":sending": {"S": DeliveryState.SENDING.value},
                    ":now": {"N": repr(now)},
                    ":one": {"N": "1"},
                    ":empty": {"S": ""},
                },
            )

    def finish(self, results: dict[DeliveryKey, tuple[DeliveryState, str]], now: float) -> None:
        for key, (state, reason) in results.items():
            self._update(
                key,
                "SET #state = :state, #reason = :reason, #updated = :now, #expires = :e",
                {":state": {"S": state.value}, ":reason": {"S": reason[:1000]}, ":now": {"N": repr(now)}},
            )

    def forget(self, keys: list[DeliveryKey]) -> None:
        for key in dict.fromkeys(keys):
            try:
                self._client.delete_item(TableName=self._table, Key=self._key(key))
            except (ClientError, BotoCoreError) as exc:
                raise self._fail("write", exc) from exc

    def record_requests(self, requests: list[RequestRecord]) -> None:
        """One BatchWriteItem per 25 requests (a validate batch of 10 is one call); what DynamoDB leaves
        unprocessed (throttling) is written again with backoff."""
        expires = {"N": str(int(self._clock() + DELIVERY_LOG_TTL_DAYS * _SECONDS_PER_DAY))}
        items = {
            record.request_id: {
                "request_id": {"S": record.request_id},
                "delivery": {"S": REQUEST_SORT_KEY},
                "client": {"S": record.client},
                "group_key": {"S": record.group_key},
                "action": {"S": record.action},
                "received_at": {"S": record.received_at},
                "validated_at": {"N": repr(record.validated_at)},
                "planned": {"S": record.planned_json()},
                "reason": {"S": record.reason[:1000]},
                "expires_at": expires,
            }
            for record in requests
        }
        puts = [{"PutRequest": {"Item": item}} for item in items.values()]
        for start in range(0, len(puts), DYNAMODB_BATCH_WRITE_MAX_ITEMS):
            pending: list[dict[str, Any]] = puts[start : start + DYNAMODB_BATCH_WRITE_MAX_ITEMS]
            for attempt in range(LEDGER_BATCH_GET_ATTEMPTS):
                if attempt:
                    time.sleep(LEDGER_BATCH_GET_BACKOFF_SECONDS * 2 ** (attempt - 1))
                try:
                    response = self._client.batch_write_item(RequestItems={self._table: pending})
                except (ClientError, BotoCoreError) as exc:
                    raise self._fail("write", exc) from exc
                pending = (response.get("UnprocessedItems") or {}).get(self._table) or []
                if not pending:
                    break
            else:
                raise DeliveryLogError(
                    f"DynamoDB left requests unwritten in table {self._table!r} (throttled)"
                )

    def request(self, request_id: str) -> tuple[RequestRecord | None, dict[DeliveryKey, DeliveryRecord]]:
        """One Query (strongly consistent) of the request's partition: its record and its deliveries."""
        items: list[dict[str, Any]] = []
        arguments: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "request_id = :id",
            "ExpressionAttributeValues": {":id": {"S": request_id}},
            "ConsistentRead": True,
        }
        try:
            while True:
                response = self._client.query(**arguments)
                items.extend(response.get("Items") or [])
                if not response.get("LastEvaluatedKey"):
                    break
                arguments["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("read", exc) from exc
        record: RequestRecord | None = None
        deliveries: dict[DeliveryKey, DeliveryRecord] = {}
        for item in items:
            sort_key = item["delivery"]["S"]
            if sort_key == REQUEST_SORT_KEY:
                record = RequestRecord(
                    request_id=request_id,
                    client=item["client"]["S"],
                    group_key=item["group_key"]["S"],
                    action=item["action"]["S"],
                    received_at=item["received_at"]["S"],
                    validated_at=float(item["validated_at"]["N"]),
                    planned=RequestRecord.parse_planned(item.get("planned", {}).get("S", "[]")),
                    reason=item.get("reason", {}).get("S", ""),
                )
                continue
            integration, _, operation = sort_key.partition("#")
            deliveries[DeliveryKey(request_id, integration, operation)] = DeliveryRecord(
                state=DeliveryState(item["state"]["S"]),
                attempts=int(item.get("attempts", {}).get("N", "0")),
                first_attempt_at=float(item["first_attempt_at"]["N"]) if "first_attempt_at" in item else None,
                updated_at=float(item.get("updated_at", {}).get("N", "0")),
                reason=str(item.get("reason", {}).get("S", "")),
            )
        return record, deliveries
