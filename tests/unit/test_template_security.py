"""The security rules of template.yaml, enforced on the CloudFormation that SAM generates from it.

The template is transformed offline (aws-sam-translator, as `sam deploy` does) and its conditions are resolved
for a set of parameter values, so each rule sees exactly what CloudFormation would create: with the default
AWS-managed encryption and with a customer-managed key (`KmsKeyArn`). The rules iterate over every resource of
a type (every queue, table, log group, secret, IAM statement), so a resource added later is held to them too;
each rule returns its findings, and the tests at the end show that a mutated template is caught.

docs/security.md explains the rules; its personal-data table is held to the template here as well.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint

from forwarder.adapters.aws import DELIVERY_LOG_TTL_DAYS, LEDGER_TTL_DAYS
from forwarder.flows.ingest import IDEMPOTENCY_TTL_SECONDS
from forwarder.tokens import TokenKeeper
from tests.template_support import (
    ROOT,
    actions,
    load_sam_template,
    parameter_default,
    resources,
    sam_transform,
    target,
)

SECURITY_DOC = ROOT / "docs" / "security.md"

KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CUSTOMER_KEY = {"KmsKeyArn": KEY_ARN}
KEY_REF = {"Ref": "KmsKeyArn"}

# ------------------------------------------------------------------------------------------------------------
# The allowlists: every wildcard and every managed policy the stack's roles may carry, each with its reason.
# ------------------------------------------------------------------------------------------------------------

#: Actions with a wildcard that an Allow statement may name.
ACTION_WILDCARDS = {
    # SAM's SQSSendMessagePolicy; the SQS adapter sends with SendMessageBatch, SendMessage is its one-record form.
    "sqs:SendMessage*": "SendMessage and SendMessageBatch, on one named queue",
}
#: Resources with a wildcard that an Allow statement may name (the Fn::Sub text SAM leaves in place).
RESOURCE_WILDCARDS = {
    # Secrets Manager appends 6 random characters to a secret's ARN: a name can only be granted as a prefix.
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${SecretsPrefix}*": (
        "vendor credentials and tokens: every secret under SecretsPrefix"
    ),
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${SecretsPrefix}hooks/*": (
        "web-form hooks' secrets: the hooks/ folder under SecretsPrefix"
    ),
}
#: Managed policies SAM attaches to the functions' roles; their statements are AWS's, with "*" resources.
MANAGED_POLICIES = {
    "AWSLambdaBasicExecutionRole": "CloudWatch Logs: Lambda writes the function's log streams",
    "AWSXrayWriteOnlyAccess": "X-Ray traces: X-Ray has no resource-level permissions, its API requires '*'",
    # Receive/Delete/GetQueueAttributes on '*' are SAM's, attached for every SQS event source (a known gap,
    # docs/security.md): the poller needs them on the source queue only.
    "AWSLambdaSQSQueueExecutionRole": "SQS event sources: the Lambda poller receives and deletes",
}
#: Functions that may write secret versions (PutSecretValue, nothing else), under SecretsPrefix only.
SECRET_WRITERS = {
    "RefreshTokensFunction": "the refresh flow renews vendor tokens ahead of expiry",
    "DeliverFunction": "renews a token the vendor refused mid-batch, under the token's lease (docs/decisions.md)",
}
SECRET_READ_ACTIONS = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
SECRET_WRITE_ACTIONS = {"secretsmanager:PutSecretValue"}

#: The KMS actions each service's callers need with a customer-managed key, by the kms:ViaService prefix.
KMS_ACTIONS = {
    "sqs": {"kms:GenerateDataKey", "kms:Decrypt"},  # producers both; consumers Decrypt (every function sends)
    "dynamodb": {"kms:Decrypt", "kms:DescribeKey"},
    "secretsmanager": {"kms:Decrypt"},  # readers; writers add kms:GenerateDataKey (a new version's data key)
}

#: Where each kind of resource that holds data names its key.
KEY_PROPERTY: dict[str, Callable[[dict[str, Any]], Any]] = {
    "AWS::SQS::Queue": lambda props: props.get("KmsMasterKeyId"),
    "AWS::DynamoDB::Table": lambda props: props.get("SSESpecification", {}).get("KMSMasterKeyId"),
    "AWS::Logs::LogGroup": lambda props: props.get("KmsKeyId"),
    "AWS::SecretsManager::Secret": lambda props: props.get("KmsKeyId"),
    "AWS::SNS::Topic": lambda props: props.get("KmsMasterKeyId"),
}
#: Resource types that hold data and for which no rule is written yet: adding one must add its rule.
UNRULED_STORES = {
    "AWS::S3::Bucket",
    "AWS::Kinesis::Stream",
    "AWS::KinesisFirehose::DeliveryStream",
    "AWS::Events::Archive",
    "AWS::RDS::DBInstance",
    "AWS::ElastiCache::CacheCluster",
    "AWS::EFS::FileSystem",
    "AWS::SSM::Parameter",
}


# ------------------------------------------------------------------------------------------------------------
# The template as CloudFormation would create it
# ------------------------------------------------------------------------------------------------------------

_NO_VALUE = object()


def resolve(cfn: dict[str, Any], parameters: dict[str, str]) -> dict[str, Any]:
    """The template with its conditions decided for these parameter values (defaults for the rest): resources
    and outputs of a false condition dropped, Fn::If replaced by its branch, AWS::NoValue removed."""
    values = {name: str(spec.get("Default", "")) for name, spec in cfn.get("Parameters", {}).items()}
    unknown = set(parameters) - set(values)
    assert not unknown, f"no such parameters: {unknown}"
    values.update(parameters)
    decided: dict[str, bool] = {}

    def operand(expr: Any) -> str:
        if isinstance(expr, dict) and set(expr) == {"Ref"}:
            return values[expr["Ref"]]
        assert not isinstance(expr, dict | list), f"unsupported operand {expr}"
        return str(expr)

    def truth(expr: Any) -> bool:
        (function, args), *rest = expr.items()
        assert not rest, expr
        if function == "Fn::Equals":
            return operand(args[0]) == operand(args[1])
        if function == "Fn::Not":
            return not truth(args[0])
        if function == "Fn::And":
            return all(truth(arg) for arg in args)
        if function == "Fn::Or":
            return any(truth(arg) for arg in args)
        if function == "Condition":
            return condition(args)
        raise AssertionError(f"unsupported condition function {function}")

    def condition(name: str) -> bool:
        if name not in decided:
            decided[name] = truth(cfn["Conditions"][name])
        return decided[name]

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Fn::If"}:
                name, when_true, when_false = node["Fn::If"]
                return walk(when_true if condition(name) else when_false)
            if node == {"Ref": "AWS::NoValue"}:
                return _NO_VALUE
            walked = {key: walk(value) for key, value in node.items()}
            return {key: value for key, value in walked.items() if value is not _NO_VALUE}
        if isinstance(node, list):
            return [item for item in (walk(item) for item in node) if item is not _NO_VALUE]
        return node

    resolved = copy.deepcopy(cfn)
    for section in ("Resources", "Outputs"):
        resolved[section] = {
            name: walk({key: value for key, value in body.items() if key != "Condition"})
            for name, body in cfn.get(section, {}).items()
            if "Condition" not in body or condition(body["Condition"])
        }
    resolved.pop("Conditions", None)  # decided: nothing refers to them any more
    return resolved


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    return sam_transform(load_sam_template())


@pytest.fixture(scope="module")
def default_stack(transformed: dict[str, Any]) -> dict[str, Any]:
    return resolve(transformed, {})


@pytest.fixture(scope="module")
def keyed_stack() -> dict[str, Any]:
    return resolve(sam_transform(load_sam_template(), CUSTOMER_KEY), CUSTOMER_KEY)


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [statement for statement in as_list(document.get("Statement", [])) if isinstance(statement, dict)]


def identity_statements(cfn: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, statement) for every statement of an identity policy: roles' inline policies, IAM policies."""
    for name, props in resources(cfn, "AWS::IAM::Role").items():
        for policy in props.get("Policies", []):
            for statement in statements_of(policy["PolicyDocument"]):
                yield f"{name}/{policy.get('PolicyName')}", statement
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for name, props in resources(cfn, kind).items():
            for statement in statements_of(props["PolicyDocument"]):
                yield name, statement


