"""The `forwarder` CLI's smaller commands, each as an operator runs it: trail, secrets, --version, run."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from forwarder.messages import Rejection
from forwarder_local.cli import main
from forwarder_local.queue import DurableQueueStore
from forwarder_local.stack import QUEUES
from forwarder_local.stores import LocalSecretStore


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
    # and the value a problem quotes is masked (it is the customer's data)
    assert "birthdate: '…' is not a date" in listed.output
    assert "31.02.1990" not in listed.output
    assert "Nobody" not in listed.output and "record:" not in listed.output
    # and --show-data adds the record and the quoted values
    detailed = CliRunner().invoke(main, ["trail", "rejects", "--state-dir", str(state), "--show-data"])
    assert '"first_name": "Nobody"' in detailed.output
    assert "birthdate: '31.02.1990' is not a date" in detailed.output


def test_version_says_which_forwarder_this_is() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"forwarder, version {version('forwarder')}"


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports nothing listens on."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count < 65_000 and all(_free(first + offset) for offset in range(count)):
            return first
    raise AssertionError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_busy_gateway_port_is_named_with_the_option_that_moves_it(tmp_path: Path) -> None:
    port = free_ports(1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = CliRunner().invoke(
            main, ["run", "--port", str(port), "--no-sandboxes", "--state-dir", str(tmp_path / "state")]
        )
    assert result.exit_code == 1
    assert f"port {port} (the gateway) is in use" in result.output
    assert "--port" in result.output


def test_a_busy_sandbox_port_is_named_with_the_sandbox_option(tmp_path: Path) -> None:
    # given the port DM Hub's sandbox would take (the ExpertSender sandbox's + 1) in use
    first = free_ports(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first + 1))
        busy.listen()
        result = CliRunner().invoke(
            main,
            ["run", "--port", "0", "--sandbox-port", str(first), "--state-dir", str(tmp_path / "state")],
        )
    # then the message names that port, the sandbox using it, and --sandbox-port, not --port
    assert result.exit_code == 1
    assert f"port {first + 1} (the Convertlab DM Hub sandbox) is in use" in result.output
    assert "--sandbox-port" in result.output and "try --port" not in result.output


def test_make_run_passes_args_to_forwarder_run(repo_root: Path) -> None:
    dry = subprocess.run(
        ["make", "-n", "run", "ARGS=--port 9090 --verbose"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "forwarder run --port 9090 --verbose" in dry.stdout


SHIPPED = Path(__file__).resolve().parents[2] / "config" / "forwarder.yaml"


def secrets_set(state: Path, *args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(
        main, ["secrets", "set", *args, "--state-dir", str(state), "--config", str(SHIPPED)], input=input
    )


def test_secrets_set_stores_an_integration_secret_from_stdin_and_never_shows_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # given a secret the stack had pointed at its sandbox (with a token it fetched)
    LocalSecretStore(state / "secrets.json").put(
        "forwarder/demo/dmhub", {"app_id": "old", "secret": "old", "access_token": "t", "sandbox": True}
    )
    # when the operator sets the DM Hub app's credentials, piped in
    result = secrets_set(
        state, "forwarder/demo/dmhub", input='{"app_id": "cl0001", "secret": "s3cr3t-value"}'
    )
    # then the store holds exactly them, and nothing printed quotes a value
    assert result.exit_code == 0, result.output
    stored = LocalSecretStore(state / "secrets.json").get("forwarder/demo/dmhub")
    assert stored == {"app_id": "cl0001", "secret": "s3cr3t-value"}
    assert "s3cr3t-value" not in result.output and "cl0001" not in result.output
    assert "keys: app_id, secret" in result.output and "integration 'dmhub'" in result.output


def test_a_hook_secret_set_by_hand_lists_as_active_since_it_was_set(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = secrets_set(state, "forwarder/hooks/newsletter", "--value", '{"secret": "f0rm-t0ken-value"}')
    assert result.exit_code == 0, result.output
    stored = LocalSecretStore(state / "secrets.json").get("forwarder/hooks/newsletter")
    assert stored is not None and stored["secret"] == "f0rm-t0ken-value" and stored["created_at"]
    listed = CliRunner().invoke(main, ["hooks", "list", "--state-dir", str(state)])
    line = next(line for line in listed.output.splitlines() if "newsletter" in line)
    assert f"active since {stored['created_at']}" in line, listed.output


def test_secrets_set_refuses_a_value_without_the_keys_the_integration_needs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = secrets_set(state, "forwarder/demo/expertsender", "--value", '{"apikey": "typo-d-key"}')
    assert result.exit_code == 1
    assert "needs api_key" in result.output and "missing or empty: api_key" in result.output
    assert "typo-d-key" not in result.output
    assert not (state / "secrets.json").exists()
    not_json = secrets_set(state, "forwarder/demo/expertsender", input="api_key=abc")
    assert not_json.exit_code == 1 and "is not JSON" in not_json.output and "abc" not in not_json.output


def test_secrets_set_refuses_a_name_no_integration_uses(tmp_path: Path) -> None:
    result = secrets_set(tmp_path / "state", "forwarder/demo/expertsendr", "--value", '{"api_key": "k"}')
    assert result.exit_code == 1
    assert "no integration or hook" in result.output and "forwarder/demo/expertsender" in result.output


def preview(*args: str) -> Any:
    return CliRunner().invoke(main, ["config", "preview", str(SHIPPED), "-g", "demo", *args])


def test_config_preview_shows_the_vendor_requests_a_record_causes(tmp_path: Path) -> None:
    # when a record is previewed against the shipped config (ExpertSender, DM Hub, CareCloud)
    result = preview("--set", "email=jane@example.com", "--set", "first_name=Jane", "--set", 'tags=["vip"]')
    # then each integration shows the HTTP requests its vendor would receive, as the integration sends them
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    by_integration = {item["integration"]: item for item in shown["deliveries"]}
    assert set(by_integration) == {"expertsender", "dmhub", "carecloud"}
    expertsender = by_integration["expertsender"]["requests"]
    assert [(request["method"], request["url"]) for request in expertsender] == [
        ("POST", "https://api.ecdp.app/customers")
    ]
    assert expertsender[0]["body"]["data"][0]["email"] == "jane@example.com"
    assert expertsender[0]["body"]["mode"] == "AddOrUpdate"
    carecloud = by_integration["carecloud"]["requests"]
    created = [request for request in carecloud if request["method"] == "POST"]
    assert created and created[0]["body"]["customer"]["personal_information"]["email"] == "jane@example.com"
    assert all(item["outcome"] == "delivered" for item in shown["deliveries"])
    # and no token request, nor any credential, is shown
    sent = [request for item in shown["deliveries"] for request in item["requests"]]
    assert not [request["url"] for request in sent if "token" in request["url"].lower()]
    tokens = [
        value for request in sent for name, value in request.get("query", {}).items() if "token" in name
    ]
    assert tokens and all(value == ["***"] for value in tokens)


def test_config_preview_fails_when_every_integration_would_reject_the_record() -> None:
    result = preview("--set", "first_name=Nobody")
    assert result.exit_code == 1
    shown = json.loads(result.output[: result.output.rindex("}") + 1])
    assert shown["deliveries"] == [] and len(shown["rejections"]) == 3
    assert "every integration would reject this record" in result.output


def commands(command: click.Command, path: str = "forwarder") -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from commands(sub, f"{path} {name}")


def test_every_command_has_help_with_an_example_and_every_option_says_what_it_does() -> None:
    undocumented = [
        f"{path} {param.opts[0]}"
        for path, command in commands(main)
        for param in command.params
        if isinstance(param, click.Option) and not param.help and param.name not in ("help", "version")
    ]
    without_example = [path for path, command in commands(main) if "Example:" not in (command.help or "")]
    assert undocumented == [], "options without help"
    assert without_example == [], "commands without an example"
    # and --help shows the example as written (one per line, not rewrapped)
    shown = CliRunner().invoke(main, ["send", "--help"]).output
    assert "\n    forwarder send contacts -g demo --file customers.csv --concurrency 8 --rate 50\n" in shown


def test_run_takes_the_retry_horizon_from_its_option_or_the_environment(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # the embedded stack dead-letters after the horizon: an operator shortens it to try dead letters and replay
    import forwarder_local.stack as stack_module

    started: list[Any] = []

    class Started(Exception):
        pass

    class Recorder:
        def __init__(self, options: Any) -> None:
            started.append(options)

        def start(self) -> Any:
            raise Started

    monkeypatch.setattr(stack_module, "EmbeddedStack", Recorder)
    monkeypatch.setattr("forwarder_local.cli._check_ports", lambda options: None)
    state = ["--state-dir", str(tmp_path / "state")]
    with_option = CliRunner().invoke(main, ["run", *state, "--retry-horizon-seconds", "60"])
    assert isinstance(with_option.exception, Started), with_option.output
    from_env = CliRunner().invoke(main, ["run", *state], env={"FORWARDER_RETRY_HORIZON_SECONDS": "90"})
    assert isinstance(from_env.exception, Started), from_env.output
    default = CliRunner().invoke(main, ["run", *state], env={"FORWARDER_RETRY_HORIZON_SECONDS": None})
    assert isinstance(default.exception, Started), default.output
    assert [options.retry_horizon_seconds for options in started] == [60, 90, 4 * 3600]
