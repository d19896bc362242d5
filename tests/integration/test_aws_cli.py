"""The CLI against a deployed stack (``--stack NAME``), on moto: the stack is created in moto's CloudFormation
from template.yaml's queues and outputs, and found with an AWS profile the way an operator's machine finds it.
The API the stack's ``ApiUrl`` names is a real local HTTP server that verifies SigV4 as API Gateway does.

moto has no SQS message move tasks (StartMessageMoveTask, ListMessageMoveTasks): those two calls go through
botocore's Stubber, which checks each request against the SQS API model and answers as SQS documents."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from cfnlint.decode import cfn_yaml
from click.testing import CliRunner
from moto import mock_aws

from forwarder.auth.sigv4 import SignatureError, verify
from forwarder.messages import DeadLetter, DeliveryMessage, Rejection
from forwarder_local import aws_cli
from forwarder_local.aws_cli import (
    QUEUE_OUTPUTS,
    AwsCliError,
    AwsTarget,
    api_url_for_stack,
    execute_api_auth,
    region_for,
    stack_api,
)
from forwarder_local.cli import main
from tests.conftest import REPO_ROOT

STACK = "forwarder-test"
PROFILE = "brand-ops"
REGION = "eu-central-1"  # the profile's: not the tests' default region, nor us-east-1
ACCESS_KEY = "AKIAIOSFODNN7BRANDOPS"
SECRET_KEY = "brand-ops-secret-key-for-tests-only"


# --------------------------------------------------------------------------------------------------
# an operator's machine: an AWS profile, and moto as AWS
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A profile with its keys and region in AWS config files of its own, nothing else in the environment."""
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "config").write_text(
        f"[profile {PROFILE}]\nregion = {REGION}\n\n[profile no-region]\n", encoding="utf-8"
    )
    (tmp_path / "credentials").write_text(
        f"[{PROFILE}]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n\n"
        f"[no-region]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setattr(aws_cli, "PEEK_WAIT_SECONDS", 0)  # moto answers at once; no long poll to wait out
    # moto would put fake keys in the environment: an operator here has only the profile
    with mock_aws(config={"core": {"mock_credentials": False}}):
        yield tmp_path


def _test_stack_template(api_url: str) -> dict[str, Any]:
    """template.yaml's queues (with names: moto needs a FIFO queue's) and the outputs the CLI reads."""
    template = json.loads(json.dumps(cfn_yaml.load(str(REPO_ROOT / "template.yaml"))))
    queues = {
        name: {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                **resource["Properties"],
                **({"QueueName": f"{STACK}-{name}.fifo"} if resource["Properties"].get("FifoQueue") else {}),
            },
        }
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::SQS::Queue"
    }
    outputs = {
        "ApiUrl": {"Value": api_url},
        "ProducerQueueUrl": {"Value": {"Ref": "ProducerQueue"}},
        "ProducerEventBusName": {"Value": "default"},
    }
    for url_output, arn_output in QUEUE_OUTPUTS.values():
        for key in (url_output, arn_output):
            outputs[key] = {"Value": template["Outputs"][key]["Value"]}
    # the queues' encryption depends on the KmsKeyArn parameter (empty: SQS-managed)
    return {
        "Parameters": {"KmsKeyArn": template["Parameters"]["KmsKeyArn"]},
        "Conditions": {"UseCustomerKey": template["Conditions"]["UseCustomerKey"]},
        "Resources": queues,
        "Outputs": outputs,
    }


def deploy(api_url: str = "https://abc123.execute-api.eu-central-1.amazonaws.com/dev") -> dict[str, str]:
    """Create the stack in the profile's region; its outputs."""
    cloudformation = boto3.Session(profile_name=PROFILE).client("cloudformation")
    cloudformation.create_stack(StackName=STACK, TemplateBody=json.dumps(_test_stack_template(api_url)))
    (stack,) = cloudformation.describe_stacks(StackName=STACK)["Stacks"]
    return {item["OutputKey"]: item["OutputValue"] for item in stack["Outputs"]}


