"""What operators rely on in template.yaml, checked on the CloudFormation that SAM generates from it.

The template is transformed offline with aws-sam-translator (the same translator `sam deploy` runs in
CloudFormation), so these tests see the real roles, event source mappings and REST API body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from forwarder.adapters.aws import LEDGER_TABLE_ENV_VAR, LEDGER_TTL_DAYS, LOCKS_TABLE_ENV_VAR
from forwarder.contract import STATUS_METHOD, STATUS_RESOURCE
from forwarder.flows.ingest import IDEMPOTENCY_TTL_SECONDS
from forwarder.hooks import HOOK_METHODS, HOOK_RESOURCE
from forwarder.producers import DETAIL_TYPES, EVENT_SOURCE_PREFIX
from forwarder.runtime import IDEMPOTENCY_TABLE_ENV_VAR, RuntimeSettings
from tests.template_support import (
    ROOT,
    actions,
    load_sam_template,
    parameter_default,
    resources,
    sam_transform,
    target,
)

LEDGER_ACTIONS = {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:UpdateItem"}
LOCK_ACTIONS = {"dynamodb:PutItem", "dynamodb:DeleteItem"}
IDEMPOTENCY_ACTIONS = {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}

SIGNED_ROUTES = {
    ("/v1/contacts", "post"),
    ("/v1/contacts", "delete"),
    ("/v1/events", "post"),
    (STATUS_RESOURCE, STATUS_METHOD.lower()),
}
# The web-form hook's methods, as the embedded gateway and the API serve them (forwarder.hooks).
HOOK_ROUTES = {(HOOK_RESOURCE, method.lower()) for method in HOOK_METHODS}
#: A MethodSettings ResourcePath: a leading "/", then each "/" of the path as "~1".
HOOK_METHOD_PATH = "/" + HOOK_RESOURCE.replace("/", "~1")

# Properties that give a resource a physical name (two stacks with the same one collide).
NAME_PROPERTIES = {
    "AlarmName",
    "ApiName",
    "BucketName",
    "FunctionName",
    "LayerName",
    "LogGroupName",
    "Name",
    "QueueName",
    "RoleName",
    "RuleName",
    "TableName",
    "TopicName",
}
# Properties named *Name* that refer to another resource, not name this one.
REFERENCE_PROPERTIES = {
    ("AWS::Lambda::EventSourceMapping", "FunctionName"),
    ("AWS::Lambda::Permission", "FunctionName"),
    ("AWS::Serverless::Api", "StageName"),
}


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_template() -> dict[str, Any]:
    return load_sam_template()


@pytest.fixture(scope="module")
def cfn(sam_template: dict[str, Any]) -> dict[str, Any]:
    return sam_transform(sam_template)


def referenced_ids(value: Any) -> set[str]:
    """Every logical id or parameter a value refers to (Ref, GetAtt, ${X} / ${X.Attr} in Fn::Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        if (ref := target(value)) is not None:
            found.add(ref)
        if "Fn::Sub" in value:
            sub = value["Fn::Sub"]
            text, local_names = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
            placeholders = {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
            found |= placeholders - set(local_names)
        for item in value.values():
            found |= referenced_ids(item)
    elif isinstance(value, list):
        for item in value:
            found |= referenced_ids(item)
    return found


def _resource_ids(value: Any) -> set[str]:
    """Like referenced_ids, without the pseudo parameters (AWS::Region, ...)."""
    return {name for name in referenced_ids(value) if not name.startswith("AWS::")}


def sqs_event_sources(cfn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Event source mappings whose source is a queue of this template, by logical id of the queue (a source
    chosen by a condition counts as the stack's own queue: ProducerQueue unless an existing one is given)."""
    queues = resources(cfn, "AWS::SQS::Queue")
    found = {}
    for mapping in resources(cfn, "AWS::Lambda::EventSourceMapping").values():
        arn = mapping["EventSourceArn"]
        if isinstance(arn, dict) and "Fn::If" in arn:
            arn = arn["Fn::If"][1]
        if (source := target(arn)) in queues:
            found[str(source)] = mapping
    return found


def redrive(queue: dict[str, Any]) -> dict[str, Any]:
    policy = queue.get("RedrivePolicy")
    assert isinstance(policy, dict), "RedrivePolicy missing"
    return policy


def dead_letter_queues(cfn: dict[str, Any]) -> dict[str, str]:
    """DLQ logical id -> the logical id of the queue that redrives into it."""
    return {
        str(target(props["RedrivePolicy"]["deadLetterTargetArn"])): source
        for source, props in resources(cfn, "AWS::SQS::Queue").items()
        if "RedrivePolicy" in props
    }


def policy_statements(cfn: dict[str, Any], role: str) -> Iterator[dict[str, Any]]:
    for policy in cfn["Resources"][role]["Properties"].get("Policies", []):
        statements = policy["PolicyDocument"]["Statement"]
        yield from statements if isinstance(statements, list) else [statements]


# --------------------------------------------------------------------------------------------------
# queues and event sources
# --------------------------------------------------------------------------------------------------


def test_every_sqs_consumer_reports_partial_batch_failures(cfn: dict[str, Any]) -> None:
    # Given the SQS event sources of the flows
    sources = sqs_event_sources(cfn)
    assert set(sources) == {"IngestQueue", "DeliveryQueue", "ProducerQueue", "ProducerEventsQueue"}

    # Then each reports failed records one by one, else a handler's batchItemFailures are ignored
    # and one bad record makes the whole batch (successes included) run again.
    for queue, mapping in sources.items():
        assert mapping.get("FunctionResponseTypes") == ["ReportBatchItemFailures"], queue


def test_every_consumed_queue_dead_letters_after_a_bounded_number_of_receives(cfn: dict[str, Any]) -> None:
    queues = resources(cfn, "AWS::SQS::Queue")
    for queue in sqs_event_sources(cfn):
        policy = redrive(queues[queue])
        dlq = target(policy["deadLetterTargetArn"])
        assert dlq in queues and dlq != queue, f"{queue} must redrive to another queue of the stack"
        if queue == "DeliveryQueue":
            # retries end by age (the retry horizon); the redrive is a safety net at SQS's maximum
            assert int(policy["maxReceiveCount"]) == 1000
        else:
            assert 3 <= int(policy["maxReceiveCount"]) <= 5, queue


def test_the_delivery_queue_orders_each_customer_and_its_dlq_keeps_the_groups(cfn: dict[str, Any]) -> None:
    queues = resources(cfn, "AWS::SQS::Queue")
    delivery, dlq = queues["DeliveryQueue"], queues["DeliveryDeadLetterQueue"]
    assert delivery["FifoQueue"] is True and dlq["FifoQueue"] is True
    # deduplication ids are set by validate (one per delivery), and throughput is per customer group
    assert delivery["ContentBasedDeduplication"] is False
    assert delivery["DeduplicationScope"] == "messageGroup"
    assert delivery["FifoThroughputLimit"] == "perMessageGroupId"
    (mapping,) = [m for q, m in sqs_event_sources(cfn).items() if q == "DeliveryQueue"]
    assert int(mapping["BatchSize"]) <= 10 and "MaximumBatchingWindowInSeconds" not in mapping


#: Who may do what on the delivery log: deliver keeps the deliveries; validate writes each request's record;
#: ingest (the status route) only reads a request's partition.
DELIVERY_LOG_ACTIONS = {
    "DeliverFunction": {"dynamodb:BatchGetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"},
    "ValidateFunction": {"dynamodb:BatchWriteItem"},
    "IngestFunction": {"dynamodb:Query"},
}


def test_the_delivery_log_is_reached_with_least_privilege(cfn: dict[str, Any]) -> None:
    table = resources(cfn, "AWS::DynamoDB::Table")["DeliveryLogTable"]
    assert table["KeySchema"] == [
        {"AttributeName": "request_id", "KeyType": "HASH"},
        {"AttributeName": "delivery", "KeyType": "RANGE"},
    ]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    reachers = set()
    for name, function in resources(cfn, "AWS::Lambda::Function").items():
        assert function["Environment"]["Variables"]["FORWARDER_DELIVERY_LOG_TABLE"] == {
            "Ref": "DeliveryLogTable"
        }
        for statement in policy_statements(cfn, str(target(function["Role"]))):
            if "DeliveryLogTable" in referenced_ids(statement.get("Resource")):
                reachers.add(name)
                assert set(actions(statement)) == DELIVERY_LOG_ACTIONS.get(name), name
                assert statement["Resource"] == {"Fn::GetAtt": ["DeliveryLogTable", "Arn"]}, name
    assert reachers == set(DELIVERY_LOG_ACTIONS)


def test_visibility_timeout_outlasts_six_consumer_timeouts(cfn: dict[str, Any]) -> None:
    # A visibility timeout shorter than the consumer's retries would hand a record to a second
    # invocation while the first is still delivering it.
    queues = resources(cfn, "AWS::SQS::Queue")
    functions = resources(cfn, "AWS::Lambda::Function")
    for queue, mapping in sqs_event_sources(cfn).items():
        consumer = functions[str(target(mapping["FunctionName"]))]
        visibility = int(queues[queue].get("VisibilityTimeout", 30))
        assert visibility >= 6 * int(consumer.get("Timeout", 3)), queue


def test_dead_letter_queues_keep_messages_longer_than_their_sources(cfn: dict[str, Any]) -> None:
    queues = resources(cfn, "AWS::SQS::Queue")
    dlqs = dead_letter_queues(cfn)
    assert set(dlqs) == {
        "IngestDeadLetterQueue",
        "DeliveryDeadLetterQueue",
        "ProducerDeadLetterQueue",
        "ProducerEventsDeadLetterQueue",
    }
    for dlq, source in dlqs.items():
        # SQS keeps a message's original enqueue time when it moves to the DLQ.
        dlq_retention = int(queues[dlq].get("MessageRetentionPeriod", 345600))
        assert dlq_retention > int(queues[source].get("MessageRetentionPeriod", 345600)), dlq


def test_every_queue_is_encrypted_at_rest(cfn: dict[str, Any]) -> None:
    for name, queue in resources(cfn, "AWS::SQS::Queue").items():
        assert queue.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in queue, name


def test_deliver_knows_the_last_receive_of_a_delivery(cfn: dict[str, Any]) -> None:
    # The deliver flow dead-letters a record itself (with the reason) on its last receive; it can only
    # recognise that receive if it knows the DeliveryQueue's maxReceiveCount.
    max_receives = redrive(resources(cfn, "AWS::SQS::Queue")["DeliveryQueue"])["maxReceiveCount"]
    deliver = resources(cfn, "AWS::Lambda::Function")["DeliverFunction"]
    assert deliver["Environment"]["Variables"]["FORWARDER_DELIVERY_MAX_RECEIVES"] == str(max_receives)


def test_functions_find_their_queues_by_url(cfn: dict[str, Any]) -> None:
    expected = {
        "FORWARDER_QUEUE_URL_INGEST": "IngestQueue",
        "FORWARDER_QUEUE_URL_DELIVERY": "DeliveryQueue",
        "FORWARDER_QUEUE_URL_DELIVERY_DLQ": "DeliveryDeadLetterQueue",
        "FORWARDER_QUEUE_URL_REJECTS": "RejectsQueue",
    }
    for name, function in resources(cfn, "AWS::Lambda::Function").items():
        variables = function["Environment"]["Variables"]
        # {"Ref": queue} is the queue's URL
        assert {var: variables[var] for var in expected} == {
            var: {"Ref": queue} for var, queue in expected.items()
        }, name


# --------------------------------------------------------------------------------------------------
# alarms
# --------------------------------------------------------------------------------------------------


def _alarms(cfn: dict[str, Any]) -> list[dict[str, Any]]:
    return list(resources(cfn, "AWS::CloudWatch::Alarm").values())


def _watches(alarm: dict[str, Any], namespace: str, metric: str, dimension: str) -> str | None:
    if alarm["Namespace"] != namespace or alarm["MetricName"] != metric:
        return None
    for dim in alarm.get("Dimensions", []):
        if dim["Name"] == dimension:
            return dim["Value"] if isinstance(dim["Value"], str) else target(dim["Value"])
    return None


def test_a_message_in_any_dead_letter_queue_raises_an_alarm(cfn: dict[str, Any]) -> None:
    for dlq in dead_letter_queues(cfn):
        matching = [
            alarm
            for alarm in _alarms(cfn)
            if _watches(alarm, "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName") == dlq
        ]
        assert matching, f"no depth alarm on {dlq}"
        # one message is enough
        assert any(
            a["ComparisonOperator"] == "GreaterThanThreshold" and float(a["Threshold"]) == 0 for a in matching
        ), dlq


def test_a_stalled_delivery_queue_raises_an_alarm(cfn: dict[str, Any]) -> None:
    assert any(
        _watches(alarm, "AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName") == "DeliveryQueue"
        for alarm in _alarms(cfn)
    )


def test_every_function_alarms_on_errors_and_throttles(cfn: dict[str, Any]) -> None:
    for function in resources(cfn, "AWS::Lambda::Function"):
        for metric in ("Errors", "Throttles"):
            assert any(
                _watches(alarm, "AWS/Lambda", metric, "FunctionName") == function for alarm in _alarms(cfn)
            ), f"no {metric} alarm on {function}"


def test_credential_problems_raise_an_alarm_on_the_metric_the_functions_emit(cfn: dict[str, Any]) -> None:
    # Powertools puts the service name in a "service" dimension next to the metrics namespace
    variables = cfn["Resources"]["RefreshTokensFunction"]["Properties"]["Environment"]["Variables"]
    alarms = [
        alarm
        for alarm in _alarms(cfn)
        if _watches(alarm, variables["POWERTOOLS_METRICS_NAMESPACE"], "CredentialProblems", "service")
        == variables["POWERTOOLS_SERVICE_NAME"]
    ]
    assert len(alarms) == 1
    (alarm,) = alarms
    # one problem in five minutes is enough
    assert alarm["Statistic"] == "Sum" and float(alarm["Threshold"]) == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"


def _evaluate(value: Any, conditions: dict[str, bool]) -> Any:
    """A value with its Fn::If resolved for the given condition values."""
    if isinstance(value, dict):
        if "Fn::If" in value:
            name, when_true, when_false = value["Fn::If"]
            return _evaluate(when_true if conditions[name] else when_false, conditions)
        return {key: _evaluate(item, conditions) for key, item in value.items()}
    if isinstance(value, list):
        return [_evaluate(item, conditions) for item in value]
    return value


@pytest.mark.parametrize("topic_given", [True, False], ids=["AlarmTopicArn-set", "AlarmTopicArn-empty"])
def test_every_alarm_notifies_a_topic_into_alarm_and_back_to_ok(
    cfn: dict[str, Any], topic_given: bool
) -> None:
    # given AlarmTopicArn set, or left empty (the default)
    assert cfn["Conditions"]["HasAlarmTopic"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}
    assert cfn["Conditions"]["CreateAlarmTopic"] == {"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}
    conditions = {"HasAlarmTopic": topic_given, "CreateAlarmTopic": not topic_given}
    # then every alarm notifies that topic, or the stack's own: none notifies nobody
    expected = [{"Ref": "AlarmTopicArn"}] if topic_given else [{"Ref": "AlarmTopic"}]
    assert _alarms(cfn)
    for name, alarm in resources(cfn, "AWS::CloudWatch::Alarm").items():
        for key in ("AlarmActions", "OKActions"):
            assert _evaluate(alarm.get(key), conditions) == expected, f"{name}.{key}"
    # and the stack's topic exists exactly when no topic is given; the output names the one alarms notify
    topic = cfn["Resources"]["AlarmTopic"]
    assert topic["Type"] == "AWS::SNS::Topic" and topic["Condition"] == "CreateAlarmTopic"
    assert _evaluate(cfn["Outputs"]["AlarmTopicArn"]["Value"], conditions) == expected[0]


def test_an_alarm_email_subscribes_to_the_topic_alarms_notify(cfn: dict[str, Any]) -> None:
    subscription = cfn["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    for given in (True, False):
        conditions = {"HasAlarmTopic": given}
        alarm = cfn["Resources"]["CredentialProblemsAlarm"]["Properties"]
        assert [_evaluate(subscription["Properties"]["TopicArn"], conditions)] == _evaluate(
            alarm["AlarmActions"], conditions
        )


# --------------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------------


def api_routes(cfn: dict[str, Any]) -> tuple[dict[tuple[str, str], Any], dict[str, Any]]:
    """(path, method) -> the OpenAPI operation of the REST API, and its security schemes."""
    (body,) = [api["Body"] for api in resources(cfn, "AWS::ApiGateway::RestApi").values()]
    routes = {
        (path, method): operation
        for path, item in body["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    schemes = body.get("components", body).get("securitySchemes", body.get("securityDefinitions", {}))
    return routes, schemes


def test_the_signed_routes_require_sigv4(cfn: dict[str, Any]) -> None:
    routes, schemes = api_routes(cfn)
    # Given exactly the three signed routes and the web-form hook's (no other unsigned route slips in)
    assert set(routes) == SIGNED_ROUTES | HOOK_ROUTES

    # Then each signed route requires an AWS Signature Version 4 (API Gateway's AWS_IAM authorisation)
    for route in SIGNED_ROUTES:
        operation = routes[route]
        (requirement,) = operation["security"]
        (scheme,) = requirement
        assert schemes[scheme]["x-amazon-apigateway-authtype"] == "awsSigv4", route
        # ...and API Gateway invokes the function itself: a brand's IAM user needs execute-api:Invoke,
        # not lambda:InvokeFunction (SAM's default would pass the caller's credentials through).
        assert "credentials" not in operation["x-amazon-apigateway-integration"], route


def test_web_form_hooks_need_no_signature_and_reach_ingest(cfn: dict[str, Any]) -> None:
    routes, schemes = api_routes(cfn)
    for route in HOOK_ROUTES:
        operation = routes[route]
        # SAM's 'Authorizer: NONE': a requirement naming no defined scheme, i.e. AuthorizationType NONE
        assert operation["security"] == [{"NONE": []}], route
        assert "NONE" not in schemes
        integration = operation["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy" and "credentials" not in integration, route
        assert "IngestFunction" in referenced_ids(integration["uri"]), route


def test_multipart_form_posts_reach_ingest_byte_for_byte(cfn: dict[str, Any]) -> None:
    (api,) = resources(cfn, "AWS::ApiGateway::RestApi").values()
    assert "multipart/form-data" in api["Body"]["x-amazon-apigateway-binary-media-types"]


def test_rejected_signatures_answer_with_a_json_message(cfn: dict[str, Any]) -> None:
    (body,) = [api["Body"] for api in resources(cfn, "AWS::ApiGateway::RestApi").values()]
    default_4xx = body["x-amazon-apigateway-gateway-responses"]["DEFAULT_4XX"]
    assert default_4xx["responseTemplates"] == {
        "application/json": '{"message":$context.error.messageString}'
    }


def test_the_api_is_throttled_and_access_logged(cfn: dict[str, Any]) -> None:
    (stage,) = resources(cfn, "AWS::ApiGateway::Stage").values()
    log_group = target(stage["AccessLogSetting"]["DestinationArn"])
    assert "RetentionInDays" in resources(cfn, "AWS::Logs::LogGroup")[str(log_group)]
    settings = {(item["ResourcePath"], item["HttpMethod"]): item for item in stage["MethodSettings"]}
    default = settings[("/*", "*")]
    assert parameter_default(cfn, default["ThrottlingRateLimit"]) > 0
    assert parameter_default(cfn, default["ThrottlingBurstLimit"]) > 0


def test_web_form_hooks_are_throttled_apart_and_tighter(cfn: dict[str, Any]) -> None:
    (stage,) = resources(cfn, "AWS::ApiGateway::Stage").values()
    settings = {(item["ResourcePath"], item["HttpMethod"]): item for item in stage["MethodSettings"]}
    default = settings[("/*", "*")]
    # unauthenticated traffic has a limit of its own, below the signed routes'
    for method in HOOK_METHODS:
        hook = settings[(HOOK_METHOD_PATH, method)]
        for limit in ("ThrottlingRateLimit", "ThrottlingBurstLimit"):
            assert 0 < parameter_default(cfn, hook[limit]) < parameter_default(cfn, default[limit]), (
                method,
                limit,
            )


def test_status_polling_is_throttled_apart(cfn: dict[str, Any]) -> None:
    (stage,) = resources(cfn, "AWS::ApiGateway::Stage").values()
    settings = {(item["ResourcePath"], item["HttpMethod"]): item for item in stage["MethodSettings"]}
    default = settings[("/*", "*")]
    # clients polling their requests cannot use up the capacity that accepts records
    polling = settings[("/" + STATUS_RESOURCE.replace("/", "~1"), STATUS_METHOD)]
    for limit in ("ThrottlingRateLimit", "ThrottlingBurstLimit"):
        assert 0 < parameter_default(cfn, polling[limit]) < parameter_default(cfn, default[limit]), limit


# --------------------------------------------------------------------------------------------------
# functions: logs, least privilege, packaging
# --------------------------------------------------------------------------------------------------


def test_every_function_logs_to_a_group_with_retention(cfn: dict[str, Any]) -> None:
    log_groups = resources(cfn, "AWS::Logs::LogGroup")
    functions = resources(cfn, "AWS::Lambda::Function")
    assert len(functions) == 5
    for name, function in functions.items():
        group = target(function.get("LoggingConfig", {}).get("LogGroup"))
        assert group in log_groups, f"{name} logs to the default group, kept forever"
        assert "RetentionInDays" in log_groups[str(group)], name


def test_ingest_can_only_enqueue_on_the_ingest_queue(cfn: dict[str, Any]) -> None:
    role = str(target(resources(cfn, "AWS::Lambda::Function")["IngestFunction"]["Role"]))
    statements = list(policy_statements(cfn, role))

    # It can send to IngestQueue...
    sends = [s for s in statements if any(a.startswith("sqs:Send") for a in actions(s))]
    assert sends and all(_resource_ids(s["Resource"]) == {"IngestQueue"} for s in sends)

    # ...may read hook secrets only (no vendor credential), and cannot touch any other queue.
    for statement in statements:
        for action in actions(statement):
            assert action not in {"*", "sqs:*"}, action
            if action.startswith("secretsmanager:"):
                assert action == "secretsmanager:GetSecretValue", action
                assert statement["Resource"] == {
                    "Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
                    ":secret:${SecretsPrefix}hooks/*"
                }
        if any(a.startswith("sqs:") for a in actions(statement)):
            assert "DeliveryQueue" not in referenced_ids(statement["Resource"])
            assert statement["Resource"] != "*"

    # Managed policies: logging and tracing only (no SQS or Secrets Manager access hides there).
    managed = cfn["Resources"][role]["Properties"].get("ManagedPolicyArns", [])
    assert {str(arn).rsplit("/", 1)[-1] for arn in managed} <= {
        "AWSLambdaBasicExecutionRole",
        "AWSXrayWriteOnlyAccess",
    }


def test_secret_access_is_confined_to_the_secrets_prefix(cfn: dict[str, Any]) -> None:
    roles = {
        name: str(target(function["Role"]))
        for name, function in resources(cfn, "AWS::Lambda::Function").items()
    }
    readers = set()
    for function, role in roles.items():
        for statement in policy_statements(cfn, role):
            if any(a.startswith("secretsmanager:") for a in actions(statement)):
                readers.add(function)
                # ingest reads web-form hooks' secrets only: the folder config check keeps them in
                folder = "hooks/" if function == "IngestFunction" else ""
                assert statement["Resource"] == {
                    "Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
                    f":secret:${{SecretsPrefix}}{folder}*"
                }, function
    assert readers == {"DeliverFunction", "RefreshTokensFunction", "IngestFunction"}


def test_config_check_keeps_hook_secrets_where_ingest_may_read_them() -> None:
    from forwarder.config.hooks import HOOK_SECRET

    assert HOOK_SECRET.match("forwarder/hooks/newsletter")
    assert not HOOK_SECRET.match("forwarder/demo/expertsender")
    assert not HOOK_SECRET.match("forwarder/hooks-not/x")


def test_each_function_ships_its_own_code_on_python_313_arm64(sam_template: dict[str, Any]) -> None:
    functions = {
        name: resource["Properties"]
        for name, resource in sam_template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    code_uris = {props["CodeUri"] for props in functions.values()}
    assert len(code_uris) == len(functions) == 5
    for uri in code_uris:
        assert uri.startswith("functions/") and (ROOT / uri).is_dir(), uri
    function_globals = sam_template["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Architectures"] == ["arm64"]
    assert function_globals["Tracing"] == "Active"


def _name_properties(template: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    for logical_id, resource in template["Resources"].items():
        for prop, value in resource.get("Properties", {}).items():
            if prop in NAME_PROPERTIES and (resource["Type"], prop) not in REFERENCE_PROPERTIES:
                yield logical_id, prop, value


@pytest.mark.parametrize("stage", ["sam", "cloudformation"])
def test_no_resource_has_a_hard_coded_physical_name(
    stage: str, sam_template: dict[str, Any], cfn: dict[str, Any]
) -> None:
    # Two stacks (dev, prod) in one account must not collide: a name, when there is one, comes from
    # the stack's own name. Checked after the transform too, since SAM itself names some resources.
    template = sam_template if stage == "sam" else cfn
    for logical_id, prop, value in _name_properties(template):
        assert "AWS::StackName" in referenced_ids(value), f"{logical_id}.{prop} = {value!r}"


def test_outputs_let_tests_and_operators_find_the_stack(cfn: dict[str, Any]) -> None:
    outputs = cfn["Outputs"]
    assert outputs["ApiUrl"]["Value"] == {
        "Fn::Sub": "https://${ForwarderApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${Stage}"
    }
    for queue in resources(cfn, "AWS::SQS::Queue"):
        assert outputs[f"{queue}Url"]["Value"] == {"Ref": queue}
        assert outputs[f"{queue}Arn"]["Value"] == {"Fn::GetAtt": [queue, "Arn"]}
    for function in resources(cfn, "AWS::Lambda::Function"):
        assert outputs[f"{function}Name"]["Value"] == {"Ref": function}
    assert outputs["DeletionLedgerTableName"]["Value"] == {"Ref": "DeletionLedgerTable"}


# --------------------------------------------------------------------------------------------------
# the deletion ledger
# --------------------------------------------------------------------------------------------------


def test_the_deletion_ledger_expires_its_entries_and_has_no_physical_name(cfn: dict[str, Any]) -> None:
    table = resources(cfn, "AWS::DynamoDB::Table")["DeletionLedgerTable"]
    # a generated name: dev and prod stacks in one account each have their own ledger
    assert "TableName" not in table
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    # DynamoDB removes an entry once the epoch seconds in its expires_at have passed
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    # the keys hold e-mail addresses (test_template_security.py: under the customer key when one is given)
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_a_delete_outlives_every_upsert_the_dlq_can_replay(cfn: dict[str, Any]) -> None:
    # An upsert older than a delete, redriven from the DLQ on its last day, must still find the delete.
    queues = resources(cfn, "AWS::SQS::Queue")
    for dlq in dead_letter_queues(cfn):
        assert int(queues[dlq]["MessageRetentionPeriod"]) < LEDGER_TTL_DAYS * 86400, dlq


def test_only_deliver_can_reach_the_deletion_ledger(cfn: dict[str, Any]) -> None:
    roles = {
        name: str(target(function["Role"]))
        for name, function in resources(cfn, "AWS::Lambda::Function").items()
    }
    reachers = set()
    for function, role in roles.items():
        for statement in policy_statements(cfn, role):
            touches_dynamodb = any(a.startswith("dynamodb:") or a == "*" for a in actions(statement))
            if touches_dynamodb and "TokenLockTable" in referenced_ids(statement.get("Resource")):
                continue  # token leases: see test_token_leases_are_reachable_by_the_token_writers_only
            if touches_dynamodb and "IdempotencyTable" in referenced_ids(statement.get("Resource")):
                continue  # see test_only_ingest_can_reach_the_idempotency_table
            if touches_dynamodb and "DeliveryLogTable" in referenced_ids(statement.get("Resource")):
                continue  # see test_the_delivery_log_is_reached_with_least_privilege
            if touches_dynamodb or "DeletionLedgerTable" in referenced_ids(statement.get("Resource")):
                reachers.add(function)
                # exactly read and conditional-write, on the table itself (no Scan, Query, DeleteItem, ...)
                assert set(actions(statement)) == LEDGER_ACTIONS, function
                assert statement["Resource"] == {"Fn::GetAtt": ["DeletionLedgerTable", "Arn"]}, function
                assert statement["Effect"] == "Allow"
        # no DynamoDB access hides in a managed policy either
        managed = cfn["Resources"][role]["Properties"].get("ManagedPolicyArns", [])
        assert not any("dynamodb" in json.dumps(arn).lower() for arn in managed), function
    assert reachers == {"DeliverFunction"}


def test_functions_find_the_deletion_ledger_by_name(cfn: dict[str, Any]) -> None:
    for name, function in resources(cfn, "AWS::Lambda::Function").items():
        # {"Ref": table} is the table's name
        assert function["Environment"]["Variables"][LEDGER_TABLE_ENV_VAR] == {"Ref": "DeletionLedgerTable"}, (
            name
        )


# --------------------------------------------------------------------------------------------------
# token leases
# --------------------------------------------------------------------------------------------------


def test_token_leases_are_reachable_by_the_token_writers_only(cfn: dict[str, Any]) -> None:
    table = resources(cfn, "AWS::DynamoDB::Table")["TokenLockTable"]
    assert "TableName" not in table
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    # a lease's expires_at is its TTL: a killed holder's item disappears
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    reachers = set()
    for name, function in resources(cfn, "AWS::Lambda::Function").items():
        assert function["Environment"]["Variables"][LOCKS_TABLE_ENV_VAR] == {"Ref": "TokenLockTable"}, name
        for statement in policy_statements(cfn, str(target(function["Role"]))):
            if "TokenLockTable" in referenced_ids(statement.get("Resource")):
                reachers.add(name)
                # a conditional put takes a lease, a conditional delete ends it; nothing else
                assert set(actions(statement)) == LOCK_ACTIONS, name
                assert statement["Resource"] == {"Fn::GetAtt": ["TokenLockTable", "Arn"]}, name
    assert reachers == {"DeliverFunction", "RefreshTokensFunction"}


def test_only_the_token_writers_may_write_secrets(cfn: dict[str, Any]) -> None:
    writers = set()
    for name, function in resources(cfn, "AWS::Lambda::Function").items():
        for statement in policy_statements(cfn, str(target(function["Role"]))):
            if "secretsmanager:PutSecretValue" in actions(statement):
                writers.add(name)
                prefix = statement["Resource"]["Fn::Sub"]
                assert prefix.endswith(":secret:${SecretsPrefix}*"), name
    assert writers == {"DeliverFunction", "RefreshTokensFunction"}


# --------------------------------------------------------------------------------------------------
# Idempotency-Key records
# --------------------------------------------------------------------------------------------------


def test_the_idempotency_table_has_the_shape_powertools_expects(cfn: dict[str, Any]) -> None:
    table = resources(cfn, "AWS::DynamoDB::Table")["IdempotencyTable"]
    assert "TableName" not in table
    # DynamoDBPersistenceLayer's defaults: partition key "id", expiry (epoch seconds) in "expiration"
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    # DynamoDB removes a record once its 24 hours are over
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert IDEMPOTENCY_TTL_SECONDS == 86400
    assert cfn["Outputs"]["IdempotencyTableName"]["Value"] == {"Ref": "IdempotencyTable"}


def test_only_ingest_can_reach_the_idempotency_table(cfn: dict[str, Any]) -> None:
    reachers = set()
    for name, function in resources(cfn, "AWS::Lambda::Function").items():
        # every function finds it (services() requires it on AWS), only ingest has the right to use it
        assert function["Environment"]["Variables"][IDEMPOTENCY_TABLE_ENV_VAR] == {
            "Ref": "IdempotencyTable"
        }, name
        role = str(target(function["Role"]))
        for statement in policy_statements(cfn, role):
            if "IdempotencyTable" in referenced_ids(statement.get("Resource")) or "*" in actions(statement):
                reachers.add(name)
                # what Powertools Idempotency calls, on the table itself: no Scan, Query, BatchWriteItem, ...
                assert set(actions(statement)) == IDEMPOTENCY_ACTIONS, name
                assert statement["Resource"] == {"Fn::GetAtt": ["IdempotencyTable", "Arn"]}, name
                assert statement["Effect"] == "Allow"
        managed = cfn["Resources"][role]["Properties"].get("ManagedPolicyArns", [])
        assert not any("dynamodb" in json.dumps(arn).lower() for arn in managed), name
    assert reachers == {"IngestFunction"}


def test_the_deliver_concurrency_a_rate_limit_is_shared_out_by_is_the_event_sources(
    cfn: dict[str, Any],
) -> None:
    function = resources(cfn, "AWS::Lambda::Function")["DeliverFunction"]
    (mapping,) = [m for q, m in sqs_event_sources(cfn).items() if q == "DeliveryQueue"]
    concurrency = function["Environment"]["Variables"]["FORWARDER_DELIVER_CONCURRENCY"]
    # one parameter (DeliverMaxConcurrency) sets both
    assert concurrency == mapping["ScalingConfig"]["MaximumConcurrency"]
    assert int(parameter_default(cfn, concurrency)) >= 2


def test_every_aws_sdk_call_ends_inside_its_functions_timeout(cfn: dict[str, Any]) -> None:
    # botocore waits 60 s by default: a slow SQS call in ingest (10 s) would be a Lambda timeout (502), not
    # the designed 503; every function's SDK calls, all attempts included, must end before its timeout.
    from forwarder.adapters.aws import aws_client_config

    for name, function in resources(cfn, "AWS::Lambda::Function").items():
        env = function.get("Environment", {}).get("Variables", {})
        config = aws_client_config({key: str(value) for key, value in env.items()})
        worst = config.retries["total_max_attempts"] * (config.connect_timeout + config.read_timeout)
        assert worst < int(function.get("Timeout", 3)), (name, worst)


# --------------------------------------------------------------------------------------------------
# producers: the SQS producer queue and the EventBridge rule feeding SourcesFunction
# --------------------------------------------------------------------------------------------------


def _sources_mappings(cfn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: mapping
        for name, mapping in resources(cfn, "AWS::Lambda::EventSourceMapping").items()
        if mapping["FunctionName"] == {"Ref": "SourcesFunction"}
    }


def test_the_producer_queue_is_the_stacks_own_unless_an_existing_one_is_given(cfn: dict[str, Any]) -> None:
    # Given the parameter naming an existing queue, empty by default
    parameter = cfn["Parameters"]["ExistingProducerQueueArn"]
    assert parameter["Default"] == ""
    assert re.fullmatch(parameter["AllowedPattern"], "arn:aws:sqs:eu-west-1:123456789012:brand-queue")
    assert not re.fullmatch(parameter["AllowedPattern"], "https://sqs.eu-west-1.amazonaws.com/1/brand-queue")
    assert cfn["Conditions"]["CreateProducerQueue"] == {
        "Fn::Equals": [{"Ref": "ExistingProducerQueueArn"}, ""]
    }
    # Then the stack's queue, its DLQ and the DLQ's alarm exist only without one...
    for name in ("ProducerQueue", "ProducerDeadLetterQueue", "ProducerDeadLetterQueueDepthAlarm"):
        assert cfn["Resources"][name]["Condition"] == "CreateProducerQueue", name
    # ...and the function consumes whichever it is, reporting failed records one by one
    arns = {
        json.dumps(mapping["EventSourceArn"], sort_keys=True) for mapping in _sources_mappings(cfn).values()
    }
    assert arns == {
        json.dumps(
            {
                "Fn::If": [
                    "CreateProducerQueue",
                    {"Fn::GetAtt": ["ProducerQueue", "Arn"]},
                    {"Ref": "ExistingProducerQueueArn"},
                ]
            },
            sort_keys=True,
        ),
        json.dumps({"Fn::GetAtt": ["ProducerEventsQueue", "Arn"]}, sort_keys=True),
    }
    for mapping in _sources_mappings(cfn).values():
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_the_rule_forwards_exactly_the_producer_contract_to_the_events_queue(cfn: dict[str, Any]) -> None:
    rule = resources(cfn, "AWS::Events::Rule")["ProducerEventsRule"]
    # on the bus the parameter names (the default bus unless told)
    assert rule["EventBusName"] == {"Ref": "ProducerEventBusName"}
    assert cfn["Parameters"]["ProducerEventBusName"]["Default"] == "default"
    # the sources and detail-types the sources flow reads, no more (the bus's other traffic stays out)
    assert rule["EventPattern"] == {
        "source": [{"prefix": EVENT_SOURCE_PREFIX}],
        "detail-type": list(DETAIL_TYPES),
    }
    # onto the events queue; what EventBridge cannot put there lands in the events DLQ
    (rule_target,) = rule["Targets"]
    assert rule_target["Arn"] == {"Fn::GetAtt": ["ProducerEventsQueue", "Arn"]}
    assert rule_target["DeadLetterConfig"] == {
        "Arn": {"Fn::GetAtt": ["ProducerEventsDeadLetterQueue", "Arn"]}
    }
    assert rule_target["RetryPolicy"]["MaximumEventAgeInSeconds"] == 86400


def test_only_the_rule_may_send_to_the_events_queues_as_eventbridge(cfn: dict[str, Any]) -> None:
    policy = resources(cfn, "AWS::SQS::QueuePolicy")["ProducerEventsQueuePolicy"]
    assert policy["Queues"] == [{"Ref": "ProducerEventsQueue"}, {"Ref": "ProducerEventsDeadLetterQueue"}]
    # the one Allow (the other statement denies requests without TLS: test_template_security.py)
    (statement,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert actions(statement) == ["sqs:SendMessage"]
    assert _resource_ids(statement["Resource"]) == {"ProducerEventsQueue", "ProducerEventsDeadLetterQueue"}
    # not any rule of any account: this stack's rule
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ProducerEventsRule", "Arn"]}}
    }


def test_sources_can_only_enqueue_on_the_ingest_queue_and_the_rejects_trail(cfn: dict[str, Any]) -> None:
    function = resources(cfn, "AWS::Lambda::Function")["SourcesFunction"]
    role = str(target(function["Role"]))
    statements = list(policy_statements(cfn, role))
    sends = [s for s in statements if any(a.startswith("sqs:Send") for a in actions(s))]
    assert {frozenset(_resource_ids(s["Resource"])) for s in sends} == {
        frozenset({"IngestQueue"}),
        frozenset({"RejectsQueue"}),
    }
    for statement in statements:
        for action in actions(statement):
            assert action.startswith("sqs:Send"), action  # no secrets, tables or other queues
    managed = cfn["Resources"][role]["Properties"].get("ManagedPolicyArns", [])
    assert {str(arn).rsplit("/", 1)[-1] for arn in managed} <= {
        "AWSLambdaBasicExecutionRole",
        "AWSXrayWriteOnlyAccess",
        "AWSLambdaSQSQueueExecutionRole",  # what SAM's SQS event source grants: receive and delete
    }
    # it tells EventBridge events from producer messages by the queue they came on
    variables = function["Environment"]["Variables"]
    assert "producer_events_queue_arn" in RuntimeSettings.model_fields
    assert variables["FORWARDER_PRODUCER_EVENTS_QUEUE_ARN"] == {"Fn::GetAtt": ["ProducerEventsQueue", "Arn"]}


# --------------------------------------------------------------------------------------------------
# the flows' alarms and the operations dashboard
# --------------------------------------------------------------------------------------------------


def test_api_5xx_answers_raise_an_alarm_on_this_stacks_api_and_stage(cfn: dict[str, Any]) -> None:
    (api,) = resources(cfn, "AWS::ApiGateway::RestApi").values()
    (stage,) = resources(cfn, "AWS::ApiGateway::Stage").values()
    matching = [
        alarm
        for alarm in _alarms(cfn)
        if alarm["Namespace"] == "AWS/ApiGateway" and alarm["MetricName"] == "5XXError"
    ]
    assert len(matching) == 1
    (alarm,) = matching
    dimensions = {item["Name"]: item["Value"] for item in alarm["Dimensions"]}
    # API Gateway reports metrics under the REST API's name, which SAM takes from the OpenAPI body's title
    assert "Name" not in api and dimensions["ApiName"] == api["Body"]["info"]["title"]
    assert dimensions["Stage"] == stage["StageName"]
    # any 5XX is a fault (no input a client can send gets one): one in five minutes is enough
    assert alarm["Statistic"] == "Sum" and float(alarm["Threshold"]) == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_a_stalled_ingest_queue_raises_an_alarm(cfn: dict[str, Any]) -> None:
    (alarm,) = [
        alarm
        for alarm in _alarms(cfn)
        if _watches(alarm, "AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName") == "IngestQueue"
    ]
    assert alarm["Statistic"] == "Maximum" and float(alarm["Threshold"]) <= 900


def test_a_growing_rejects_trail_raises_an_alarm_at_the_configured_rate(cfn: dict[str, Any]) -> None:
    # the trail has no consumer (its depth only grows): the alarm counts records rejected per period
    (alarm,) = [
        alarm
        for alarm in _alarms(cfn)
        if _watches(alarm, "AWS/SQS", "NumberOfMessagesSent", "QueueName") == "RejectsQueue"
    ]
    assert alarm["Statistic"] == "Sum" and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["Threshold"] == {"Ref": "RejectsAlarmThreshold"}
    assert cfn["Parameters"]["RejectsAlarmThreshold"]["Type"] == "Number"


def _dashboard_bodies(cfn: dict[str, Any]) -> dict[bool, dict[str, Any]]:
    """The dashboard body as CloudFormation renders it, with and without the stack's own producer queue;
    ``${Logical.Attr}`` and ``${Logical}`` become ``<Logical.Attr>`` and ``<Logical>``."""
    (dashboard,) = resources(cfn, "AWS::CloudWatch::Dashboard").values()
    text, variables = dashboard["DashboardBody"]["Fn::Sub"]

    def render(template: str, values: dict[str, str]) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: values.get(m.group(1), f"<{m.group(1)}>"), template)

    def value_of(value: Any) -> str:
        if isinstance(value, str):
            return value
        if "Fn::GetAtt" in value:
            return "<{}.{}>".format(*value["Fn::GetAtt"])
        if "Fn::Sub" in value:
            return render(value["Fn::Sub"], {})
        if "Fn::Select" in value:
            return "<existing producer queue>"
        raise AssertionError(f"unexpected {value!r}")

    bodies = {}
    for create in (True, False):
        values = {
            name: value_of(_evaluate(value, {"CreateProducerQueue": create}))
            for name, value in variables.items()
        }
        bodies[create] = json.loads(render(text, values))
    return bodies


def _dashboard_metrics(body: dict[str, Any]) -> list[list[Any]]:
    return [line for widget in body["widgets"] for line in widget["properties"].get("metrics", [])]


def test_the_dashboard_renders_to_valid_json_with_or_without_the_stacks_producer_queue(
    cfn: dict[str, Any],
) -> None:
    bodies = _dashboard_bodies(cfn)
    dlq = [
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        "QueueName",
        "<ProducerDeadLetterQueue.QueueName>",
    ]
    assert any(line[:4] == dlq for line in _dashboard_metrics(bodies[True]))
    assert not any(line[:4] == dlq for line in _dashboard_metrics(bodies[False]))
    producer = ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "<existing producer queue>"]
    assert any(line[:4] == producer for line in _dashboard_metrics(bodies[False]))
    # and it has a name of the stack's, not one two stacks would share
    (dashboard,) = resources(cfn, "AWS::CloudWatch::Dashboard").values()
    assert "AWS::StackName" in referenced_ids(dashboard["DashboardName"])


def test_the_dashboard_shows_every_queue_dead_letter_queue_and_function(cfn: dict[str, Any]) -> None:
    lines = _dashboard_metrics(_dashboard_bodies(cfn)[True])
    watched = {(line[0], line[1], line[3]) for line in lines if isinstance(line[0], str)}
    dlqs = dead_letter_queues(cfn)
    for queue in resources(cfn, "AWS::SQS::Queue"):
        if queue == "RejectsQueue":
            assert ("AWS/SQS", "NumberOfMessagesSent", f"<{queue}.QueueName>") in watched
        elif queue in dlqs:
            assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", f"<{queue}.QueueName>") in watched, queue
        else:
            for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"):
                assert ("AWS/SQS", metric, f"<{queue}.QueueName>") in watched, (queue, metric)
    for function in resources(cfn, "AWS::Lambda::Function"):
        for metric in ("Errors", "Throttles", "Duration"):
            assert ("AWS/Lambda", metric, f"<{function}>") in watched, (function, metric)


def test_the_dashboard_shows_the_apis_answers_and_latency(cfn: dict[str, Any]) -> None:
    (api,) = resources(cfn, "AWS::ApiGateway::RestApi").values()
    assert api["Body"]["info"]["title"] == {"Ref": "AWS::StackName"}
    lines = _dashboard_metrics(_dashboard_bodies(cfn)[True])
    api_metrics = {
        line[1]
        for line in lines
        if line[0] == "AWS/ApiGateway" and line[2:6] == ["ApiName", "<AWS::StackName>", "Stage", "<Stage>"]
    }
    assert {"Count", "4XXError", "5XXError", "Latency", "IntegrationLatency"} <= api_metrics


def test_the_dashboard_shows_the_metrics_the_flows_emit(cfn: dict[str, Any]) -> None:
    from forwarder.observability import (
        CREDENTIAL_PROBLEMS,
        DELIVERY_LATENCY,
        DELIVERY_OUTCOMES,
        RECORDS_REJECTED,
        REQUESTS_ACCEPTED,
        REQUESTS_REFUSED,
        delivery_metric,
    )

    lines = _dashboard_metrics(_dashboard_bodies(cfn)[True])
    namespace = cfn["Resources"]["IngestFunction"]["Properties"]["Environment"]["Variables"][
        "POWERTOOLS_METRICS_NAMESPACE"
    ]
    # the service dimension's metrics, by name
    plain = {line[1] for line in lines if line[0] == namespace and line[2:4] == ["service", "forwarder"]}
    assert {REQUESTS_ACCEPTED, CREDENTIAL_PROBLEMS} <= plain
    # the per-code and per-integration metrics, through SEARCH on their dimension sets
    searches = [line[0]["expression"] for line in lines if isinstance(line[0], dict)]
    for metric, dimension in (
        (REQUESTS_REFUSED, "code"),
        (RECORDS_REJECTED, "integration"),
        (DELIVERY_LATENCY, "integration"),
        *((delivery_metric(outcome), "integration") for outcome in DELIVERY_OUTCOMES),
    ):
        assert any(
            f"{{{namespace},{dimension},service}}" in search and f'MetricName="{metric}"' in search
            for search in searches
        ), metric


def test_the_dashboard_shows_every_alarm_the_stack_always_has(cfn: dict[str, Any]) -> None:
    (widget,) = [w for w in _dashboard_bodies(cfn)[True]["widgets"] if w["type"] == "alarm"]
    shown = set(widget["properties"]["alarms"])
    for name, resource in cfn["Resources"].items():
        if resource["Type"] == "AWS::CloudWatch::Alarm" and "Condition" not in resource:
            assert f"<{name}.Arn>" in shown, name
