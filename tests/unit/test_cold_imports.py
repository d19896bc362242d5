"""A cold start imports what the handler needs to start, nothing it might need later.

Each handler module is imported in a fresh interpreter with the Lambda variables set, as Lambda does on a cold
start; the modules that are heavy to import and needed only by some invocations must not be loaded yet:
`requests` (only vendor calls need it), PyYAML (only the config's first parse), boto3 (only the first AWS
client) and no tracing SDK at all (docs/decisions.md: the Lambda layer). `make bench-aws` times these imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOWS = sorted(path.parent.name for path in (ROOT / "functions").glob("*/app.py"))
DEFERRED = ("requests", "urllib3", "yaml", "boto3", "aws_xray_sdk")

PROGRAM = f"""
import json, sys
import app
print(json.dumps(sorted(name for name in {DEFERRED!r} if name in sys.modules)))
"""


#: What a first invocation sets up before its work: the services from the environment and the parsed config.
FIRST_INVOCATION = """
import json, sys
import app
from forwarder.runtime import services
services().config
print(json.dumps(sorted(name for name in ("requests", "urllib3") if name in sys.modules)))
"""


def lambda_environment(flow: str) -> dict[str, str]:
    environment = {
        **os.environ,
        "AWS_LAMBDA_FUNCTION_NAME": f"forwarder-{flow}",
        "AWS_REGION": "eu-west-1",
        "FORWARDER_RUNTIME": "aws",
        "FORWARDER_CONFIG_PATH": str(ROOT / "config" / "forwarder.yaml"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "functions" / flow), str(ROOT / "layers" / "forwarder")]),
    }
    environment.pop("POWERTOOLS_TRACE_DISABLED", None)
    return environment


def run(program: str, environment: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", program], env=environment, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded: list[str] = json.loads(done.stdout)
    return loaded


@pytest.mark.parametrize("flow", FLOWS)
def test_a_cold_start_loads_no_http_client_yaml_parser_aws_sdk_or_tracer(flow: str) -> None:
    assert run(PROGRAM, lambda_environment(flow)) == []


@pytest.mark.parametrize("flow", ["ingest", "validate", "sources"])
def test_functions_that_call_no_vendor_never_import_an_http_client(flow: str) -> None:
    environment = lambda_environment(flow)
    for name in ("INGEST", "DELIVERY", "DELIVERY_DLQ", "REJECTS"):
        environment[f"FORWARDER_QUEUE_URL_{name}"] = (
            f"https://sqs.eu-west-1.amazonaws.com/123456789012/{name}"
        )
    for name in ("LEDGER", "LOCKS", "DELIVERY_LOG", "IDEMPOTENCY"):
        environment[f"FORWARDER_{name}_TABLE"] = f"forwarder-{name.lower()}"
    assert run(FIRST_INVOCATION, environment) == []
