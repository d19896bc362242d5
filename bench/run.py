"""Benchmarks of the forwarder: hot-path CPU per record, SigV4 verification, the durable local queue and the
whole embedded pipeline (gateway -> ingest -> queue -> validate -> queue -> deliver -> sandbox vendor).

Run with ``make bench`` (or ``.venv/bin/python bench/run.py --help``). It prints figures; it asserts no
timings. Micro-benchmarks use ``time.perf_counter`` over calibrated loops and report the median of several
repeats. The pipeline run drives the embedded stack over loopback with SigV4-signed requests from a separate
client process (so the load generator does not share the stack's GIL), and instruments the stack's stages
(wall and thread CPU time) to show where a record's time goes.

See the "Speed" bullet of DESIGN.md: a record costs microseconds of CPU; the end-to-end figure is compared
with RudderStack's published 1.7K events/s on a 2-vCPU machine (a different workload: a reference only).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load
from fanout import bench_fanout

if TYPE_CHECKING:
    from forwarder_local.stack import EmbeddedStack

# Quiet, metric-free handlers: must be set before any forwarder module is imported (they import lazily below).
os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"

REPO_ROOT = Path(__file__).resolve().parents[1]
# The ExpertSender-only example: the workload these figures have always measured (one vendor per record).
CONFIG_PATH = REPO_ROOT / "config" / "examples" / "expertsender-only.yaml"
GROUP_KEY = "demo"
REGION = "eu-central-1"
ACCESS_KEY = "AKIDEXAMPLEBENCH"
SECRET_KEY = "YmVuY2gtc2VjcmV0LWFjY2Vzcy1rZXktbm90LXJlYWw"
RUDDERSTACK_EVENTS_PER_S = 1700.0  # RudderStack's published figure, 2-vCPU machine
# The keys of the JSON object `make bench` prints last (null: not measured in this run).
FIGURES = (
    "e2e_records_per_s",
    "accept_requests_per_s",
    "noop_requests_per_s",
    "stack_cpu_us_per_record",
    "p99_accept_ms",
    "resets_at_200_clients",
    "cold_import_ms",
    "layer_zip_bytes",
    "aws_calls_per_record",
    "usd_per_million_records",
)


# --- helpers ------------------------------------------------------------------------------------------------


def typical_record(index: int, run_id: str = "hot") -> dict[str, Any]:
    """A typical ~10-attribute contact; email, phone and crm id are distinct per index."""
    return {
        "email": f"  Bench.{run_id}.{index}@Example.com ",
        "first_name": "Jana",
        "last_name": "Nováková",
        "phone": f"600 {index // 1000 % 1000:03d} {index % 1000:03d}",
        "crm_id": 1_000_000 + index,
        "birthday": "1990-04-17",
        "gender": "f",
        "city": "Kraków",
        "loyalty_tier": "gold",
        "tags": ["vip", "newsletter"],
        "newsletter_consent": True,
    }


def typical_body(index: int, run_id: str = "hot") -> bytes:
    return json.dumps({"group_key": GROUP_KEY, "data": typical_record(index, run_id)}).encode()


@dataclass(frozen=True)
class Timing:
    per_op: float  # seconds, median over repeats
    spread: float  # (max - min) / median over repeats
    iterations: int


def measure(fn: Callable[[], object], *, target_s: float = 0.25, repeats: int = 5) -> Timing:
    """Median seconds per call of ``fn`` over ``repeats`` loops, each sized to last about ``target_s``."""
    for _ in range(3):
        fn()  # warm caches and lazy imports
    calls, elapsed = 1, 0.0
    while elapsed < 0.02:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed < 0.02:
            calls *= 4
    iterations = max(1, int(calls * target_s / max(elapsed, 1e-9)))
    samples: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        samples.append((time.perf_counter() - start) / iterations)
    median = statistics.median(samples)
    return Timing(median, (max(samples) - min(samples)) / median, iterations)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:,.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:,.2f} ms"
    return f"{seconds:,.2f} s"


def fmt_rate(per_s: float, unit: str) -> str:
    return f"{per_s:,.0f} {unit}/s"


@dataclass
class Table:
    """Rows of (section, measurement, per operation, rate, note), printed aligned."""

    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def add(self, section: str, name: str, per_op: str = "", rate: str = "", note: str = "") -> None:
        self.rows.append((section, name, per_op, rate, note))

    def timing(self, section: str, name: str, timing: Timing, unit: str, note: str = "") -> None:
        spread = f"±{timing.spread * 50:.0f}% over 5x{timing.iterations:,}"
        self.add(section, name, fmt_time(timing.per_op), fmt_rate(1 / timing.per_op, unit), note or spread)

    def render(self) -> str:
        header = ("section", "measurement", "per op", "rate", "note")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(5)]
        lines: list[str] = []
        previous = None
        for row in [header, *self.rows]:
            if row is header or row[0] != previous:
                lines.append("-+-".join("-" * width for width in widths))
            section = row[0] if row[0] != previous else ""
            previous = row[0]
            cells = (section, row[1], row[2].rjust(widths[2]), row[3].rjust(widths[3]), row[4])
            lines.append(" | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)))
        lines.append("-+-".join("-" * width for width in widths))
        return "\n".join(line.rstrip() for line in lines)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def filesystem_of(path: Path) -> str:
    """The file system type holding ``path`` (Linux /proc/mounts; 'unknown' elsewhere)."""
    try:
        mounts = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "unknown"
    resolved, best, kind = str(path.resolve()), "", "unknown"
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and resolved.startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


# --- 1. hot path --------------------------------------------------------------------------------------------


def bench_hot_path(table: Table, tmp: Path) -> None:
    from forwarder.config import load_config
    from forwarder.contract import Action, parse_envelope
    from forwarder.flows.validate import plan
    from forwarder.messages import DeliveryMessage, IngestMessage, utcnow_iso
    from forwarder.runtime import RuntimeSettings, Services
    from forwarder_local.queue import DurableQueueStore
    from forwarder_local.stores import EmbeddedQueues, LocalSecretStore

    section = "1 hot path (CPU)"
    settings = RuntimeSettings(runtime="embedded", config_path=str(CONFIG_PATH))
    body = typical_body(1)
    envelope = parse_envelope(body, "application/json", settings.max_body_bytes)
    integration = load_config(CONFIG_PATH).group_keys[GROUP_KEY].integrations[0]
    store = DurableQueueStore(tmp / "plan-queues.db")
    services = Services(
        settings=settings, queues=EmbeddedQueues(store), secrets=LocalSecretStore(tmp / "secrets.json")
    )
    message = IngestMessage(
        request_id=str(uuid.uuid4()),
        action=Action.UPSERT_CONTACT,
        group_key=GROUP_KEY,
        data=envelope.data,
        received_at=utcnow_iso(),
        client="demo",
    )
    deliveries, rejections = plan(services.config, message)
    if len(deliveries) != 1 or rejections:
        raise SystemExit(f"the typical record does not plan to one delivery: {rejections}")
    delivery_json = deliveries[0].model_dump_json()
    ingest_json = message.model_dump_json()

    def map_and_prepare() -> object:
        mapped = integration.map(Action.UPSERT_CONTACT, envelope.data)
        return integration.integration.prepare("upsert_customer", mapped, integration.parsed_settings)

    parse = measure(lambda: parse_envelope(body, "application/json", settings.max_body_bytes))
    prepare = measure(map_and_prepare)
    planned = measure(lambda: plan(services.config, message))
    ingest_round = measure(lambda: IngestMessage.model_validate_json(message.model_dump_json()))
    delivery_round = measure(lambda: DeliveryMessage.model_validate_json(deliveries[0].model_dump_json()))
    store.close()

    size = f"{len(body)} B body, {len(envelope.data)} attributes"
    table.timing(section, "parse_envelope", parse, "rec", size)
    table.timing(section, f"map + prepare ({integration.type})", prepare, "rec")
    table.timing(section, "validate.plan (end to end)", planned, "rec", "incl. config lookup (stat)")
    table.timing(section, "IngestMessage JSON dump+parse", ingest_round, "rec", f"{len(ingest_json)} B")
    table.timing(section, "DeliveryMessage JSON dump+parse", delivery_round, "rec", f"{len(delivery_json)} B")
    total = parse.per_op + planned.per_op + ingest_round.per_op + delivery_round.per_op
    table.add(
        section,
        "sum: parse + plan + both hops",
        fmt_time(total),
        fmt_rate(1 / total, "rec"),
        "one core, no I/O",
    )


# --- 2. SigV4 -----------------------------------------------------------------------------------------------


def signed_wire(body: bytes, access_key: str, secret: str) -> tuple[list[tuple[str, str]], datetime]:
    """Headers as on the wire (Host added, as the HTTP client does) and signing time of a botocore-signed
    ``POST /v1/contacts``."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    netloc = "127.0.0.1:8080"
    request = AWSRequest(
        method="POST",
        url=f"http://{netloc}/v1/contacts",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    SigV4Auth(Credentials(access_key, secret), "execute-api", REGION).add_auth(request)
    headers = [("Host", netloc), *((str(k), str(v)) for k, v in request.prepare().headers.items())]
    amz_date = next(value for name, value in headers if name.lower() == "x-amz-date")
    return headers, datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def bench_sigv4(table: Table, tmp: Path) -> None:
    from forwarder.auth.sigv4 import verify
    from forwarder_local.authorizer import IamAuthorizer
    from forwarder_local.stores import LocalCredentials

    section = "2 SigV4 verify"
    body = typical_body(2)

    def check(lookup: Callable[[str], str | None], headers: list[tuple[str, str]], now: datetime) -> object:
        return verify(
            method="POST",
            raw_path="/v1/contacts",
            raw_query="",
            headers=headers,
            body=body,
            lookup_secret=lookup,
            now=now,
        )

    secrets = {ACCESS_KEY: SECRET_KEY}
    headers, signed_at = signed_wire(body, ACCESS_KEY, SECRET_KEY)
    check(secrets.get, headers, signed_at)  # raises SignatureError if the bench signs wrongly
    in_memory = measure(lambda: check(secrets.get, headers, signed_at))
    table.timing(section, "verify (botocore-signed POST)", in_memory, "req", "secret from a dict")

    # As the embedded gateway does it: IamAuthorizer verifies with secrets from LocalCredentials (credentials.json)
    # and applies API Gateway's rules (region, payload hash, session token), then reads the caller's user ARN.
    credentials = LocalCredentials(tmp / "credentials.json")
    access_key, secret = credentials.create_key("arn:aws:iam::000000000000:user/forwarder-bench")
    local_headers, local_signed_at = signed_wire(body, access_key, secret)
    authorizer = IamAuthorizer(credentials, REGION)

    def authenticate() -> object:
        return authorizer.authenticate(
            method="POST",
            raw_path="/v1/contacts",
            raw_query="",
            headers=local_headers,
            body=body,
            now=local_signed_at,
        )

    authenticate()  # raises SignatureError if the bench signs wrongly
    from_file = measure(authenticate)
    table.timing(section, "IamAuthorizer.authenticate", from_file, "req", "as the embedded gateway does")


# --- 3. durable local queue ---------------------------------------------------------------------------------


def bench_queue(table: Table, tmp: Path, batches: int, singles: int, budget_s: float) -> None:
    from forwarder.contract import Action
    from forwarder.messages import IngestMessage, utcnow_iso
    from forwarder_local.queue import DurableQueueStore, QueueSpec

    section = "3 durable queue"
    body = IngestMessage(
        request_id=str(uuid.uuid4()),
        action=Action.UPSERT_CONTACT,
        group_key=GROUP_KEY,
        data=typical_record(3),
        received_at=utcnow_iso(),
        client="demo",
    ).model_dump_json()
    attributes = {"request_id": str(uuid.uuid4()), "group_key": GROUP_KEY, "action": "upsert_contact"}
    entries: list[tuple[str, dict[str, str] | None, float]] = [(body, attributes, 0.0)] * 10
    with DurableQueueStore(tmp / "queues.db") as store:
        store.create_queue(QueueSpec("bench", visibility_timeout=60))
        store.create_queue(QueueSpec("single", visibility_timeout=60))

        deadline = time.perf_counter() + budget_s
        start, sent = time.perf_counter(), 0
        while sent < batches and time.perf_counter() < deadline:
            store.send_batch("bench", entries)
            sent += 1
        elapsed = time.perf_counter() - start
        table.add(
            section,
            f"send_batch of 10 (x {sent:,})",
            fmt_time(elapsed / sent),
            fmt_rate(sent * 10 / elapsed, "msg"),
            f"{len(body)} B bodies; one fsynced txn per batch",
        )

        deadline = time.perf_counter() + budget_s
        start, received, transactions = time.perf_counter(), 0, 0
        while received < sent * 10 and time.perf_counter() < deadline:
            messages = store.receive("bench", max_messages=10)
            if not messages:
                break
            store.delete_batch("bench", [message.receipt_handle for message in messages])
            received += len(messages)
            transactions += 1
        elapsed = time.perf_counter() - start
        table.add(
            section,
            f"receive(10) + delete_batch (x {transactions:,})",
            fmt_time(elapsed / max(transactions, 1)),
            fmt_rate(received / elapsed, "msg"),
            f"{received:,}/{sent * 10:,} drained; two write txns per batch",
        )

        deadline = time.perf_counter() + budget_s
        start, single = time.perf_counter(), 0
        while single < singles and time.perf_counter() < deadline:
            store.send("single", body, attributes)
            single += 1
        elapsed = time.perf_counter() - start
        table.add(
            section,
            f"send of 1 (x {single:,})",
            fmt_time(elapsed / single),
            fmt_rate(single / elapsed, "msg"),
            "what ingest does per request",
        )
    bench_delivery_log(table, tmp, budget_s)


def bench_delivery_log(table: Table, tmp: Path, budget_s: float) -> None:
    """What exactly-once costs per delivery in embedded mode: the delivery log's read, ``sending`` and final
    writes for a batch of 10 (one FIFO batch), each write a fsynced SQLite transaction."""
    from forwarder.ports.deliveries import DeliveryKey, DeliveryState
    from forwarder_local.stores import LocalDeliveryLog

    log = LocalDeliveryLog(tmp / "deliveries.db")
    deadline = time.perf_counter() + budget_s
    start, rounds = time.perf_counter(), 0
    while rounds < 300 and time.perf_counter() < deadline:
        keys = [
            DeliveryKey(f"bench-{rounds}-{index}", "expertsender", "upsert_customer") for index in range(10)
        ]
        log.get(keys)
        log.begin(keys, time.time())
        log.finish({key: (DeliveryState.DELIVERED, "delivered") for key in keys}, time.time())
        rounds += 1
    elapsed = time.perf_counter() - start
    log.close()
    table.add(
        "3 durable queue",
        f"delivery log: get+begin+finish of 10 (x {rounds:,})",
        fmt_time(elapsed / rounds),
        fmt_rate(rounds * 10 / elapsed, "delivery"),
        "exactly-once bookkeeping per FIFO batch: a read and 2 fsynced txns",
    )


# --- 4. embedded pipeline -----------------------------------------------------------------------------------


@dataclass
class StageStat:
    calls: int = 0
    items: int = 0
    wall: float = 0.0
    cpu: float = 0.0


class Stages:
    """Wall and thread-CPU time spent in instrumented calls, keyed by stage name (thread safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stats: dict[str, StageStat] = {}

    def reset(self) -> None:
        with self._lock:
            self.stats = {}

    def wrap(
        self,
        fn: Callable[..., Any],
        key: Callable[[tuple[Any, ...]], str],
        items: Callable[[tuple[Any, ...], Any], int],
    ) -> Callable[..., Any]:
        """``fn`` timed under the stage ``key(args)``, counting ``items(args, result)`` per call."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu, done, result = time.perf_counter(), time.thread_time(), False, None
            try:
                result = fn(*args, **kwargs)
                done = True
                return result
            finally:
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                name, count = key(args), items(args, result) if done else 0
                with self._lock:
                    stat = self.stats.setdefault(name, StageStat())
                    stat.calls += 1
                    stat.items += count
                    stat.wall += wall
                    stat.cpu += cpu

        return timed


def instrument(stack: EmbeddedStack, stages: Stages) -> None:
    """Time the gateway, the three handlers and the queue store's transactions of a started stack.

    Instance attributes shadow the methods, in this process only; ``_receive_now`` is the store's receive
    transaction (``receive`` itself includes the long-poll wait).
    """
    gateway, store = stack.gateway, stack.store
    assert gateway is not None

    def named(label: str) -> Callable[[tuple[Any, ...]], str]:
        return lambda args: label

    def per_queue(label: str) -> Callable[[tuple[Any, ...]], str]:
        return lambda args: f"queue: {label} {args[0]}"

    def one(args: tuple[Any, ...], result: Any) -> int:
        return 1

    def records(args: tuple[Any, ...], result: Any) -> int:
        return len(args[0].get("Records", []))

    def second_arg(args: tuple[Any, ...], result: Any) -> int:
        return len(args[1])

    def returned(args: tuple[Any, ...], result: Any) -> int:
        return len(result)

    gateway._serve = stages.wrap(gateway._serve, named("gateway: whole request"), one)
    gateway.handler = stages.wrap(gateway.handler, named("ingest handler (in gateway)"), one)
    labels = {"ValidateFunction": "validate handler", "DeliverFunction": "deliver handler"}
    for poller in stack.pollers:
        if poller.function_name in labels:
            poller.handler = stages.wrap(poller.handler, named(labels[poller.function_name]), records)
    store.send_batch = stages.wrap(store.send_batch, per_queue("send_batch ->"), second_arg)
    store.delete_batch = stages.wrap(store.delete_batch, per_queue("delete_batch <-"), second_arg)
    store._receive_now = stages.wrap(store._receive_now, per_queue("receive txn <-"), returned)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def queue_depth(stack: EmbeddedStack, queue: str) -> int:
    return sum(stack.store.counts(queue).values())


def customer_count(stack: EmbeddedStack) -> int:
    """Customers the ExpertSender sandbox holds, counted without copying them (the stack's CPU is measured):
    in this process, or with one page of one item from the sandbox in the pipeline process."""
    from forwarder_local.sandboxes.expertsender import CUSTOMERS

    sandbox = stack.sandbox
    if sandbox is None:
        url = stack.sandbox_urls["expertsender"] + f"/_sandbox/state/{CUSTOMERS}?limit=1"
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - the stack's own sandbox
            return int(json.load(answer)["total"])
    with sandbox.lock:
        return len(sandbox.state.items(CUSTOMERS))


def stack_cpu(stack: EmbeddedStack) -> float:
    """CPU seconds (user + system) of the stack's processes so far: this one and its pipeline process."""
    cpu = time.process_time()
    pid = stack.pipeline_pid
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu


def wait_for_customers(stack: EmbeddedStack, target: int, timeout_s: float) -> int:
    deadline = time.perf_counter() + timeout_s
    have = customer_count(stack)
    while have < target and time.perf_counter() < deadline:
        time.sleep(0.05)
        have = customer_count(stack)
    return have


NOOP_PATH = "/_bench/noop"
BURST_CLIENTS = 200


def _run_client(
    kind: str, host: str, port: int, wires: list[bytes], threads: int, timeout_s: float
) -> tuple[multiprocessing.process.BaseProcess, Any, Connection]:
    """Start the load generator process (bench/load.py) and wait until it is ready; set the event it returns
    to let it go, read its figures from the connection."""
    context = multiprocessing.get_context("spawn")
    ready, go = context.Event(), context.Event()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=load.client_main,
        args=(kind, host, port, wires, threads, timeout_s, ready, go, sender),
        daemon=True,
    )
    process.start()
    if not ready.wait(60):
        raise SystemExit("the client process did not start")
    return process, go, receiver


