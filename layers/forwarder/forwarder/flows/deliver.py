"""deliver: send delivery messages to their vendors, batched per (group key, integration, action);
classify each outcome; report partial batch failures so only what failed is retried.

* **Per-customer order.** The delivery queue is FIFO, one message group per customer and integration
  (``forwarder.ordering``). A batch is worked through in waves: the first delivery of every customer, then
  the second, and so on, so a customer's delete and upsert in one batch are applied in the order received.
  When a customer's delivery must wait (a retry), their later deliveries in the batch wait with it, hidden
  as long as it is; other customers go on.
* **Exactly-once effects.** Before a request goes out its deliveries are marked ``sending`` in the delivery
  log; after the vendor's answer, ``delivered`` (or rejected, ...). A delivery the log holds as done is
  never sent again (a redelivery, a crash before the queue acknowledgement, a replay): it is acknowledged. One
  still ``sending`` (no answer came: a read timeout, a crash) is first read back by its integration
  (``Integration.confirm``); only when the vendor does not show it applied is it sent again.
* delivered -> done. rejected for good -> the rejects trail, with the vendor's reason; never retried.
* retry later -> hidden for a capped exponential backoff with full jitter (at least the vendor's
  Retry-After), until the retry horizon (``FORWARDER_RETRY_HORIZON_SECONDS``, 4 h by default) has passed
  since the first attempt; then it goes to the delivery DLQ with the last reason. Waiting for credentials
  (``Outcome.hold``) spends no attempt.

Nothing is dropped: when the rejects trail or DLQ cannot be written, the message is reported failed.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

from forwarder.config import ForwarderConfig, IntegrationConfig
from forwarder.contract import Action
from forwarder.flow_control import FlowControl
from forwarder.integrations.base import NOT_ATTEMPTED, Budget, CredentialsError, Outcome, TokenError, Verdict
from forwarder.messages import DeadLetter, DeliveryMessage, Rejection
from forwarder.observability import (
    count_credential_problem,
    emit_counts,
    emit_latencies,
    logger,
    request_scope,
)
from forwarder.ordering import deduplication_id
from forwarder.ports.deliveries import DeliveryKey, DeliveryLogError, DeliveryRecord, DeliveryState
from forwarder.ports.ledger import DeletionLedger, LedgerError
from forwarder.ports.locks import LockError
from forwarder.ports.queues import MAX_MESSAGE_BYTES, OutgoingMessage, QueueError
from forwarder.ports.secrets import SecretStoreError
from forwarder.runtime import Services
from forwarder.tokens import TokenUnavailable


@dataclass(slots=True)
class _Item:
    message_id: str
    receipt_handle: str
    receive_count: int
    queue_arn: str
    lane: str  # the FIFO message group: one customer at one integration
    delivery: DeliveryMessage
    record: DeliveryRecord | None = None  # what the delivery log held when the batch came in
    replayed: bool = False  # a dead letter sent back (forwarder replay, a DLQ redrive)

    @property
    def key(self) -> DeliveryKey:
        return DeliveryKey(self.delivery.request_id, self.delivery.integration, self.delivery.operation)


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with full jitter: uniform(base/2, min(cap, base * 2**(attempt-1)))."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(min(base / 2, ceiling), ceiling)


# Verdicts after which a customer's later deliveries in the batch must wait: this one is not done.
_WAITING = frozenset({"retrying", "held", "requeued", "unsettled"})


def handle_batch(services: Services, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    budget = Budget.from_remaining_ms(remaining() if callable(remaining) else None)
    failures: list[str] = []
    counts: Counter[tuple[str, str]] = Counter()
    latencies: dict[str, list[float]] = {}
    lanes: dict[str, list[_Item]] = {}
    for record in event.get("Records", []):
        message_id = record["messageId"]
        try:
            delivery, replayed = _delivery_of(record["body"])
        except ValidationError:
            if not _reject_malformed(services, record):
                failures.append(message_id)
            continue
        attributes = record.get("attributes", {})
        item = _Item(
            message_id,
            record["receiptHandle"],
            int(attributes.get("ApproximateReceiveCount", "1")),
            record.get("eventSourceARN", ""),
            str(attributes.get("MessageGroupId") or message_id),
            delivery,
            replayed=replayed,
        )
        lanes.setdefault(item.lane, []).append(item)
    if not lanes:
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failures]}

    config = services.config
    waiting: dict[str, tuple[int, int]] = {}  # lane -> (position of the delivery that waits, its delay)
    position = 0
    while True:
        wave = [
            items[position] for lane, items in lanes.items() if position < len(items) and lane not in waiting
        ]
        if not wave:
            break
        for item, (verdict, delay) in zip(wave, _deliver_wave(services, config, wave, budget), strict=True):
            counts[(item.delivery.integration, verdict)] += 1
            if verdict == "delivered" and (latency := _latency(services, item.delivery)) is not None:
                latencies.setdefault(item.delivery.integration, []).append(latency)
            if verdict in _WAITING:
                failures.append(item.message_id)
                waiting[item.lane] = (position, delay)
        position += 1
    for lane, (stopped_at, delay) in waiting.items():
        for item in lanes[lane][stopped_at + 1 :]:
            # Not tried: it waits behind the customer's earlier delivery, and becomes visible with it.
            failures.append(item.message_id)
            counts[(item.delivery.integration, "waiting")] += 1
            try:
                services.queues.change_visibility("delivery", item.receipt_handle, delay)
            except QueueError as error:
                logger.warning("could not hold a delivery back", extra={"error": str(error)})
    emit_counts(counts)
    emit_latencies(latencies)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in dict.fromkeys(failures)]}


def _latency(services: Services, delivery: DeliveryMessage) -> float | None:
    """Seconds from the request's acceptance at ingest to now (its delivery); None if unreadable."""
    try:
        received = datetime.fromisoformat(delivery.received_at).timestamp()
    except ValueError:
        return None
    return max(0.0, services.clock() - received)


