"""What ``make chaos`` sends: customers, each with a chain of requests sent in order (the next one only after
the previous one was answered 202), so the order the forwarder received them in is known.

Most customers get one upsert; a share get an interleaved chain of upserts and deletes (one of
:data:`PATTERNS`); a share of the one-upsert customers also get a DM Hub event after it. Every request carries
a unique op id (``op:<customer>.<step>``), which the config maps to each vendor and the sandboxes' effects
ledger keys on, so a request applied twice is countable and the final state names the request it came from.
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["upsert", "delete", "event"]

#: Interleaved chains (U upsert, D delete), in the order the client sends them.
PATTERNS: tuple[str, ...] = ("UDUDU", "UDUD", "DU", "UUU", "UD", "UUDU", "DUDU")
CITIES = ("Oslo", "Lyon", "Brno", "Kraków", "Porto")


@dataclass
class Step:
    """One request of a customer's chain and what happened to it at the gateway."""

    kind: Kind
    op: str
    idempotency_key: str = field(default_factory=lambda: str(uuid.uuid4()))
    accepted: bool = False
    request_ids: list[str] = field(default_factory=list)  # one per 202 (more than one: accepted twice)
    attempts: int = 0
    ambiguous_resends: int = 0  # resent after an answer that never came (the first may have been queued)
    refused: str | None = None  # a 4xx from the gateway, or the client gave up
    first_sent: float | None = None  # monotonic time of the first attempt
    pause: float = 0.1  # the next wait before a resend (grows)
    ambiguous: bool = False  # the last attempt's answer was lost

    @property
    def route(self) -> tuple[str, str]:
        return (
            ("DELETE", "/v1/contacts")
            if self.kind == "delete"
            else (("POST", "/v1/events") if self.kind == "event" else ("POST", "/v1/contacts"))
        )


@dataclass
class Customer:
    index: int
    email: str
    pattern: str  # "U" for a one-upsert customer, "UE" with an event, else one of PATTERNS
    steps: list[Step]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def data(self, step: Step) -> dict[str, Any]:
        """The record of one step: an upsert carries every mapped attribute, a delete only the e-mail."""
        if step.kind == "delete":
            return {"email": self.email}
        if step.kind == "event":
            return {"email": self.email, "event": "chaos_ping", "op": step.op}
        number = int(step.op.rsplit(".", 1)[1])
        return {
            "email": self.email,
            "first_name": f"Chaos{self.index}",
            "city": CITIES[number % len(CITIES)],
            "op": step.op,
            "tags": ["chaos"],
        }


def plan(records: int, interleaved: float, events: float, rng: random.Random, run_id: str) -> list[Customer]:
    """Customers whose chains add up to ``records`` requests; ``interleaved`` and ``events`` are shares of
    customers. The list is shuffled, so interleaved chains are spread over the whole run."""
    customers: list[Customer] = []
    total = 0
    while total < records:
        index = len(customers)
        draw = rng.random()
        if draw < interleaved:
            pattern = rng.choice(PATTERNS)
        elif draw < interleaved + events:
            pattern = "UE"
        else:
            pattern = "U"
        pattern = pattern[: records - total]
        kinds: dict[str, Kind] = {"U": "upsert", "D": "delete", "E": "event"}
        steps = [Step(kinds[letter], f"op:{index:06d}.{number}") for number, letter in enumerate(pattern)]
        customers.append(Customer(index, f"chaos-{run_id}-{index:06d}@example.com", pattern, steps))
        total += len(steps)
    rng.shuffle(customers)
    return customers
