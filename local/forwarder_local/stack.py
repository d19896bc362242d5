"""The embedded stack: everything the AWS deployment has, on one machine, with no AWS account or Docker.

A local gateway (SigV4 like API Gateway) -> the ingest handler -> a durable ``ingest`` queue -> a poller
invoking the validate handler -> a durable ``delivery`` queue -> a poller invoking the deliver handler ->
the vendor (a sandbox by default). Queues have SQS semantics and DLQs; a scheduler invokes refresh tokens.
A console (``forwarder_local.console``) shows queues, requests, rejects and dead letters, behind an admin secret.
Producers write to a ``producer`` queue (SQS) or put events on a local bus whose rule forwards them to a
``producer-events`` queue (``forwarder_local.eventbus``); a poller invokes the sources handler on both.
The handlers are the very files in ``functions/``, invoked with the same event shapes as on AWS.

With ``pipeline_process`` (``forwarder run``'s default) the stack is two processes, so that each has a core and
a GIL of its own: this one serves the gateway and the console, and a child process (``_pipeline_main``) runs
the pollers (validate, deliver, sources), the token schedule and the sandboxes. Both open the same state
folder: the queues are one SQLite file in WAL mode, which both processes write. The child dies with this
process (``PR_SET_PDEATHSIG``, so a ``kill -9`` of the stack takes it along), and this process starts it again
if it dies alone, releasing the messages it held.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import importlib.util
import json
import logging
import multiprocessing
import os
import secrets as random_secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from types import ModuleType
from typing import Any

import requests

from forwarder import runtime
from forwarder.config import ForwarderConfig, load_config
from forwarder.ports.secrets import SecretStoreError
from forwarder.runtime import RuntimeSettings, Services
from forwarder_local.authorizer import IamAuthorizer
from forwarder_local.console import LocalConsole, admin_secret
from forwarder_local.eventbus import EVENTS_QUEUE, PRODUCER_QUEUE, LocalEventBus
from forwarder_local.gateway import HANDLER_THREADS, LocalGateway
from forwarder_local.idempotency import SqliteIdempotencyLayer
from forwarder_local.poller import LambdaContext, SqsPoller
from forwarder_local.queue import DurableQueueStore, QueueSpec, SyncBatcher
from forwarder_local.sandboxes.carecloud import BASE_PATH as CARECLOUD_BASE_PATH
from forwarder_local.sandboxes.carecloud import CareCloudSandbox
from forwarder_local.sandboxes.dmhub import DmHubSandbox
from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox
from forwarder_local.sandboxes.framework import Sandbox
from forwarder_local.stores import (
    EmbeddedQueues,
    LocalCredentials,
    LocalDeletionLedger,
    LocalDeliveryLog,
    LocalLocks,
    LocalSecretStore,
)

logger = logging.getLogger(__name__)
SWITCH_INTERVAL_SECONDS = 0.0005
PIPELINE_START_SECONDS = 60.0
"""How long the stack waits for its pipeline process to report that it runs."""
PIPELINE_STOP_SECONDS = 15.0
"""How long a stopping stack waits for its pipeline process's batches in progress before killing it."""
ORPHAN_WAIT_SECONDS = 5.0
"""How long a starting stack waits for the pipeline process of a stack killed just before to die with it."""
PIPELINE_STEADY_SECONDS = 30.0
"""A pipeline process that dies sooner after its start is started again after a doubling pause."""
PIPELINE_QUEUES = ("ingest", "delivery", PRODUCER_QUEUE, EVENTS_QUEUE)
"""The queues the pipeline consumes: what a dead consumer held in flight is released when it is replaced."""
REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = REPO_ROOT / "functions"
DEFAULT_CONFIG = REPO_ROOT / "config" / "forwarder.yaml"
# Where the stack keeps the credentials its sandboxes accept (generated on the first start, kept after).
SANDBOX_SECRETS = {
    "expertsender": "forwarder-local/sandbox/expertsender",
    "dmhub": "forwarder-local/sandbox/dmhub",
    "carecloud": "forwarder-local/sandbox/carecloud",
}

