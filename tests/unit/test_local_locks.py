"""Token leases in the embedded stack (SQLite): the same rules as on DynamoDB, across connections."""

from __future__ import annotations

from pathlib import Path

from forwarder_local.stores import LocalLocks


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_two_processes_on_one_state_folder_share_the_leases(tmp_path: Path) -> None:
    clock = Clock()
    first, second = LocalLocks(tmp_path / "locks.db", clock), LocalLocks(tmp_path / "locks.db", clock)
    assert first.acquire("token/a", "one", 30)
    assert not second.acquire("token/a", "two", 30)
    first.release("token/a", "one")
    assert second.acquire("token/a", "two", 30)


def test_a_lease_runs_out_and_a_stale_release_is_ignored(tmp_path: Path) -> None:
    clock = Clock()
    locks = LocalLocks(tmp_path / "locks.db", clock)
    assert locks.acquire("token/a", "dead", 30)
    clock.now += 31
    assert locks.acquire("token/a", "alive", 30)
    locks.release("token/a", "dead")
    assert not locks.acquire("token/a", "third", 30)
