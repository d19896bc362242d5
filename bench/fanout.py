"""Section 5 of the bench: the shipped config's fan-out, one record to ExpertSender, DM Hub and CareCloud.

The embedded stack runs ``config/forwarder.yaml`` (the demo group key: three vendors, tags as DM Hub lists,
a CareCloud property record). Client threads in this process send N signed contacts; the run reports the
records/s until every sandbox holds every customer, the vendor requests each record cost at each vendor, and
how many tokens the token vendors issued (one each: the token is shared by every delivery).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

REGION = "eu-central-1"


class _Table(Protocol):
    def add(self, section: str, name: str, per_op: str = "", rate: str = "", note: str = "") -> None: ...


def _record(index: int, run_id: str) -> dict[str, Any]:
    return {
        "email": f"fan{index}-{run_id}@example.com",
        "first_name": "Fan",
        "city": "Oslo",
        "tags": ["bench", f"cohort-{index % 5}"],
        "loyalty_tier": "gold",
    }


def bench_fanout(table: _Table, tmp: Path, records: int, threads: int, timeout_s: float) -> None:
    import requests
    from requests_aws4auth import AWS4Auth

    from forwarder_local.sandboxes.carecloud import CareCloudSandbox
    from forwarder_local.sandboxes.dmhub import DmHubSandbox
    from forwarder_local.stack import DEFAULT_CONFIG, EmbeddedStack, StackOptions

    section = "5 fan-out to 3 vendors"
    stack = EmbeddedStack(
        StackOptions(
            state_dir=tmp / "fanout-state",
            config_path=DEFAULT_CONFIG,
            port=0,
            sandbox_port=0,
            poll_window_seconds=0.05,
            region=REGION,  # the gateway refuses credentials scoped to another region
        )
    ).start()
    try:
        client = stack.first_client()
        assert client is not None and stack.gateway is not None
        _, group_key, access_key, secret = client
        url = stack.gateway.url + "/v1/contacts"
        dmhub, carecloud = stack.sandboxes["dmhub"], stack.sandboxes["carecloud"]
        assert isinstance(dmhub, DmHubSandbox) and isinstance(carecloud, CareCloudSandbox)
        run_id = f"{time.time_ns():x}"
        statuses: Counter[int] = Counter()
        lock = threading.Lock()

        def send(start: int) -> None:
            with requests.Session() as session:
                auth = AWS4Auth(access_key, secret, REGION, "execute-api")
                for index in range(start, records, threads):
                    response = session.post(
                        url,
                        json={"group_key": group_key, "data": _record(index, run_id)},
                        auth=auth,
                        timeout=30,
                    )
                    with lock:
                        statuses[response.status_code] += 1

        before = {name: len(sandbox.requests) for name, sandbox in stack.sandboxes.items()}
        t0 = time.perf_counter()
        senders = [threading.Thread(target=send, args=(offset,)) for offset in range(threads)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        accepted = time.perf_counter() - t0
        deadline = t0 + timeout_s

        def counts() -> dict[str, int]:
            return {name: len(sandbox.state.items("customers")) for name, sandbox in stack.sandboxes.items()}

        reached = counts()
        while min(reached.values()) < records and time.perf_counter() < deadline:
            time.sleep(0.1)
            reached = counts()
        e2e = time.perf_counter() - t0
        done = min(reached.values())
        table.add(
            section,
            f"accepted at gateway ({threads} threads)",
            "",
            f"{statuses[202] / accepted:,.0f} req/s",
            f"{dict(statuses)} of {records:,}",
        )
        table.add(
            section,
            "end to end (request -> all 3 sandboxes)",
            "",
            f"{done / e2e:,.0f} rec/s",
            ("all" if done >= records else f"GAVE UP at {reached}") + f" in {e2e:.2f} s",
        )
        for name, sandbox in stack.sandboxes.items():
            calls = Counter(
                f"{request.method} {_route(request.path)}" for request in sandbox.requests[before[name] :]
            )
            total = sum(calls.values())
            common = ", ".join(f"{route} {count:,}" for route, count in calls.most_common(4))
            table.add(
                section, f"{name}: vendor requests per record", f"{total / max(done, 1):.2f}", "", common
            )
        table.add(
            section,
            "tokens issued (DM Hub / CareCloud)",
            f"{dmhub.token_requests()} / {carecloud.token_requests()}",
            "",
            "one per token vendor: shared by every delivery",
        )
    finally:
        stack.stop()


def _route(path: str) -> str:
    """``/v1/customers/12`` -> ``/v1/customers/{id}``: group requests by route, not by record."""
    parts = [
        "{id}" if part.isdigit() or (len(part) >= 16 and part.isalnum() and not part.isalpha()) else part
        for part in path.split("/")
    ]
    return "/".join(parts).replace("/webservice/rest-api/customer-interface/v1.0", "")
