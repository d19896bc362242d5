"""The CLI against a deployed stack: ``--stack NAME`` finds the stack's API and queues through its CloudFormation
outputs (``DescribeStacks``), with botocore's credential chain and region.

Credentials come as every AWS tool finds them: ``--profile`` (else ``AWS_PROFILE``) with its keys, its role or
its IAM Identity Center (SSO) session (``aws sso login --profile NAME`` first), the ``AWS_*`` variables, or an
instance or container role. The region is ``--region``, else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else the
profile's: never a default of this tool's. The stack's API is signed for the region the stack was found in.

The commands that use it: ``forwarder send --stack`` (the ``ApiUrl`` output), ``forwarder trail ... --stack``
(reads the rejects trail and the dead-letter queues without deleting: see :class:`StackQueues`),
``forwarder replay ... --stack`` (an SQS message move task from a dead-letter queue to its queue), and
``forwarder status --stack``, through :func:`stack_api` (or :func:`api_url_for_stack` and
:func:`execute_api_auth`).

The CLI's AWS clients have their own botocore config (:data:`CLI_CONFIG`): a read timeout above SQS's
20-second long poll, where the functions' clients (``forwarder.adapters.aws``) are sized for Lambda.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # boto3 and requests-aws4auth are imported by the commands that talk to AWS, not at start
    import boto3
    from requests_aws4auth import AWS4Auth

#: Seconds a peeked message stays hidden while a trail is read; each is made visible again right after.
PEEK_VISIBILITY_SECONDS = 30
#: Long poll of each peek: SQS asks all its servers, so a small queue is read whole (a short poll samples).
PEEK_WAIT_SECONDS = 2
#: How often ``replay --wait`` asks for the move task's progress.
MOVE_TASK_POLL_SECONDS = 2.0
#: The move task's final states (ListMessageMoveTasks' Status).
MOVE_TASK_DONE = frozenset({"COMPLETED", "CANCELLED", "FAILED"})

#: The embedded stack's queue names (what the trail and replay commands use) -> the stack's output with the
#: queue's URL and the one with its ARN.
QUEUE_OUTPUTS = {
    "ingest": ("IngestQueueUrl", "IngestQueueArn"),
    "ingest-dlq": ("IngestDeadLetterQueueUrl", "IngestDeadLetterQueueArn"),
    "delivery": ("DeliveryQueueUrl", "DeliveryQueueArn"),
    "delivery-dlq": ("DeliveryDeadLetterQueueUrl", "DeliveryDeadLetterQueueArn"),
    "rejects": ("RejectsQueueUrl", "RejectsQueueArn"),
    "producer-dlq": ("ProducerDeadLetterQueueUrl", "ProducerDeadLetterQueueArn"),
    "producer-events-dlq": ("ProducerEventsDeadLetterQueueUrl", "ProducerEventsDeadLetterQueueArn"),
}
#: ``forwarder replay WHICH``: the dead-letter queue a move task drains, and the queue it refills.
REPLAYS = {"dead-letters": ("delivery-dlq", "delivery"), "ingest-dead-letters": ("ingest-dlq", "ingest")}


def _cli_config() -> Any:
    from botocore.config import Config

    return Config(
        connect_timeout=10,
        read_timeout=PEEK_WAIT_SECONDS + 30,  # above any long poll this CLI asks for (SQS allows up to 20 s)
        retries={"mode": "standard", "total_max_attempts": 5},
        user_agent_extra="forwarder-cli",
    )


class AwsCliError(click.ClickException):
    """A problem reaching the stack, said so that the operator knows what to do (never with a secret)."""


# --- options shared by the commands ------------------------------------------------------------------------


def stack_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--stack",
        metavar="NAME",
        help="a deployed stack (sam deploy's stack_name): found through its CloudFormation outputs, with "
        "botocore's credentials (--profile, SSO, AWS_* variables, instance roles) and region",
    )(function)


def profile_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--profile",
        metavar="NAME",
        help="the AWS profile for a deployed stack or API (default: AWS_PROFILE, else botocore's default "
        "chain); for an SSO profile, run `aws sso login --profile NAME` first",
    )(function)


def region_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--region",
        help="with --stack: the stack's region (default: AWS_REGION, AWS_DEFAULT_REGION, else the profile's)",
    )(function)


def api_signing_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The API's URL and what signs a call to it (``--url``, ``--access-key``, ``--secret-key``,
    ``--session-token``, ``--region``, ``--stack``, ``--profile``): the commands that call the signed API."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="the API's base URL"),
        click.option(
            "--access-key",
            help="default: the key the embedded stack issued (local URL), else botocore's credentials (--profile)",
        ),
        click.option(
            "--secret-key",
            help="default: from the embedded stack's state folder, else botocore's credentials (--profile)",
        ),
        click.option("--session-token", envvar="AWS_SESSION_TOKEN", help="with temporary credentials"),
        click.option(
            "--region",
            help="default: the embedded stack's (local URL); else AWS_REGION, AWS_DEFAULT_REGION, the "
            "profile's, or the region an execute-api URL names",
        ),
        stack_option,
        profile_option,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def aws_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--stack``, ``--region`` and ``--profile``."""
    return stack_option(region_option(profile_option(function)))


