"""The `forwarder` CLI's smaller commands, each as an operator runs it: trail, secrets, --version, run."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from forwarder.messages import Rejection
from forwarder_local.cli import main
from forwarder_local.queue import DurableQueueStore
from forwarder_local.stack import QUEUES


def put_rejection(state: Path, rejection: Rejection) -> None:
    state.mkdir(parents=True, exist_ok=True)
    store = DurableQueueStore(state / "queues.db")
    try:
        for spec in QUEUES:
            store.create_queue(spec)
        store.send("rejects", rejection.model_dump_json())
    finally:
        store.close()


def test_trail_rejects_shows_the_reasons_always_and_the_record_only_on_request(tmp_path: Path) -> None:
    # given a record rejected at validate, with two problems
    state = tmp_path / "state"
    put_rejection(
        state,
        Rejection(
            request_id="r-1",
            group_key="demo",
            stage="validate",
            integration="expertsender",
            operation="upsert_contact",
            reason="the record does not map to ExpertSender CDP (upsert_contact)",
            errors=["attribute 'email' is required", "birthdate: '31.02.1990' is not a date"],
            record={"first_name": "Nobody", "birthdate": "31.02.1990"},
        ),
    )
    # when the operator lists the rejects
    listed = CliRunner().invoke(main, ["trail", "rejects", "--state-dir", str(state)])
    # then each problem is shown, but not the record
    assert listed.exit_code == 0, listed.output
    assert "the record does not map to ExpertSender CDP" in listed.output
    assert "attribute 'email' is required" in listed.output
    assert "is not a date" in listed.output
    assert "Nobody" not in listed.output and "record:" not in listed.output
    # and --show-data adds the record
    detailed = CliRunner().invoke(main, ["trail", "rejects", "--state-dir", str(state), "--show-data"])
    assert '"first_name": "Nobody"' in detailed.output