# The same queue shape as template.yaml: visibility >= 6x the consumer's timeout, maxReceiveCount 5.
QUEUES = (
    # FIFO, one message group per customer: validate handles a customer's requests in the order accepted.
    QueueSpec("ingest-dlq", retention_seconds=1_209_600, fifo=True),
    QueueSpec(
        "ingest", visibility_timeout=60, max_receive_count=5, dead_letter_queue="ingest-dlq", fifo=True
    ),
    # FIFO, one message group per customer and integration: a customer's deliveries in the order received.
    QueueSpec("delivery-dlq", retention_seconds=1_209_600, fifo=True),
    QueueSpec(
        "delivery",
        visibility_timeout=180,
        max_receive_count=1000,
        dead_letter_queue="delivery-dlq",
        fifo=True,
    ),
    QueueSpec("rejects", retention_seconds=1_209_600),
    # Producers (sources:): the producer queue takes SQS producer messages, the events queue what the
    # EventBridge rule forwards (forwarder_local.eventbus plays the rule); both standard queues, as on AWS.
    QueueSpec("producer-dlq", retention_seconds=1_209_600),
    QueueSpec(PRODUCER_QUEUE, visibility_timeout=60, max_receive_count=5, dead_letter_queue="producer-dlq"),
    QueueSpec("producer-events-dlq", retention_seconds=1_209_600),
    QueueSpec(
        EVENTS_QUEUE, visibility_timeout=60, max_receive_count=5, dead_letter_queue="producer-events-dlq"
    ),
)


def running_stack(state_dir: Path) -> dict[str, Any] | None:
    """What ``stack.json`` says of the stack running on ``state_dir`` (its gateway, its pipeline's pid), or
    None when no stack holds that folder."""
    lock = state_dir / "stack.lock"
    if not lock.exists():
        return None
    try:
        _hold(lock, "").close()
        return None  # free: nobody runs there
    except StateInUse:
        pass
    try:
        found: dict[str, Any] = json.loads((state_dir / "stack.json").read_text())
    except (OSError, ValueError):
        found = {}
    return found


def issuable_user(principal: str) -> bool:
    """Whether a config principal is an IAM user, to whom the embedded stack issues access keys."""
    return principal.startswith("arn:aws:iam::") and ":user/" in principal


class StateInUse(RuntimeError):
    """Another stack holds the state folder: its queues' in-flight messages belong to it."""