def _finish_client(
    process: multiprocessing.process.BaseProcess, receiver: Connection, wait_s: float, result: Any = None
) -> Any:
    """The client's figures (``result`` when already read), once its process has ended."""
    if result is None and receiver.poll(wait_s):
        result = receiver.recv()
    process.join(5)
    if process.is_alive():
        process.terminate()
    return result


def bench_pipeline(
    table: Table, tmp: Path, records: int, threads: int, timeout_s: float, *, processes: int = 2
) -> tuple[list[str], dict[str, Any]]:
    """Run the embedded stack under load; returns extra report lines (stage breakdown) and the figures.
    ``processes``: 2 as ``forwarder run`` starts it (the pipeline in a process of its own), 1 for
    ``forwarder run --one-process``."""
    from forwarder_local.stack import EmbeddedStack, StackOptions

    section = "4 embedded pipeline" if processes == 2 else "4b one process"
    lines: list[str] = []
    figures: dict[str, Any] = {}
    stack = EmbeddedStack(
        StackOptions(
            state_dir=tmp / f"state-{processes}",
            config_path=CONFIG_PATH,
            port=0,
            sandbox_port=0,
            poll_window_seconds=0.05,
            region=REGION,  # the gateway refuses credentials scoped to another region
            pipeline_process=processes == 2,
        )
    )
    started = time.perf_counter()
    stack.start()
    table.add(
        section, "stack start", fmt_time(time.perf_counter() - started), "", "imports the four handlers"
    )
    try:
        client = stack.first_client()
        assert client is not None and stack.gateway is not None
        _, group_key, access_key, secret = client
        url = stack.gateway.url + "/v1/contacts"
        host, port = stack.gateway.url.removeprefix("http://").rsplit(":", 1)
        if group_key != GROUP_KEY:
            raise SystemExit(
                f"the first client uses group key {group_key!r}, the bench expects {GROUP_KEY!r}"
            )
        stack.gateway.noop_path = NOOP_PATH

        def envelopes(first: int, count: int, run_id: str) -> list[dict[str, Any]]:
            return [{"group_key": GROUP_KEY, "data": typical_record(first + i, run_id)} for i in range(count)]

        # Warm-up: the first request is the cold one (lazy imports in the handlers).
        warmup = 10
        warm_wires = load.signed_requests(url, access_key, secret, REGION, envelopes(0, warmup, "warm"))
        warm_start = time.perf_counter()
        cold = 0.0
        for wire in warm_wires:
            begin = time.perf_counter()
            status = load.run_load(host, int(port), [wire], 1, 30)["statuses"]
            cold = cold or time.perf_counter() - begin
            if "202" not in status:
                raise SystemExit(f"warm-up request refused: {status}")
        have = wait_for_customers(stack, warmup, 30)
        table.add(section, "first request (cold)", fmt_time(cold), "", "202 at the gateway")
        table.add(
            section,
            f"warm-up: {warmup} sequential records e2e",
            fmt_time(time.perf_counter() - warm_start),
            "",
            f"{have}/{warmup} in the sandbox",
        )

        # The measured run: `records` signed contacts from `threads` kept-alive clients in another process.
        stages = Stages()
        instrument(stack, stages)
        run_id = uuid.uuid4().hex[:8]
        wires = load.signed_requests(url, access_key, secret, REGION, envelopes(warmup, records, run_id))
        process, go, receiver = _run_client("load", host, int(port), wires, threads, timeout_s)
        target = warmup + records
        max_ingest = max_delivery = 0
        result: dict[str, Any] | None = None
        accept_done: float | None = None
        stages.reset()
        transactions, writes, syncs = (
            stack.store.transactions,
            stack.store.writes,
            stack.store.durable_transactions,
        )
        cpu_start = stack_cpu(stack)
        t0 = time.perf_counter()
        go.set()
        deadline = t0 + timeout_s
        last_check = last_progress = t0
        while time.perf_counter() < deadline:
            time.sleep(0.05)
            ingest, delivery = queue_depth(stack, "ingest"), queue_depth(stack, "delivery")
            max_ingest, max_delivery = max(max_ingest, ingest), max(max_delivery, delivery)
            if result is None and receiver.poll():
                result = receiver.recv()
                accept_done = time.perf_counter()
            now = time.perf_counter()
            idle = ingest == 0 and delivery == 0
            if (idle and result is not None) or now - last_check >= 0.2:
                count, last_check = customer_count(stack), now
                if count > have:
                    have, last_progress = count, now
                if have >= target:
                    break
                if idle and result is not None and now - last_progress > 5:
                    break  # queues empty for 5 s yet customers missing: rejected or dead-lettered
        e2e = last_progress - t0  # until the last customer seen arriving
        cpu = stack_cpu(stack) - cpu_start
        transactions, writes = stack.store.transactions - transactions, stack.store.writes - writes
        syncs = stack.store.durable_transactions - syncs
        result = _finish_client(process, receiver, 5, result)

        if result is None or "error" in result:
            table.add(section, "client", "", "", f"no result from the client process: {result}")
            return lines, figures
        latencies: list[float] = result["latencies"]
        statuses: dict[str, int] = result["statuses"]
        accepted = statuses.get("202", 0)
        accept_rate = accepted / result["elapsed"]
        status_text = ", ".join(f"{code}: {n:,}" for code, n in sorted(statuses.items()))
        table.add(
            section,
            f"accepted at gateway ({threads} clients)",
            "",
            fmt_rate(accept_rate, "req"),
            f"{status_text} of {records:,} in {fmt_time(result['elapsed'])}",
        )
        if latencies:
            table.add(section, "accept latency p50", fmt_time(percentile(latencies, 0.50)))
            table.add(section, "accept latency p95", fmt_time(percentile(latencies, 0.95)))
            table.add(
                section,
                "accept latency p99 / max",
                f"{fmt_time(percentile(latencies, 0.99))}",
                "",
                f"max {fmt_time(max(latencies))}",
            )
        delivered = have - warmup
        reached = "all" if have >= target else f"GAVE UP: {delivered:,}/{records:,}"
        e2e_rate = delivered / e2e if e2e > 0 else 0.0
        table.add(
            section,
            "end to end (request -> sandbox)",
            "",
            fmt_rate(e2e_rate, "rec"),
            f"{reached} delivered in {fmt_time(e2e)}",
        )
        if accept_done is not None:
            drain = t0 + e2e - accept_done
            table.add(
                section,
                "drain after last 202",
                fmt_time(drain) if drain > 0.05 else "<= 50 ms",
                "",
                "time the queues needed to catch up",
            )
        table.add(
            section,
            "max queue depth ingest / delivery",
            f"{max_ingest:,} / {max_delivery:,}",
            "",
            "sampled every 50 ms",
        )
        table.add(
            section,
            "queue writes per transaction / per sync",
            f"{writes / max(transactions, 1):.1f} / {writes / max(syncs, 1):.1f}",
            "",
            f"group commit: {writes:,} writes in {transactions:,} transactions, {syncs:,} syncs of the log"
            + (" (the gateway's process)" if processes == 2 else ""),
        )
        cpu_per_record = cpu / max(delivered, 1)
        table.add(
            section,
            "stack CPU per record" if processes == 2 else "stack process CPU per record",
            fmt_time(cpu_per_record),
            "",
            (
                f"{cpu / e2e:.2f} cores busy (gateway, handlers, queues, sandbox"
                + (": both processes)" if processes == 2 else ")")
            )
            if e2e > 0
            else "",
        )
        figures.update(
            e2e_records_per_s=round(e2e_rate, 1),
            accept_requests_per_s=round(accept_rate, 1),
            stack_cpu_us_per_record=round(cpu_per_record * 1e6, 1),
            p99_accept_ms=round(percentile(latencies, 0.99) * 1000, 2) if latencies else None,
        )
        if result["errors"]:
            lines.append("first client errors: " + " | ".join(result["errors"]))
        if stack.errors:
            lines.append(f"handler errors in the stack: {len(stack.errors)}; first: {stack.errors[0]!r}")
        for queue in ("rejects", "delivery-dlq", "ingest-dlq"):
            depth = queue_depth(stack, queue)
            if depth:
                lines.append(f"queue {queue} holds {depth} message(s) after the run")
        lines.extend(stage_report(stages, delivered, e2e, section))
        if processes == 2:
            lines.append(
                "  (validate, deliver and the sandbox run in the pipeline process: their stages are timed with "
                "--one-process, below)"
            )

        # The same server stack answering a no-op path: what HTTP alone costs here, side by side.
        noop_wires = load.plain_requests(
            stack.gateway.url + NOOP_PATH, envelopes(warmup, records, run_id + "-noop")
        )
        process, go, receiver = _run_client("load", host, int(port), noop_wires, threads, timeout_s)
        go.set()
        noop = _finish_client(process, receiver, timeout_s + 30)
        if noop and "error" not in noop:
            noop_rate = noop["statuses"].get("200", 0) / noop["elapsed"]
            table.add(
                section,
                f"no-op path, same server ({threads} clients)",
                "",
                fmt_rate(noop_rate, "req"),
                f"accepted/no-op = {accept_rate / noop_rate:.0%}" if noop_rate else "",
            )
            figures["noop_requests_per_s"] = round(noop_rate, 1)

        # 200 clients connecting at the same moment, each sending one signed contact.
        burst_wires = load.signed_requests(
            url, access_key, secret, REGION, envelopes(warmup + records, BURST_CLIENTS, run_id)
        )
        process, go, receiver = _run_client("burst", host, int(port), burst_wires, BURST_CLIENTS, timeout_s)
        go.set()
        burst = _finish_client(process, receiver, 120)
        if burst and "error" not in burst:
            codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(burst["statuses"].items()))
            table.add(section, f"{BURST_CLIENTS} simultaneous clients", f"{burst['resets']} reset", "", codes)
            figures["resets_at_200_clients"] = burst["resets"]
        return lines, figures
    finally:
        stack.stop()


