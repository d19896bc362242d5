"""An SQS event source mapping for embedded mode: polls a :class:`DurableQueueStore` queue and
invokes a Lambda handler with SQS events, as the Lambda service does.

Per batch: receive up to ``batch_size`` messages (gathering for up to ``max_batching_window``
seconds from the first one's arrival), invoke the handler once with an SQS event, then

* handler returned normally: delete every message, except those it reported in
  ``{"batchItemFailures": [{"itemIdentifier": <messageId>}, ...]}`` (when
  ``report_batch_item_failures``). Failed messages are left alone: they reappear once their
  visibility timeout (possibly changed by the handler) passes, and the store's redrive moves them
  to the dead-letter queue after ``max_receive_count`` receives;
* a response Lambda would reject (an ``itemIdentifier`` that is missing, empty, or not a message of
  the batch; a ``batchItemFailures`` that is not a list) fails the whole batch;
* handler raised, or ran longer than ``timeout_seconds`` (Lambda would have killed it): nothing is
  deleted. The error goes to ``on_error`` (default: logged).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from forwarder_local.queue import ACCOUNT_ID, REGION, DurableQueueStore, ReceivedMessage

__all__ = ["BatchResponseInvalid", "HandlerTimeout", "LambdaContext", "SqsPoller", "sqs_event"]

logger = logging.getLogger(__name__)

SENDER_ID = "AIDALOCALFORWARDER0000"
IDLE_WAIT = 0.5
"""Seconds the background loop long-polls an empty queue before checking whether it was stopped."""
ERROR_BACKOFF = 0.5
"""Seconds the background loop pauses after an error outside the handler (e.g. the store)."""


class BatchResponseInvalid(ValueError):
    """The handler's partial batch response is one Lambda rejects: the whole batch failed."""


class HandlerTimeout(TimeoutError):
    """The handler ran longer than the function timeout: the whole batch failed."""


