"""The circuit breaker and the adaptive rate limit, on a clock the tests move."""

from __future__ import annotations

from forwarder.flow_control import CircuitBreaker, FlowControl, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def always() -> bool:
    return True


def test_the_circuit_opens_after_five_vendor_down_answers_in_a_row() -> None:
    breaker = CircuitBreaker(clock=Clock())
    for _ in range(4):
        breaker.record(vendor_down=True)
        assert breaker.permit(always) == (True, 0.0)
    breaker.record(vendor_down=True)
    allowed, wait = breaker.permit(always)
    assert not allowed and wait == 60.0


def test_an_answer_from_the_vendor_resets_the_count() -> None:
    breaker = CircuitBreaker(clock=Clock())
    for _ in range(4):
        breaker.record(vendor_down=True)
    breaker.record(vendor_down=False)  # even a rejection: the vendor is up
    for _ in range(4):
        breaker.record(vendor_down=True)
    assert breaker.permit(always)[0]


def test_an_open_circuit_lets_one_probe_through_a_minute_and_closes_when_it_succeeds() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(5):
        breaker.record(vendor_down=True)
    clock.now += 30
    assert breaker.permit(always) == (False, 30.0)
    clock.now += 30
    # one caller probes; everyone else waits for the next interval
    assert breaker.permit(always) == (True, 0.0)
    assert breaker.permit(always) == (False, 60.0)
    # the probe failed: another minute
    breaker.record(vendor_down=True)
    clock.now += 60
    assert breaker.permit(always) == (True, 0.0)
    # this one succeeded: closed, everyone goes
    breaker.record(vendor_down=False)
    assert breaker.permit(always) == (True, 0.0) and not breaker.is_open


def test_a_probe_another_process_holds_the_lease_for_is_not_made_here() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(5):
        breaker.record(vendor_down=True)
    clock.now += 60
    assert breaker.permit(lambda: False) == (False, 60.0)


def test_the_rate_limit_halves_on_a_429_and_climbs_back_slowly() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, clock=clock)
    # ten requests a second go at once; the eleventh waits a tenth of a second
    assert [limiter.reserve(1) for _ in range(10)] == [0.0] * 10
    assert limiter.reserve(1) == 0.1
    limiter.release(1)
    limiter.throttled()
    assert limiter.rate == 5.0
    for _ in range(4):
        limiter.throttled()
    assert limiter.rate == 10.0 / 32  # the floor
    for _ in range(100):
        limiter.succeeded()
    assert limiter.rate == 10.0


def test_flow_control_keeps_one_breaker_per_integration() -> None:
    flow = FlowControl(failure_threshold=2, probe_interval=5)
    flow.breaker("demo/expertsender").record(vendor_down=True)
    flow.breaker("demo/expertsender").record(vendor_down=True)
    assert flow.breaker("demo/expertsender").is_open
    assert not flow.breaker("demo/dmhub").is_open


def test_an_integration_has_at_most_its_requests_in_flight_and_others_are_not_held_up() -> None:
    import threading

    # given a process allowed 2 requests in flight per integration, and 6 workers delivering to one vendor
    flow = FlowControl(requests_in_flight=2)
    release = threading.Event()
    lock = threading.Lock()
    inside: list[int] = [0]
    most: list[int] = [0]

    def deliver() -> None:
        with flow.in_flight("demo/slow-vendor"):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            release.wait(10)
            with lock:
                inside[0] -= 1

    workers = [threading.Thread(target=deliver) for _ in range(6)]
    for worker in workers:
        worker.start()
    for _ in range(500):  # until two of them are waiting for the vendor's answers
        if inside[0] == 2:
            break
        threading.Event().wait(0.01)
    assert inside[0] == 2
    # when the slow vendor's slots are all taken, then another integration's request still goes at once
    entered = threading.Event()

    def other() -> None:
        with flow.in_flight("demo/other-vendor"):
            entered.set()

    threading.Thread(target=other).start()
    assert entered.wait(5)
    release.set()
    for worker in workers:
        worker.join(10)
    # and the slow vendor never had more than 2 requests out
    assert most[0] == 2
