"""AWS-side figures of the forwarder, measured offline: no AWS account is needed.

* ``cold_import_ms``: per handler, the import of ``functions/<flow>/app.py`` in a fresh interpreter laid out as
  Lambda's python3.13 runtime lays it out: the function's code first, then the layer's ``python/`` (unzipped
  from the layer zip that ``layers/forwarder/build_layer.py`` builds, the script ``make layer`` and ``sam build``
  run), then the runtime's own boto3/botocore; the Lambda environment variables and the function's variables
  from template.yaml are set. The layer is built for this machine's architecture (arm64 ships; the files are
  the same but for the compiled extensions). Each handler is imported ``IMPORT_RUNS`` times; the figure is the
  median of the process's CPU time for the import (the machine is shared, and wall time there measures the
  neighbours too: the wall times are printed beside it).
* ``layer_zip_bytes``: the size of the arm64 layer zip, the artifact that ships.
* ``aws_calls_per_record``: AWS API calls per record in each stage, counted on a moto run of the AWS mode
  (template.yaml's queues and tables, Secrets Manager, the three vendor sandboxes) while the handlers move
  ``RECORDS`` records from API Gateway's event to every vendor. The event source mappings' own receives and
  deletes are counted with the stage they feed.
* ``usd_per_million_records``: those calls, the invocations and their estimated duration priced at the public
  list prices in ``PRICES`` (bench/README.md names them and their date).

Run alone with ``make bench-aws``; ``make bench`` calls ``measure()``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "template.yaml"
FUNCTIONS = REPO_ROOT / "functions"
CONFIG_PATH = REPO_ROOT / "config" / "forwarder.yaml"
REGION = "us-east-1"
IMPORT_RUNS = 7
RECORDS = 40
WARM_UP_RECORDS = 10
#: What the Lambda python3.13 runtime itself provides on sys.path after the layers (boto3 and its closure).
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")

#: Public list prices, US East (N. Virginia), in USD; bench/README.md gives their date.
PRICES = {
    "api_gateway_rest_per_million_requests": 3.50,
    "lambda_per_million_requests": 0.20,
    "lambda_arm64_per_gb_second": 0.0000133334,
    "sqs_fifo_per_million_requests": 0.50,
    "sqs_standard_per_million_requests": 0.40,
    "dynamodb_on_demand_per_million_write_units": 0.625,
    "dynamodb_on_demand_per_million_read_units": 0.125,
    "secrets_manager_per_10k_calls": 0.05,
    "cloudwatch_logs_per_gb_ingested": 0.50,
    "xray_per_million_traces_recorded": 5.00,
}
#: Assumptions of the duration and cost estimate (bench/README.md explains them).
AWS_CALL_MS = 10.0  # one SQS / DynamoDB / Secrets Manager call from Lambda in the same region
VENDOR_REQUEST_MS = 150.0  # one vendor API request
PLATFORM_LOG_BYTES_PER_INVOCATION = 350  # Lambda's START, END and REPORT lines
XRAY_TRACED_SHARE = 0.05  # the default sampling rule past its first request each second

STAGES = ("ingest", "validate", "deliver")


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_layer", REPO_ROOT / "layers" / "forwarder" / "build_layer.py"
    )
    if spec is None or spec.loader is None:
        raise ImportError("layers/forwarder/build_layer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_layer = _load_build_script()


# --- template.yaml -------------------------------------------------------------------------------------------


def load_template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml

    template: dict[str, Any] = cfn_yaml.load(str(TEMPLATE))
    return template


def flows() -> list[str]:
    return sorted(path.parent.name for path in FUNCTIONS.glob("*/app.py"))


def function_of(template: Mapping[str, Any], flow: str) -> dict[str, Any]:
    """The function resource whose CodeUri is ``functions/<flow>/``, with the template's Globals under it."""
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        if (
            resource["Type"] == "AWS::Serverless::Function"
            and properties.get("CodeUri", "").rstrip("/") == f"functions/{flow}"
        ):
            merged: dict[str, Any] = copy.deepcopy(template.get("Globals", {}).get("Function", {}))
            for name, value in properties.items():
                if name == "Environment":
                    merged.setdefault("Environment", {}).setdefault("Variables", {}).update(
                        value["Variables"]
                    )
                else:
                    merged[name] = value
            return merged
    raise LookupError(f"no function in template.yaml has CodeUri functions/{flow}/")