# --- sessions, stacks ---------------------------------------------------------------------------------------


@dataclass
class AwsTarget:
    """A boto3 session with a region: where the stack is, and who signs."""

    session: boto3.Session
    region: str
    profile: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def client(self, service: str) -> Any:
        """One client per service, with the CLI's botocore config."""
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, region_name=self.region, config=_cli_config()
            )
        return self._clients[service]

    def where(self) -> str:
        return f"region {self.region}" + (f", profile {self.profile}" if self.profile else "")


def aws_target(region: str | None = None, profile: str | None = None) -> AwsTarget:
    """The session botocore's chain gives for ``profile`` (None: AWS_PROFILE or the default) in ``region``
    (None: the environment's or the profile's). Raises AwsCliError when the profile or a region is missing."""
    import boto3
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    # AWS_REGION first, as the AWS CLI and the SDKs read it (botocore itself reads only AWS_DEFAULT_REGION and
    # the profile's region)
    region = region or os.environ.get("AWS_REGION") or None
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except ProfileNotFound:
        raise AwsCliError(
            f"no AWS profile '{profile}' (see `aws configure list-profiles`; an SSO profile is set up with "
            "`aws configure sso`)"
        ) from None
    except BotoCoreError as error:
        raise AwsCliError(f"cannot read the AWS configuration: {error}") from None
    if not session.region_name:
        raise AwsCliError(
            "no AWS region: give --region, or set AWS_REGION or the profile's region (aws configure)"
        )
    return AwsTarget(session, session.region_name, profile or session.profile_name)


