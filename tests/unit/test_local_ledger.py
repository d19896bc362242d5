"""The embedded deletion ledger: what a delivered delete blocks, and for how long."""

from __future__ import annotations

from pathlib import Path

from forwarder_local.stores import LocalDeletionLedger

KEY = "demo/expertsender/email:jane@example.com"


def test_a_delete_blocks_only_upserts_received_before_it(tmp_path: Path) -> None:
    ledger = LocalDeletionLedger(tmp_path / "ledger.db")
    ledger.record_deletes({KEY: "2026-11-25T10:00:00.000Z"})
    assert ledger.deleted_since([KEY], "2026-11-25T09:59:59.999Z") == KEY
    assert ledger.deleted_since([KEY], "2026-11-25T10:00:00.000Z") is None
    assert (
        ledger.deleted_since(["demo/expertsender/email:other@example.com"], "2026-01-01T00:00:00.000Z")
        is None
    )


def test_an_older_delete_never_replaces_a_newer_one(tmp_path: Path) -> None:
    ledger = LocalDeletionLedger(tmp_path / "ledger.db")
    ledger.record_deletes({KEY: "2026-11-25T10:00:00.000Z"})
    ledger.record_deletes({KEY: "2026-11-25T08:00:00.000Z"})
    assert ledger.deleted_since([KEY], "2026-11-25T09:00:00.000Z") == KEY


def test_entries_expire_and_survive_a_reopen(tmp_path: Path) -> None:
    now = [1_000_000.0]
    ledger = LocalDeletionLedger(tmp_path / "ledger.db", ttl_days=1, clock=lambda: now[0])
    ledger.record_deletes({KEY: "2026-11-25T10:00:00.000Z"})
    ledger.close()
    reopened = LocalDeletionLedger(tmp_path / "ledger.db", ttl_days=1, clock=lambda: now[0])
    assert reopened.deleted_since([KEY], "2026-11-25T09:00:00.000Z") == KEY
    now[0] += 86_401
    assert reopened.deleted_since([KEY], "2026-11-25T09:00:00.000Z") is None


def test_delivered_upserts_are_kept_apart_from_deletes(tmp_path: Path) -> None:
    ledger = LocalDeletionLedger(tmp_path / "ledger.db")
    ledger.record_deletes({KEY: "2026-11-25T10:00:00.000Z"})
    ledger.record_upserts({KEY: "2026-11-25T11:00:00.000Z"})
    assert ledger.upserted_since([KEY], "2026-11-25T10:00:00.000Z") == KEY
    assert ledger.upserted_since([KEY], "2026-11-25T11:00:00.000Z") is None
    # the upsert is not a delete: what is received after the delete is not superseded by it
    assert ledger.deleted_since([KEY], "2026-11-25T10:30:00.000Z") is None
