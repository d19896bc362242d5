"""The figures of ``make chaos``: read the sandboxes' final state and the queues, judge every customer.

Definitions (chaos/README.md says the same in prose). For one integration, a customer's *chain* is its accepted
requests that the integration handles (CareCloud has no delete), in the order the gateway accepted them.

* **expected**: the chain's last request says the final state: an upsert with op X -> present holding X; a
  delete -> absent.
* **lost**: the final state lacks the last request and that request never took effect: an upsert X whose
  effect is not in the vendor's ledger (the vendor never applied it), or a final delete the forwarder gave up
  on (dead-lettered, rejected, still queued) while the customer is present. An accepted event that DM Hub
  never recorded is lost too. Each is split by cause: dead-lettered, rejected, unaccounted. A last request
  still on a queue when the run stops waiting is not judged: it counts as *queued*.
* **out of order**: the last request did take effect, and something older landed after it: the vendor
  applied upsert X (its ledger says so) but holds older data or nothing (an older delete came after), or the
  forwarder delivered the final delete but the customer is present (an older upsert came after).
* **duplicate effects**: from the vendors' effects ledgers, every (kind, key) applied more than once counts
  ``count - 1``; DM Hub events count per client request (op), since a request the gateway accepted twice has
  two request ids, so two ``externalId`` s.
* **delivered**: upserts and events applied at least once (ledger); deletes the forwarder settled (not
  dead-lettered, rejected nor still queued: the vendor removed the customer or answered it was absent).
* **vendor calls per record**: the sandbox's persisted request counter (every vendor request it answered,
  faults included, across kills) over the records accepted for that integration.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from workload import Customer, Kind, Step

from forwarder_local.sandboxes.framework import op_marker

INTEGRATIONS = ("expertsender", "dmhub", "carecloud")
HANDLES: dict[str, frozenset[Kind]] = {
    "expertsender": frozenset({"upsert", "delete"}),
    "dmhub": frozenset({"upsert", "delete", "event"}),
    "carecloud": frozenset({"upsert"}),
}
PAGE = 1000
CARECLOUD_BASE = "/webservice/rest-api/customer-interface/v1.0"


# --- reading what is there ------------------------------------------------------------------------------


@dataclass
class SandboxView:
    """One sandbox's final state: customers by e-mail (the op their data came from), ledger, counters."""

    name: str
    customers: dict[str, str | None]
    effects: dict[tuple[str, str], int]
    counters: dict[str, Any]
    events_by_op: Counter[str] = field(default_factory=Counter)
    twins: int = 0  # customers sharing an e-mail with another (DM Hub does not keep e-mails unique)