def aws_call(target: AwsTarget, what: str, call: Callable[[], Any]) -> Any:
    """Run one AWS call; turn credential, SSO and service errors into an AwsCliError that says what to do."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        SSOTokenLoadError,
        TokenRetrievalError,
        UnauthorizedSSOTokenError,
    )

    try:
        return call()
    except (SSOTokenLoadError, UnauthorizedSSOTokenError, TokenRetrievalError):
        login = f"aws sso login --profile {target.profile}" if target.profile else "aws sso login"
        raise AwsCliError(f"the SSO session has expired or was never started: run `{login}`") from None
    except NoCredentialsError:
        raise AwsCliError(
            "no AWS credentials: give --profile (or set AWS_PROFILE), or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        ) from None
    except ClientError as error:
        details = error.response.get("Error", {})
        raise AwsCliError(
            f"{what} failed ({target.where()}): {details.get('Code', '?')}: {details.get('Message', '')}"
        ) from None
    except BotoCoreError as error:
        raise AwsCliError(f"{what} failed ({target.where()}): {error}") from None


@dataclass(frozen=True)
class Stack:
    """A deployed stack: the session it was found with (its region is the stack's) and its outputs."""

    name: str
    target: AwsTarget
    outputs: dict[str, str]

    def output(self, key: str) -> str:
        if key not in self.outputs:
            raise AwsCliError(
                f"stack '{self.name}' has no output {key}: deploy this version of template.yaml (sam deploy), "
                "or check that it is a forwarder stack"
            )
        return self.outputs[key]


def find_stack(name: str, region: str | None = None, profile: str | None = None) -> Stack:
    """Stack ``name`` through CloudFormation's DescribeStacks. Raises AwsCliError (no such stack, no
    credentials, an expired SSO session, access denied), saying what to do."""
    target = aws_target(region, profile)
    cloudformation = target.client("cloudformation")
    try:
        (found,) = aws_call(target, f"reading stack '{name}'", lambda: _describe(cloudformation, name))
    except _StackMissing:
        raise AwsCliError(
            f"no stack '{name}' in {target.where()}: check the name (sam deploy's stack_name) and the region"
        ) from None
    outputs = {item["OutputKey"]: item["OutputValue"] for item in found.get("Outputs", [])}
    return Stack(name, target, outputs)


class _StackMissing(Exception):
    pass


def _describe(cloudformation: Any, name: str) -> list[dict[str, Any]]:
    from botocore.exceptions import ClientError

    try:
        return list(cloudformation.describe_stacks(StackName=name)["Stacks"])
    except ClientError as error:
        details = error.response.get("Error", {})
        if details.get("Code") == "ValidationError" and "does not exist" in details.get("Message", ""):
            raise _StackMissing() from None
        raise


def api_url_for_stack(name: str, region: str | None = None, profile: str | None = None) -> str:
    """The base URL of stack ``name``'s API (its ``ApiUrl`` output, e.g.
    ``https://abc123.execute-api.eu-west-1.amazonaws.com/dev``). Raises AwsCliError."""
    return find_stack(name, region, profile).output("ApiUrl").rstrip("/")


def execute_api_auth(region: str | None = None, profile: str | None = None) -> AWS4Auth:
    """A requests auth that signs for ``execute-api`` in the region with botocore's credentials (refreshed
    when they are temporary: an assumed role, SSO). One per thread: AWS4Auth is not thread-safe. Raises
    AwsCliError when there are no credentials."""
    from requests_aws4auth import AWS4Auth

    target = aws_target(region, profile)
    credentials = aws_call(target, "reading AWS credentials", target.session.get_credentials)
    if credentials is None:
        raise AwsCliError(
            "no AWS credentials: give --profile (or set AWS_PROFILE), or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    # Resolve them now (an SSO profile fetches its role credentials here), so a problem is said at once.
    aws_call(target, "reading AWS credentials", credentials.get_frozen_credentials)
    return AWS4Auth(refreshable_credentials=credentials, region=target.region, service="execute-api")


def stack_api(name: str, region: str | None = None, profile: str | None = None) -> tuple[str, AWS4Auth]:
    """Stack ``name``'s API base URL and an auth that signs for it (its region, botocore's credentials): what
    a command calling the deployed API needs. Raises AwsCliError."""
    stack = find_stack(name, region, profile)
    return stack.output("ApiUrl").rstrip("/"), execute_api_auth(stack.target.region, profile)


_EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


def region_for(url: str, region: str | None = None, profile: str | None = None) -> str:
    """The region to sign a call to ``url`` for: ``region``, else the one an ``execute-api`` host names (it
    accepts no other), else botocore's (AWS_REGION, AWS_DEFAULT_REGION, the profile's). Raises AwsCliError
    when none is known."""
    from urllib.parse import urlsplit

    if region:
        return region
    match = _EXECUTE_API_HOST.match((urlsplit(url).hostname or "").lower())
    if match:
        return match.group(1)
    return aws_target(None, profile).region


# --- trail: the rejects trail and the dead-letter queues, read without deleting -----------------------------


class StackQueues:
    """The stack's queues under the embedded stack's names, with the embedded store's ``peek`` (what ``forwarder
    trail`` reads), so one listing serves both.

    SQS has no peek: a message is received (hidden for :data:`PEEK_VISIBILITY_SECONDS`, its receive count
    going up by one) and made visible again at once, whatever happens in between. Nothing is deleted; a
    replay starts the count again. A FIFO dead-letter queue hands out at most the first messages of each
    customer's group per read."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.target = stack.target

    def url(self, queue: str) -> str | None:
        """The queue's URL, None when the stack has no such queue (e.g. no producer queue of its own)."""
        return self.stack.outputs.get(QUEUE_OUTPUTS[queue][0])

    def peek(self, queue: str, limit: int = 100) -> list[dict[str, Any]]:
        url = self.url(queue)
        if url is None:
            return []
        sqs = self.target.client("sqs")
        received: list[dict[str, Any]] = []
        try:
            while len(received) < limit:
                batch = aws_call(
                    self.target,
                    f"reading {queue}",
                    lambda: sqs.receive_message(
                        QueueUrl=url,
                        MaxNumberOfMessages=min(10, limit - len(received)),
                        VisibilityTimeout=PEEK_VISIBILITY_SECONDS,
                        WaitTimeSeconds=PEEK_WAIT_SECONDS,
                        MessageSystemAttributeNames=["All"],
                        MessageAttributeNames=["All"],
                    ),
                ).get("Messages", [])
                if not batch:
                    break
                received.extend(batch)
        finally:
            self._release(sqs, url, [message["ReceiptHandle"] for message in received])
        return [_entry(message) for message in received]

    def _release(self, sqs: Any, url: str, handles: list[str]) -> None:
        """Make the peeked messages visible again at once."""
        for start in range(0, len(handles), 10):
            entries = [
                {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for index, handle in enumerate(handles[start : start + 10])
            ]
            aws_call(
                self.target,
                "making peeked messages visible again",
                functools.partial(sqs.change_message_visibility_batch, QueueUrl=url, Entries=entries),
            )

    def close(self) -> None:
        """Nothing to close (the embedded store's counterpart closes its database)."""


def _entry(message: dict[str, Any]) -> dict[str, Any]:
    """An SQS message in the embedded store's ``peek`` shape."""
    system = message.get("Attributes", {})
    return {
        "message_id": message["MessageId"],
        "body": message.get("Body", ""),
        "attributes": {
            name: value.get("StringValue") for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "sent_timestamp_ms": int(system.get("SentTimestamp", 0)),
        "receive_count": int(system.get("ApproximateReceiveCount", 0)),
        "group_id": system.get("MessageGroupId"),
    }


# --- replay: an SQS message move task from a dead-letter queue back to its queue ----------------------------


@dataclass(frozen=True)
class MoveTask:
    """A message move task as ListMessageMoveTasks reports it."""

    status: str
    moved: int
    to_move: int | None
    handle: str | None = None
    failure: str | None = None

    @classmethod
    def of(cls, result: dict[str, Any]) -> MoveTask:
        return cls(
            status=str(result.get("Status", "?")),
            moved=int(result.get("ApproximateNumberOfMessagesMoved", 0)),
            to_move=(
                int(result["ApproximateNumberOfMessagesToMove"])
                if "ApproximateNumberOfMessagesToMove" in result
                else None
            ),
            handle=result.get("TaskHandle"),
            failure=result.get("FailureReason"),
        )

    def describe(self) -> str:
        of = f" of {self.to_move}" if self.to_move is not None else ""
        why = f": {self.failure}" if self.failure else ""
        return f"{self.status}, {self.moved}{of} message(s) moved{why}"


class StackReplay:
    """Starts and follows the move task of ``forwarder replay WHICH --stack``."""

    def __init__(self, stack: Stack, which: str) -> None:
        source, destination = REPLAYS[which]
        self.target = stack.target
        self.source = source
        self.destination = destination
        self.source_arn = stack.output(QUEUE_OUTPUTS[source][1])
        self.destination_arn = stack.output(QUEUE_OUTPUTS[destination][1])

    def start(self, max_per_second: int | None = None) -> str:
        """Start moving every message of the dead-letter queue to its queue; the task's handle."""
        sqs = self.target.client("sqs")
        request: dict[str, Any] = {"SourceArn": self.source_arn, "DestinationArn": self.destination_arn}
        if max_per_second is not None:
            request["MaxNumberOfMessagesPerSecond"] = max_per_second
        started = aws_call(
            self.target,
            f"starting a message move task from {self.source_arn} to {self.destination_arn}",
            lambda: sqs.start_message_move_task(**request),
        )
        return str(started["TaskHandle"])

    def tasks(self) -> list[MoveTask]:
        """The dead-letter queue's most recent move tasks, newest first (SQS keeps up to 10)."""
        sqs = self.target.client("sqs")
        listed = aws_call(
            self.target,
            "reading the move tasks",
            lambda: sqs.list_message_move_tasks(SourceArn=self.source_arn, MaxResults=10),
        )
        return [MoveTask.of(result) for result in listed.get("Results", [])]

    def follow(self, poll_seconds: float = MOVE_TASK_POLL_SECONDS) -> Iterator[MoveTask]:
        """The newest task's state, every ``poll_seconds``, until it is done."""
        while True:
            tasks = self.tasks()
            if not tasks:
                return
            yield tasks[0]
            if tasks[0].status in MOVE_TASK_DONE:
                return
            time.sleep(poll_seconds)


def replay_on_stack(
    stack: str,
    which: str,
    region: str | None,
    profile: str | None,
    *,
    wait: bool = False,
    max_per_second: int | None = None,
) -> None:
    """``forwarder replay WHICH --stack``: start the move task, print its handle and progress."""
    replay = StackReplay(find_stack(stack, region, profile), which)
    recent = replay.tasks()
    if recent and recent[0].status in ("RUNNING", "CANCELLING"):
        # SQS runs one move task per queue at a time: follow that one rather than fail to start another
        click.echo(
            f"a move task {replay.source} -> {replay.destination} is running already ({replay.target.where()}): "
            f"{recent[0].describe()}; no second one started"
        )
    else:
        handle = replay.start(max_per_second)
        click.echo(
            f"started moving {replay.source} -> {replay.destination} ({replay.target.where()}): SQS message "
            f"move task {handle}"
        )
    if not wait:
        tasks = replay.tasks()
        if tasks:
            click.echo(f"  now: {tasks[0].describe()}")
        click.echo(
            f"  follow it with `forwarder replay {which} --stack {stack} --wait`, or in the SQS console"
        )
        return
    last: MoveTask | None = None
    with click.progressbar(length=0, label="moving", show_pos=True) as progress:
        for task in replay.follow():
            if task.to_move is not None:
                progress.length = task.to_move
            progress.update(task.moved - (last.moved if last else 0))
            last = task
    if last is None:
        raise AwsCliError(f"SQS lists no move task for {replay.source_arn}")
    click.echo(f"move task {last.describe()}")
    if last.status != "COMPLETED":
        raise AwsCliError(
            f"the move task ended {last.status}" + (f": {last.failure}" if last.failure else "")
        )