def _deliver_wave(
    services: Services, config: ForwarderConfig, wave: list[_Item], budget: Budget
) -> list[tuple[str, int]]:
    """Deliver one delivery per customer; (verdict, seconds it waits) for each, in order."""
    log = services.deliveries
    results: dict[str, tuple[str, int]] = {}
    written: dict[DeliveryKey, tuple[DeliveryState, str]] = {}  # outcomes for the delivery log
    pending: list[_Item] = []
    try:
        records = log.get([item.key for item in wave]) if log is not None else {}
    except DeliveryLogError as error:
        logger.error("the delivery log is unavailable; the batch is retried", extra={"error": str(error)})
        return [("unsettled", 0)] * len(wave)
    replays = [
        item.key
        for item in wave
        if item.replayed and (found := records.get(item.key)) and found.state is DeliveryState.DEAD_LETTERED
    ]
    if replays and log is not None:
        try:
            log.forget(replays)  # a replayed dead letter starts its retries (and its horizon) again
        except DeliveryLogError as error:
            logger.error("the delivery log is unavailable; the batch is retried", extra={"error": str(error)})
            return [("unsettled", 0)] * len(wave)
        records = {key: record for key, record in records.items() if key not in replays}
    for item in wave:
        item.record = records.get(item.key)
        if item.record is not None and item.record.state.final:
            # Done already (a redelivery, a crash before the acknowledgement, a replay): never sent again.
            logger.info(
                "already delivered: acknowledged without sending",
                extra={"request_id": item.delivery.request_id, "integration": item.delivery.integration},
            )
            results[item.message_id] = ("duplicate", 0)
        else:
            pending.append(item)
    groups: dict[tuple[str, str, str], list[_Item]] = {}
    for item in pending:
        groups.setdefault(
            (item.delivery.group_key, item.delivery.integration, item.delivery.operation), []
        ).append(item)

    def send(group: tuple[tuple[str, str, str], list[_Item]]) -> list[Outcome]:
        (group_key, integration_name, operation), items = group
        integration_config = _integration_config(config, group_key, integration_name)
        if integration_config is None:
            return [
                Outcome.retry(
                    f"integration '{integration_name}' of group key '{group_key}' is not configured"
                )
            ] * len(items)
        return _send_in_order(services, integration_config, operation, items, budget)

    sends = list(groups.items())
    for (_, items), outcomes in zip(sends, _each_at_once(send, sends), strict=True):
        for item, outcome in zip(items, outcomes, strict=True):
            with request_scope(item.delivery.request_id):
                results[item.message_id] = _settle(services, item, outcome, written)
    if written and log is not None:
        try:
            log.finish(written, services.clock())  # one write for the wave
        except DeliveryLogError as error:
            # Not recorded: reported failed and tried again; a delivered one is then read back, not resent.
            logger.error("could not record outcomes in the delivery log", extra={"error": str(error)})
            for item in wave:
                if item.key in written:
                    results[item.message_id] = ("unsettled", 0)
    return [results[item.message_id] for item in wave]