def sqs_event(queue_arn: str, messages: list[ReceivedMessage], region: str = REGION) -> dict[str, Any]:
    """A Lambda SQS event (``{"Records": [...]}``) for received messages."""
    records: list[dict[str, Any]] = []
    for message in messages:
        attributes = {
            "ApproximateReceiveCount": str(message.receive_count),
            "SentTimestamp": str(message.sent_timestamp_ms),
            "SenderId": SENDER_ID,
            "ApproximateFirstReceiveTimestamp": str(message.first_receive_timestamp_ms),
        }
        if message.dead_letter_source_arn:
            attributes["DeadLetterQueueSourceArn"] = message.dead_letter_source_arn
        if message.group_id:  # FIFO queues: as Lambda's SQS events carry them
            attributes["MessageGroupId"] = message.group_id
        records.append(
            {
                "messageId": message.message_id,
                "receiptHandle": message.receipt_handle,
                "body": message.body,
                "attributes": attributes,
                "messageAttributes": {
                    name: {
                        "stringValue": value,
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": "String",
                    }
                    for name, value in message.attributes.items()
                },
                "md5OfBody": message.md5_of_body,
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


_streams: dict[tuple[str, str], str] = {}


def _log_stream(function_name: str) -> str:
    """A function's log stream in this process: one per day, as Lambda's is one per execution environment
    (not per invocation)."""
    day = time.strftime("%Y/%m/%d")
    found = _streams.get((function_name, day))
    if found is None:
        found = _streams[(function_name, day)] = f"{day}/[$LATEST]{uuid.uuid4().hex}"
    return found


class LambdaContext:
    """A stand-in for the Lambda context object (enough for Powertools Logger, Metrics, Tracer)."""

    def __init__(
        self,
        function_name: str,
        *,
        timeout_seconds: float = 30.0,
        memory_limit_in_mb: int = 128,
        region: str = REGION,
        account_id: str = ACCOUNT_ID,
        aws_request_id: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = _log_stream(function_name)
        self.identity: Any = None
        self.client_context: Any = None
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class SqsPoller:
    """Polls one queue and invokes ``handler(event, context)`` per batch; see the module docstring."""

    def __init__(
        self,
        store: DurableQueueStore,
        queue: str,
        handler: Callable[[dict[str, Any], Any], Any],
        *,
        function_name: str,
        batch_size: int = 10,
        max_batching_window: float = 0.5,
        timeout_seconds: float = 30.0,
        report_batch_item_failures: bool = True,
        on_error: Callable[[BaseException], None] | None = None,
        memory_limit_in_mb: int = 128,
        region: str = REGION,
        concurrency: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_batching_window < 0 or timeout_seconds <= 0:
            raise ValueError("max_batching_window must be >= 0 and timeout_seconds > 0")
        self.store = store
        self.queue = queue
        self.handler = handler
        self.function_name = function_name
        self.batch_size = batch_size
        self.max_batching_window = max_batching_window
        self.timeout_seconds = timeout_seconds
        self.report_batch_item_failures = report_batch_item_failures
        self.on_error = on_error
        self.memory_limit_in_mb = memory_limit_in_mb
        self.region = region
        self.concurrency = concurrency
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- one batch --------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Receive one batch and invoke the handler with it; returns the batch size (0: no messages).

        Handler errors are passed to ``on_error``, not raised; errors of the store are raised.
        """
        return self._poll(self.max_batching_window)

    def _poll(self, first_wait: float) -> int:
        batch = self.store.receive(self.queue, max_messages=self.batch_size, wait_seconds=first_wait)
        if not batch:
            return 0
        # The window opens with the first record, not with the wait for it: after an idle spell the first
        # record of a burst still gathers the ones right behind it.
        deadline = time.monotonic() + self.max_batching_window
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch.extend(
                self.store.receive(
                    self.queue, max_messages=self.batch_size - len(batch), wait_seconds=remaining
                )
            )
        self._invoke(batch)
        return len(batch)

    def _invoke(self, batch: list[ReceivedMessage]) -> None:
        event = sqs_event(self.store.queue_arn(self.queue), batch, self.region)
        context = LambdaContext(
            self.function_name,
            timeout_seconds=self.timeout_seconds,
            memory_limit_in_mb=self.memory_limit_in_mb,
            region=self.region,
        )
        started = time.monotonic()
        try:
            response = self.handler(event, context)
        except Exception as exc:
            self._report(exc)
            return
        elapsed = time.monotonic() - started
        if elapsed > self.timeout_seconds:
            self._report(
                HandlerTimeout(
                    f"{self.function_name} ran {elapsed:.1f}s, over its {self.timeout_seconds:g}s timeout"
                )
            )
            return
        try:
            failed = self._failed_ids(response, {m.message_id for m in batch})
        except BatchResponseInvalid as exc:
            self._report(exc)
            return
        handles = [m.receipt_handle for m in batch if m.message_id not in failed]
        invalid = self.store.delete_batch(self.queue, handles)
        if invalid:
            logger.warning(
                "%s: %d message(s) were received again before they could be deleted",
                self.function_name,
                len(invalid),
            )

    def _failed_ids(self, response: Any, batch_ids: set[str]) -> set[str]:
        """Message ids the handler reported failed; raises BatchResponseInvalid to fail the batch."""
        if not self.report_batch_item_failures or not isinstance(response, dict):
            return set()
        items = response.get("batchItemFailures")
        if items is None:
            return set()
        if not isinstance(items, list):
            raise BatchResponseInvalid(f"batchItemFailures is not a list: {items!r}")
        failed: set[str] = set()
        for item in items:
            identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not isinstance(identifier, str) or identifier not in batch_ids:
                raise BatchResponseInvalid(f"batchItemFailures entry names no message of the batch: {item!r}")
            failed.add(identifier)
        return failed

    def _report(self, exc: BaseException) -> None:
        if self.on_error is None:
            logger.error("%s on %s: %s", self.function_name, self.queue, exc, exc_info=exc)
            return
        try:
            self.on_error(exc)
        except Exception:
            logger.exception("on_error callback of %s failed", self.function_name)

    # -- background loop --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        """Start polling in ``concurrency`` daemon threads, like as many concurrent invocations of the
        function (no-op when already running). On a FIFO queue they never hold two batches of one group."""
        if self.running:
            return
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=self._run, name=f"sqs-poller-{self.function_name}-{self.queue}-{index}", daemon=True
            )
            for index in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loops and wait for the batches in progress (by default up to the function timeout)."""
        self._stop.set()
        threads, self._threads = self._threads, []
        deadline = time.monotonic() + (
            timeout if timeout is not None else self.timeout_seconds + self.max_batching_window + IDLE_WAIT
        )
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll(max(self.max_batching_window, IDLE_WAIT))
            except Exception as exc:
                self._report(exc)
                self._stop.wait(ERROR_BACKOFF)