def resource_policy_statements(cfn: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy", "AWS::S3::BucketPolicy"):
        for name, props in resources(cfn, kind).items():
            for statement in statements_of(props["PolicyDocument"]):
                yield name, statement


def function_roles(cfn: dict[str, Any]) -> dict[str, str]:
    return {
        name: str(target(props["Role"])) for name, props in resources(cfn, "AWS::Lambda::Function").items()
    }


def role_statements(cfn: dict[str, Any], role: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for policy in cfn["Resources"][role]["Properties"].get("Policies", []):
        found.extend(statements_of(policy["PolicyDocument"]))
    return found


def text_of(value: Any) -> str | None:
    """A resource as text: a literal, or the template string of an Fn::Sub."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return str(sub if isinstance(sub, str) else sub[0])
    return None


def managed_policy_names(cfn: dict[str, Any], role: str) -> set[str]:
    arns = cfn["Resources"][role]["Properties"].get("ManagedPolicyArns", [])
    return {json.dumps(arn).rstrip('"}').rsplit("/", 1)[-1] for arn in arns}


def event_sources(cfn: dict[str, Any], function: str) -> list[dict[str, Any]]:
    return [
        props
        for props in resources(cfn, "AWS::Lambda::EventSourceMapping").values()
        if target(props["FunctionName"]) == function
    ]


# ------------------------------------------------------------------------------------------------------------
# The rules: each returns its findings (an empty list when the template keeps it)
# ------------------------------------------------------------------------------------------------------------


def encryption_findings(cfn: dict[str, Any], customer_key: bool) -> list[str]:
    """Every store of data is encrypted: under the customer key when one is given, AWS-managed otherwise."""
    findings = []
    for name, body in cfn["Resources"].items():
        kind, props = body["Type"], body.get("Properties", {})
        if kind in UNRULED_STORES:
            findings.append(f"{name}: a {kind} holds data and no key rule covers its type yet")
            continue
        if kind not in KEY_PROPERTY:
            continue
        key = KEY_PROPERTY[kind](props)
        if customer_key and key != KEY_REF:
            findings.append(f"{name}: not under KmsKeyArn ({key!r})")
        if not customer_key and key is not None:
            findings.append(f"{name}: names a key ({key!r}) though KmsKeyArn is empty")
        if kind == "AWS::SQS::Queue":
            sse_sqs = props.get("SqsManagedSseEnabled") is True
            if customer_key == sse_sqs:
                findings.append(f"{name}: SqsManagedSseEnabled is {sse_sqs} with customer key {customer_key}")
        if kind == "AWS::DynamoDB::Table":
            sse = props.get("SSESpecification", {})
            if sse.get("SSEEnabled") is not True or (customer_key and sse.get("SSEType") != "KMS"):
                findings.append(f"{name}: SSESpecification {sse!r}")
    return findings


def _via_service(statement: dict[str, Any]) -> str | None:
    via = statement.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService")
    text = text_of(via)
    return text.split(".", 1)[0] if text else None


def kms_grant_findings(cfn: dict[str, Any], customer_key: bool) -> list[str]:
    """With a customer key each function may use it exactly as far as its services need, only through them;
    without one no function holds a KMS permission."""
    findings = []
    for function, role in function_roles(cfn).items():
        statements = role_statements(cfn, role)
        kms = [s for s in statements if any(a.startswith("kms:") for a in actions(s))]
        if not customer_key:
            findings += [f"{function}: KMS statement {s.get('Sid')} without a customer key" for s in kms]
            continue
        needs: dict[str, set[str]] = {}
        if event_sources(cfn, function) or any(a.startswith("sqs:") for s in statements for a in actions(s)):
            needs["sqs"] = KMS_ACTIONS["sqs"]
        if any(a.startswith("dynamodb:") for s in statements for a in actions(s)):
            needs["dynamodb"] = KMS_ACTIONS["dynamodb"]
        secret_actions = {a for s in statements for a in actions(s) if a.startswith("secretsmanager:")}
        if secret_actions:
            writes = bool(secret_actions & SECRET_WRITE_ACTIONS)
            needs["secretsmanager"] = KMS_ACTIONS["secretsmanager"] | (
                {"kms:GenerateDataKey"} if writes else set()
            )
        granted: dict[str, set[str]] = {}
        for statement in kms:
            service = _via_service(statement)
            where = f"{function}/{statement.get('Sid')}"
            if statement.get("Effect") != "Allow" or statement.get("Resource") != KEY_REF:
                findings.append(f"{where}: must allow on KmsKeyArn only, not {statement.get('Resource')!r}")
            if service is None:
                findings.append(f"{where}: no kms:ViaService condition (the key would be usable directly)")
                continue
            granted.setdefault(service, set()).update(actions(statement))
            if service == "secretsmanager":
                context = statement.get("Condition", {}).get("StringLike", {})
                scope = text_of(context.get("kms:EncryptionContext:SecretARN"))
                secret_resources = {
                    text_of(s.get("Resource"))
                    for s in statements
                    if any(a.startswith("secretsmanager:") for a in actions(s))
                }
                if scope not in secret_resources:
                    findings.append(f"{where}: the key's use is not scoped to the secrets it reads ({scope})")
        if granted != needs:
            findings.append(f"{function}: KMS grants {granted} but its services need {needs}")
    return findings


def tls_findings(cfn: dict[str, Any]) -> list[str]:
    """Every queue has exactly one queue policy, and it denies any request made without TLS."""
    findings = []
    covering: dict[str, list[str]] = {name: [] for name in resources(cfn, "AWS::SQS::Queue")}
    for policy_name, policy in resources(cfn, "AWS::SQS::QueuePolicy").items():
        denied = set()
        for statement in statements_of(policy["PolicyDocument"]):
            insecure = statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
            if (
                statement.get("Effect") == "Deny"
                and statement.get("Principal") in ("*", {"AWS": "*"})
                and set(actions(statement)) & {"sqs:*", "*"}
                and str(insecure).lower() == "false"
            ):
                denied |= {str(target(r)) for r in as_list(statement.get("Resource"))}
        for queue in as_list(policy["Queues"]):
            name = str(target(queue))
            covering.setdefault(name, []).append(policy_name)
            if name not in denied:
                findings.append(f"{name}: {policy_name} does not deny requests without aws:SecureTransport")
    for queue, policies in covering.items():
        if len(policies) != 1:
            findings.append(
                f"{queue}: {len(policies)} queue policies (one replaces the other; want exactly 1)"
            )
    return findings


def least_privilege_findings(cfn: dict[str, Any]) -> list[str]:
    """Every Allow names its resources, and a wildcard appears only where the allowlists say AWS requires it."""
    findings = []
    for where, statement in [*identity_statements(cfn), *resource_policy_statements(cfn)]:
        if statement.get("Effect") == "Deny":
            continue  # a Deny only takes away (the TLS rule denies sqs:* to everyone without TLS)
        sid = f"{where}/{statement.get('Sid', '?')}"
        if "NotAction" in statement or "NotResource" in statement or "NotPrincipal" in statement:
            findings.append(f"{sid}: NotAction/NotResource/NotPrincipal grants everything else")
        if "Resource" not in statement:
            findings.append(f"{sid}: names no resource")
        if statement.get("Principal") in ("*", {"AWS": "*"}):
            findings.append(f"{sid}: allows any principal")
        for action in actions(statement):
            if "*" in action and action not in ACTION_WILDCARDS:
                findings.append(f"{sid}: action wildcard {action}")
        for resource in as_list(statement.get("Resource", [])):
            text = text_of(resource)
            if text is not None and "*" in text and text not in RESOURCE_WILDCARDS:
                findings.append(f"{sid}: resource wildcard {text}")
    for function, role in function_roles(cfn).items():
        for name in managed_policy_names(cfn, role) - set(MANAGED_POLICIES):
            findings.append(f"{function}: managed policy {name} is not in the allowlist")
    return findings


def secret_findings(cfn: dict[str, Any]) -> list[str]:
    """The token writers may put secret versions under the prefix, and nothing else; the others only read."""
    findings = []
    for function, role in function_roles(cfn).items():
        for statement in role_statements(cfn, role):
            secret_actions = {a for a in actions(statement) if a.startswith("secretsmanager:")}
            if not secret_actions:
                continue
            resource = text_of(statement.get("Resource"))
            if resource not in RESOURCE_WILDCARDS:
                findings.append(f"{function}: secrets outside SecretsPrefix ({resource})")
            allowed = SECRET_READ_ACTIONS | (SECRET_WRITE_ACTIONS if function in SECRET_WRITERS else set())
            for action in sorted(secret_actions - allowed):
                findings.append(f"{function}: may {action}")
    return findings


def concurrency_findings(cfn: dict[str, Any]) -> list[str]:
    """No function can be flooded without a ceiling: the API's function has reserved concurrency, an SQS-fed one
    a MaximumConcurrency on every event source; anything else may only be started by a schedule."""
    findings = []
    api_functions = set()
    for api in resources(cfn, "AWS::ApiGateway::RestApi").values():
        api_functions |= {
            ref
            for path in api.get("Body", {}).get("paths", {}).values()
            for operation in path.values()
            if isinstance(operation, dict)
            for ref in re.findall(
                r"\$\{(\w+)\.Arn\}", json.dumps(operation.get("x-amazon-apigateway-integration"))
            )
        }
    scheduled = {
        str(target(rule_target["Arn"]))
        for rule in resources(cfn, "AWS::Events::Rule").values()
        if "ScheduleExpression" in rule
        for rule_target in rule["Targets"]
    }
    for function, props in resources(cfn, "AWS::Lambda::Function").items():
        sources = event_sources(cfn, function)
        if function in api_functions:
            if "ReservedConcurrentExecutions" not in props:
                findings.append(f"{function}: serves the API without reserved concurrency")
        elif sources:
            for source in sources:
                if "MaximumConcurrency" not in source.get("ScalingConfig", {}):
                    findings.append(f"{function}: an SQS event source without MaximumConcurrency")
        elif function not in scheduled:
            findings.append(f"{function}: started by something other than the API, SQS or a schedule")
    return findings


# ------------------------------------------------------------------------------------------------------------
# The rules hold for the template, in both key modes
# ------------------------------------------------------------------------------------------------------------

MODES = pytest.mark.parametrize("mode", ["aws-managed", "customer-key"])


@pytest.fixture
def stack(mode: str, default_stack: dict[str, Any], keyed_stack: dict[str, Any]) -> dict[str, Any]:
    return keyed_stack if mode == "customer-key" else default_stack


@MODES
def test_every_store_of_data_is_encrypted_under_the_chosen_key(mode: str, stack: dict[str, Any]) -> None:
    assert encryption_findings(stack, customer_key=mode == "customer-key") == []
    # the rule saw the stores (a rule that finds nothing to check cannot fail)
    kinds = {body["Type"] for body in stack["Resources"].values()}
    assert {"AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::Logs::LogGroup"} <= kinds


@MODES
def test_functions_hold_exactly_the_kms_permissions_their_services_need(
    mode: str, stack: dict[str, Any]
) -> None:
    assert kms_grant_findings(stack, customer_key=mode == "customer-key") == []


def test_the_customer_key_is_an_optional_key_arn(transformed: dict[str, Any]) -> None:
    parameter = transformed["Parameters"]["KmsKeyArn"]
    # AWS-managed encryption stays the default
    assert parameter["Default"] == ""
    pattern = parameter["AllowedPattern"]
    assert re.fullmatch(pattern, KEY_ARN)
    # an alias cannot be an IAM policy's resource, nor a log group's key: refused at deploy time
    assert not re.fullmatch(pattern, "alias/forwarder")
    assert not re.fullmatch(pattern, "arn:aws:kms:eu-west-1:123456789012:alias/forwarder")


@MODES
def test_every_queue_refuses_requests_without_tls(stack: dict[str, Any]) -> None:
    assert tls_findings(stack) == []


@MODES
def test_every_statement_names_its_resources_and_wildcards_are_allowlisted(stack: dict[str, Any]) -> None:
    assert least_privilege_findings(stack) == []
    # the rule read the functions' policies (five roles, each with inline statements)
    assert len({where.split("/")[0] for where, _ in identity_statements(stack)}) == 5


def test_only_the_token_writers_may_write_secret_versions_and_only_under_the_prefix(
    default_stack: dict[str, Any],
) -> None:
    assert secret_findings(default_stack) == []
    writers = {
        function
        for function, role in function_roles(default_stack).items()
        for statement in role_statements(default_stack, role)
        if SECRET_WRITE_ACTIONS & set(actions(statement))
    }
    assert writers == set(SECRET_WRITERS)


def test_no_function_can_be_flooded_without_a_ceiling(default_stack: dict[str, Any]) -> None:
    assert concurrency_findings(default_stack) == []
    # every ceiling is a parameter with a default
    ingest = resources(default_stack, "AWS::Lambda::Function")["IngestFunction"]
    assert ingest["ReservedConcurrentExecutions"] == {"Ref": "IngestReservedConcurrency"}
    for mapping in resources(default_stack, "AWS::Lambda::EventSourceMapping").values():
        ceiling = mapping["ScalingConfig"]["MaximumConcurrency"]
        assert set(ceiling) == {"Ref"} and 2 <= int(parameter_default(default_stack, ceiling)) <= 1000


def test_an_account_too_small_to_reserve_from_can_leave_ingest_unreserved(
    transformed: dict[str, Any],
) -> None:
    stack = resolve(transformed, {"IngestReservedConcurrency": "0"})
    assert "ReservedConcurrentExecutions" not in resources(stack, "AWS::Lambda::Function")["IngestFunction"]
    assert concurrency_findings(stack) == ["IngestFunction: serves the API without reserved concurrency"]


def test_the_stage_throttles_every_route_and_the_hooks_tighter_by_parameters(
    default_stack: dict[str, Any],
) -> None:
    (stage,) = resources(default_stack, "AWS::ApiGateway::Stage").values()
    settings = {(item["ResourcePath"], item["HttpMethod"]): item for item in stage["MethodSettings"]}
    assert settings[("/*", "*")]["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    assert settings[("/*", "*")]["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    overrides = {path: item for path, item in settings.items() if path[0] != "/*"}
    hooks = [item for path, item in overrides.items() if path[0].startswith("/~1v1~1hooks~1")]
    assert hooks, "the hook routes have their own limits"
    for item in hooks:
        assert item["ThrottlingRateLimit"] == {"Ref": "HookThrottlingRateLimit"}
        assert item["ThrottlingBurstLimit"] == {"Ref": "HookThrottlingBurstLimit"}
    params = default_stack["Parameters"]
    # every override is a parameter of its own, with a default below the stage's
    for item in overrides.values():
        for limit in ("ThrottlingRateLimit", "ThrottlingBurstLimit"):
            name = item[limit]["Ref"]
            api = "ApiThrottlingRateLimit" if limit == "ThrottlingRateLimit" else "ApiThrottlingBurstLimit"
            assert 0 < params[name]["Default"] < params[api]["Default"], name


@pytest.mark.parametrize(
    "parameters",
    [{}, CUSTOMER_KEY, {**CUSTOMER_KEY, "IngestReservedConcurrency": "0", "ExistingProducerQueueArn": ""}],
    ids=["aws-managed", "customer-key", "customer-key-unreserved"],
)
def test_the_transform_and_cfn_lint_pass_on_what_cloudformation_would_create(
    parameters: dict[str, str],
) -> None:
    stack = resolve(sam_transform(load_sam_template(), parameters), parameters)
    matches = lint(json.dumps(stack), config=ManualArgs(regions=["eu-west-1"]))
    assert [f"{m.rule.id} {m.message} {m.path}" for m in matches if m.rule.id.startswith("E")] == []


def test_cfn_lint_reads_the_resolved_template(keyed_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(keyed_stack)
    stack["Resources"]["DeletionLedgerTable"]["Properties"]["SSESpecification"]["SSEType"] = "AES"
    matches = lint(json.dumps(stack), config=ManualArgs(regions=["eu-west-1"]))
    assert [m.path[:2] for m in matches if m.rule.id.startswith("E")] == [
        ["Resources", "DeletionLedgerTable"]
    ]


# ------------------------------------------------------------------------------------------------------------
# Each rule catches what it is there for: the template, broken on purpose
# ------------------------------------------------------------------------------------------------------------


def _role(cfn: dict[str, Any], function: str) -> dict[str, Any]:
    resource: dict[str, Any] = cfn["Resources"][function_roles(cfn)[function]]
    return resource


def test_a_queue_added_without_the_key_is_reported(keyed_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(keyed_stack)
    stack["Resources"]["AuditQueue"] = {
        "Type": "AWS::SQS::Queue",
        "Properties": {"SqsManagedSseEnabled": True},
    }
    assert encryption_findings(stack, customer_key=True) == [
        "AuditQueue: not under KmsKeyArn (None)",
        "AuditQueue: SqsManagedSseEnabled is True with customer key True",
    ]


def test_a_table_or_log_group_that_loses_its_key_is_reported(keyed_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(keyed_stack)
    del stack["Resources"]["DeletionLedgerTable"]["Properties"]["SSESpecification"]["KMSMasterKeyId"]
    del stack["Resources"]["DeliverFunctionLogGroup"]["Properties"]["KmsKeyId"]
    stack["Resources"]["VendorSecret"] = {"Type": "AWS::SecretsManager::Secret", "Properties": {}}
    assert set(encryption_findings(stack, customer_key=True)) == {
        "DeletionLedgerTable: not under KmsKeyArn (None)",
        "DeliverFunctionLogGroup: not under KmsKeyArn (None)",
        "VendorSecret: not under KmsKeyArn (None)",
    }


def test_a_new_kind_of_store_needs_its_own_rule(default_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(default_stack)
    stack["Resources"]["ExportBucket"] = {"Type": "AWS::S3::Bucket", "Properties": {}}
    assert encryption_findings(stack, customer_key=False) == [
        "ExportBucket: a AWS::S3::Bucket holds data and no key rule covers its type yet"
    ]


def test_a_kms_grant_on_any_key_or_beyond_the_need_is_reported(keyed_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(keyed_stack)
    statements = _role(stack, "ValidateFunction")["Properties"]["Policies"]
    (queue_key,) = [
        s for p in statements for s in statements_of(p["PolicyDocument"]) if s.get("Sid") == "QueueKey"
    ]
    queue_key["Resource"] = "*"
    queue_key["Action"] = [*actions(queue_key), "kms:Encrypt"]
    findings = kms_grant_findings(stack, customer_key=True)
    assert "ValidateFunction/QueueKey: must allow on KmsKeyArn only, not '*'" in findings
    assert any(f.startswith("ValidateFunction: KMS grants") for f in findings)
    # and the wildcard resource is a least-privilege finding too
    assert "resource wildcard *" in " ".join(least_privilege_findings(stack))


def test_a_function_missing_its_key_grant_is_reported(keyed_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(keyed_stack)
    for policy in _role(stack, "RefreshTokensFunction")["Properties"]["Policies"]:
        document = policy["PolicyDocument"]
        document["Statement"] = [s for s in statements_of(document) if s.get("Sid") != "SecretKey"]
    (finding,) = kms_grant_findings(stack, customer_key=True)
    assert finding.startswith("RefreshTokensFunction: KMS grants") and "secretsmanager" in finding


def test_kms_grants_without_a_customer_key_are_reported(default_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(default_stack)
    _role(stack, "IngestFunction")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
        {"Sid": "Stray", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY_ARN}
    )
    assert kms_grant_findings(stack, customer_key=False) == [
        "IngestFunction: KMS statement Stray without a customer key"
    ]


def test_a_statement_that_gains_a_wildcard_is_reported(default_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(default_stack)
    policy = _role(stack, "DeliverFunction")["Properties"]["Policies"][0]["PolicyDocument"]
    policy["Statement"] = [
        *statements_of(policy),
        {"Sid": "AllTables", "Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"},
        {"Sid": "NoResource", "Effect": "Allow", "Action": "sqs:SendMessage"},
    ]
    findings = least_privilege_findings(stack)
    assert any("AllTables: action wildcard dynamodb:*" in f for f in findings)
    assert any("AllTables: resource wildcard *" in f for f in findings)
    assert any("NoResource: names no resource" in f for f in findings)


def test_a_managed_policy_outside_the_allowlist_is_reported(default_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(default_stack)
    _role(stack, "SourcesFunction")["Properties"]["ManagedPolicyArns"].append(
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSQSFullAccess"}
    )
    assert least_privilege_findings(stack) == [
        "SourcesFunction: managed policy AmazonSQSFullAccess is not in the allowlist"
    ]


def test_a_queue_without_the_tls_rule_is_reported(default_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(default_stack)
    stack["Resources"]["AuditQueue"] = {"Type": "AWS::SQS::Queue", "Properties": {}}
    policy = stack["Resources"]["TlsOnlyQueuePolicy"]["Properties"]
    policy["PolicyDocument"]["Statement"][0]["Condition"] = {}
    findings = tls_findings(stack)
    assert "IngestQueue: TlsOnlyQueuePolicy does not deny requests without aws:SecureTransport" in findings
    assert "AuditQueue: 0 queue policies (one replaces the other; want exactly 1)" in findings


def test_a_reader_that_gains_a_write_or_leaves_the_prefix_is_reported(default_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(default_stack)
    for statement in role_statements(stack, function_roles(stack)["IngestFunction"]):
        if statement.get("Sid") == "HookSecrets":
            statement["Action"] = ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]
            statement["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:*:*:secret:*"}
    for statement in role_statements(stack, function_roles(stack)["RefreshTokensFunction"]):
        if statement.get("Sid") == "VendorTokens":
            statement["Action"] = [*actions(statement), "secretsmanager:DeleteSecret"]
    assert sorted(secret_findings(stack)) == [
        "IngestFunction: may secretsmanager:PutSecretValue",
        "IngestFunction: secrets outside SecretsPrefix (arn:${AWS::Partition}:secretsmanager:*:*:secret:*)",
        "RefreshTokensFunction: may secretsmanager:DeleteSecret",
    ]


def test_an_sqs_source_without_a_ceiling_is_reported(default_stack: dict[str, Any]) -> None:
    stack = copy.deepcopy(default_stack)
    for mapping in resources(stack, "AWS::Lambda::EventSourceMapping").values():
        if target(mapping["FunctionName"]) == "ValidateFunction":
            del mapping["ScalingConfig"]
    assert concurrency_findings(stack) == ["ValidateFunction: an SQS event source without MaximumConcurrency"]


# ------------------------------------------------------------------------------------------------------------
# docs/security.md: its personal-data inventory is the template's
# ------------------------------------------------------------------------------------------------------------

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def inventory(doc: str) -> dict[str, int]:
    """Logical id -> seconds kept, from the rows of the doc's tables that name template resources in backticks
    (a row may name several) and say how long ("4 days", "30 seconds", "14 days (1,209,600 s)")."""
    kept: dict[str, int] = {}
    for line in doc.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or set(cells[0]) <= {"-", " ", ":"}:
            continue
        ids = [i for cell in cells[:2] for i in re.findall(r"`([A-Z][A-Za-z0-9]+)`", cell)]
        duration = next(
            (m for cell in cells[2:] if (m := re.search(r"\b([\d,]+) (second|minute|hour|day)s?\b", cell))),
            None,
        )
        if ids and duration:
            seconds = int(duration.group(1).replace(",", "")) * _UNITS[duration.group(2)]
            kept.update(dict.fromkeys(ids, seconds))
    return kept


def expected_retention(cfn: dict[str, Any]) -> dict[str, int]:
    """Seconds each store keeps personal data: queues and log groups from the template, tables from the TTL the
    code writes (the template turns TTL on; the forwarder sets each item's expiry)."""
    kept = {
        name: int(props.get("MessageRetentionPeriod", 345600))
        for name, props in resources(cfn, "AWS::SQS::Queue").items()
    }
    for name, props in resources(cfn, "AWS::Logs::LogGroup").items():
        kept[name] = int(parameter_default(cfn, props["RetentionInDays"])) * 86400
    table_ttl = {
        "DeletionLedgerTable": LEDGER_TTL_DAYS * 86400,
        "DeliveryLogTable": DELIVERY_LOG_TTL_DAYS * 86400,
        "IdempotencyTable": IDEMPOTENCY_TTL_SECONDS,
        "TokenLockTable": int(TokenKeeper.__dataclass_fields__["lease_seconds"].default),
    }
    for name, props in resources(cfn, "AWS::DynamoDB::Table").items():
        assert name in table_ttl, f"{name}: how long does it keep items? add it here and to docs/security.md"
        assert props["TimeToLiveSpecification"]["Enabled"] is True, name
        kept[name] = table_ttl[name]
    return kept


def test_every_retention_period_in_the_security_doc_is_the_templates(default_stack: dict[str, Any]) -> None:
    documented = inventory(SECURITY_DOC.read_text())
    expected = expected_retention(default_stack)
    # every queue, DLQ, table and log group has its row, and every row names a resource of the stack
    assert set(documented) == set(expected)
    assert documented == expected


def test_the_inventory_reader_notices_a_period_that_drifted(default_stack: dict[str, Any]) -> None:
    doc = SECURITY_DOC.read_text().replace("| 14 days", "| 7 days", 1)
    assert inventory(doc) != expected_retention(default_stack)


def test_the_readme_links_the_security_doc_and_names_every_skipped_check(sam_raw: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/security.md" in readme
    skipped = {
        skip["id"]
        for body in sam_raw["Resources"].values()
        for skip in body.get("Metadata", {}).get("checkov", {}).get("skip", [])
    }
    assert skipped, "the template skips checks with reasons (Metadata.checkov.skip)"
    for check in skipped:
        assert check in readme, f"README does not say why {check} is skipped"
    for body in sam_raw["Resources"].values():
        for skip in body.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip.get("comment", "")) > 20, skip


@pytest.fixture(scope="module")
def sam_raw() -> dict[str, Any]:
    return load_sam_template()