_T = TypeVar("_T")
_R = TypeVar("_R")


def _each_at_once(work: Callable[[_T], _R], groups: list[_T]) -> list[_R]:
    """``work`` of each group, the groups at the same time (a thread each), results in order. The integrations
    of a wave are independent of each other (a customer's order is kept within each), so a slow or failing
    vendor must not hold up the others' deliveries. The log keys of the invocation go with each thread."""
    if len(groups) < 2:
        return [work(group) for group in groups]
    keys = logger.thread_safe_get_current_keys()

    def run(group: _T) -> _R:
        logger.thread_safe_append_keys(**keys)
        try:
            return work(group)
        finally:
            logger.thread_safe_clear_keys()

    return list(_integration_threads().map(run, groups))


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
INTEGRATION_THREADS = 16
"""Threads sending to integrations at once, for every batch of the process (made on first use, then kept)."""


def _integration_threads() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=INTEGRATION_THREADS, thread_name_prefix="deliver-integration"
            )
        return _pool


# A delivery queue message: a delivery, or a dead letter redriven from the DLQ (replay), told apart by "kind".
_QUEUED: TypeAdapter[DeliveryMessage | DeadLetter] = TypeAdapter(
    Annotated[DeliveryMessage | DeadLetter, Field(discriminator="kind")]
)


def _delivery_of(body: str) -> tuple[DeliveryMessage, bool]:
    """The delivery, and whether it is a replayed dead letter."""
    queued = _QUEUED.validate_json(body)
    return (queued.delivery, True) if isinstance(queued, DeadLetter) else (queued, False)


def _integration_config(config: ForwarderConfig, group_key: str, name: str) -> IntegrationConfig | None:
    group = config.group_keys.get(group_key)
    return group.integration(name) if group else None


SUPERSEDED = Outcome(Verdict.SUPERSEDED, "superseded: a later delete of the same customer was delivered")
SUPERSEDED_DELETE = Outcome(
    Verdict.SUPERSEDED,
    "superseded: a later upsert of the same customer was delivered (this delete was replayed)",
)


def _ledger_keys(
    config: IntegrationConfig, group_key: str, operation: str, payload: dict[str, Any]
) -> list[str]:
    return [
        f"{group_key}/{config.name}/{identity}"
        for identity in config.integration.identities(operation, payload)
    ]


def _send_in_order(
    services: Services, config: IntegrationConfig, operation: str, items: list[_Item], budget: Budget
) -> list[Outcome]:
    """Send, keeping deletes final and a customer's requests in the order received, also across DLQ replays.

    A delete is recorded in the deletion ledger *before* it is sent (the customer's request, from its receipt
    time on, outranks older upserts even while the delete retries); an upsert received before a recorded delete
    of any identifier it carries is not sent (superseded). Upserts are checked chunk by chunk, just before each
    request. A delivered upsert of a customer with a recorded delete is recorded too, so that the delete, if it
    was dead-lettered and is replayed after that newer upsert, is not sent (superseded)."""
    ledger = services.ledger
    if ledger is None:
        return _send(services, config, operation, items, budget)
    keys = [_ledger_keys(config, item.delivery.group_key, operation, item.delivery.payload) for item in items]
    if items[0].delivery.action is Action.DELETE_CONTACT:
        return _send_deletes(services, config, operation, items, keys, ledger, budget)
    size = max(1, config.integration.batch_size(operation, config.parsed_settings))
    outcomes: list[Outcome] = []
    for start in range(0, len(items), size):
        chunk, chunk_keys = items[start : start + size], keys[start : start + size]
        try:
            superseded, tracked = _against_deletes(ledger, chunk, chunk_keys)
        except LedgerError as error:
            outcomes.extend([Outcome.retry(f"the deletion ledger is unavailable: {error}")] * len(chunk))
            continue
        pending = [index for index in range(len(chunk)) if index not in superseded]
        sent = (
            _send(services, config, operation, [chunk[index] for index in pending], budget) if pending else []
        )
        answers = dict(zip(pending, sent, strict=True))
        _record_upserts(
            ledger, chunk, chunk_keys, [i for i in tracked if answers[i].verdict is Verdict.DELIVERED]
        )
        outcomes.extend(SUPERSEDED if index in superseded else answers[index] for index in range(len(chunk)))
    return outcomes


