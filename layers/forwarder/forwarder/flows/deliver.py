"""deliver: send delivery messages to their vendors, batched per (group key, integration, action);
classify each outcome; report partial batch failures so only what failed is retried.

* delivered -> done.
* rejected for good -> the rejects trail, with the vendor's reason; never retried.
* retry later -> the message is hidden for a capped exponential backoff with full jitter (at least the
  vendor's Retry-After) and reported as a batch item failure; on its last allowed receive it goes to the
  delivery DLQ with the reason instead (the queue's redrive policy stays as the safety net for crashes).

Nothing is dropped: when the rejects trail or DLQ cannot be written, the message is reported failed.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from forwarder.config import ForwarderConfig, IntegrationConfig
from forwarder.contract import Action
from forwarder.integrations.base import NOT_ATTEMPTED, Budget, CredentialsError, Outcome, TokenError, Verdict
from forwarder.messages import DeadLetter, DeliveryMessage, Rejection
from forwarder.observability import count_credential_problem, emit_counts, logger
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
    delivery: DeliveryMessage


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with full jitter: uniform(base/2, min(cap, base * 2**(attempt-1)))."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(min(base / 2, ceiling), ceiling)


def handle_batch(services: Services, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    budget = Budget.from_remaining_ms(remaining() if callable(remaining) else None)
    failures: list[str] = []
    counts: Counter[tuple[str, str]] = Counter()
    groups: dict[tuple[str, str, str], list[_Item]] = {}
    for record in event.get("Records", []):
        message_id = record["messageId"]
        try:
            delivery = _delivery_of(record["body"])
        except ValidationError:
            if not _reject_malformed(services, record):
                failures.append(message_id)
            continue
        item = _Item(
            message_id,
            record["receiptHandle"],
            int(record.get("attributes", {}).get("ApproximateReceiveCount", "1")),
            record.get("eventSourceARN", ""),
            delivery,
        )
        groups.setdefault((delivery.group_key, delivery.integration, delivery.operation), []).append(item)

    config = services.config if groups else None
    for (group_key, integration_name, operation), items in groups.items():
        assert config is not None
        integration_config = _integration_config(config, group_key, integration_name)
        if integration_config is None:
            outcomes = [
                Outcome.retry(
                    f"integration '{integration_name}' of group key '{group_key}' is not configured"
                )
            ] * len(items)
        else:
            outcomes = _send_in_order(services, integration_config, operation, items, budget)
        for item, outcome in zip(items, outcomes, strict=True):
            verdict = _settle(services, item, outcome)
            counts[(integration_name, verdict)] += 1
            if verdict == "retrying" or verdict == "unsettled":
                failures.append(item.message_id)
    emit_counts(counts)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failures]}


# A delivery queue message: a delivery, or a dead letter redriven from the DLQ (replay), told apart by "kind".
_QUEUED: TypeAdapter[DeliveryMessage | DeadLetter] = TypeAdapter(
    Annotated[DeliveryMessage | DeadLetter, Field(discriminator="kind")]
)


def _delivery_of(body: str) -> DeliveryMessage:
    queued = _QUEUED.validate_json(body)
    return queued.delivery if isinstance(queued, DeadLetter) else queued


def _integration_config(config: ForwarderConfig, group_key: str, name: str) -> IntegrationConfig | None:
    group = config.group_keys.get(group_key)
    return group.integration(name) if group else None


SUPERSEDED = Outcome(Verdict.SUPERSEDED, "superseded: a later delete of the same customer was delivered")


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
    """Send, keeping deletes final. A delete is recorded in the deletion ledger *before* it is sent (the
    customer's request, from its receipt time on, outranks older upserts even while the delete retries); an
    upsert received before a recorded delete of any identifier it carries is not sent (superseded). Upserts are
    checked against the ledger chunk by chunk, just before each request."""
    ledger = services.ledger
    if ledger is None:
        return _send(services, config, operation, items, budget)
    keys = [_ledger_keys(config, item.delivery.group_key, operation, item.delivery.payload) for item in items]
    if items[0].delivery.action is Action.DELETE_CONTACT:
        latest: dict[str, str] = {}
        for item, item_keys in zip(items, keys, strict=True):
            for key in item_keys:
                latest[key] = max(latest.get(key, ""), item.delivery.received_at)
        try:
            if latest:
                ledger.record_deletes(latest)
        except LedgerError as error:
            return [Outcome.retry(f"the deletion ledger is unavailable: {error}")] * len(items)
        return _send(services, config, operation, items, budget)
    size = max(1, config.integration.batch_size(operation, config.parsed_settings))
    outcomes: list[Outcome] = []
    for start in range(0, len(items), size):
        chunk, chunk_keys = items[start : start + size], keys[start : start + size]
        try:
            superseded = _superseded(ledger, chunk, chunk_keys)
        except LedgerError as error:
            outcomes.extend([Outcome.retry(f"the deletion ledger is unavailable: {error}")] * len(chunk))
            continue
        pending = [index for index in range(len(chunk)) if index not in superseded]
        sent = iter(
            _send(services, config, operation, [chunk[index] for index in pending], budget) if pending else []
        )
        outcomes.extend(SUPERSEDED if index in superseded else next(sent) for index in range(len(chunk)))
    return outcomes


def _superseded(ledger: DeletionLedger, chunk: list[_Item], keys: list[list[str]]) -> set[int]:
    """Indexes of the chunk's upserts that a later recorded delete supersedes (one look-up when none is)."""
    oldest = min(item.delivery.received_at for item in chunk)
    if not ledger.deleted_since([key for item_keys in keys for key in item_keys], oldest):
        return set()
    return {
        index
        for index, item in enumerate(chunk)
        if keys[index] and ledger.deleted_since(keys[index], item.delivery.received_at)
    }


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
    for start in range(0, len(items), size):
        payloads = [item.delivery.payload for item in items[start : start + size]]
        sent = integration.deliver(
            operation, payloads, config.parsed_settings, credentials, services.http, budget, services.locks
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
                )
                for index, outcome in zip(refused, again, strict=True):
                    sent[index] = outcome
        outcomes.extend(sent)
    return outcomes


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


def _settle(services: Services, item: _Item, outcome: Outcome) -> str:
    """Act on one outcome; returns delivered | rejected | retrying | dead_lettered | unsettled."""
    delivery = item.delivery
    log = {
        "request_id": delivery.request_id,
        "integration": delivery.integration,
        "operation": delivery.operation,
        "attempt": item.receive_count,
        "vendor_status": outcome.vendor_status,
    }
    try:
        if outcome.verdict is Verdict.DELIVERED:
            logger.info("delivered", extra=log)
            return "delivered"
        if outcome.hold:
            # Waiting for credentials is not an attempt: queue a fresh copy later, so it is never dead-lettered
            # for it; the wait grows with each hold (capped by SQS's 15-minute delay).
            held = delivery.model_copy(update={"held": delivery.held + 1})
            delay = backoff_seconds(
                held.held, services.settings.retry_base_seconds, services.settings.retry_max_seconds
            )
            services.queues.send(
                "delivery",
                [
                    OutgoingMessage(
                        held.model_dump_json(),
                        {"integration": delivery.integration},
                        delay_seconds=min(900, max(1, round(delay))),
                    )
                ],
            )
            logger.info("waiting for credentials", extra={**log, "reason": outcome.reason})
            return "held"
        if outcome.reason == NOT_ATTEMPTED:
            # Never tried: re-enqueue a fresh copy (its receive count starts again) and let this one go, so a
            # record the invocation had no time for is never dead-lettered untried.
            services.queues.send(
                "delivery",
                [OutgoingMessage(delivery.model_dump_json(), {"integration": delivery.integration})],
            )
            return "requeued"
        if outcome.verdict is Verdict.SUPERSEDED:
            logger.info("not sent: a later delete of the same customer was delivered", extra=log)
            return "superseded"
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
            logger.info("rejected by the vendor", extra=log)
            return "rejected"
        if item.receive_count >= services.settings.delivery_max_receives:
            dead = DeadLetter(delivery=delivery, reason=outcome.reason, attempts=item.receive_count)
            services.queues.send(
                "delivery-dlq",
                [
                    OutgoingMessage(
                        dead.fitted(MAX_MESSAGE_BYTES).model_dump_json(),
                        {"integration": delivery.integration},
                    )
                ],
            )
            logger.warning("dead-lettered after its last attempt", extra=log)
            return "dead_lettered"
        delay = backoff_seconds(
            item.receive_count, services.settings.retry_base_seconds, services.settings.retry_max_seconds
        )
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, services.settings.retry_max_seconds))
        services.queues.change_visibility("delivery", item.receipt_handle, max(1, round(delay)))
        logger.info("will retry", extra={**log, "retry_in_seconds": round(delay)})
        return "retrying"
    except QueueError as error:
        logger.error("could not settle a delivery; it will be retried", extra={**log, "error": str(error)})
        return "unsettled"


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
