"""``make chaos``: the delivery guarantees under stress. It runs the embedded stack as a separate process, sends at least
10,000 signed records through it to ExpertSender, DM Hub and CareCloud while the vendors fail about 20% of
their requests, one vendor goes down for a (time-compressed) outage and the stack is ``kill -9``ed twice; then
it waits for the queues to drain and judges every customer's final state at every vendor.

It prints accepted, delivered, lost, duplicate effects, out of order, dead-lettered (with the top reasons),
rejected and vendor calls per record, per integration, and exits 1 when lost, duplicate effects or out of
order is above 0 (2 when the run itself could not finish: the stack did not start, the queues did not drain).
Definitions: ``chaos/measure.py`` and ``chaos/README.md``. Options: ``.venv/bin/python chaos/run.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import requests
from requests_aws4auth import AWS4Auth

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure
from workload import Customer, Step, plan

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "chaos" / "forwarder.yaml"
GROUP_KEY = "chaos"
CLIENT_ARN = "arn:aws:iam::000000000000:user/forwarder-chaos"
REGION = "us-east-1"
SANDBOXES = {"expertsender": 0, "dmhub": 1, "carecloud": 2}  # offset from --sandbox-port
CLIENT_GIVE_UP_SECONDS = 300.0  # a request that cannot be accepted for this long is given up (reported)
#: Time compression, as for the outage: backoffs and the circuit's probe interval shortened alike (60 s of
#: outage stand for an hour or so). Later --stack-arg values override these.
COMPRESSED = ["--retry-base-seconds=1", "--retry-max-seconds=15", "--circuit-probe-seconds=10"]


def say(text: str) -> None:
    print(text, flush=True)


# --- the stack as a process ---------------------------------------------------------------------------------


class StackProcess:
    """``forwarder run`` on one state folder and fixed ports, so it can be killed and started again."""

    def __init__(self, state_dir: Path, port: int, sandbox_port: int, extra: list[str]) -> None:
        self.state_dir = state_dir
        self.port = port
        self.sandbox_port = sandbox_port
        self.extra = extra
        self.log_path = state_dir.parent / f"{state_dir.name}-stack.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sandbox(self, name: str) -> str:
        return f"http://127.0.0.1:{self.sandbox_port + SANDBOXES[name]}"

    def start(self, on_sandboxes: Callable[[], None], timeout: float = 60.0) -> float:
        """Start the stack; ``on_sandboxes`` runs as soon as the sandboxes answer (before the gateway, so
        faults are back in place before much is delivered). Returns the seconds until the gateway answered."""
        command = [
            str(Path(sys.executable).parent / "forwarder"),
            "run",
            "--config",
            str(CONFIG),
            "--state-dir",
            str(self.state_dir),
            "--port",
            str(self.port),
            "--sandbox-port",
            str(self.sandbox_port),
            *self.extra,
        ]
        env = {**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts + 1} at {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1
        sandboxes_up = False
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the stack exited with {self.process.returncode}; see {self.log_path}")
            if not sandboxes_up and all(
                _answers(self.sandbox(name) + "/_sandbox/chaos") for name in SANDBOXES
            ):
                on_sandboxes()
                sandboxes_up = True
            if sandboxes_up and _answers(self.gateway + "/"):
                return time.monotonic() - started
            time.sleep(0.02)
        raise RuntimeError(f"the stack did not answer within {timeout:g} s; see {self.log_path}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """``kill -9``: no shutdown, no flush, in-flight batches die with it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def client_key(self) -> tuple[str, str]:
        issued = json.loads((self.state_dir / "credentials.json").read_text())
        for access_key, entry in sorted(issued.items()):
            if entry.get("user_arn") == CLIENT_ARN:
                return access_key, str(entry["secret_access_key"])
        raise RuntimeError(f"no key for {CLIENT_ARN} in {self.state_dir / 'credentials.json'}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=0.5)
    except requests.RequestException:
        return False
    return True


def _free_ports() -> tuple[int, int]:
    """A gateway port and the first of three consecutive free ports for the sandboxes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        gateway = int(probe.getsockname()[1])
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 60000)
        if gateway in range(first, first + 3):
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first, first + 3):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return gateway, first
    raise RuntimeError("no three consecutive free ports found")


# --- faults -------------------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Chaos on every sandbox, one vendor's outage, re-applied after each restart (sandboxes keep their state
    but not their faults)."""

    stack: StackProcess
    rate: float
    slow_rate: float
    slow_seconds: float
    retry_after: int
    seed: int
    outage_vendor: str
    outage_seconds: float
    kills: int
    outage_ends: float | None = None  # wall clock
    outage_started: float | None = None
    applied: int = 0

    def apply(self) -> None:
        for name in SANDBOXES:
            body = {
                "rate": self.rate,
                "statuses": [500, 503, 429],
                "retry_after": self.retry_after,
                "slow_rate": self.slow_rate,
                "slow_seconds": self.slow_seconds,
                "seed": self.seed * 1000 + self.applied * 10 + SANDBOXES[name],
            }
            _post(self.stack.sandbox(name) + "/_sandbox/chaos", body)
        left = self.outage_left()
        if left > 0:
            _post(self.stack.sandbox(self.outage_vendor) + "/_sandbox/outage", {"seconds": left})
        self.applied += 1

    def start_outage(self) -> None:
        self.outage_started = time.time()
        self.outage_ends = self.outage_started + self.outage_seconds
        _post(self.stack.sandbox(self.outage_vendor) + "/_sandbox/outage", {"seconds": self.outage_seconds})

    def outage_left(self) -> float:
        return max(0.0, self.outage_ends - time.time()) if self.outage_ends is not None else 0.0


def _post(url: str, body: dict[str, Any]) -> None:
    response = requests.post(url, json=body, timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")


# --- the load -----------------------------------------------------------------------------------------------


@dataclass
class Load:
    """Client threads sending every customer's chain in order: a step is sent only after the previous one was
    answered 202; a request that fails at the gateway is sent again with the same ``Idempotency-Key``."""

    customers: list[Customer]
    gateway: str
    key: tuple[str, str]
    threads: int
    rng: random.Random
    gap_seconds: float
    accepted: int = 0
    attempts: int = 0
    resends: int = 0
    ambiguous: int = 0
    refused: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # why attempts were not accepted
    _fresh: int = 0
    _active: int = 0
    _followups: list[tuple[float, int, int, int]] = field(default_factory=list)
    _sequence: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _workers: list[threading.Thread] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(customer.steps) for customer in self.customers)

    def start(self) -> None:
        for number in range(self.threads):
            worker = threading.Thread(target=self._work, name=f"client-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def done(self) -> bool:
        return not any(worker.is_alive() for worker in self._workers)

    def _next(self) -> tuple[Customer, int] | None:
        with self._cond:
            while True:
                now = time.monotonic()
                if self._followups and self._followups[0][0] <= now:
                    _, _, position, step = heapq.heappop(self._followups)
                    return self.customers[position], step
                if self._fresh < len(self.customers):
                    self._fresh += 1
                    self._active += 1
                    return self.customers[self._fresh - 1], 0
                if not self._followups and self._active == 0:
                    return None
                wait = self._followups[0][0] - now if self._followups else 0.5
                self._cond.wait(max(0.01, wait))

    def _schedule(self, position: int, step: int, delay: float) -> None:
        """Run step ``step`` of a chain again after ``delay`` (lock held)."""
        self._sequence += 1
        heapq.heappush(self._followups, (time.monotonic() + delay, self._sequence, position, step))
        self._cond.notify_all()

    def _work(self) -> None:
        positions = {id(customer): position for position, customer in enumerate(self.customers)}
        auth = AWS4Auth(self.key[0], self.key[1], REGION, "execute-api")
        with requests.Session() as session:
            while (work := self._next()) is not None:
                customer, number = work
                retry_in = self._send(session, auth, customer, customer.steps[number])
                with self._cond:
                    position = positions[id(customer)]
                    if retry_in is not None:
                        # Not accepted yet: the same request again later; the chain waits, the thread moves on.
                        self._schedule(position, number, retry_in)
                    elif customer.steps[number].accepted and number + 1 < len(customer.steps):
                        # The next request of the chain: sometimes at once (it may share a delivery batch with
                        # this one), sometimes a little later (this one may still be retrying at the vendor).
                        gap = 0.0 if self.rng.random() < 0.4 else self.rng.uniform(0, self.gap_seconds)
                        self._schedule(position, number + 1, gap)
                    else:
                        self._active -= 1
                        self._cond.notify_all()

    def _send(
        self, session: requests.Session, auth: AWS4Auth, customer: Customer, step: Step
    ) -> float | None:
        """One attempt. None when settled (accepted, refused or given up), else the seconds to wait before the
        same request (same ``Idempotency-Key``) is sent again."""
        method, path = step.route
        body = json.dumps({"data": customer.data(step), "group_key": GROUP_KEY})
        headers = {"Content-Type": "application/json", "Idempotency-Key": step.idempotency_key}
        now = time.monotonic()
        if step.first_sent is None:
            step.first_sent = now
        step.attempts += 1
        with self._cond:
            self.attempts += 1
            if step.attempts > 1:
                self.resends += 1
                self.ambiguous += step.ambiguous
        if step.ambiguous:
            step.ambiguous_resends += 1
        retry_after = 0.0
        try:
            response = session.request(
                method, self.gateway + path, data=body, headers=headers, auth=auth, timeout=(2, 20)
            )
        except requests.RequestException as error:
            # Refused (the stack is down): the request never arrived. Anything else (reset, timeout): it may
            # have been queued before the answer was lost.
            refused = _refused(error)
            step.ambiguous = step.ambiguous or not refused
            session.close()
            with self._cond:
                self.failures["connection refused (stack down)" if refused else type(error).__name__] += 1
        else:
            if response.status_code == 202:
                answer = response.json()
                step.request_ids.append(str(answer.get("request_id") or response.headers.get("X-Request-Id")))
                step.accepted = True
                with self._cond:
                    self.accepted += 1
                return None
            if response.status_code < 500 and response.status_code not in (409, 429):
                step.refused = f"{response.status_code} {response.text[:200]}"
                with self._cond:
                    self.refused += 1
                return None
            # 409: the first request with this key is still being accepted (or died doing it): ask again.
            with self._cond:
                self.failures[f"{response.status_code} {_code(response)}".strip()] += 1
            step.ambiguous = step.ambiguous or response.status_code not in (409, 429, 503)
            with contextlib.suppress(ValueError):
                retry_after = float(response.headers.get("Retry-After", ""))
        if now - step.first_sent > CLIENT_GIVE_UP_SECONDS:
            step.refused = "gave up: the gateway did not accept it in time"
            with self._cond:
                self.refused += 1
            return None
        wait = max(retry_after, step.pause * (0.5 + self.rng.random()))
        step.pause = min(2.0, step.pause * 2)
        return wait


def _code(response: requests.Response) -> str:
    try:
        return str(response.json().get("code") or "")
    except (ValueError, AttributeError):
        return ""


def _refused(error: requests.RequestException) -> bool:
    text = repr(error)
    return isinstance(error, requests.ConnectionError) and (
        "NewConnectionError" in text or "Connection refused" in text or "ConnectTimeout" in text
    )


# --- waiting for the queues ---------------------------------------------------------------------------------


def queue_depths(state_dir: Path) -> dict[str, int] | None:
    """Messages per queue (every state: visible, in flight, delayed), read-only; None if unreadable."""
    path = state_dir / "queues.db"
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT queue, COUNT(*) FROM messages GROUP BY queue").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return {str(queue): int(count) for queue, count in rows}


def progress_line(started: float, load: Load, stack: StackProcess, faults: Faults) -> str:
    depths = queue_depths(stack.state_dir) or {}
    outage = faults.outage_left()
    return (
        f"  [{time.monotonic() - started:5.0f} s] accepted {load.accepted:,}/{load.total:,}"
        f" | queues: ingest {depths.get('ingest', 0):,} delivery {depths.get('delivery', 0):,}"
        f" dead-lettered {depths.get('delivery-dlq', 0):,} rejected {depths.get('rejects', 0):,}"
        f" | starts {stack.starts}"
        + (f" | {faults.outage_vendor} outage {outage:.0f} s left" if outage else "")
    )


# --- the run ------------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chaos/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=10_000, help="requests to send (default 10000)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    parser.add_argument(
        "--interleaved", type=float, default=0.05, help="share of customers with delete/upsert chains (0.05)"
    )
    parser.add_argument("--events", type=float, default=0.03, help="share of customers who also get an event")
    parser.add_argument(
        "--rate", type=float, default=0.19, help="vendor requests answered 500/503/429 (0.19)"
    )
    parser.add_argument(
        "--slow-rate", type=float, default=0.005, help="vendor writes applied, answered past the read timeout"
    )
    parser.add_argument(
        "--slow-seconds", type=float, default=1.0, help="how late (the config's read timeout is 0.3 s)"
    )
    parser.add_argument("--retry-after", type=int, default=2, help="Retry-After of the 429s (seconds)")
    parser.add_argument("--outage-vendor", choices=sorted(SANDBOXES), default="carecloud")
    parser.add_argument("--outage-seconds", type=float, default=60.0, help="the compressed outage (60)")
    parser.add_argument("--kills", type=int, default=2, help="kill -9 of the stack during the run (2)")
    parser.add_argument("--gap-seconds", type=float, default=3.0, help="longest pause inside a chain (3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting for the queues (600 s)")
    parser.add_argument("--seed", type=int, default=None, help="repeat a run's workload and fault draws")
    parser.add_argument("--state-dir", type=Path, default=None, help="default: a new temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the state folder even when the run passes")
    parser.add_argument(
        "--stack-arg",
        action="append",
        default=[],
        metavar="ARG",
        help=f"passed on to `forwarder run` after {' '.join(COMPRESSED)} (repeat to add or override)",
    )
    args = parser.parse_args(argv)
    if args.records < 1 or args.threads < 1 or args.kills < 0:
        parser.error("--records and --threads must be positive, --kills not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    rng = random.Random(seed)
    run_id = f"{seed:06d}"
    customers = plan(args.records, args.interleaved, args.events, rng, run_id)
    interleaved = sum(customer.pattern not in ("U", "UE") for customer in customers)
    events = sum(customer.pattern == "UE" for customer in customers)
    total = sum(len(customer.steps) for customer in customers)
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="forwarder-chaos-")) / "state"
    gateway_port, sandbox_port = _free_ports()
    stack = StackProcess(state_dir, gateway_port, sandbox_port, [*COMPRESSED, *args.stack_arg])
    faults = Faults(
        stack,
        args.rate,
        args.slow_rate,
        args.slow_seconds,
        args.retry_after,
        seed,
        args.outage_vendor,
        args.outage_seconds,
        args.kills,
    )
    say(
        f"make chaos (seed {seed}): {total:,} requests for {len(customers):,} customers ({interleaved:,} with "
        f"interleaved deletes/upserts, {events:,} with an event), {args.threads} client threads"
    )
    say(
        f"  faults: {args.rate:.0%} of vendor requests answered 500/503/429 (Retry-After {args.retry_after} s), "
        f"{args.slow_rate:.1%} of writes applied but answered after {args.slow_seconds:g} s; "
        f"{args.outage_vendor} down for {args.outage_seconds:g} s; {args.kills} x kill -9"
    )
    say(f"  stack: forwarder run {' '.join(stack.extra)} (time compressed like the outage)")
    say(f"  state: {state_dir}   stack log: {stack.log_path}")
    started = time.monotonic()
    with _terminate_on_sigterm():
        try:
            ready = stack.start(faults.apply)
            say(f"  stack up in {ready:.1f} s (gateway {stack.gateway}, sandboxes from port {sandbox_port})")
            load = Load(customers, stack.gateway, stack.client_key(), args.threads, rng, args.gap_seconds)
            happened = _drive(load, stack, faults, rng, started)
            say(
                f"  all requests answered in {time.monotonic() - started:.0f} s; waiting for the queues to drain"
            )
            drained = _drain(stack, faults, load, started, args.timeout)
            say(
                f"  {'drained' if drained else 'NOT drained'} after {time.monotonic() - started:.0f} s; "
                "reading the vendors"
            )
            sandboxes = {name: measure.read_sandbox(name, stack.sandbox(name)) for name in SANDBOXES}
            queues = measure.read_queues(state_dir / "queues.db")
        except KeyboardInterrupt:
            say("interrupted")
            return 130
        except (RuntimeError, requests.RequestException, sqlite3.Error) as error:
            say(f"chaos run failed: {type(error).__name__}: {error}\n{stack.log_tail()}")
            return 2
        finally:
            stack.stop()
    figures = measure.judge(customers, sandboxes, queues)
    requests_log = state_dir.parent / "requests.jsonl"
    _write_requests(requests_log, customers)
    say("")
    say(
        f"gateway: {load.accepted:,} of {total:,} requests accepted (202); {load.resends:,} client resends "
        f"({load.ambiguous:,} after an answer was lost, so possibly accepted twice); {load.refused:,} refused or "
        f"given up; stack started {stack.starts} times ({'; '.join(happened)})"
    )
    if load.failures:
        say(
            "  attempts not accepted: "
            + ", ".join(f"{cause} {count:,}" for cause, count in load.failures.most_common())
        )
    refusals = Counter(
        step.refused[:120] for customer in customers for step in customer.steps if step.refused is not None
    )
    for reason, count in refusals.most_common(3):
        say(f"  refused {count} x: {reason}")
    say("")
    say(measure.table(figures))
    say("")
    say(measure.details(figures))
    say("")
    failing = measure.failed(figures)
    exit_code = 1 if failing else (0 if drained else 2)
    verdict = {
        0: "PASS: nothing lost, duplicated or out of order",
        1: "FAIL: lost, duplicate effects or out of order above 0",
        2: "INCOMPLETE: the queues did not drain in time",
    }[exit_code]
    if failing and not drained:
        verdict += f" (and the queues did not drain within --timeout {args.timeout:g} s)"
    say(f"{verdict} ({time.monotonic() - started:.0f} s)")
    if exit_code == 0 and not args.keep and args.state_dir is None:
        shutil.rmtree(state_dir.parent, ignore_errors=True)
    else:
        say(f"state kept for a look: .venv/bin/forwarder trail dead-letters --state-dir {state_dir}")
        say(f"  every request sent (op, Idempotency-Key, request ids, resends): {requests_log}")
    return exit_code