def _send_deletes(
    services: Services,
    config: IntegrationConfig,
    operation: str,
    items: list[_Item],
    keys: list[list[str]],
    ledger: DeletionLedger,
    budget: Budget,
) -> list[Outcome]:
    try:
        oldest = min(item.delivery.received_at for item in items)
        newer = (
            {
                index
                for index, item in enumerate(items)
                if keys[index] and ledger.upserted_since(keys[index], item.delivery.received_at)
            }
            if ledger.upserted_since([key for item_keys in keys for key in item_keys], oldest)
            else set()
        )
        latest: dict[str, str] = {}
        for index, (item, item_keys) in enumerate(zip(items, keys, strict=True)):
            if index not in newer:
                for key in item_keys:
                    latest[key] = max(latest.get(key, ""), item.delivery.received_at)
        if latest:
            ledger.record_deletes(latest)
    except LedgerError as error:
        return [Outcome.retry(f"the deletion ledger is unavailable: {error}")] * len(items)
    pending = [index for index in range(len(items)) if index not in newer]
    sent = iter(
        _send(services, config, operation, [items[index] for index in pending], budget) if pending else []
    )
    return [SUPERSEDED_DELETE if index in newer else next(sent) for index in range(len(items))]


def _against_deletes(
    ledger: DeletionLedger, chunk: list[_Item], keys: list[list[str]]
) -> tuple[set[int], set[int]]:
    """Indexes of the chunk's upserts that a later recorded delete supersedes, and of those whose customer has
    an earlier recorded delete (their delivery is recorded). One look-up when no customer has a delete."""
    if not ledger.deleted_since([key for item_keys in keys for key in item_keys], ""):
        return set(), set()
    superseded: set[int] = set()
    tracked: set[int] = set()
    for index, item in enumerate(chunk):
        if not keys[index] or not ledger.deleted_since(keys[index], ""):
            continue
        if ledger.deleted_since(keys[index], item.delivery.received_at):
            superseded.add(index)
        else:
            tracked.add(index)
    return superseded, tracked


def _record_upserts(
    ledger: DeletionLedger, chunk: list[_Item], keys: list[list[str]], delivered: list[int]
) -> None:
    latest: dict[str, str] = {}
    for index in delivered:
        for key in keys[index]:
            latest[key] = max(latest.get(key, ""), chunk[index].delivery.received_at)
    if not latest:
        return
    try:
        ledger.record_upserts(latest)
    except LedgerError as error:
        # delivered already: sending it again would not help; only a replay of an older delete could now erase it
        logger.error(
            "could not record delivered upserts in the deletion ledger",
            extra={"integration": chunk[0].delivery.integration, "error": str(error)},
        )


