"""``make chaos`` judges final states honestly: each kind of contradiction is told apart (chaos/measure.py)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "chaos"))

import measure
from workload import Customer, Step


def customer(index: int, pattern: str, accepted: int | None = None) -> Customer:
    kinds = {"U": "upsert", "D": "delete", "E": "event"}
    steps = [
        Step(kinds[letter], f"op:{index:06d}.{number}", request_ids=[f"r{index}.{number}"])  # type: ignore[arg-type]
        for number, letter in enumerate(pattern)
    ]
    for number, step in enumerate(steps):
        step.accepted = accepted is None or number < accepted
    return Customer(index, f"c{index}@example.com", pattern, steps)


def view(name: str, customers: dict[str, str | None], applied: dict[str, int]) -> measure.SandboxView:
    effects = {("upsert", key): count for key, count in applied.items()}
    return measure.SandboxView(name, customers, effects, {"requests": 10, "faulted": 2})


def test_each_final_state_is_judged_ok_lost_or_out_of_order() -> None:
    # given chains whose final states at ExpertSender say different things
    people = [
        customer(1, "U"),  # applied twice, present: fine, but a duplicate effect
        customer(2, "UDU"),  # the last upsert was applied, then the first one landed again: out of order
        customer(3, "UD"),  # the delete was delivered, yet the customer is there: out of order
        customer(4, "U"),  # never applied, dead-lettered: lost
        customer(5, "UD"),  # the delete was dead-lettered and the customer is there: lost
        customer(6, "U"),  # applied, yet absent: out of order (an older delete came after)
        customer(
            7, "UDU", accepted=2
        ),  # the last request was never accepted: judged on the delete, absent: fine
    ]
    expertsender = view(
        "expertsender",
        {
            "c1@example.com": "op:000001.0",
            "c2@example.com": "op:000002.0",
            "c3@example.com": "op:000003.0",
            "c5@example.com": "op:000005.0",
        },
        {
            "c1@example.com|op:000001.0": 3,
            "c2@example.com|op:000002.0": 1,
            "c2@example.com|op:000002.2": 1,
            "c3@example.com|op:000003.0": 1,
            "c5@example.com|op:000005.0": 1,
            "c6@example.com|op:000006.0": 1,
            "c7@example.com|op:000007.0": 1,
        },
    )
    dmhub = view("dmhub", {}, {})
    carecloud = view("carecloud", {"c3@example.com": "op:000003.0"}, {"c3@example.com|op:000003.0": 1})
    queues = measure.QueueView(
        Counter(),
        {"expertsender": [("r4.0", "503 from the vendor"), ("r5.1", "503 from the vendor")]},
        {},
        {},
    )
    # when the run is judged
    figures = {
        item.name: item
        for item in measure.judge(
            people, {"expertsender": expertsender, "dmhub": dmhub, "carecloud": carecloud}, queues
        )
    }
    # then ExpertSender shows each contradiction under its name
    es = figures["expertsender"]
    assert es.out_of_order == Counter(
        {
            "older data after its last upsert": 1,
            "present after its last delete": 1,
            "absent after its last upsert": 1,
        }
    )
    assert es.lost == Counter({"upsert: dead-lettered": 1, "delete: dead-lettered": 1})
    assert es.duplicates == Counter({"upsert": 2})
    assert es.dead_lettered == 2 and es.dead_letter_reasons == Counter({"503 from the vendor": 2})
    assert es.accepted == 12 and es.calls_per_record == 10 / 12
    # and CareCloud, which has no delete, expects c3 present with its upsert (fine there); it holds no other
    cc = figures["carecloud"]
    assert cc.accepted == 8 and cc.out_of_order == Counter()
    assert cc.lost == Counter({"upsert: unaccounted": 6})  # every customer but c3
    # and DM Hub, which holds none of them, lost every last upsert (a last delete finds them absent: fine)
    assert figures["dmhub"].lost == Counter({"upsert: unaccounted": 4})  # c1, c2, c4, c6; deletes: absent
    assert measure.failed(figures.values())


def test_an_event_is_lost_when_dm_hub_never_recorded_it_and_doubled_when_recorded_twice() -> None:
    people = [customer(1, "UE"), customer(2, "UE")]
    dmhub = view(
        "dmhub",
        {"c1@example.com": "op:000001.0", "c2@example.com": "op:000002.0"},
        {"c1@example.com|op:000001.0": 1, "c2@example.com|op:000002.0": 1},
    )
    dmhub.events_by_op = Counter({"op:000001.1": 2})
    empty = view("expertsender", {}, {})
    figures = measure.judge(
        people,
        {"expertsender": empty, "dmhub": dmhub, "carecloud": view("carecloud", {}, {})},
        measure.QueueView(Counter(), {}, {}, {}),
    )
    judged = {item.name: item for item in figures}["dmhub"]
    assert judged.lost == Counter({"event: unaccounted": 1})
    assert judged.duplicates == Counter({"event": 1})
    assert judged.delivered == 3
