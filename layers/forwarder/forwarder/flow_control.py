"""Per-integration flow control: a circuit breaker for outages and an adaptive rate limit for throttling.

**Circuit breaker.** After ``failure_threshold`` vendor-down answers in a row (5xx, 408, timeouts, no
connection; a 429 is throttling, not an outage) the integration's breaker opens: its deliveries are not sent,
they wait on the queue without spending an attempt (hidden until the next probe), and other integrations go
on as before. About once a ``probe_interval`` one delivery request goes through as a probe. Across processes
(Lambda containers) a probe takes a lease (``probe/<group key>/<integration>``, as long as the interval) on
the shared lock store, so the vendor sees about one probe per interval whatever the concurrency; a probe that
succeeds closes the breaker and the backlog drains by itself.

**Rate limit.** An integration may set ``max_requests_per_second``. Each process keeps a token bucket at that
rate divided by the number of processes that deliver (``FORWARDER_DELIVER_CONCURRENCY``; the template keeps it
equal to the event source's maximum concurrency). A 429 halves the rate (down to a 32nd of the maximum); each
delivered request adds a 20th back (additive increase, multiplicative decrease), so the rate settles just under
what the vendor takes.

**Requests in flight.** A process sends at most ``requests_in_flight`` vendor requests of one integration at
a time (``FORWARDER_VENDOR_REQUESTS_IN_FLIGHT``). A Lambda container delivers one batch at a time, so there it
never binds; the embedded deliver runs several workers in one process, and this keeps them from all
waiting on one slow vendor's answers at once.

State is per process (``Services.flow``), shared by the invocations of a warm container.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from forwarder.ports.locks import LockError, LockPort


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    probe_interval: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    open_until: float | None = None  # None: closed; else no request before this time, except a probe
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def permit(self, lease: Callable[[], bool]) -> tuple[bool, float]:
        """(may send now, seconds to wait otherwise). While open, one caller per interval probes, and only if
        it also gets the shared ``lease`` (one probe across processes)."""
        with self._lock:
            if self.open_until is None:
                return True, 0.0
            now = self.clock()
            if now < self.open_until:
                return False, self.open_until - now
            self.open_until = now + self.probe_interval  # this caller probes; the rest wait for the next
        if lease():
            return True, 0.0
        return False, self.probe_interval

    def record(self, vendor_down: bool) -> None:
        with self._lock:
            if not vendor_down:
                self.failures, self.open_until = 0, None
                return
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self.open_until = self.clock() + self.probe_interval


@dataclass
class RateLimiter:
    """A token bucket whose rate adapts: halved on a 429, raised by a 20th of the maximum per success."""

    max_rate: float
    clock: Callable[[], float] = time.monotonic
    rate: float = 0.0
    tokens: float = 1.0
    updated: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rate = self.max_rate
        self.tokens = max(1.0, self.max_rate)
        self.updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def reserve(self, count: int) -> float:
        """Take ``count`` tokens; returns the seconds to wait before sending (0: now). A caller that will not
        wait gives them back with ``release``."""
        with self._lock:
            self._refill()
            self.tokens -= count
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def release(self, count: int) -> None:
        with self._lock:
            self.tokens += count

    def throttled(self) -> None:
        with self._lock:
            self.rate = max(self.max_rate / 32, self.rate / 2)

    def succeeded(self) -> None:
        with self._lock:
            self.rate = min(self.max_rate, self.rate + self.max_rate / 20)


class FlowControl:
    """The breakers and rate limiters of this process, by ``group_key/integration``."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        probe_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        requests_in_flight: int | None = None,
    ) -> None:
        self._clock = clock
        self._requests_in_flight = requests_in_flight
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._failure_threshold = failure_threshold
        self._probe_interval = probe_interval
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._limiters: dict[tuple[str, float], RateLimiter] = {}

    def breaker(self, key: str) -> CircuitBreaker:
        with self._lock:
            return self._breakers.setdefault(
                key,
                CircuitBreaker(
                    failure_threshold=self._failure_threshold,
                    probe_interval=self._probe_interval,
                    clock=self._clock,
                ),
            )

    def limiter(self, key: str, max_rate: float) -> RateLimiter:
        with self._lock:
            return self._limiters.setdefault((key, max_rate), RateLimiter(max_rate, clock=self._clock))

    @contextmanager
    def in_flight(self, key: str) -> Iterator[None]:
        """Hold one of the integration's request slots while its requests are out (waits for a free one)."""
        if self._requests_in_flight is None:
            yield
            return
        with self._lock:
            slots = self._slots.setdefault(key, threading.BoundedSemaphore(self._requests_in_flight))
        with slots:
            yield

    @staticmethod
    def probe_lease(locks: LockPort | None, key: str, interval: float) -> Callable[[], bool]:
        """A probe permit shared by every process: a lease nobody releases, so it lasts the interval."""

        def take() -> bool:
            if locks is None:
                return True
            try:
                return locks.acquire(f"probe/{key}", uuid.uuid4().hex, interval)
            except LockError:
                return True  # no shared store: probe from this process (at worst one per container)

        return take