def _send(
    services: Services, config: IntegrationConfig, operation: str, items: list[_Item], budget: Budget
) -> list[Outcome]:
    integration = config.integration
    problem = services.settings.secret_outside_prefix(config.secret) if config.secret else None
    if problem:
        return [Outcome.retry(f"credentials unavailable: {problem}")] * len(items)
    try:
        credentials = (
            services.secrets.get(config.secret, max_age_seconds=services.settings.secrets_max_age_seconds)
            if config.secret
            else {}
        )
        integration.check_credentials(credentials)
    except (SecretStoreError, CredentialsError) as error:
        return [Outcome.retry(f"credentials unavailable: {error}")] * len(items)
    keeper = services.token_keeper() if integration.uses_tokens else None
    if keeper is not None:
        try:
            credentials = keeper.usable(config, credentials)
        except _TOKEN_PROBLEMS as error:
            return [_no_token(config, items[0].delivery.group_key, error)] * len(items)
    size = max(1, integration.batch_size(operation, config.parsed_settings))
    outcomes: list[Outcome] = []
    flow_key = f"{items[0].delivery.group_key}/{config.name}"
    breaker = services.flow_control().breaker(flow_key)
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        waiting = _flow_control(services, config, operation, chunk, flow_key, budget)
        if waiting is not None:
            outcomes.extend([waiting] * len(chunk))
            continue
        # at most settings.vendor_requests_in_flight requests of this integration out at once (per process)
        with services.flow_control().in_flight(flow_key):
            try:
                settled = _read_back(services, config, operation, chunk, credentials, budget)
                to_send = [index for index in range(len(chunk)) if index not in settled]
                if to_send and services.deliveries is not None:
                    services.deliveries.begin([chunk[index].key for index in to_send], services.clock())
            except DeliveryLogError as error:
                outcomes.extend([Outcome.retry(f"the delivery log is unavailable: {error}")] * len(chunk))
                continue
            payloads = [chunk[index].delivery.payload for index in to_send]
            # tried before and not known applied: a step-wise integration skips the steps the vendor shows done
            retried = [_tried(chunk[index]) for index in to_send]
            sent = (
                integration.deliver(
                    operation,
                    payloads,
                    config.parsed_settings,
                    credentials,
                    services.http,
                    budget,
                    services.locks,
                    retried,
                )
                if payloads
                else []
            )
            refused = [index for index, outcome in enumerate(sent) if outcome.token_refused]
            if refused and keeper is not None:
                # The token was refused (expired, or replaced by another process): renew it once, send again.
                try:
                    credentials = keeper.renew(config, integration.token(credentials), reason="refused")
                except _TOKEN_PROBLEMS as error:
                    held = _no_token(config, items[0].delivery.group_key, error)
                    sent = [held if outcome.token_refused else outcome for outcome in sent]
                else:
                    again = integration.deliver(
                        operation,
                        [payloads[index] for index in refused],
                        config.parsed_settings,
                        credentials,
                        services.http,
                        budget,
                        services.locks,
                        [True] * len(refused),
                    )
                    for index, outcome in zip(refused, again, strict=True):
                        sent[index] = outcome
        answers = iter(sent)
        outcomes.extend(settled[index] if index in settled else next(answers) for index in range(len(chunk)))
        tried = [
            outcome
            for outcome in [*sent, *settled.values()]
            if outcome is not _CONFIRMED and not outcome.hold and outcome.reason != NOT_ATTEMPTED
        ]
        if tried:
            # the vendor is down when every answer says so; any other answer (even a rejection) says it is up
            breaker.record(all(outcome.vendor_down for outcome in tried))
            if config.max_requests_per_second:
                limiter = services.flow_control().limiter(flow_key, _rate(services, config))
                if any(outcome.vendor_status == 429 for outcome in tried):
                    limiter.throttled()
                elif any(outcome.verdict is Verdict.DELIVERED for outcome in tried):
                    limiter.succeeded()
    return outcomes


def _rate(services: Services, config: IntegrationConfig) -> float:
    assert config.max_requests_per_second is not None
    return config.max_requests_per_second / services.settings.deliver_concurrency


def _flow_control(
    services: Services,
    config: IntegrationConfig,
    operation: str,
    chunk: list[_Item],
    flow_key: str,
    budget: Budget,
) -> Outcome | None:
    """None when the chunk may go now (after waiting out the rate limit, if it fits the budget); else the
    outcome that makes it wait on its queue without spending an attempt: the vendor is down (the circuit is
    open; a probe goes about once a minute), or the rate limit has no room in this invocation."""
    breaker = services.flow_control().breaker(flow_key)
    allowed, wait = breaker.permit(FlowControl.probe_lease(services.locks, flow_key, breaker.probe_interval))
    if not allowed:
        return Outcome.held(
            f"{config.integration.title} is down (the circuit is open); waiting for it, a probe about every "
            f"{breaker.probe_interval:.0f} s",
            retry_after=wait + random.uniform(0, breaker.probe_interval / 4),
        )
    if not config.max_requests_per_second:
        return None
    limiter = services.flow_control().limiter(flow_key, _rate(services, config))
    count = config.integration.requests_for(operation, len(chunk), config.parsed_settings)
    delay = limiter.reserve(count)
    if delay <= 0:
        return None
    if budget.allows(delay + 15.0):
        time.sleep(delay)
        return None
    limiter.release(count)
    return Outcome.held(
        f"rate limited: at most {config.max_requests_per_second:g} requests/s to {config.integration.title}",
        retry_after=delay,
    )