def resolve(value: Any, template: Mapping[str, Any], refs: Mapping[str, str]) -> str:
    """A template value as a string: ``Ref`` to a created resource or a parameter's default; anything else
    that CloudFormation would compute becomes a readable placeholder (nothing at import time reads it)."""
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, dict) and "Ref" in value:
        name = value["Ref"]
        if name in refs:
            return refs[name]
        parameter = template.get("Parameters", {}).get(name)
        return str(parameter.get("Default", name)) if parameter else name
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        name = target[0] if isinstance(target, list) else str(target).split(".")[0]
        return refs.get(f"{name}.Arn", f"arn:aws:sqs:{REGION}:123456789012:{name}")
    return json.dumps(value, default=str)


def function_environment(
    template: Mapping[str, Any], flow: str, refs: Mapping[str, str] | None = None
) -> dict[str, str]:
    variables = function_of(template, flow).get("Environment", {}).get("Variables", {})
    environment = {name: resolve(value, template, refs or {}) for name, value in variables.items()}
    # ConfigLayer puts config/forwarder.yaml at /opt/forwarder.yaml; here it is read where it lies.
    environment["FORWARDER_CONFIG_PATH"] = str(CONFIG_PATH)
    return environment


# --- the layer and cold imports -------------------------------------------------------------------------------


def host_arch() -> str:
    return "arm64" if platform.machine() in {"aarch64", "arm64"} else "x86_64"


def build_layer_zip(workdir: Path, arch: str) -> Path:
    zip_path = workdir / f"forwarder-layer-{arch}.zip"
    build_layer.build(workdir / f"build-{arch}", arch, zip_path)
    return zip_path


def lambda_runtime_packages(workdir: Path, arch: str) -> Path:
    """boto3 and its closure at the lock's versions, compiled as the runtime ships them: a stand-in for the
    runtime's own site-packages."""
    target = workdir / "runtime"
    requirements = workdir / "runtime-requirements.txt"
    requirements.write_text(
        build_layer.locked_entries(build_layer.ROOT / "requirements.lock", RUNTIME_PACKAGES)
    )
    build_layer.install_requirements(target, arch, requirements)
    build_layer.compile_bytecode(target)
    return target


_IMPORT_PROGRAM = """
import json, time
started, started_cpu = time.perf_counter(), time.process_time()
import app
imported, imported_cpu = time.perf_counter(), time.process_time()
if FIRST_USE:
    # what a first invocation sets up before its work: services, the parsed config, an AWS client
    import boto3
    from forwarder.adapters.aws import aws_client_config
    from forwarder.runtime import services
    services().config
    boto3.client("sqs", config=aws_client_config())
print(json.dumps({
    "ms": (imported - started) * 1000,
    "cpu_ms": (imported_cpu - started_cpu) * 1000,
    "first_use_ms": (time.perf_counter() - imported) * 1000,
}))
"""


def lambda_environment(
    template: Mapping[str, Any], flow: str, path: list[Path], config_path: Path = CONFIG_PATH
) -> dict[str, str]:
    function = function_of(template, flow)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "LAMBDA_TASK_ROOT": str(path[0]),
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "AWS_LAMBDA_FUNCTION_NAME": f"forwarder-{flow}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.get("MemorySize", 128)),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        # Lambda puts the role's credentials in the environment (placeholders: nothing is sent)
        "AWS_ACCESS_KEY_ID": "ASIAEXAMPLEBENCH",
        "AWS_SECRET_ACCESS_KEY": "bench-secret-not-real",
        "AWS_SESSION_TOKEN": "bench-token-not-real",
        "PYTHONPATH": os.pathsep.join(str(entry) for entry in path),
        "PYTHONDONTWRITEBYTECODE": "1",  # /opt and /var/task are read-only on Lambda
        **function_environment(template, flow),
        "FORWARDER_CONFIG_PATH": str(config_path),
    }