def _write_requests(path: Path, customers: list[Customer]) -> None:
    """One line per request sent, to match ops in the vendors' ledgers with request ids in the queues."""
    with path.open("w", encoding="utf-8") as out:
        for customer in sorted(customers, key=lambda item: item.index):
            for number, step in enumerate(customer.steps):
                line = {
                    "email": customer.email,
                    "pattern": customer.pattern,
                    "step": number,
                    "kind": step.kind,
                    "op": step.op,
                    "idempotency_key": step.idempotency_key,
                    "request_ids": step.request_ids,
                    "attempts": step.attempts,
                    "resent_after_lost_answer": step.ambiguous_resends,
                    "refused": step.refused,
                }
                out.write(json.dumps(line) + "\n")


def _drive(load: Load, stack: StackProcess, faults: Faults, rng: random.Random, started: float) -> list[str]:
    """Send everything, killing and restarting the stack and starting the outage on the way; returns what
    happened when."""
    kill_points = _kill_points(faults.kills, load.total, rng)
    outage_point = int(load.total * 0.4)
    happened: list[str] = []
    load.start()
    last_print = 0.0
    while not load.done():
        time.sleep(0.05)
        if kill_points and load.accepted >= kill_points[0]:
            kill_points.pop(0)
            stack.kill()
            happened.append(f"kill -9 at {load.accepted:,} accepted")
            say(f"  kill -9 of the stack at {load.accepted:,} accepted requests")
            time.sleep(rng.uniform(0.5, 2.0))
            say(f"  stack restarted in {stack.start(faults.apply):.1f} s")
        if faults.outage_started is None and faults.outage_seconds > 0 and load.accepted >= outage_point:
            faults.start_outage()
            happened.append(
                f"{faults.outage_vendor} down {faults.outage_seconds:g} s from {load.accepted:,} accepted"
            )
            say(f"  {faults.outage_vendor} outage begins ({faults.outage_seconds:g} s)")
        if not stack.alive():
            happened.append(f"the stack died by itself at {load.accepted:,} accepted")
            say(f"  the stack died by itself; restarting. Log tail:\n{stack.log_tail()}")
            stack.start(faults.apply)
        if time.monotonic() - last_print >= 5:
            last_print = time.monotonic()
            say(progress_line(started, load, stack, faults))
    return happened


def _kill_points(kills: int, total: int, rng: random.Random) -> list[int]:
    """Accepted-request counts at which to kill: spread over 15%..85% of the sending, one per slice."""
    if kills <= 0:
        return []
    width = 0.7 / kills
    return [int(total * (0.15 + width * (number + rng.uniform(0.2, 0.8)))) for number in range(kills)]


def _drain(stack: StackProcess, faults: Faults, load: Load, started: float, timeout: float) -> bool:
    """Wait until the ingest and delivery queues are empty (twice in a row), restarting a dead stack."""
    deadline = time.monotonic() + timeout
    empty = 0
    last_print = 0.0
    while time.monotonic() < deadline:
        if not stack.alive():
            say(f"  the stack died by itself; restarting. Log tail:\n{stack.log_tail()}")
            stack.start(faults.apply)
        depths = queue_depths(stack.state_dir)
        if depths is not None and depths.get("ingest", 0) == 0 and depths.get("delivery", 0) == 0:
            empty += 1
            if empty >= 2:
                return True
        else:
            empty = 0
        if time.monotonic() - last_print >= 5:
            last_print = time.monotonic()
            say(progress_line(started, load, stack, faults))
        time.sleep(1)
    return False


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C does: the stack process is stopped on the way out."""

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