_CONFIRMED = Outcome(Verdict.DELIVERED, "delivered: the vendor shows an earlier attempt applied")


def _read_back(
    services: Services,
    config: IntegrationConfig,
    operation: str,
    chunk: list[_Item],
    credentials: dict[str, Any],
    budget: Budget,
) -> dict[int, Outcome]:
    """Outcomes, by index, of deliveries whose earlier attempt got no answer (the log says ``sending``: a read
    timeout, a crash) and which are not sent now: the vendor shows them applied already (delivered), or the
    read back failed (they wait, still ``sending``, and are read back again next time)."""
    unknown = [
        index
        for index, item in enumerate(chunk)
        if item.record is not None and item.record.state is DeliveryState.SENDING
    ]
    if not unknown:
        return {}
    answers = config.integration.confirm(
        operation,
        [chunk[index].delivery.payload for index in unknown],
        config.parsed_settings,
        credentials,
        services.http,
        budget,
    )
    settled: dict[int, Outcome] = {}
    for index, answer in zip(unknown, answers, strict=True):
        if answer is True:
            settled[index] = _CONFIRMED
        elif isinstance(answer, Outcome):
            settled[index] = answer
    return settled


_TOKEN_PROBLEMS = (TokenError, TokenUnavailable, SecretStoreError, CredentialsError, LockError)


def _no_token(config: IntegrationConfig, group_key: str, error: Exception) -> Outcome:
    """No usable token: the records wait in their queue (no attempt spent); the problem is logged without
    any secret and counted in ``CredentialProblems``, which an alarm watches."""
    if not isinstance(error, TokenUnavailable):
        logger.error(
            "could not renew the vendor token; deliveries wait",
            extra={"group_key": group_key, "integration": config.name, "problem": str(error)},
        )
        count_credential_problem(config.name)
    return Outcome.held(f"no usable {config.integration.title} token: {error}")


def _settle(
    services: Services,
    item: _Item,
    outcome: Outcome,
    written: dict[DeliveryKey, tuple[DeliveryState, str]],
) -> tuple[str, int]:
    """Act on one outcome and note what the delivery log must record (``written``, stored once per wave);
    returns (verdict, seconds the delivery now waits)."""
    delivery = item.delivery
    settings = services.settings
    now = services.clock()
    attempts = (item.record.attempts if item.record else 0) + (0 if outcome.hold or _untried(outcome) else 1)
    log = {
        "request_id": delivery.request_id,
        "integration": delivery.integration,
        "operation": delivery.operation,
        "attempt": attempts,
        "vendor_status": outcome.vendor_status,
        "reason_category": reason_category(outcome),
    }
    first_attempt = item.record.first_attempt_at if item.record and item.record.first_attempt_at else now
    try:
        if outcome.verdict is Verdict.DELIVERED:
            _record(written, item, DeliveryState.DELIVERED, outcome.reason)
            logger.info("delivered", extra=log)
            return "delivered", 0
        if outcome.verdict is Verdict.SUPERSEDED:
            _record(written, item, DeliveryState.SUPERSEDED, outcome.reason)
            logger.info("not sent", extra={**log, "reason": outcome.reason})
            return "superseded", 0
        if outcome.verdict is Verdict.REJECTED:
            rejection = Rejection(
                request_id=delivery.request_id,
                group_key=delivery.group_key,
                stage="deliver",
                integration=delivery.integration,
                operation=delivery.operation,
                reason=outcome.reason,
                errors=outcome.errors,
                record=delivery.payload,
            )
            services.queues.send(
                "rejects", [OutgoingMessage(rejection.fitted(MAX_MESSAGE_BYTES).model_dump_json())]
            )
            _record(written, item, DeliveryState.REJECTED, outcome.reason)
            logger.info("rejected by the vendor", extra=log)
            return "rejected", 0
        if _untried(outcome):
            # The invocation had no time for it: visible again at once, and not counted as an attempt (it
            # never left, so it is not "sending" either: nothing to read back next time).
            services.queues.change_visibility("delivery", item.receipt_handle, 0)
            if services.deliveries is not None and item.record is None:
                services.deliveries.forget([item.key])
            elif item.record is not None:
                _record(written, item, item.record.state, item.record.reason)
            return "requeued", 0
        out_of_time = now - first_attempt > settings.retry_horizon_seconds
        if out_of_time or item.receive_count >= settings.delivery_max_receives:
            why = (
                f"gave up after {attempts} attempts over {_duration(now - first_attempt)}"
                if out_of_time
                else f"received {item.receive_count} times (the queue's limit)"
            )
            dead = DeadLetter(delivery=delivery, reason=f"{outcome.reason} ({why})", attempts=attempts)
            services.queues.send(
                "delivery-dlq",
                [
                    OutgoingMessage(
                        dead.fitted(MAX_MESSAGE_BYTES).model_dump_json(),
                        {"integration": delivery.integration},
                        group_id=item.lane,
                        dedup_id=deduplication_id(f"{delivery.delivery_id}/dead/{now}"),
                    )
                ],
            )
            _record(written, item, DeliveryState.DEAD_LETTERED, dead.reason)
            logger.warning("dead-lettered: its retries are over", extra={**log, "why": why})
            return "dead_lettered", 0
        # Waiting for credentials spends no attempt: its wait grows with how often the queue handed it over.
        step = item.receive_count if outcome.hold else attempts
        delay = backoff_seconds(step, settings.retry_base_seconds, settings.retry_max_seconds)
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, settings.retry_max_seconds))
        wait = max(1, round(delay))
        services.queues.change_visibility("delivery", item.receipt_handle, wait)
        # No answer came: the vendor may have applied it, so the next attempt reads it back first.
        _record(
            written,
            item,
            DeliveryState.SENDING if outcome.ambiguous else DeliveryState.RETRYING,
            outcome.reason,
        )
        if outcome.hold:
            logger.info(
                "waiting, no attempt spent", extra={**log, "reason": outcome.reason, "retry_in_seconds": wait}
            )
            return "held", wait
        logger.info("will retry", extra={**log, "retry_in_seconds": wait})
        return "retrying", wait
    except (QueueError, DeliveryLogError) as error:
        logger.error("could not settle a delivery; it will be retried", extra={**log, "error": str(error)})
        return "unsettled", 0


