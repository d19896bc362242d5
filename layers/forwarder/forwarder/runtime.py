"""Runtime settings (parsed once from the environment) and the services the flows use.

Handlers call ``services()``: on AWS it builds the AWS adapters lazily from the environment; the embedded
stack ``install``s its own (durable local queues, local secret store) before it invokes any handler.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, Field

from forwarder.config import ForwarderConfig, load_config
from forwarder.flow_control import FlowControl
from forwarder.ports import DeletionLedger, DeliveryLog, LockPort, QueuePort, SecretsPort
from forwarder.tokens import TokenKeeper

if TYPE_CHECKING:  # importing Powertools Idempotency costs ~20 ms: only requests with a key pay it
    import requests
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer

_ENV_PREFIX = "FORWARDER_"
#: The environment variable holding the idempotency table's name (set by template.yaml's Globals).
IDEMPOTENCY_TABLE_ENV_VAR = "FORWARDER_IDEMPOTENCY_TABLE"


class RuntimeSettings(BaseModel):
    """Every knob the flows read, from ``FORWARDER_*`` environment variables."""

    runtime: Literal["aws", "embedded"] = "aws"
    config_path: str = "/opt/forwarder.json"
    max_body_bytes: int = Field(240 * 1024, ge=1024, description="leaves room in a 256 KiB SQS message")
    max_message_bytes: int = Field(
        256 * 1024, ge=1024, description="the queue's message size limit (SQS: 256 KiB)"
    )
    delivery_max_receives: int = Field(
        1000, ge=1, description="the delivery queue's maxReceiveCount: a safety net; retries end by age"
    )
    circuit_failures: int = Field(5, ge=1, description="vendor-down answers in a row that open a circuit")
    circuit_probe_seconds: float = Field(60.0, gt=0, description="how often an open circuit lets a probe go")
    deliver_concurrency: int = Field(
        1, ge=1, description="processes that deliver at once: a rate limit is shared out between them"
    )
    vendor_requests_in_flight: int = Field(
        4,
        ge=1,
        description="vendor requests one process has out at once per integration (embedded deliver workers)",
    )
    retry_horizon_seconds: float = Field(
        4 * 3600, gt=0, le=24 * 3600, description="how long a delivery is retried after its first attempt"
    )
    retry_base_seconds: float = Field(10.0, gt=0)
    retry_max_seconds: float = Field(900.0, gt=0, le=43200)
    producer_events_queue_arn: str = Field(
        "", description="the queue the producer bus's rule targets: its messages are EventBridge events"
    )
    secrets_max_age_seconds: int = Field(300, ge=0)
    vendor_timeout_seconds: float = Field(10.0, gt=0)
    secrets_prefix: str = Field("", description="the functions may read only secrets named with this prefix")
    token_refresh_margin_seconds: float = Field(
        1800.0, ge=0, description="the schedule renews a token expiring within this margin (> its period)"
    )
    token_wait_seconds: float = Field(
        5.0, ge=0, description="how long a delivery waits for another's refresh"
    )

    def secret_outside_prefix(self, name: str) -> str | None:
        """Why a secret cannot be read under this deployment's policy, or None when it can."""
        if self.secrets_prefix and not name.startswith(self.secrets_prefix):
            return (
                f"secret '{name}' is outside the prefix '{self.secrets_prefix}' the functions may read; "
                "rename it or deploy with a matching SecretsPrefix"
            )
        return None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> RuntimeSettings:
        env = os.environ if env is None else env
        values = {
            name: env[_ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if _ENV_PREFIX + name.upper() in env
        }
        return cls.model_validate(values)


class _SessionOnFirstUse:
    """Stands for a ``requests.Session`` and creates it when first used: ingest, validate and sources never
    call a vendor, so their cold starts never import requests (60-100 ms)."""

    def __init__(self) -> None:
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import requests

                    self._session = requests.Session()
        return getattr(self._session, name)


def _http_session() -> requests.Session:
    return cast("requests.Session", _SessionOnFirstUse())


@dataclass
class Services:
    settings: RuntimeSettings
    queues: QueuePort
    secrets: SecretsPort
    ledger: DeletionLedger | None = None
    http: requests.Session = field(default_factory=_http_session)
    clock: Callable[[], float] = time.time
    locks: LockPort | None = None
    deliveries: DeliveryLog | None = None
    flow: FlowControl | None = None  # built from the settings on first use when not given
    #: Where ingest records requests sent with an ``Idempotency-Key`` (a Powertools persistence layer), or a
    #: factory that builds it on first use (on AWS a DynamoDB client: only ingest should pay its cold start).
    #: None: keys travel on the message but are not deduplicated (tests that do not need it).
    idempotency: BasePersistenceLayer | Callable[[], BasePersistenceLayer] | None = None

    @property
    def config(self) -> ForwarderConfig:
        return load_config(self.settings.config_path)

    def idempotency_store(self) -> BasePersistenceLayer | None:
        """The idempotency persistence layer, built now when ``idempotency`` is a factory."""
        if callable(self.idempotency):
            self.idempotency = self.idempotency()
        return self.idempotency

    def flow_control(self) -> FlowControl:
        """This process's circuit breakers and rate limiters (kept for the services' lifetime)."""
        if self.flow is None:
            with _flow_lock:  # deliver's threads may ask at once: one set of breakers for all of them
                if self.flow is None:
                    self.flow = FlowControl(
                        failure_threshold=self.settings.circuit_failures,
                        probe_interval=self.settings.circuit_probe_seconds,
                        requests_in_flight=self.settings.vendor_requests_in_flight,
                    )
        return self.flow

    def token_keeper(self) -> TokenKeeper:
        return TokenKeeper(
            self.secrets,
            self.locks,
            self.http,
            clock=self.clock,
            wait_seconds=self.settings.token_wait_seconds,
        )


_lock = threading.Lock()
_flow_lock = threading.Lock()
_services: Services | None = None


def install(services: Services | None) -> None:
    """Use these services for every handler call in this process (the embedded stack and tests do this)."""
    global _services
    with _lock:
        _services = services


def services() -> Services:
    global _services
    with _lock:
        if _services is None:
            settings = RuntimeSettings.from_environment()
            if settings.runtime != "aws":
                raise RuntimeError("embedded runtime: the embedded stack must install its services first")
            from forwarder.adapters.aws import (
                DynamoDbDeletionLedger,
                DynamoDbDeliveryLog,
                DynamoDbLocks,
                SecretsManagerSecrets,
                SqsQueues,
            )

            _services = Services(
                settings=settings,
                queues=SqsQueues.from_environment(os.environ),
                secrets=SecretsManagerSecrets(),
                # Required: without it deletes would silently stop being final (raises naming the variable).
                ledger=DynamoDbDeletionLedger.from_environment(os.environ),
                locks=DynamoDbLocks.from_environment(os.environ),
                # Required: without it a redelivered message would be sent to the vendor again.
                deliveries=DynamoDbDeliveryLog.from_environment(os.environ),
                # Required: without it a client's retry with the same Idempotency-Key would be queued twice.
                idempotency=dynamodb_idempotency(os.environ),
            )
        return _services


def dynamodb_idempotency(env: Mapping[str, str]) -> Callable[[], BasePersistenceLayer]:
    """A factory of Powertools' DynamoDB persistence layer on the table named by ``FORWARDER_IDEMPOTENCY_TABLE``
    (partition key ``id``, TTL on ``expiration``: Powertools' defaults). Raises naming the variable when unset."""
    table_name = env.get(IDEMPOTENCY_TABLE_ENV_VAR)
    if not table_name:
        raise RuntimeError(f"no idempotency table configured (set {IDEMPOTENCY_TABLE_ENV_VAR})")

    def build() -> BasePersistenceLayer:
        from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

        from forwarder.adapters.aws import aws_client_config

        return DynamoDBPersistenceLayer(table_name=table_name, boto_config=aws_client_config(env))

    return build