def load_handler(flow: str) -> Any:
    """Import ``functions/<flow>/app.py`` by path and return its ``lambda_handler``."""
    path = FUNCTIONS / flow / "app.py"
    spec = importlib.util.spec_from_file_location(f"forwarder_function_{flow}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


@dataclass
class StackOptions:
    state_dir: Path = field(default_factory=lambda: Path(".forwarder"))
    config_path: Path = DEFAULT_CONFIG
    host: str = "127.0.0.1"
    port: int = 8080
    #: the region the gateway stands in: credentials must be scoped to it, as API Gateway's are to its own
    region: str = "us-east-1"
    sandbox_port: int = 8701  # ExpertSender; DM Hub and CareCloud on the next two ports (0: any free ports)
    with_sandboxes: bool = True
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 60.0
    retry_horizon_seconds: float = 4 * 3600
    circuit_probe_seconds: float = 60.0
    #: deliver batches handled at once (threads sharing one rate limiter and circuit breaker per integration)
    deliver_workers: int = 4
    delivery_visibility_seconds: float = 180
    refresh_interval_seconds: float = 900
    poll_window_seconds: float = 0.2
    #: the console's port (``forwarder run`` passes 8090); 0: any free port, so stacks in tests never collide
    console_port: int = 0
    with_console: bool = True
    #: the pipeline (pollers, token schedule, sandboxes) in a child process: two cores, two GILs
    pipeline_process: bool = False


def _hold(path: Path, message: str, wait_seconds: float = 0.0) -> Any:
    """``path`` opened and locked (exclusively) for as long as the returned file stays open; tried for up to
    ``wait_seconds`` (the pipeline process of a stack killed a moment ago takes a moment to die with it)."""
    handle = open(path, "a")  # noqa: SIM115 - held for the holder's lifetime
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                raise StateInUse(message) from None
            time.sleep(0.05)


class EmbeddedStack:
    def __init__(self, options: StackOptions | None = None, *, pipeline_only: bool = False) -> None:
        self.options = options or StackOptions()
        #: the child process of a stack with ``pipeline_process``: pollers, schedule and sandboxes, no gateway
        self.pipeline_only = pipeline_only
        state = self.options.state_dir
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        busy = f"another embedded stack is running on {state.resolve()}; stop it or use --state-dir"
        orphan = (
            f"the pipeline process of an earlier stack on {state.resolve()} still runs (its pid is in "
            "stack.json there); stop it or use --state-dir"
        )
        # stack.lock: one stack per state folder; pipeline.lock: held by its pipeline, whichever process runs it
        # (a stack whose pipeline process outlived it would otherwise consume the queues twice).
        self._lock_file = None if pipeline_only else _hold(state / "stack.lock", busy)
        try:
            held = _hold(state / "pipeline.lock", busy if pipeline_only else orphan, ORPHAN_WAIT_SECONDS)
            self._pipeline_lock = held if pipeline_only or not self.options.pipeline_process else None
            if self._pipeline_lock is None:
                held.close()  # free: no pipeline of an earlier stack lives on; the child takes it
        except StateInUse:
            if self._lock_file is not None:
                self._lock_file.close()
            raise
        self.store = DurableQueueStore(state / "queues.db")
        self.released = 0
        if not pipeline_only:
            for spec in QUEUES:
                if spec.name == "delivery":
                    spec = dataclasses.replace(
                        spec, visibility_timeout=self.options.delivery_visibility_seconds
                    )
                self.store.create_queue(spec)
            # Messages in flight when a previous run died (even kill -9) are retried at once, not after their
            # visibility timeout: their consumer died with that process. Only one stack runs on a state folder.
            self.released = sum(self.store.release_in_flight(name) for name in PIPELINE_QUEUES)
        self.secrets = LocalSecretStore(state / "secrets.json")
        self.credentials = LocalCredentials(state / "credentials.json")
        self.ledger = LocalDeletionLedger(state / "ledger.db")
        self.locks = LocalLocks(state / "locks.db")
        self.deliveries = LocalDeliveryLog(state / "deliveries.db")
        self.idempotency = SqliteIdempotencyLayer(state / "idempotency.db")
        self.sandboxes: dict[str, Sandbox] = {}
        #: vendor name -> URL of its sandbox, wherever it runs (this process or the pipeline process)
        self.sandbox_urls: dict[str, str] = {}
        self._pipeline: multiprocessing.process.BaseProcess | None = None
        self._pipeline_conn: Connection | None = None
        self._supervisor: threading.Thread | None = None
        #: times the pipeline process was started again after it died alone
        self.pipeline_restarts = 0
        self._pipeline_started = 0.0
        self.gateway: LocalGateway | None = None
        self.console: LocalConsole | None = None
        self.console_secret = ""
        self.pollers: list[SqsPoller] = []
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self.config: ForwarderConfig = load_config(self.options.config_path)
        self.settings = RuntimeSettings(
            runtime="embedded",
            config_path=str(self.options.config_path),
            retry_base_seconds=self.options.retry_base_seconds,
            retry_max_seconds=self.options.retry_max_seconds,
            retry_horizon_seconds=self.options.retry_horizon_seconds,
            circuit_probe_seconds=self.options.circuit_probe_seconds,
            secrets_max_age_seconds=0,
            # as the template's FORWARDER_PRODUCER_EVENTS_QUEUE_ARN: what the local bus's rule targets
            producer_events_queue_arn=self.store.queue_arn(EVENTS_QUEUE),
        )
        self.event_bus = LocalEventBus(self.store)
        self.errors: list[BaseException] = []
        self._switch_interval = sys.getswitchinterval()

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> EmbeddedStack:
        # The stack's threads hand the queue's connection to each other at every group commit; with Python's
        # default 5 ms switch interval the thread holding it waits that long for the GIL while the others run.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        runtime.install(
            Services(
                settings=self.settings,
                queues=EmbeddedQueues(self.store),
                secrets=self.secrets,
                ledger=self.ledger,
                http=requests.Session(),
                locks=self.locks,
                deliveries=self.deliveries,
                idempotency=self.idempotency,
            )
        )
        if self.options.pipeline_process and not self.pipeline_only:
            return self._start_front()
        if self.options.with_sandboxes:
            self._start_sandboxes()
        if self.pipeline_only:
            self._start_pipeline_parts()
            return self
        self._issue_caller_keys()
        self._start_pipeline_parts()
        self._start_gateway(load_handler("ingest"), threads=HANDLER_THREADS)
        return self

    def _start_front(self) -> EmbeddedStack:
        """The gateway and console here, the pipeline in a child process (``pipeline_process``)."""
        try:
            self._issue_caller_keys()
            self._start_supervisor()
            # The handler runs on the gateway's event loop (no thread pool): the pipeline's threads are in the
            # other process, so nothing here competes for the GIL, and the hand-offs to and from a pool thread
            # cost more than they save. Its sends commit at once and the answers wait for a shared sync.
            self._start_gateway(load_handler("ingest"), threads=0)
        except BaseException:
            self.stop()  # no pipeline process is left behind, consuming the queues of a stack that is not
            raise
        return self

    def _start_pipeline_parts(self) -> None:
        validate, deliver, sources = (load_handler(flow) for flow in ("validate", "deliver", "sources"))
        self.refresh_handler = load_handler("refresh_tokens")
        self.sandbox_urls = {name: sandbox.url for name, sandbox in self.sandboxes.items()}
        self.pollers = [
            # SourcesFunction's two event sources: the producer queue and the queue the bus's rule targets
            *(
                SqsPoller(
                    self.store,
                    queue,
                    sources,
                    function_name="SourcesFunction",
                    batch_size=10,
                    max_batching_window=self.options.poll_window_seconds,
                    timeout_seconds=10,
                    on_error=self._on_error,
                )
                for queue in (PRODUCER_QUEUE, EVENTS_QUEUE)
            ),
            SqsPoller(
                self.store,
                "ingest",
                validate,
                function_name="ValidateFunction",
                batch_size=10,
                max_batching_window=self.options.poll_window_seconds,
                timeout_seconds=10,
                on_error=self._on_error,
            ),
            SqsPoller(
                self.store,
                "delivery",
                deliver,
                function_name="DeliverFunction",
                batch_size=10,  # a FIFO event source takes at most 10 messages (as on AWS)
                max_batching_window=self.options.poll_window_seconds,
                timeout_seconds=30,
                on_error=self._on_error,
                concurrency=self.options.deliver_workers,
            ),
        ]
        for poller in self.pollers:
            poller.start()
        self._scheduler = threading.Thread(target=self._schedule_refresh, name="refresh-tokens", daemon=True)
        self._scheduler.start()

    def _start_gateway(self, ingest: Any, *, threads: int) -> None:
        self.gateway = LocalGateway(
            ingest,
            IamAuthorizer(self.credentials, self.options.region),
            host=self.options.host,
            port=self.options.port,
            threads=threads,
            syncs=SyncBatcher(self.store) if threads == 0 else None,
        ).start()
        if self.options.with_console:
            self.console_secret = admin_secret(self.options.state_dir)
            self.console = self._console(self.options.console_port).start()
        self._write_stack_json()

    def _write_stack_json(self) -> None:
        """What `forwarder send` and `forwarder clients` read to reach this stack: its config, URL and region
        (and which process runs its pipeline)."""
        if self.gateway is None:
            return  # not started yet: written once the gateway runs
        path = self.options.state_dir / "stack.json"
        partial = path.with_suffix(".json.partial")  # replaced at once: readers never see half a file
        partial.write_text(
            json.dumps(
                {
                    "config": str(Path(self.options.config_path).resolve()),
                    "gateway": self.gateway.url,
                    "region": self.options.region,
                    "pipeline_pid": self.pipeline_pid,
                }
            )
        )
        partial.replace(path)

    def stop(self) -> None:
        self._stop.set()
        if self.gateway:
            self.gateway.stop()
        if self.console:
            self.console.stop()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(PIPELINE_STOP_SECONDS + 10)  # it stops the pipeline process
        for poller in self.pollers:
            poller.stop(timeout=5)
        for sandbox in self.sandboxes.values():
            sandbox.stop()
        runtime.install(None)
        sys.setswitchinterval(self._switch_interval)
        self.store.close()
        self.ledger.close()
        self.locks.close()
        self.deliveries.close()
        self.idempotency.close()
        for handle in (self._pipeline_lock, self._lock_file):
            if handle is not None:
                handle.close()

    def _on_error(self, error: BaseException) -> None:
        """A handler's failure (the batch is retried): kept for tests and the bench; the pipeline process, whose
        list nobody reads, logs it too."""
        self.errors.append(error)
        if self.pipeline_only:
            logger.error("pipeline: %s", error, exc_info=error)

    # --- the pipeline process ------------------------------------------------------------------------------

    @property
    def pipeline_pid(self) -> int | None:
        """The pipeline process's pid (``pipeline_process``), None when the pipeline runs in this process."""
        return self._pipeline.pid if self._pipeline is not None else None

    @property
    def pipeline_exit_code(self) -> int | None:
        """The pipeline process's exit code once it has ended (0: it stopped when asked), else None."""
        return self._pipeline.exitcode if self._pipeline is not None else None

    def _start_supervisor(self) -> None:
        """Start the pipeline process from a thread of its own that also restarts and stops it: the kernel
        kills a child whose starting *thread* ends (``PR_SET_PDEATHSIG``), so one thread does all three."""
        first: list[BaseException | None] = []
        started = threading.Event()

        def run() -> None:
            try:
                self._start_pipeline_process()
            except BaseException as error:
                first.append(error)
                started.set()
                return
            first.append(None)
            started.set()
            self._supervise()

        self._supervisor = threading.Thread(target=run, name="pipeline-supervisor", daemon=True)
        self._supervisor.start()
        started.wait()
        if first[0] is not None:
            raise first[0]

    def _start_pipeline_process(self) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or locks forked
        receiver, sender = context.Pipe()
        process = context.Process(
            target=_pipeline_main,
            args=(self.options, sender, os.getpid()),
            name="forwarder-pipeline",
            daemon=True,
        )
        process.start()
        sender.close()
        try:
            if not receiver.poll(PIPELINE_START_SECONDS):
                raise RuntimeError(f"the pipeline process did not start within {PIPELINE_START_SECONDS:g} s")
            try:
                ready = receiver.recv()
            except EOFError:
                process.join(5)
                raise RuntimeError(
                    f"the pipeline process ended at start (exit code {process.exitcode})"
                ) from None
            if "error" in ready:
                raise RuntimeError(f"the pipeline process could not start: {ready['error']}")
        except BaseException:
            receiver.close()
            if process.is_alive():
                process.kill()
            process.join(5)
            raise
        self.sandbox_urls = dict(ready["sandboxes"])
        self._pipeline, self._pipeline_conn = process, receiver
        self._pipeline_started = time.monotonic()

    def _stop_pipeline_process(self) -> None:
        """Ask the pipeline process to stop after its batches in progress; kill it if it does not in time."""
        process, conn = self._pipeline, self._pipeline_conn
        if process is None or conn is None:
            return
        with contextlib.suppress(OSError):  # it may be gone already
            conn.send("stop")
        process.join(PIPELINE_STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(5)
        conn.close()

    def _supervise(self) -> None:
        """Until the stack stops (then stop the pipeline process), start the pipeline process again whenever
        it dies alone: it is the queues' consumer. One that dies soon after its start is started again after a
        doubling pause (1 s to 60 s): a record that kills it must not make it restart in a tight loop."""
        pause = 1.0
        while True:
            process = self._pipeline
            if process is None:
                return
            wait_for([process.sentinel], timeout=0.5)
            if self._stop.is_set():
                self._stop_pipeline_process()
                return
            if process.is_alive():
                continue
            lived = time.monotonic() - self._pipeline_started
            logger.error(
                "the pipeline process ended (exit code %s) after %.0f s while the stack runs: starting it again",
                process.exitcode,
                lived,
            )
            if self._pipeline_conn is not None:
                self._pipeline_conn.close()
            self._pipeline = self._pipeline_conn = None
            self._write_stack_json()  # no pipeline pid until the next one runs: never a dead process's
            pause = 1.0 if lived > PIPELINE_STEADY_SECONDS else min(pause * 2, 60.0)
            if self._stop.wait(pause):  # e.g. a signal to the whole process group: the stack stops too
                return
            # What it held in flight died with it: retried at once, as at a start after kill -9.
            for name in PIPELINE_QUEUES:
                self.store.release_in_flight(name)
            while True:
                try:
                    self._start_pipeline_process()
                    self.pipeline_restarts += 1
                    self._write_stack_json()
                    break
                except (RuntimeError, OSError, StateInUse) as error:
                    logger.error(
                        "the pipeline process did not start again (%s): retrying in %.0f s", error, pause
                    )
                    if self._stop.wait(pause):
                        return
                    pause = min(pause * 2, 60.0)

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- parts ---------------------------------------------------------------------------------------------

    @property
    def sandbox(self) -> ExpertSenderSandbox | None:
        """The ExpertSender sandbox (the first one the stack had)."""
        found = self.sandboxes.get("expertsender")
        return found if isinstance(found, ExpertSenderSandbox) else None

    def _sandbox_port(self, offset: int) -> int:
        return self.options.sandbox_port + offset if self.options.sandbox_port else 0

    def _sandbox_credentials(self, vendor: str, make: dict[str, Any]) -> dict[str, Any]:
        """The credentials this state folder's sandbox of ``vendor`` accepts: kept from an earlier start, or
        generated now (``make``'s values) and kept."""
        name = SANDBOX_SECRETS[vendor]
        try:
            stored = self.secrets.get(name)
        except SecretStoreError:
            stored = {}
        if all(stored.get(key) for key in make):
            return stored
        self.secrets.put(name, make)
        return make

    def _start_sandboxes(self) -> None:
        """Start the three vendor sandboxes (state in ``sandboxes/`` of the state folder, so it survives a
        restart) and point every integration whose secret is absent, or was set by the stack, at its sandbox."""
        folder = self.options.state_dir / "sandboxes"
        integrations = [item for group in self.config.group_keys.values() for item in group.integrations]

        def setting(vendor: str, name: str, default: str) -> str:
            found = next((item for item in integrations if item.type == vendor), None)
            return str(getattr(found.parsed_settings, name)) if found is not None else default

        host = self.options.host
        key = self._sandbox_credentials("expertsender", {"api_key": random_secrets.token_urlsafe(24)})
        expertsender = ExpertSenderSandbox(
            str(key["api_key"]),
            host=host,
            port=self._sandbox_port(0),
            state_path=folder / "expertsender.jsonl",
        )
        app = self._sandbox_credentials(
            "dmhub", {"app_id": "cl" + random_secrets.token_hex(8), "secret": random_secrets.token_hex(20)}
        )
        dmhub = DmHubSandbox(
            str(app["app_id"]),
            str(app["secret"]),
            api_version="v2" if setting("dmhub", "api_version", "v1") == "v2" else "v1",
            host=host,
            port=self._sandbox_port(1),
            state_path=folder / "dmhub.jsonl",
        )
        application = self._sandbox_credentials(
            "carecloud", {"external_application_id": random_secrets.token_hex(13)}
        )
        carecloud = CareCloudSandbox(
            external_application_id=str(application["external_application_id"]),
            auth_scheme="basic" if setting("carecloud", "auth_scheme", "bearer") == "basic" else "bearer",
            host=host,
            port=self._sandbox_port(2),
            state_path=folder / "carecloud.jsonl",
        )
        self.sandboxes = {"expertsender": expertsender, "dmhub": dmhub, "carecloud": carecloud}
        for sandbox in self.sandboxes.values():
            sandbox.start()
        connection = {
            "expertsender": {"api_key": key["api_key"], "base_url": expertsender.url},
            "dmhub": {"app_id": app["app_id"], "secret": app["secret"], "base_url": dmhub.url},
            "carecloud": {
                "external_application_id": application["external_application_id"],
                "base_url": carecloud.url + CARECLOUD_BASE_PATH,
            },
        }
        for integration in integrations:
            if integration.type not in connection or not integration.secret:
                continue
            names = self.secrets.names()
            current = self.secrets.get(integration.secret) if integration.secret in names else None
            if current is None or current.get("sandbox", False):
                # A token the stack stored earlier stays: the sandbox's state (its tokens) survived too.
                self.secrets.put(
                    integration.secret, {**(current or {}), **connection[integration.type], "sandbox": True}
                )

    def _console(self, port: int) -> LocalConsole:
        """The console on ``port``; on any free port when that one is taken (it is an aid, not the API: the
        banner prints where it is)."""
        try:
            return LocalConsole(
                self.store,
                self.deliveries,
                self.console_secret,
                queues=lambda: [spec.name for spec in QUEUES],
                host=self.options.host,
                port=port,
            )
        except OSError:
            if port == 0:
                raise
            return self._console(0)

    def _issue_caller_keys(self) -> None:
        for client in self.config.clients:
            for principal in client.principals:
                if issuable_user(principal):
                    self.credentials.ensure(principal)

    def _schedule_refresh(self) -> None:
        event = {"version": "0", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}
        while not self._stop.is_set():
            try:
                self.last_refresh = self.refresh_handler(
                    event, LambdaContext(function_name="RefreshTokensFunction", timeout_seconds=120)
                )
            except Exception as error:  # keep the schedule alive, as EventBridge would
                self._on_error(error)
            self._stop.wait(self.options.refresh_interval_seconds)

    # --- what a newcomer needs -----------------------------------------------------------------------------

    def first_client(self) -> tuple[str, str, str, str] | None:
        """(client name, group key, access key id, secret key) of the first client with an issued key."""
        for client in self.config.clients:
            for principal in client.principals:
                keys = self.credentials.for_user(principal)
                if keys:
                    group_key = (
                        next(iter(client.group_keys))
                        if client.group_keys != ["*"]
                        else next(iter(self.config.group_keys))
                    )
                    return client.name, group_key, keys[0], keys[1]
        return None


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``): a ``kill -9`` of the stack
    takes its pipeline along, so no orphan keeps consuming the queues. Elsewhere the pipeline watches its
    connection to the parent instead (EOF when the parent is gone)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            logger.warning(
                "the pipeline process cannot ask to die with the stack (errno %d)", ctypes.get_errno()
            )
        libc.prctl(15, b"fwd-pipeline", 0, 0, 0)  # 15 = PR_SET_NAME: what top and ps -o comm show
    except (OSError, AttributeError):
        pass


def _pipeline_main(options: StackOptions, conn: Connection, parent: int) -> None:
    """The pipeline process of a stack with ``pipeline_process``: runs until the stack says stop, a SIGTERM
    comes (both: after the batches in progress), or the stack dies (then so does this process)."""
    _die_with_parent()
    if os.getppid() != parent:
        return  # the stack died before this process could ask to die with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the stack stops us
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        stack = EmbeddedStack(options, pipeline_only=True).start()
    except BaseException as error:  # reported to the stack, which fails its start with it
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(error).__name__}: {error}"})
        return
    try:
        conn.send({"sandboxes": stack.sandbox_urls})
        while os.getppid() == parent and not stopping.is_set():
            if conn.poll(0.5):
                conn.recv()  # "stop"
                break
    except (EOFError, OSError):
        pass  # the stack is gone
    finally:
        stack.stop()