def _collection(url: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = requests.get(
            f"{url}/_sandbox/state/{name}", params={"offset": offset, "limit": PAGE}, timeout=60
        ).json()
        items.extend(page["items"])
        offset = page["next_offset"]
    return items


def _email(name: str, customer: dict[str, Any]) -> str | None:
    holder = customer.get("personal_information", {}) if name == "carecloud" else customer
    value = holder.get("email")
    return str(value).lower() if value else None


def read_sandbox(name: str, url: str) -> SandboxView:
    customers: dict[str, str | None] = {}
    twins = 0
    for customer in _collection(url, "customers"):
        email = _email(name, customer)
        if email is None:
            continue
        twins += email in customers
        customers[email] = op_marker(customer)
    effects = {(item["kind"], item["key"]): int(item["count"]) for item in _collection(url, "effects")}
    counters = requests.get(f"{url}/_sandbox/counters", timeout=60).json()
    view = SandboxView(name, customers, effects, counters, twins=twins)
    if name == "dmhub":
        view.events_by_op = Counter(
            str(event.get("targetName")) for event in _collection(url, "events") if event.get("targetName")
        )
    return view


@dataclass
class QueueView:
    depth: Counter[str]
    dead_letters: dict[str, list[tuple[str, str]]]  # integration -> [(request id, reason)]
    rejections: dict[str | None, list[tuple[str, str]]]  # integration (None: all of them) -> [(id, reason)]
    pending: dict[str | None, set[str]]  # request ids still queued, by integration (None: before validate)


def read_queues(path: Path) -> QueueView:
    """The queues file, opened read-only (the stack may still be running)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT queue, body FROM messages").fetchall()
    finally:
        conn.close()
    view = QueueView(Counter(), {}, {}, {})
    for queue, body in rows:
        view.depth[queue] += 1
        try:
            document = json.loads(body)
        except ValueError:
            continue
        kind = document.get("kind")
        if queue == "delivery-dlq" and kind == "dead_letter":
            delivery = document["delivery"]
            view.dead_letters.setdefault(delivery["integration"], []).append(
                (delivery["request_id"], str(document.get("reason", "")))
            )
        elif queue == "delivery-dlq" and kind == "delivery":  # redriven by the queue itself: no reason
            view.dead_letters.setdefault(document["integration"], []).append(
                (document["request_id"], "redriven by the queue after repeated crashes (no reason)")
            )
        elif queue == "rejects" and kind == "rejection":
            view.rejections.setdefault(document.get("integration"), []).append(
                (document["request_id"], str(document.get("reason", "")))
            )
        elif queue in ("ingest", "ingest-dlq"):
            view.pending.setdefault(None, set()).add(str(document.get("request_id")))
        elif queue == "delivery":
            view.pending.setdefault(document.get("integration"), set()).add(str(document.get("request_id")))
    return view


# --- judging it -----------------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one integration shows at the end of the run."""

    name: str
    accepted: int = 0
    delivered: int = 0
    lost: Counter[str] = field(default_factory=Counter)  # by cause
    queued: int = 0  # customers (and events) whose last request is still on a queue: not judged
    out_of_order: Counter[str] = field(default_factory=Counter)  # by kind of contradiction
    duplicates: Counter[str] = field(default_factory=Counter)  # by effect kind
    duplicates_after_resend: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    reject_reasons: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    faulted: int = 0
    slow: int = 0
    by_route: dict[str, int] = field(default_factory=dict)
    twins: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def calls_per_record(self) -> float:
        return self.requests / self.accepted if self.accepted else 0.0

    def example(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)


def _reason(text: str) -> str:
    """A reason short enough to group by (ids and e-mails removed)."""
    text = re.sub(r"\S+@\S+", "<email>", text)
    text = re.sub(r"\b[0-9a-f]{16,}\b", "<id>", text)
    return text if len(text) <= 110 else text[:107] + "..."


def judge(
    customers: Iterable[Customer], sandboxes: dict[str, SandboxView], queues: QueueView
) -> list[Figures]:
    all_customers = list(customers)
    figures = []
    for name in INTEGRATIONS:
        view = sandboxes[name]
        result = Figures(name, twins=view.twins)
        dead = {request_id for request_id, _ in queues.dead_letters.get(name, [])}
        rejected = {request_id for key in (name, None) for request_id, _ in queues.rejections.get(key, [])}
        pending = queues.pending.get(name, set()) | queues.pending.get(None, set())

        def status(
            step: Step, dead: set[str] = dead, rejected: set[str] = rejected, pending: set[str] = pending
        ) -> str:
            ids = set(step.request_ids)
            if ids & dead:
                return "dead-lettered"
            if ids & rejected:
                return "rejected"
            if ids & pending:
                return "still queued"
            return "settled"

        def applied(customer: Customer, step: Step, view: SandboxView = view) -> bool:
            return view.effects.get(("upsert", f"{customer.email}|{step.op}"), 0) > 0

        for customer in all_customers:
            chain = [step for step in customer.steps if step.accepted and step.kind in HANDLES[name]]
            result.accepted += len(chain)
            for step in chain:
                if step.kind == "upsert":
                    result.delivered += applied(customer, step)
                elif step.kind == "delete":
                    result.delivered += status(step) == "settled"
                elif view.events_by_op[step.op] > 0:
                    result.delivered += 1
                elif status(step) == "still queued":
                    result.queued += 1
                else:
                    cause = status(step)
                    result.lost["event: " + ("unaccounted" if cause == "settled" else cause)] += 1
            writes = [step for step in chain if step.kind != "event"]
            if not writes:
                continue
            last = writes[-1]
            present = customer.email in view.customers
            holds = view.customers.get(customer.email)
            told = f"{customer.email} ({customer.pattern}, {len(writes)} writes)"
            if last.kind == "upsert":
                if present and holds == last.op:
                    continue
                if applied(customer, last):
                    what = (
                        "absent after its last upsert" if not present else "older data after its last upsert"
                    )
                    result.out_of_order[what] += 1
                    result.example(
                        f"out of order: {told} ends {'absent' if not present else holds}, expected {last.op}"
                    )
                elif status(last) == "still queued":
                    result.queued += 1
                else:
                    cause = status(last)
                    result.lost["upsert: " + ("unaccounted" if cause == "settled" else cause)] += 1
                    result.example(f"lost: {told} last upsert {last.op} never applied ({cause})")
            elif present:
                cause = status(last)
                if cause == "settled":
                    result.out_of_order["present after its last delete"] += 1
                    result.example(f"out of order: {told} present with {holds} after its last delete")
                elif cause == "still queued":
                    result.queued += 1
                else:
                    result.lost[f"delete: {cause}"] += 1
                    result.example(f"lost: {told} last delete never applied ({cause})")
        resent_ops = {
            step.op for customer in all_customers for step in customer.steps if step.ambiguous_resends
        }
        for (kind, key), count in view.effects.items():
            if kind == "event" or count < 2:
                continue
            result.duplicates[kind] += count - 1
            if key.rsplit("|", 1)[-1] in resent_ops:
                result.duplicates_after_resend += count - 1
        for op, count in view.events_by_op.items():
            if count > 1:
                result.duplicates["event"] += count - 1
                result.duplicates_after_resend += (count - 1) if op in resent_ops else 0
        letters = queues.dead_letters.get(name, [])
        result.dead_lettered = len(letters)
        result.dead_letter_reasons = Counter(_reason(reason) for _, reason in letters)
        rejections = queues.rejections.get(name, [])
        result.rejected = len(rejections)
        result.reject_reasons = Counter(_reason(reason) for _, reason in rejections)
        counters = view.counters
        result.requests = int(counters.get("requests", 0))
        result.faulted = int(counters.get("faulted", 0))
        result.slow = int(counters.get("slow", 0))
        result.by_route = dict(counters.get("by_route", {}))
        figures.append(result)
    return figures


def failed(figures: Iterable[Figures]) -> bool:
    return any(
        sum(item.lost.values()) or sum(item.duplicates.values()) or sum(item.out_of_order.values())
        for item in figures
    )


# --- printing it ----------------------------------------------------------------------------------------


def table(figures: list[Figures]) -> str:
    head = (
        f"{'integration':<13}{'accepted':>10}{'delivered':>11}{'lost':>7}{'dup effects':>13}"
        f"{'out of order':>14}{'dead-lettered':>15}{'rejected':>10}{'queued':>8}{'calls/record':>14}{'faulted':>9}"
    )
    lines = [head, "-" * len(head)]
    totals = Figures("total")
    for item in figures:
        lines.append(_row(item))
        totals.accepted += item.accepted
        totals.delivered += item.delivered
        totals.lost.update(item.lost)
        totals.duplicates.update(item.duplicates)
        totals.out_of_order.update(item.out_of_order)
        totals.dead_lettered += item.dead_lettered
        totals.rejected += item.rejected
        totals.queued += item.queued
        totals.requests += item.requests
        totals.faulted += item.faulted
    lines.append("-" * len(head))
    lines.append(_row(totals))
    return "\n".join(lines)


def _row(item: Figures) -> str:
    share = f"{item.faulted / item.requests:.0%}" if item.requests else "-"
    return (
        f"{item.name:<13}{item.accepted:>10,}{item.delivered:>11,}{sum(item.lost.values()):>7,}"
        f"{sum(item.duplicates.values()):>13,}{sum(item.out_of_order.values()):>14,}{item.dead_lettered:>15,}"
        f"{item.rejected:>10,}{item.queued:>8,}{item.calls_per_record:>14.2f}{share:>9}"
    )


def details(figures: list[Figures]) -> str:
    lines: list[str] = []
    for item in figures:
        parts = []
        if item.lost:
            parts.append("lost: " + _counts(item.lost))
        if item.out_of_order:
            parts.append("out of order: " + _counts(item.out_of_order))
        if item.duplicates:
            parts.append(
                "duplicate effects: "
                + _counts(item.duplicates)
                + f" (of which {item.duplicates_after_resend} of requests the client resent)"
            )
        if item.dead_letter_reasons:
            parts.append(
                "dead-lettered, top reasons: "
                + "; ".join(
                    f"{count} x {reason}" for reason, count in item.dead_letter_reasons.most_common(3)
                )
            )
        if item.reject_reasons:
            parts.append(
                "rejected, top reasons: "
                + "; ".join(f"{count} x {reason}" for reason, count in item.reject_reasons.most_common(3))
            )
        routes = sorted(item.by_route.items(), key=lambda pair: -pair[1])[:6]
        parts.append(
            f"vendor requests {item.requests:,} ({item.faulted:,} faulted, {item.slow:,} slow past the read "
            "timeout): "
            + ", ".join(f"{route.replace(CARECLOUD_BASE, '')} {count:,}" for route, count in routes)
        )
        if item.twins:
            parts.append(f"{item.twins} customer(s) share an e-mail with another")
        parts.extend(item.examples)
        lines.append(f"{item.name}:")
        lines.extend(f"  {part}" for part in parts)
    return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in counter.most_common())