def reason_category(outcome: Outcome) -> str:
    """Why a delivery ended as it did, in a word a log query can group by (the reason itself may quote the
    vendor, so it stays in the delivery log and the trails, not in INFO lines)."""
    status = outcome.vendor_status
    if outcome.verdict is Verdict.DELIVERED:
        return "delivered"
    if outcome.verdict is Verdict.SUPERSEDED:
        return "superseded"
    if outcome.verdict is Verdict.REJECTED:
        return "vendor_rejected" if status else "invalid_for_vendor"
    if outcome.token_refused or outcome.reason.startswith(("credentials unavailable", "no usable")):
        return "credentials"
    if outcome.reason == NOT_ATTEMPTED:
        return "out_of_time"
    if outcome.reason.startswith(("the deletion ledger is unavailable", "the delivery log is unavailable")):
        return "store_unavailable"
    if outcome.reason.startswith("rate limited"):
        return "rate_limited"
    if outcome.hold:
        return "vendor_down" if "circuit is open" in outcome.reason else "waiting"
    if status == 429:
        return "throttled"
    if outcome.ambiguous:
        return "no_answer"
    if status is not None and status >= 500:
        return "vendor_error"
    if outcome.vendor_down:
        return "unreachable"
    return "retry"


def _tried(item: _Item) -> bool:
    return item.record is not None and item.record.attempts > 0


def _untried(outcome: Outcome) -> bool:
    return outcome.reason == NOT_ATTEMPTED


def _record(
    written: dict[DeliveryKey, tuple[DeliveryState, str]], item: _Item, state: DeliveryState, reason: str
) -> None:
    written[item.key] = (state, reason)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def _reject_malformed(services: Services, record: dict[str, Any]) -> bool:
    rejection = Rejection(
        request_id=record.get("messageId", ""),
        group_key="",
        stage="deliver",
        reason="the queue message is not a delivery message",
        record={"body": str(record.get("body", ""))[:2000]},
    )
    try:
        services.queues.send(
            "rejects", [OutgoingMessage(rejection.fitted(MAX_MESSAGE_BYTES).model_dump_json())]
        )
    except QueueError:
        return False
    return True
