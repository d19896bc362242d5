"""The embedded stack: everything the AWS deployment has, on one machine, with no AWS account or Docker.

A local gateway (SigV4 like API Gateway) -> the ingest handler -> a durable ``ingest`` queue -> a poller
invoking the validate handler -> a durable ``delivery`` queue -> a poller invoking the deliver handler ->
the vendor (a sandbox by default). Queues have SQS semantics and DLQs; a scheduler invokes refresh tokens.
A console (``forwarder_local.console``) shows queues, requests, rejects and dead letters, behind an admin secret.
Producers write to a ``producer`` queue (SQS) or put events on a local bus whose rule forwards them to a
``producer-events`` queue (``forwarder_local.eventbus``); a poller invokes the sources handler on both.
The handlers are the very files in ``functions/``, invoked with the same event shapes as on AWS.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.util
import json
import os
import secrets as random_secrets
import sys
import threading
from dataclasses import dataclass, field
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
from forwarder_local.gateway import LocalGateway
from forwarder_local.idempotency import SqliteIdempotencyLayer
from forwarder_local.poller import LambdaContext, SqsPoller
from forwarder_local.queue import DurableQueueStore, QueueSpec
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

SWITCH_INTERVAL_SECONDS = 0.0005
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


class EmbeddedStack:
    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        state = self.options.state_dir
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        self._lock_file = open(state / "stack.lock", "a")  # noqa: SIM115 - held for the stack's lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StateInUse(
                f"another embedded stack is running on {state.resolve()}; stop it or use --state-dir"
            ) from None
        self.store = DurableQueueStore(state / "queues.db")
        for spec in QUEUES:
            if spec.name == "delivery":
                spec = dataclasses.replace(spec, visibility_timeout=self.options.delivery_visibility_seconds)
            self.store.create_queue(spec)
        # Messages in flight when a previous run died (even kill -9) are retried at once, not after their
        # visibility timeout: their consumer died with that process. Only one stack runs on a state folder.
        self.released = sum(
            self.store.release_in_flight(name)
            for name in ("ingest", "delivery", PRODUCER_QUEUE, EVENTS_QUEUE)
        )
        self.secrets = LocalSecretStore(state / "secrets.json")
        self.credentials = LocalCredentials(state / "credentials.json")
        self.ledger = LocalDeletionLedger(state / "ledger.db")
        self.locks = LocalLocks(state / "locks.db")
        self.deliveries = LocalDeliveryLog(state / "deliveries.db")
        self.idempotency = SqliteIdempotencyLayer(state / "idempotency.db")
        self.sandboxes: dict[str, Sandbox] = {}
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
        if self.options.with_sandboxes:
            self._start_sandboxes()
        self._issue_caller_keys()
        ingest, validate, deliver, sources = (
            load_handler(flow) for flow in ("ingest", "validate", "deliver", "sources")
        )
        self.refresh_handler = load_handler("refresh_tokens")
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
                    on_error=self.errors.append,
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
                on_error=self.errors.append,
            ),
            SqsPoller(
                self.store,
                "delivery",
                deliver,
                function_name="DeliverFunction",
                batch_size=10,  # a FIFO event source takes at most 10 messages (as on AWS)
                max_batching_window=self.options.poll_window_seconds,
                timeout_seconds=30,
                on_error=self.errors.append,
                concurrency=self.options.deliver_workers,
            ),
        ]
        for poller in self.pollers:
            poller.start()
        self.gateway = LocalGateway(
            ingest,
            IamAuthorizer(self.credentials, self.options.region),
            host=self.options.host,
            port=self.options.port,
        ).start()
        if self.options.with_console:
            self.console_secret = admin_secret(self.options.state_dir)
            self.console = self._console(self.options.console_port).start()
        self._scheduler = threading.Thread(target=self._schedule_refresh, name="refresh-tokens", daemon=True)
        self._scheduler.start()
        # What `forwarder send` and `forwarder clients` read to reach this stack: its config, URL and region.
        (self.options.state_dir / "stack.json").write_text(
            json.dumps(
                {
                    "config": str(Path(self.options.config_path).resolve()),
                    "gateway": self.gateway.url,
                    "region": self.options.region,
                }
            )
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.gateway:
            self.gateway.stop()
        if self.console:
            self.console.stop()
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
        self._lock_file.close()

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
                self.errors.append(error)
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