def sqs() -> Any:
    return boto3.Session(profile_name=PROFILE).client("sqs")


def forwarder(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------------------------------
# an API that checks SigV4 as API Gateway does
# --------------------------------------------------------------------------------------------------


STATUS_DOCUMENT = {
    "request_id": "r-1",
    "status": "done",
    "group_key": "demo",
    "action": "upsert",
    "received_at": "2026-11-28T10:00:00.000Z",
    "validated_at": "2026-11-28T10:00:01.000Z",
    "integrations": [
        {
            "integration": "expertsender",
            "operation": "upsert_customer",
            "status": "delivered",
            "attempts": 1,
            "updated_at": "2026-11-28T10:00:02.000Z",
        }
    ],
}


class SigningApi:
    """A real HTTP server standing in for the stack's API: verifies each request's signature with the
    profile's secret, records who signed it and for which region, answers 202."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                raw_path, _, raw_query = self.path.partition("?")
                try:
                    caller = verify(
                        method=self.command,
                        raw_path=raw_path,
                        raw_query=raw_query,
                        headers=list(self.headers.items()),
                        body=body,
                        lookup_secret={ACCESS_KEY: SECRET_KEY}.get,
                        now=datetime.now(UTC),
                        region=REGION,
                    )
                except SignatureError as error:
                    api.calls.append({"path": raw_path, "refused": error.code})
                    answer, status = {"message": error.message, "code": error.code}, 403
                else:
                    api.calls.append(
                        {
                            "path": raw_path,
                            "access_key": caller.access_key_id,
                            "region": caller.region,
                            "body": json.loads(body) if body else None,
                        }
                    )
                    answer, status = {"request_id": "r-1", "status": "accepted"}, 202
                    if self.command == "GET" and "/v1/requests/" in raw_path:
                        answer, status = STATUS_DOCUMENT, 200
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        # 127.0.0.2: a loopback address that the CLI does not take for the embedded stack (127.0.0.1)
        self.server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}/dev"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SigningApi:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[SigningApi]:
    with SigningApi() as running:
        yield running


# --------------------------------------------------------------------------------------------------
# finding the stack
# --------------------------------------------------------------------------------------------------


def test_the_api_url_is_the_stacks_output_in_the_profiles_region(operator: Path) -> None:
    deploy("https://abc123.execute-api.eu-central-1.amazonaws.com/dev/")
    assert (
        api_url_for_stack(STACK, None, PROFILE) == "https://abc123.execute-api.eu-central-1.amazonaws.com/dev"
    )
    # the same stack is not found in another region: the region is the profile's, or --region
    with pytest.raises(AwsCliError, match=f"no stack '{STACK}' in region eu-west-1, profile {PROFILE}"):
        api_url_for_stack(STACK, "eu-west-1", PROFILE)


def test_a_missing_profile_or_region_is_refused_with_what_to_do(operator: Path) -> None:
    deploy()
    with pytest.raises(AwsCliError, match="no AWS profile 'nobody'"):
        api_url_for_stack(STACK, None, "nobody")
    # no region anywhere: no default of the tool's (never us-east-1 by accident)
    with pytest.raises(AwsCliError, match="no AWS region: give --region"):
        api_url_for_stack(STACK, None, "no-region")
    assert api_url_for_stack(STACK, REGION, "no-region").startswith("https://")


def test_the_signing_helper_signs_for_the_stacks_region_with_the_profiles_keys(
    operator: Path, api: SigningApi
) -> None:
    import requests

    auth = execute_api_auth(None, PROFILE)
    response = requests.post(f"{api.url}/v1/contacts", json={"ping": 1}, auth=auth, timeout=10)
    assert response.status_code == 202
    assert api.calls[-1]["access_key"] == ACCESS_KEY and api.calls[-1]["region"] == REGION
    # and stack_api gives a command both: the stack's API and an auth for the region the stack is in
    deploy(api.url)
    url, stack_auth = stack_api(STACK, None, PROFILE)
    assert url == api.url
    assert requests.get(f"{url}/v1/requests/r-1", auth=stack_auth, timeout=10).status_code == 200
    assert api.calls[-1] == {
        "path": "/dev/v1/requests/r-1",
        "access_key": ACCESS_KEY,
        "region": REGION,
        "body": None,
    }


# --------------------------------------------------------------------------------------------------
# send --stack
# --------------------------------------------------------------------------------------------------


def test_send_to_a_stack_signs_with_the_profile_for_the_stacks_region(
    operator: Path, api: SigningApi, tmp_path: Path
) -> None:
    # given a stack whose ApiUrl is the API, and an operator with a profile (no keys in the environment)
    deploy(api.url)
    # when a record is sent with --stack and --profile
    result = forwarder(
        "send", "contacts", "-g", "demo", "--stack", STACK, "--profile", PROFILE,
        "--set", "email=jane@example.com", "--state-dir", str(tmp_path / "no-embedded-stack"),
    )  # fmt: skip
    # then the API got it, signed by the profile's key for the stack's region, and the answer is printed
    assert result.exit_code == 0, result.output
    assert "202" in result.output and "r-1" in result.output
    (call,) = api.calls
    assert call["path"] == "/dev/v1/contacts"
    assert call["access_key"] == ACCESS_KEY and call["region"] == REGION
    assert call["body"] == {"data": {"email": "jane@example.com"}, "group_key": "demo"}


def test_send_to_a_stack_follows_aws_profile_like_every_aws_tool(
    operator: Path, api: SigningApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy(api.url)
    monkeypatch.setenv("AWS_PROFILE", PROFILE)
    result = forwarder(
        "send", "event", "-g", "demo", "--stack", STACK, "--set", "email=jane@example.com",
        "--set", "event=purchase", "--state-dir", str(tmp_path / "none"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [(call["path"], call["region"]) for call in api.calls] == [("/dev/v1/events", REGION)]


def test_send_to_a_deployed_url_without_a_region_is_refused_not_signed_for_us_east_1(
    operator: Path, api: SigningApi, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        main,
        ["send", "contacts", "-g", "demo", "--url", api.url, "--profile", "no-region",
         "--set", "email=jane@example.com", "--state-dir", str(tmp_path / "none")],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "no AWS region: give --region" in result.output
    assert api.calls == []


def test_send_as_a_producer_to_an_aws_queue_uses_the_profile_and_its_region(
    operator: Path, tmp_path: Path
) -> None:
    # given a producer queue on AWS, in the profile's region
    queue_url = sqs().create_queue(QueueName="brand-producer")["QueueUrl"]
    # when a record is sent to it as the producer demo-queue, with the profile (no keys in the environment)
    result = forwarder(
        "send", "contacts", "-g", "demo", "--via", "sqs", "--queue-url", queue_url, "--source", "demo-queue",
        "--profile", PROFILE, "--set", "email=jane@example.com", "--state-dir", str(tmp_path / "none"),
    )  # fmt: skip
    # then it is on that queue, with the producer's attributes
    assert result.exit_code == 0, result.output
    (message,) = sqs().receive_message(QueueUrl=queue_url, MessageAttributeNames=["All"])["Messages"]
    assert json.loads(message["Body"]) == {"group_key": "demo", "data": {"email": "jane@example.com"}}
    assert message["MessageAttributes"]["source"]["StringValue"] == "demo-queue"


def test_send_as_a_producer_to_a_stack_uses_its_producer_queue(operator: Path, tmp_path: Path) -> None:
    # given a deployed stack (its ProducerQueue and output)
    outputs = deploy()
    # when a record is sent through it as a producer, naming only the stack
    result = forwarder(
        "send", "contacts", "-g", "demo", "--via", "sqs", "--stack", STACK, "--source", "demo-queue",
        "--profile", PROFILE, "--set", "email=jane@example.com", "--state-dir", str(tmp_path / "none"),
    )  # fmt: skip
    # then it is on the stack's producer queue, with the producer's attributes
    assert result.exit_code == 0, result.output
    messages = sqs().receive_message(QueueUrl=outputs["ProducerQueueUrl"], MessageAttributeNames=["All"])
    (message,) = messages["Messages"]
    assert json.loads(message["Body"]) == {"group_key": "demo", "data": {"email": "jane@example.com"}}
    assert message["MessageAttributes"]["source"]["StringValue"] == "demo-queue"


def test_send_to_an_unknown_stack_names_it_and_the_region(operator: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["send", "contacts", "-g", "demo", "--stack", "nope", "--profile", PROFILE,
         "--set", "email=jane@example.com", "--state-dir", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code != 0
    assert f"no stack 'nope' in region {REGION}, profile {PROFILE}" in result.output


# --------------------------------------------------------------------------------------------------
# trail --stack
# --------------------------------------------------------------------------------------------------


def _delivery(request_id: str, email: str) -> DeliveryMessage:
    return DeliveryMessage(
        request_id=request_id,
        group_key="demo",
        action="upsert_contact",
        integration="expertsender",
        integration_type="expertsender",
        operation="upsert_customer",
        payload={"customer": {"email": email}},
        received_at="2026-11-28T10:00:00.000Z",
    )


def test_trail_rejects_of_a_stack_shows_the_reasons_keeps_the_data_back_and_deletes_nothing(
    operator: Path,
) -> None:
    # given two records on the stack's rejects trail
    outputs = deploy()
    for index, email in enumerate(("jane@example.com", "john@example.com")):
        rejection = Rejection(
            request_id=f"request-{index}",
            group_key="demo",
            stage="validate",
            integration="expertsender",
            operation="upsert_customer",
            reason="the record does not map to ExpertSender CDP (upsert_customer)",
            errors=["attribute 'birthday': not a date in YYYY-MM-DD"],
            record={"email": email},
        )
        sqs().send_message(QueueUrl=outputs["RejectsQueueUrl"], MessageBody=rejection.model_dump_json())
    # when an operator lists them
    result = forwarder("trail", "rejects", "--stack", STACK, "--profile", PROFILE)
    # then each shows its request id, where it was rejected and why (each problem), and not the record
    assert result.exit_code == 0, result.output
    for index in range(2):
        assert (
            f"request-{index}  [validate expertsender]  the record does not map to ExpertSender"
            in result.output
        )
    assert result.output.count("attribute 'birthday': not a date in YYYY-MM-DD") == 2
    assert "@example.com" not in result.output
    # and the messages are still there, visible at once (nothing deleted, nothing left hidden)
    again = sqs().receive_message(QueueUrl=outputs["RejectsQueueUrl"], MaxNumberOfMessages=10)["Messages"]
    assert len(again) == 2
    # and --show-data adds the records
    sqs().change_message_visibility_batch(
        QueueUrl=outputs["RejectsQueueUrl"],
        Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(again)
        ],
    )
    shown = forwarder("trail", "rejects", "--stack", STACK, "--profile", PROFILE, "--show-data")
    assert "jane@example.com" in shown.output and "john@example.com" in shown.output


def test_trail_dead_letters_of_a_stack_shows_each_with_its_integration_attempts_and_reason(
    operator: Path,
) -> None:
    # given a dead letter on the stack's (FIFO) delivery dead-letter queue
    outputs = deploy()
    dead = DeadLetter(
        delivery=_delivery("request-7", "jane@example.com"),
        reason="ExpertSender CDP answered 503 (gave up after 12 attempts over 4.0 h)",
        attempts=12,
    )
    sqs().send_message(
        QueueUrl=outputs["DeliveryDeadLetterQueueUrl"],
        MessageBody=dead.model_dump_json(),
        MessageGroupId="customer-jane",
        MessageDeduplicationId="dead-7",
    )
    # when an operator lists the dead letters
    result = forwarder("trail", "dead-letters", "--stack", STACK, "--region", REGION, "--profile", PROFILE)
    # then it shows the request, the integration, the attempts and the reason, never the payload
    assert result.exit_code == 0, result.output
    assert "request-7  [expertsender] after 12 attempts: ExpertSender CDP answered 503" in result.output
    assert "jane@example.com" not in result.output
    # and it says, on stderr, that nothing was deleted
    assert "nothing is deleted" in result.output
    # and the dead letter is still there, in its customer's group, visible at once
    (message,) = sqs().receive_message(
        QueueUrl=outputs["DeliveryDeadLetterQueueUrl"], MessageSystemAttributeNames=["MessageGroupId"]
    )["Messages"]
    assert message["Attributes"]["MessageGroupId"] == "customer-jane"


def test_trail_of_an_empty_queue_says_so(operator: Path) -> None:
    deploy()
    result = forwarder("trail", "ingest-dead-letters", "--stack", STACK, "--profile", PROFILE)
    assert result.exit_code == 0 and "no ingest-dead-letters" in result.output


# --------------------------------------------------------------------------------------------------
# replay --stack: an SQS message move task
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def move_tasks(operator: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubber]:
    """The CLI's SQS client, with the move-task calls answered by a Stubber (the CLI makes no other SQS call
    in replay; an unexpected one fails the test)."""
    client = boto3.Session(profile_name=PROFILE).client("sqs", region_name=REGION)
    stubber = Stubber(client)
    real = AwsTarget.client

    def with_stubbed_sqs(self: AwsTarget, service: str) -> Any:
        return client if service == "sqs" else real(self, service)

    monkeypatch.setattr(AwsTarget, "client", with_stubbed_sqs)
    monkeypatch.setattr(aws_cli, "MOVE_TASK_POLL_SECONDS", 0.0)
    with stubber:
        yield stubber
    stubber.assert_no_pending_responses()


def _task(
    status: str, moved: int, to_move: int, handle: str | None = "task-1", **extra: Any
) -> dict[str, Any]:
    return {
        "Status": status,
        "ApproximateNumberOfMessagesMoved": moved,
        "ApproximateNumberOfMessagesToMove": to_move,
        "SourceArn": "arn",
        "StartedTimestamp": 1,
        **({"TaskHandle": handle} if handle else {}),
        **extra,
    }


@pytest.mark.parametrize(
    ("which", "source", "destination"),
    [
        ("dead-letters", "DeliveryDeadLetterQueueArn", "DeliveryQueueArn"),
        ("ingest-dead-letters", "IngestDeadLetterQueueArn", "IngestQueueArn"),
    ],
)
def test_replay_on_a_stack_starts_a_move_task_from_the_dlq_to_its_queue_and_reports_it(
    move_tasks: Stubber, which: str, source: str, destination: str
) -> None:
    outputs = deploy()
    listing = {"SourceArn": outputs[source], "MaxResults": 10}
    move_tasks.add_response("list_message_move_tasks", {"Results": []}, listing)
    move_tasks.add_response(
        "start_message_move_task",
        {"TaskHandle": "task-1"},
        {"SourceArn": outputs[source], "DestinationArn": outputs[destination]},
    )
    move_tasks.add_response("list_message_move_tasks", {"Results": [_task("RUNNING", 0, 3)]}, listing)
    result = forwarder("replay", which, "--stack", STACK, "--profile", PROFILE)
    assert result.exit_code == 0, result.output
    assert "SQS message move task task-1" in result.output
    assert "now: RUNNING, 0 of 3 message(s) moved" in result.output


def test_replay_on_a_stack_with_wait_follows_the_task_to_its_end_at_the_rate_asked(
    move_tasks: Stubber,
) -> None:
    outputs = deploy()
    listing = {"SourceArn": outputs["DeliveryDeadLetterQueueArn"], "MaxResults": 10}
    move_tasks.add_response("list_message_move_tasks", {"Results": [_task("COMPLETED", 2, 2, None)]}, listing)
    move_tasks.add_response(
        "start_message_move_task",
        {"TaskHandle": "task-2"},
        {
            "SourceArn": outputs["DeliveryDeadLetterQueueArn"],
            "DestinationArn": outputs["DeliveryQueueArn"],
            "MaxNumberOfMessagesPerSecond": 50,
        },
    )
    move_tasks.add_response(
        "list_message_move_tasks", {"Results": [_task("RUNNING", 1, 3, "task-2")]}, listing
    )
    move_tasks.add_response("list_message_move_tasks", {"Results": [_task("COMPLETED", 3, 3, None)]}, listing)
    result = forwarder(
        "replay", "dead-letters", "--stack", STACK, "--profile", PROFILE, "--wait", "--max-per-second", "50"
    )
    assert result.exit_code == 0, result.output
    assert "move task COMPLETED, 3 of 3 message(s) moved" in result.output


def test_replay_on_a_stack_follows_a_running_task_instead_of_starting_a_second(move_tasks: Stubber) -> None:
    outputs = deploy()
    listing = {"SourceArn": outputs["DeliveryDeadLetterQueueArn"], "MaxResults": 10}
    move_tasks.add_response("list_message_move_tasks", {"Results": [_task("RUNNING", 5, 9)]}, listing)
    move_tasks.add_response("list_message_move_tasks", {"Results": [_task("RUNNING", 6, 9)]}, listing)
    move_tasks.add_response(
        "list_message_move_tasks",
        {"Results": [_task("FAILED", 6, 9, None, FailureReason="AccessDenied on the destination")]},
        listing,
    )
    result = CliRunner().invoke(
        main, ["replay", "dead-letters", "--stack", STACK, "--profile", PROFILE, "--wait"]
    )
    # no second task is started (the stubber would refuse the call), and a failed task fails the command
    assert "running already" in result.output
    assert result.exit_code != 0
    assert "the move task ended FAILED: AccessDenied on the destination" in result.output


def test_replay_on_a_stack_refuses_an_integration_filter(operator: Path) -> None:
    result = CliRunner().invoke(
        main, ["replay", "dead-letters", "--stack", STACK, "--profile", PROFILE, "--integration", "dmhub"]
    )
    assert result.exit_code != 0 and "moves the whole dead-letter queue" in result.output


# --------------------------------------------------------------------------------------------------
# status --stack
# --------------------------------------------------------------------------------------------------


def test_status_of_a_stack_asks_its_api_signed_with_the_profile(
    operator: Path, api: SigningApi, tmp_path: Path
) -> None:
    # given a deployed stack and an operator with a profile
    deploy(api.url)
    # when the status of a request is asked with --stack
    result = forwarder(
        "status", "r-1", "--stack", STACK, "--profile", PROFILE, "--state-dir", str(tmp_path / "none")
    )
    # then the stack's API was asked, signed by the profile's key for the stack's region, and it is shown
    assert result.exit_code == 0, result.output
    assert "expertsender" in result.output and "delivered" in result.output
    assert api.calls == [
        {"path": "/dev/v1/requests/r-1", "access_key": ACCESS_KEY, "region": REGION, "body": None}
    ]


def test_aws_region_in_the_environment_wins_over_the_profiles_region(
    operator: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the stack in eu-west-1, and a profile whose own region is another one
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    boto3.Session(profile_name=PROFILE, region_name="eu-west-1").client("cloudformation").create_stack(
        StackName=STACK, TemplateBody=json.dumps(_test_stack_template("https://x.example/dev"))
    )
    # then the commands look for it where AWS_REGION says, as every AWS tool does
    assert api_url_for_stack(STACK, None, PROFILE) == "https://x.example/dev"
    assert region_for("https://api.example.com/dev", None, PROFILE) == "eu-west-1"


def test_an_execute_api_url_is_signed_for_its_own_region(operator: Path) -> None:
    # the profile's region is REGION; an execute-api host accepts signatures for its own region only
    assert REGION != "ap-southeast-2"
    assert region_for("https://abc123.execute-api.ap-southeast-2.amazonaws.com/dev", None, PROFILE) == (
        "ap-southeast-2"
    )
    # --region still wins
    assert (
        region_for("https://abc123.execute-api.ap-southeast-2.amazonaws.com/dev", "eu-west-1") == "eu-west-1"
    )