def stage_report(stages: Stages, records: int, e2e: float, section: str) -> list[str]:
    """Per stage: calls, items per call, wall and CPU per call and per record, share of the e2e wall time."""
    header = ("stage (measured run)", "calls", "items/call", "wall/call", "cpu/call", "wall/record", "busy")
    rows = [header]
    for name, stat in sorted(stages.stats.items()):
        rows.append(
            (
                name,
                f"{stat.calls:,}",
                f"{stat.items / stat.calls:.1f}",
                fmt_time(stat.wall / stat.calls),
                fmt_time(stat.cpu / stat.calls),
                fmt_time(stat.wall / max(records, 1)),
                f"{stat.wall / e2e:.0%}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "",
        f"{section}: where the pipeline's time goes (wall includes waits for locks, fsync and the GIL;"
        " 'busy' = summed wall / e2e wall, >100% when threads overlap):",
    ]
    for index, row in enumerate(rows):
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("  " + " | ".join(cells))
        if index == 0:
            lines.append("  " + "-+-".join("-" * width for width in widths))
    return lines


# --- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=4000, help="records sent through the pipeline")
    parser.add_argument("--threads", type=int, default=8, help="client threads sending them")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on the pipeline after seconds")
    parser.add_argument("--skip-pipeline", action="store_true", help="micro-benchmarks only")
    parser.add_argument(
        "--skip-one-process", action="store_true", help="skip section 4b (the pipeline in one process)"
    )
    parser.add_argument(
        "--fanout-records",
        type=int,
        default=500,
        help="records sent through the three-vendor fan-out (0: skip it)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = Table()
    extra: list[str] = []
    figures: dict[str, Any] = dict.fromkeys(FIGURES)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="forwarder-bench-") as directory:
        tmp = Path(directory)
        progress("1/5 hot path")
        bench_hot_path(table, tmp)
        progress("2/5 SigV4 verification")
        bench_sigv4(table, tmp)
        progress("3/5 durable queue")
        bench_queue(table, tmp, batches=300, singles=300, budget_s=10)
        if not args.skip_pipeline:
            progress(f"4/5 embedded pipeline: {args.records:,} records from {args.threads} threads")
            try:
                extra, pipeline = bench_pipeline(table, tmp, args.records, args.threads, args.timeout)
                figures.update(pipeline)
            except Exception:
                traceback.print_exc()
                table.add("4 embedded pipeline", "FAILED", "", "", "see the traceback above")
            if not args.skip_one_process:
                progress("4b/5 the same in one process (forwarder run --one-process)")
                try:
                    more, _ = bench_pipeline(
                        table, tmp, args.records, args.threads, args.timeout, processes=1
                    )
                    extra.extend(more)
                except Exception:
                    traceback.print_exc()
                    table.add("4b one process", "FAILED", "", "", "see the traceback above")
            if args.fanout_records > 0:
                progress(f"5/5 fan-out to three vendors: {args.fanout_records:,} records")
                try:
                    bench_fanout(table, tmp, args.fanout_records, args.threads, args.timeout)
                except Exception:
                    traceback.print_exc()
                    table.add("5 fan-out to 3 vendors", "FAILED", "", "", "see the traceback above")
        filesystem = filesystem_of(tmp)

    print(
        f"Forwarder benchmarks - {platform.platform()}, {platform.machine()}, os.cpu_count()={os.cpu_count()}, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )
    print(
        f"temp dir {tempfile.gettempdir()} on {filesystem} (SQLite WAL: every send syncs the log, alone or with others)"
    )
    print(table.render())
    for line in extra:
        print(line)
    e2e_rows = [row for row in table.rows if row[1].startswith("end to end")]
    if e2e_rows:
        rate = float(e2e_rows[0][3].split()[0].replace(",", ""))
        print(
            f"\nReference: end to end {rate:,.0f} records/s here vs RudderStack's published 1.7K events/s on a "
            f"2-vCPU machine ({rate / RUDDERSTACK_EVENTS_PER_S:.2f}x). A different workload and setup (their "
            "server, transformations, destinations and hardware): a reference point only, not a like-for-like "
            "comparison."
        )
    print()
    figures.update(status_figures())
    print()
    figures.update(aws_figures())
    print(f"\nwhole bench run: {time.perf_counter() - began:.1f} s")
    print(json.dumps(figures))  # the last line: every headline figure, one JSON object
    return 0


def aws_figures() -> dict[str, Any]:
    """The AWS side's figures (cold imports of the shipped layer, its size, AWS calls and cost per record):
    ``bench/aws_side.py``. A failure there is printed and leaves its keys null."""
    import aws_side

    progress("AWS side: cold imports, layer, calls per record")
    try:
        measured: dict[str, Any] = aws_side.measure()
    except Exception:
        traceback.print_exc()
        return {}
    return measured


def status_figures() -> dict[str, Any]:
    """What the status per request costs validate (``bench/status.py``), in microseconds per record."""
    from status import bench_status

    progress("status per request: the status write's cost")
    try:
        measured = bench_status()
    except Exception:
        traceback.print_exc()
        return {}
    return {"status_write_cpu_us_per_record": round(measured["status_cpu_per_record_s"] * 1e6, 1)}


if __name__ == "__main__":
    sys.exit(main())