def import_once(
    environment: Mapping[str, str], profile: bool = False, first_use: bool = False
) -> tuple[dict[str, float], str]:
    """Milliseconds to import ``app`` in a fresh interpreter (no site-packages: -S), wall (``ms``) and the
    process's CPU (``cpu_ms``), then (``first_use``) to set up what its first invocation needs (wall,
    ``first_use_ms``); and -X importtime's profile when asked."""
    program = _IMPORT_PROGRAM.replace("FIRST_USE", str(first_use))
    command = [sys.executable, "-S", *(["-X", "importtime"] if profile else []), "-c", program]
    done = subprocess.run(command, env=dict(environment), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"importing the handler failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures, done.stderr


def heaviest_imports(profile: str, top: int = 5) -> list[tuple[str, float]]:
    """-X importtime's self times summed per top-level package (``forwarder.x`` per module), largest first."""
    totals: Counter[str] = Counter()
    for line in profile.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        parts = name.split(".")
        totals[".".join(parts[:2]) if parts[0] == "forwarder" else parts[0]] += int(self_us)
    return [(name, micros / 1000) for name, micros in totals.most_common(top)]


def cold_imports(
    workdir: Path, template: Mapping[str, Any], out: Callable[[str], None]
) -> tuple[dict[str, float], int]:
    """Per handler, the median import time (ms) on the layer artifact; and that artifact's zip size."""
    arch = host_arch()
    zip_path = build_layer_zip(workdir, arch)
    opt = workdir / "opt"
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(opt)
    config_path = build_layer.build_config_layer(opt)  # ConfigLayer: /opt/forwarder.json
    runtime_dir = lambda_runtime_packages(workdir, arch)
    results: dict[str, float] = {}
    out(
        f"cold import of each handler ({arch} build of the layer, {IMPORT_RUNS} fresh interpreters each); "
        "then what a first invocation adds before its work (services, config parse, an AWS client):"
    )
    for flow in flows():
        environment = lambda_environment(
            template, flow, [FUNCTIONS / flow, opt / "python", runtime_dir], config_path
        )
        import_once(environment)  # the page cache warm, as on a Lambda host that has the layer
        runs = [import_once(environment)[0] for _ in range(IMPORT_RUNS)]
        first_use = statistics.median(
            import_once(environment, first_use=True)[0]["first_use_ms"] for _ in range(3)
        )
        profile = import_once(environment, profile=True)[1]
        cpu = [run["cpu_ms"] for run in runs]
        wall = [run["ms"] for run in runs]
        results[flow] = round(statistics.median(cpu), 1)
        heavy = ", ".join(f"{name} {ms:.0f}" for name, ms in heaviest_imports(profile))
        out(
            f"  {flow:<15} {results[flow]:6.1f} ms CPU (fastest {min(cpu):.0f}; wall: median {statistics.median(wall):.0f}, "
            f"fastest {min(wall):.0f}); then {first_use:.0f} ms to first use   heaviest: {heavy}"
        )
    return results, zip_path.stat().st_size


# --- AWS calls per record (moto) ---------------------------------------------------------------------------


class Meter:
    """Counts AWS API calls, DynamoDB capacity units, vendor requests and time, per stage."""

    def __init__(self) -> None:
        self.stage: str | None = None
        #: while paused (the warm-up) nothing is counted
        self.paused = False
        self.calls: Counter[tuple[str, str]] = Counter()
        self.sqs_requests: Counter[tuple[str, bool]] = Counter()  # (stage, fifo)
        self.units: defaultdict[tuple[str, str], float] = defaultdict(float)  # (stage, "read" | "write")
        self.aws_seconds: defaultdict[str, float] = defaultdict(float)
        self.vendor_requests: Counter[str] = Counter()
        self.vendor_seconds: defaultdict[str, float] = defaultdict(float)
        self.invocations: Counter[str] = Counter()
        self.handler_seconds: defaultdict[str, float] = defaultdict(float)
        self.log_bytes: Counter[str] = Counter()
        self.esm_calls: Counter[str] = Counter()
        self.operations: Counter[tuple[str, str]] = Counter()  # (stage, "service:Operation")

    def aws_call(self, service: str, operation: str, params: Mapping[str, Any], seconds: float) -> None:
        if self.stage is None:
            return
        stage = self.stage
        self.aws_seconds[stage] += seconds
        self.operations[(stage, f"{service}:{operation}")] += 1
        if service == "sqs":
            kind = {
                "SendMessage": "sqs_send",
                "SendMessageBatch": "sqs_send",
                "ReceiveMessage": "sqs_receive",
                "DeleteMessage": "sqs_delete",
                "DeleteMessageBatch": "sqs_delete",
                "ChangeMessageVisibility": "sqs_visibility",
                "ChangeMessageVisibilityBatch": "sqs_visibility",
            }.get(operation, "sqs_other")
            self.sqs_requests[(stage, str(params.get("QueueUrl", "")).endswith(".fifo"))] += 1
        elif service == "dynamodb":
            kind = "dynamodb"
            self._capacity(stage, operation, params)
        elif service == "secretsmanager":
            kind = "secretsmanager"
        else:
            kind = service
        self.calls[(stage, kind)] += 1

    def invoke(self, stage: str, handler: Callable[..., Any], event: Any, context: Any) -> Any:
        """One invocation of ``stage``'s handler, counted and timed unless the meter is paused."""
        self.stage = None if self.paused else stage
        started = time.perf_counter()
        try:
            return handler(event, context)
        finally:
            if self.stage is not None:
                self.handler_seconds[stage] += time.perf_counter() - started
                self.invocations[stage] += 1
            self.stage = None

    def event_source_call(self, stage: str, kind: str, fifo: bool) -> None:
        """A receive or delete by the SQS event source mapping that invokes ``stage`` (outside the function)."""
        if self.paused:
            return
        self.calls[(stage, kind)] += 1
        self.esm_calls[stage] += 1
        self.sqs_requests[(stage, fifo)] += 1

    def _capacity(self, stage: str, operation: str, params: Mapping[str, Any]) -> None:
        """On-demand request units, for items under 1 KB (writes) and 4 KB (reads)."""
        read = 1.0 if params.get("ConsistentRead") else 0.5
        if operation in {"PutItem", "UpdateItem", "DeleteItem"}:
            self.units[(stage, "write")] += 1
        elif operation == "GetItem":
            self.units[(stage, "read")] += read
        elif operation == "BatchGetItem":
            for table in params.get("RequestItems", {}).values():
                per_item = 1.0 if table.get("ConsistentRead") else 0.5
                self.units[(stage, "read")] += per_item * len(table.get("Keys", []))
        elif operation == "BatchWriteItem":
            self.units[(stage, "write")] += sum(
                len(items) for items in params.get("RequestItems", {}).values()
            )
        elif operation == "TransactWriteItems":
            self.units[(stage, "write")] += 2 * len(params.get("TransactItems", []))
        elif operation in {"Query", "Scan"}:
            self.units[(stage, "read")] += read


@contextlib.contextmanager
def metered(meter: Meter) -> Iterator[None]:
    """Every botocore call and every vendor request, counted and timed for the current stage."""
    import requests
    from botocore.client import BaseClient

    make_api_call = BaseClient._make_api_call
    send = requests.Session.send

    def counted_call(client: Any, operation: str, params: Mapping[str, Any]) -> Any:
        started = time.perf_counter()
        try:
            return make_api_call(client, operation, params)
        finally:
            meter.aws_call(
                client.meta.service_model.service_name, operation, params, time.perf_counter() - started
            )

    def counted_send(session: Any, request: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return send(session, request, **kwargs)
        finally:
            if meter.stage is not None:
                meter.vendor_requests[meter.stage] += 1
                meter.vendor_seconds[meter.stage] += time.perf_counter() - started

    with (
        mock.patch.object(BaseClient, "_make_api_call", counted_call),
        mock.patch.object(requests.Session, "send", counted_send),
    ):
        yield


class _CountingStream(io.TextIOBase):
    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def write(self, text: str) -> int:
        if self.meter.stage is not None:
            self.meter.log_bytes[self.meter.stage] += len(text.encode())
        return len(text)


@contextlib.contextmanager
def counted_logs(meter: Meter) -> Iterator[None]:
    """What the functions would send to CloudWatch Logs (Powertools' log lines, EMF metrics), counted not shown."""
    stream = _CountingStream(meter)
    logger = logging.getLogger("forwarder")
    handlers = [handler for handler in logger.handlers if isinstance(handler, logging.StreamHandler)]
    previous = [handler.setStream(stream) for handler in handlers]
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        logger.setLevel(level)
        for handler, old in zip(handlers, previous, strict=True):
            if old is not None:
                handler.setStream(old)


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def create_resources(template: Mapping[str, Any]) -> dict[str, str]:
    """template.yaml's queues and tables in moto; returns ``logical id -> queue URL / table name`` (and
    ``<id>.Arn``)."""
    import boto3

    sqs, dynamodb = boto3.client("sqs", region_name=REGION), boto3.client("dynamodb", region_name=REGION)
    refs: dict[str, str] = {}
    for name, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::SQS::Queue":
            fifo = bool(properties.get("FifoQueue"))
            attributes = {"VisibilityTimeout": str(properties.get("VisibilityTimeout", 30))}
            if fifo:
                attributes["FifoQueue"] = "true"
                for key in ("ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit"):
                    if key in properties:
                        attributes[key] = (
                            str(properties[key]).lower()
                            if key == "ContentBasedDeduplication"
                            else str(properties[key])
                        )
            url = sqs.create_queue(QueueName=name + (".fifo" if fifo else ""), Attributes=attributes)[
                "QueueUrl"
            ]
            refs[name] = url
            refs[f"{name}.Arn"] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
        elif resource["Type"] == "AWS::DynamoDB::Table":
            dynamodb.create_table(
                TableName=name,
                KeySchema=properties["KeySchema"],
                AttributeDefinitions=properties["AttributeDefinitions"],
                BillingMode="PAY_PER_REQUEST",
            )
            refs[name] = name
    return refs


def api_events(records: int, run: str = "run") -> list[dict[str, Any]]:
    """API Gateway's event of ``POST /v1/contacts`` (events/), one customer each, without an Idempotency-Key."""
    template_event = json.loads((REPO_ROOT / "events" / "api_post_contacts.json").read_text())
    for headers in (template_event["headers"], template_event["multiValueHeaders"]):
        headers.pop("Idempotency-Key", None)
    events = []
    for index in range(records):
        event = copy.deepcopy(template_event)
        body = json.loads(event["body"])
        body["data"]["email"] = f"bench.aws.{run}.{index}@example.com"
        event["body"] = json.dumps(body)
        event["requestContext"]["requestId"] = f"bench-aws-{run}-{index}"
        events.append(event)
    return events


def drain(
    flow: str, queue_url: str, handler: Callable[..., Any], meter: Meter, context: Callable[[], Any]
) -> None:
    """What an SQS event source mapping does: receive up to 10, invoke, delete what did not fail; until empty."""
    import boto3

    sqs = boto3.client("sqs", region_name=REGION)
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    fifo = queue_url.endswith(".fifo")
    for _ in range(10_000):
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not messages:  # an empty poll costs by the hour, not by the record
            return
        meter.event_source_call(flow, "sqs_receive", fifo)
        event = {
            "Records": [
                {
                    "messageId": message["MessageId"],
                    "receiptHandle": message["ReceiptHandle"],
                    "body": message["Body"],
                    "attributes": message.get("Attributes", {}),
                    "messageAttributes": {
                        name: {
                            "stringValue": value.get("StringValue"),
                            "dataType": value["DataType"],
                            "stringListValues": [],
                            "binaryListValues": [],
                        }
                        for name, value in message.get("MessageAttributes", {}).items()
                    },
                    "md5OfBody": message["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": REGION,
                }
                for message in messages
            ]
        }
        response = meter.invoke(flow, handler, event, context())
        failed = {failure["itemIdentifier"] for failure in response.get("batchItemFailures", [])}
        done = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
            if message["MessageId"] not in failed
        ]
        if done:
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=done)
            meter.event_source_call(flow, "sqs_delete", fifo)
        if failed:
            raise RuntimeError(
                f"{flow} reported {len(failed)} failures: the run would not measure a clean path"
            )
    raise RuntimeError(f"{flow}: the queue did not drain")


def moto_run(template: Mapping[str, Any], records: int) -> Meter:
    """``records`` records from API Gateway's event through ingest, validate and deliver to the three vendor
    sandboxes, on moto, with every AWS call counted per stage."""
    import boto3
    from moto import mock_aws

    from forwarder import runtime
    from forwarder_local.poller import LambdaContext
    from forwarder_local.sandboxes.carecloud import BASE_PATH as CARECLOUD_BASE_PATH
    from forwarder_local.sandboxes.carecloud import CareCloudSandbox
    from forwarder_local.sandboxes.dmhub import DmHubSandbox
    from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox
    from forwarder_local.stack import load_handler

    meter = Meter()
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "POWERTOOLS_METRICS_DISABLED": "false",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    with (
        patched_environ(credentials),
        mock_aws(),
        ExpertSenderSandbox("bench-key") as expertsender,
        DmHubSandbox("bench-app", "bench-secret") as dmhub,
        CareCloudSandbox(external_application_id="bench-app") as carecloud,
    ):
        refs = create_resources(template)
        environment: dict[str, str] = {}
        for flow in STAGES:
            environment.update(function_environment(template, flow, refs))
        for name, value in {
            "forwarder/demo/expertsender": {"api_key": "bench-key", "base_url": expertsender.url},
            "forwarder/demo/dmhub": {"app_id": "bench-app", "secret": "bench-secret", "base_url": dmhub.url},
            "forwarder/demo/carecloud": {
                "external_application_id": "bench-app",
                "base_url": carecloud.url + CARECLOUD_BASE_PATH,
            },
        }.items():
            boto3.client("secretsmanager", region_name=REGION).create_secret(
                Name=name, SecretString=json.dumps(value)
            )
        with patched_environ(environment):
            runtime.install(None)
            handlers = {flow: load_handler(flow) for flow in STAGES}
            try:
                with metered(meter), counted_logs(meter):
                    # a warm-up first, not counted: warm functions hold their secrets and the vendors' tokens,
                    # which cost calls per container and per token lifetime, not per record
                    for phase, events in (
                        ("warm-up", api_events(WARM_UP_RECORDS, "warm")),
                        ("run", api_events(records)),
                    ):
                        meter.paused = phase == "warm-up"
                        for event in events:
                            response = meter.invoke(
                                "ingest", handlers["ingest"], event, LambdaContext("forwarder-ingest")
                            )
                            if response["statusCode"] != 202:
                                raise RuntimeError(
                                    f"ingest answered {response['statusCode']}: {response['body']}"
                                )
                        drain(
                            "validate",
                            refs["IngestQueue"],
                            handlers["validate"],
                            meter,
                            lambda: LambdaContext("forwarder-validate"),
                        )
                        drain(
                            "deliver",
                            refs["DeliveryQueue"],
                            handlers["deliver"],
                            meter,
                            lambda: LambdaContext("forwarder-deliver", timeout_seconds=30),
                        )
            finally:
                runtime.install(None)
        if expertsender.find(email=f"bench.aws.run.{records - 1}@example.com") is None:
            raise RuntimeError("the last record did not reach ExpertSender: the run measured a broken path")
    return meter


CALL_KINDS = ("sqs_send", "sqs_receive", "sqs_delete", "sqs_visibility", "dynamodb", "secretsmanager")


def calls_per_record(meter: Meter, records: int) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        kinds = {kind for (where, kind) in meter.calls if where == stage}
        row = {
            kind: round(meter.calls[(stage, kind)] / records, 3)
            for kind in (*CALL_KINDS, *sorted(kinds - set(CALL_KINDS)))
        }
        row["invocations"] = round(meter.invocations[stage] / records, 3)
        row["vendor_requests"] = round(meter.vendor_requests[stage] / records, 3)
        table[stage] = row
    return table


def usd_per_million(template: Mapping[str, Any], meter: Meter, records: int) -> dict[str, float]:
    """The estimated cost of a million records, per AWS service, at ``PRICES``."""
    per_record = 1 / records
    lambda_requests = gb_seconds = sqs_usd = 0.0
    for stage in STAGES:
        memory_gb = float(function_of(template, stage).get("MemorySize", 128)) / 1024
        invocations = meter.invocations[stage]
        own_seconds = max(
            0.0, meter.handler_seconds[stage] - meter.aws_seconds[stage] - meter.vendor_seconds[stage]
        )
        calls = (
            sum(count for (where, _), count in meter.calls.items() if where == stage) - meter.esm_calls[stage]
        )
        estimated = (
            own_seconds + calls * AWS_CALL_MS / 1000 + meter.vendor_requests[stage] * VENDOR_REQUEST_MS / 1000
        )
        billed_ms_per_invocation = math.ceil(estimated * 1000 / invocations) if invocations else 0
        lambda_requests += invocations * per_record
        gb_seconds += invocations * billed_ms_per_invocation / 1000 * memory_gb * per_record
    for (_, fifo), count in meter.sqs_requests.items():
        price = PRICES["sqs_fifo_per_million_requests" if fifo else "sqs_standard_per_million_requests"]
        sqs_usd += count * per_record * price
    reads = sum(units for (_, kind), units in meter.units.items() if kind == "read") * per_record
    writes = sum(units for (_, kind), units in meter.units.items() if kind == "write") * per_record
    secrets = sum(count for (_, kind), count in meter.calls.items() if kind == "secretsmanager") * per_record
    log_bytes = (
        sum(meter.log_bytes.values()) + PLATFORM_LOG_BYTES_PER_INVOCATION * sum(meter.invocations.values())
    ) * per_record
    costs = {
        "api_gateway": PRICES["api_gateway_rest_per_million_requests"]
        * meter.invocations["ingest"]
        * per_record,
        "lambda_requests": PRICES["lambda_per_million_requests"] * lambda_requests,
        "lambda_duration": PRICES["lambda_arm64_per_gb_second"] * gb_seconds * 1_000_000,
        "sqs": sqs_usd,
        "dynamodb": PRICES["dynamodb_on_demand_per_million_write_units"] * writes
        + PRICES["dynamodb_on_demand_per_million_read_units"] * reads,
        "secrets_manager": PRICES["secrets_manager_per_10k_calls"] * secrets * 100,
        "cloudwatch_logs": PRICES["cloudwatch_logs_per_gb_ingested"] * log_bytes * 1_000_000 / 1e9,
        "xray": PRICES["xray_per_million_traces_recorded"] * XRAY_TRACED_SHARE,
    }
    rounded = {name: round(value, 3) for name, value in costs.items()}
    rounded["total"] = round(sum(costs.values()), 2)
    return rounded


# --- the whole measurement ----------------------------------------------------------------------------------


def measure(out: Callable[[str], None] = print) -> dict[str, Any]:
    """Builds the layer, measures it and the AWS mode; prints the figures as it goes and returns them."""
    template = load_template()
    with tempfile.TemporaryDirectory(prefix="forwarder-aws-bench-") as scratch:
        workdir = Path(scratch)
        out("== AWS side: the Lambda layer, cold imports, AWS calls and cost per record")
        shipped = build_layer_zip(workdir, "arm64")
        layer_zip_bytes = shipped.stat().st_size
        out(
            f"layer zip (arm64, ships): {layer_zip_bytes:,} bytes ({layer_zip_bytes / 1e6:.2f} MB; target <= 8 MB)"
        )
        cold, host_zip_bytes = cold_imports(workdir, template, out)
        if host_arch() != "arm64":
            out(f"  (the {host_arch()} build measured here zips to {host_zip_bytes:,} bytes)")
        worst = max(cold.values())
        out(f"  slowest handler: {worst:.1f} ms (target <= 250 ms)")
    out(f"AWS calls per record (moto, {RECORDS} records, three vendors each):")
    meter = moto_run(template, RECORDS)
    calls = calls_per_record(meter, RECORDS)
    for stage, row in calls.items():
        figures = "  ".join(f"{kind} {value:g}" for kind, value in row.items())
        out(f"  {stage:<9} {figures}")
        operations = sorted(
            ((name, count) for (where, name), count in meter.operations.items() if where == stage),
            key=lambda item: -item[1],
        )
        if operations:
            out(
                "            by call: "
                + ", ".join(f"{name} {count / RECORDS:g}" for name, count in operations)
            )
    costs = usd_per_million(template, meter, RECORDS)
    out("estimated USD per million records (list prices: bench/README.md):")
    out("  " + "  ".join(f"{name} {value:g}" for name, value in costs.items()))
    return {
        "cold_import_ms": cold,
        "layer_zip_bytes": layer_zip_bytes,
        "aws_calls_per_record": calls,
        "usd_per_million_records": costs["total"],
    }


def main() -> None:
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    figures = measure()
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
