"""What the status per request costs the hot path: validate's write of each request's record (its client, and
per integration pending or rejected) to the delivery log, one write per batch.

``bench_status()`` measures, for batches of 10 typical contacts on the shipped three-vendor config:

* validate's CPU per record (thread CPU time) with and without the status write, the queues stubbed out so that
  only validate's own work and the write are timed (on the embedded SQLite log, the write is a fsynced
  transaction per batch: its wall time is shown apart);
* the SQLite write alone: ``record_requests`` of 10, per batch (``synchronous=FULL``, as the stack runs it);
* the DynamoDB adapter's CPU per record to build its ``BatchWriteItem`` (a stub client, no network: on AWS the
  batch's one call adds its round trip, a few milliseconds, per batch of 10, not per record).

It prints the figures and returns them; it asserts no timings. ``python bench/status.py`` runs it alone.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO_ROOT / "config" / "forwarder.yaml"
BATCH = 10
ROUNDS = 60
REPEATS = 5


def _record(index: int) -> dict[str, Any]:
    return {
        "email": f"status.{index}@example.com",
        "first_name": "Jana",
        "last_name": "Nováková",
        "phone": f"600 {index // 1000 % 1000:03d} {index % 1000:03d}",
        "city": "Kraków",
        "loyalty_tier": "gold",
        "tags": ["vip", "newsletter"],
    }


def _batch_events(rounds: int) -> list[dict[str, Any]]:
    """SQS events of ``BATCH`` ingest messages each, as the ingest queue's event source hands them over."""
    from forwarder.contract import Action
    from forwarder.messages import IngestMessage, utcnow_iso

    events = []
    for number in range(rounds):
        records = []
        for index in range(BATCH):
            request_id = str(uuid.uuid4())
            message = IngestMessage(
                request_id=request_id,
                action=Action.UPSERT_CONTACT,
                group_key="demo",
                data=_record(number * BATCH + index),
                received_at=utcnow_iso(),
                client="demo",
            )
            records.append(
                {
                    "messageId": str(uuid.uuid4()),
                    "receiptHandle": "r",
                    "body": message.model_dump_json(),
                    "attributes": {"MessageGroupId": request_id, "ApproximateReceiveCount": "1"},
                    "messageAttributes": {"request_id": {"stringValue": request_id, "dataType": "String"}},
                    "eventSource": "aws:sqs",
                }
            )
        events.append({"Records": records})
    return events


def _median_per_record(run: Callable[[dict[str, Any]], object], rounds: int) -> tuple[float, float]:
    """(thread CPU s, wall s) per record, the median over ``REPEATS`` runs of ``rounds`` batches each."""
    cpu_samples, wall_samples = [], []
    for _ in range(REPEATS):
        events = _batch_events(rounds)
        for event in events[:2]:
            run(event)  # warm: lazy imports, config cache
        wall, cpu = time.perf_counter(), time.thread_time()
        for event in events[2:]:
            run(event)
        records = (rounds - 2) * BATCH
        cpu_samples.append((time.thread_time() - cpu) / records)
        wall_samples.append((time.perf_counter() - wall) / records)
    return statistics.median(cpu_samples), statistics.median(wall_samples)


def bench_status(rounds: int = ROUNDS) -> dict[str, float]:
    """Measure the status writes against validate's hot path; print and return the figures (seconds)."""
    from forwarder.adapters.aws import DynamoDbDeliveryLog
    from forwarder.flows.validate import handle_batch, request_record
    from forwarder.messages import IngestMessage
    from forwarder.ports.deliveries import RequestRecord
    from forwarder.ports.queues import OutgoingMessage, QueuePort
    from forwarder.runtime import RuntimeSettings, Services
    from forwarder_local.stores import LocalDeliveryLog, LocalSecretStore

    class NullQueues(QueuePort):
        def send(self, queue: str, messages: list[OutgoingMessage]) -> list[str]:
            return [str(index) for index in range(len(messages))]

        def change_visibility(self, queue: str, receipt_handle: str, seconds: int) -> None:
            return None

    class NullDynamoDb:
        def batch_write_item(self, **_: Any) -> dict[str, Any]:
            return {}

    with tempfile.TemporaryDirectory(prefix="forwarder-bench-status-") as folder:
        tmp = Path(folder)
        settings = RuntimeSettings(runtime="embedded", config_path=str(CONFIG_PATH))
        log = LocalDeliveryLog(tmp / "deliveries.db")
        secrets = LocalSecretStore(tmp / "secrets.json")
        without = Services(settings=settings, queues=NullQueues(), secrets=secrets)
        with_log = Services(settings=settings, queues=NullQueues(), secrets=secrets, deliveries=log)
        base_cpu, base_wall = _median_per_record(lambda event: handle_batch(without, event), rounds)
        status_cpu, status_wall = _median_per_record(lambda event: handle_batch(with_log, event), rounds)

        # the SQLite write alone, and the DynamoDB adapter's CPU, on validate's records of one batch
        event = _batch_events(1)[0]
        config = without.config
        from forwarder.flows.validate import plan

        records: list[RequestRecord] = []
        for raw in event["Records"]:
            message = IngestMessage.model_validate_json(raw["body"])
            deliveries, rejections = plan(config, message)
            records.append(request_record(message, deliveries, rejections, time.time()))
        writes = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            for _ in range(rounds):
                log.record_requests(records)
            writes.append((time.perf_counter() - started) / rounds)
        sqlite_batch = statistics.median(writes)
        dynamodb = DynamoDbDeliveryLog("bench", client=NullDynamoDb())
        building = []
        for _ in range(REPEATS):
            started = time.thread_time()
            for _ in range(rounds):
                dynamodb.record_requests(records)
            building.append((time.thread_time() - started) / (rounds * BATCH))
        dynamodb_cpu = statistics.median(building)
        log.close()

    figures = {
        "validate_cpu_per_record_s": base_cpu,
        "validate_with_status_cpu_per_record_s": status_cpu,
        "status_cpu_per_record_s": status_cpu - base_cpu,
        "validate_wall_per_record_s": base_wall,
        "validate_with_status_wall_per_record_s": status_wall,
        "sqlite_write_per_batch_s": sqlite_batch,
        "dynamodb_item_cpu_per_record_s": dynamodb_cpu,
    }
    us = 1e6
    print(
        f"status per request: the status write in validate (batches of {BATCH}, {CONFIG_PATH.name}: 3 vendors)"
    )
    print(f"  validate CPU per record, no status write      {base_cpu * us:9.1f} us")
    print(
        f"  validate CPU per record, with status write    {status_cpu * us:9.1f} us"
        f"   (+{(status_cpu - base_cpu) * us:.1f} us, {100 * (status_cpu - base_cpu) / base_cpu:+.1f}%)"
    )
    print(
        f"  validate wall per record, embedded (SQLite)   {status_wall * us:9.1f} us"
        f"   (without: {base_wall * us:.1f} us; one WAL transaction per batch)"
    )
    print(f"  SQLite record_requests of {BATCH}, per batch       {sqlite_batch * us:9.1f} us")
    print(
        f"  DynamoDB BatchWriteItem items, CPU per record {dynamodb_cpu * us:9.1f} us"
        "   (+ one round trip per batch on AWS, not measured here)"
    )
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT / "layers" / "forwarder"))
    bench_status(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS)
