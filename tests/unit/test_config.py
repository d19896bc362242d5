"""The config document: the shipped file is valid, and every mistake is reported at its exact path and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from forwarder.config import ConfigError, ForwarderConfig, load_config, load_config_text
from forwarder.contract import Action
from forwarder.integrations import integrations
from forwarder.integrations.expertsender import ExpertSenderSettings
from forwarder_local.cli import main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "forwarder.yaml"
EXPERTSENDER_ONLY = REPO / "config" / "examples" / "expertsender-only.yaml"
ITEM = "group_keys.demo.integrations[0]"


@pytest.fixture(scope="module")
def example_text() -> str:
    """An ExpertSender-only config the tests edit (the shipped one fans out to three vendors)."""
    return EXPERTSENDER_ONLY.read_text(encoding="utf-8")


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the example config no longer holds {old!r} exactly once"
    return text.replace(old, new)


def line_of(text: str, needle: str, start: int = 0) -> int:
    """1-based number of the first line after line ``start`` that holds ``needle``."""
    lines = text.splitlines()
    for number, line in enumerate(lines[start:], start=start + 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the document")


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "forwarder.yaml")
    return caught.value.problems


# --- the shipped config --------------------------------------------------------------------------------------


def test_the_shipped_config_is_valid_and_maps_a_record_for_expertsender() -> None:
    # given the config the project ships
    config = load_config(SHIPPED)

    # then it has the demo client and group key, with ExpertSender settings parsed
    assert [client.name for client in config.clients] == ["demo"]
    integration = config.group_keys["demo"].integrations[0]
    assert integration.type == "expertsender"
    assert isinstance(integration.parsed_settings, ExpertSenderSettings)
    assert integration.parsed_settings.mode == "AddOrUpdate"
    assert integration.operation(Action.UPSERT_CONTACT) == "upsert_customer"
    assert integration.operation(Action.DELETE_CONTACT) == "delete_customer"
    assert integration.operation(Action.EVENT) is None

    # and a record maps through its rules and transforms
    mapped = integration.map(
        Action.UPSERT_CONTACT,
        {
            "email": "  Jane@Example.COM ",
            "phone": "600 100 200",
            "gender": "f",
            "city": "Oslo",
            "newsletter_consent": True,
            "crm_id": 1234,
        },
    )
    assert mapped == {
        "email": "jane@example.com",
        "phone": "+48600100200",
        "gender": "Female",
        "crmId": "1234",
        "customAttributes": {"City": "Oslo"},
        "consents": {"1": True},
    }


# --- errors at the exact path and line ---------------------------------------------------------------------------


def test_an_unknown_integration_type_points_at_type(example_text: str) -> None:
    text = edit(example_text, "type: expertsender", "type: salesforce")

    assert problems_of(text) == [
        f"{ITEM}.type (line {line_of(text, 'type: salesforce')}): "
        f"unknown integration type 'salesforce'; known: {', '.join(sorted(integrations()))}"
    ]
    assert "expertsender" in integrations()


def test_mapping_to_a_field_the_action_lacks_points_at_the_rule_and_lists_the_fields(
    example_text: str,
) -> None:
    text = edit(example_text, "to: lastName", "to: surname")

    (problem,) = problems_of(text)

    assert problem.startswith(f"{ITEM}.contacts.mapping[2].to (line {line_of(text, 'to: surname')}): ")
    assert "'surname' is not a field of upsert_customer" in problem
    fields = problem.split("fields: ")[1].split(", ")
    assert {"email", "phone", "firstName", "lastName", "customAttributes", "consents"} <= set(fields)


def test_the_wrong_kind_for_a_field_points_at_the_rule(example_text: str) -> None:
    text = edit(example_text, "{kind: string, from: crm_id,", "{kind: list, from: crm_id,")

    assert problems_of(text) == [
        f"{ITEM}.contacts.mapping[4].kind (line {line_of(text, 'from: crm_id')}): "
        "field 'crmId' takes a string mapping, not list"
    ]


def test_a_credential_in_settings_is_refused_and_sent_to_the_secret_store(example_text: str) -> None:
    text = edit(
        example_text,
        "          mode: AddOrUpdate\n",
        "          mode: AddOrUpdate\n          api_key: s3cr3t\n",
    )

    (problem,) = problems_of(text)

    assert problem.startswith(f"{ITEM}.settings.api_key (line {line_of(text, 'api_key: s3cr3t')}): ")
    assert "credential" in problem and "secret store" in problem
    assert "s3cr3t" not in problem


def test_a_missing_secret_is_refused_at_the_integration(example_text: str) -> None:
    secret_line = next(
        line for line in example_text.splitlines(keepends=True) if "secret: forwarder/" in line
    )
    text = edit(example_text, secret_line, "")

    (problem,) = problems_of(text)

    assert problem.startswith(f"{ITEM} (line {line_of(text, '- name: expertsender')}): ")
    assert "needs a secret holding api_key" in problem


def test_a_client_naming_an_unknown_group_key_points_at_that_key(example_text: str) -> None:
    text = edit(example_text, "group_keys: [demo]", "group_keys: [demo, nordics]")

    assert problems_of(text) == [
        f"clients[0].group_keys[1] (line {line_of(text, 'nordics')}): unknown group key 'nordics'; known: demo"
    ]


def test_duplicate_integration_names_point_at_the_second_one(example_text: str) -> None:
    # given the group key's integration listed twice
    head, item = example_text.split("    integrations:\n")
    text = head + "    integrations:\n" + item + item
    first = line_of(text, "- name: expertsender")

    # then the problem is at the second one's name and says which one it repeats
    assert problems_of(text) == [
        f"group_keys.demo.integrations[1].name (line {line_of(text, '- name: expertsender', first)}): "
        "integration name 'expertsender' is already used by integrations[0]; names are unique per group key"
    ]


def test_an_invalid_settings_value_names_settings_mode(example_text: str) -> None:
    text = edit(example_text, "mode: AddOrUpdate", "mode: Upsert")

    (problem,) = problems_of(text)

    assert problem.startswith(f"{ITEM}.settings.mode (line {line_of(text, 'mode: Upsert')}): ")
    assert "'Add', 'Update' or 'AddOrUpdate'" in problem


def test_an_unknown_settings_key_is_named(example_text: str) -> None:
    text = edit(
        example_text, "          batch_size: 100\n", "          batch_size: 100\n          batchsize: 5\n"
    )

    (problem,) = problems_of(text)

    assert problem.startswith(f"{ITEM}.settings.batchsize (line {line_of(text, 'batchsize: 5')}): ")


def test_events_for_expertsender_are_refused_at_events(example_text: str) -> None:
    # given an events flow, which ExpertSender has no action for
    text = edit(
        example_text,
        "        delete:\n",
        "        events:\n          mapping:\n            - {kind: string, from: email, to: email}\n        delete:\n",
    )

    assert problems_of(text) == [
        f"{ITEM}.events (line {line_of(text, 'events:')}): "
        "ExpertSender CDP has no action for events; remove 'events'"
    ]


def test_an_unknown_transform_points_at_the_rule_transforms_and_names_it(example_text: str) -> None:
    text = edit(example_text, "to: firstName, transforms: [trim]", "to: firstName, transforms: [strip]")

    (problem,) = problems_of(text)

    assert problem.startswith(f"{ITEM}.contacts.mapping[1].transforms (line {line_of(text, '[strip]')}): ")
    assert "unknown transform 'strip'" in problem


def test_every_problem_in_the_document_is_reported(example_text: str) -> None:
    text = edit(example_text, "version: 1", "version: 2")
    text = edit(text, "    description: Demo", "    descripton: Demo")

    problems = problems_of(text)

    assert len(problems) == 2
    assert problems[0].startswith(f"version (line {line_of(text, 'version: 2')}): ")
    assert problems[1].startswith(f"group_keys.demo.descripton (line {line_of(text, 'descripton:')}): ")


def test_broken_yaml_is_reported_as_such() -> None:
    problems = problems_of("version: 1\nclients: [\n")

    assert len(problems) == 1 and problems[0].startswith("not valid YAML")


def test_the_shipped_demo_group_key_fans_one_record_out_to_three_vendors_with_every_mapping_kind() -> None:
    from forwarder.flows.validate import plan
    from forwarder.messages import IngestMessage

    # given the shipped config and a contact with tags, a loyalty tier and a flavour
    config = load_config(SHIPPED)
    message = IngestMessage(
        request_id="r-1",
        action=Action.UPSERT_CONTACT,
        group_key="demo",
        data={"email": "Jane@Example.com", "tags": ["vip"], "loyalty_tier": "gold", "flavours": ["Sorbet"]},
        received_at="2026-11-28T10:00:00.000Z",
        client="demo",
    )
    # when it is planned, then it is one delivery per vendor
    deliveries, rejections = plan(config, message)
    assert rejections == []
    payloads = {delivery.integration_type: delivery.payload for delivery in deliveries}
    assert sorted(payloads) == ["carecloud", "dmhub", "expertsender"]
    # with a list mapping (tags -> DM Hub lists), dynamic mappings and a map transform (flavour -> interest id)
    assert payloads["dmhub"]["lists"] == ["VIP"]
    assert payloads["carecloud"]["property_records"] == [
        {"property_id": "loyalty_tier", "property_value": "gold"}
    ]
    assert payloads["carecloud"]["interests"] == ["87d706e4864d02b01"]
    kinds = {
        rule.kind
        for integration in config.group_keys["demo"].integrations
        for flow in (integration.contacts, integration.delete, integration.events)
        if flow is not None
        for rule in flow.mapping
    }
    assert kinds == {"string", "list", "dynamic"}


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "absent.yaml")


# --- the CLI check ----------------------------------------------------------------------------------------------


def test_config_check_passes_the_shipped_file() -> None:
    result = CliRunner().invoke(main, ["config", "check", str(SHIPPED)])

    assert result.exit_code == 0, result.output
    assert "valid (version 1, 1 client(s), 1 group key(s), 3 integration(s), 2 hook(s))" in result.output


def test_config_check_fails_a_broken_file_and_prints_the_line(example_text: str, tmp_path: Path) -> None:
    # given a config with a mapping to a field ExpertSender does not have
    broken = tmp_path / "broken.yaml"
    text = edit(example_text, "to: lastName", "to: surname")
    broken.write_text(text, encoding="utf-8")

    # when it is checked
    result = CliRunner().invoke(main, ["config", "check", str(broken)])

    # then the command fails and prints the path and line of the problem
    assert result.exit_code == 1
    assert f"{broken}: invalid" in result.output
    assert f"{ITEM}.contacts.mapping[2].to (line {line_of(text, 'to: surname')})" in result.output


# --- clients ---------------------------------------------------------------------------------------------------

CLIENTS = """
version: 1
clients:
  - name: backend
    principals: [AKIAEXAMPLEBACKEND01, "arn:aws:iam::123456789012:user/backend"]
    group_keys: [pl]
  - name: ops
    principals: ["arn:aws:iam::123456789012:role/ops"]
    group_keys: ["*"]
group_keys:
  pl:
    integrations:
      - name: es
        type: expertsender
        secret: forwarder/pl/expertsender
        delete:
          mapping:
            - {kind: string, from: email, to: email, required: true}
  de:
    integrations:
      - name: es
        type: expertsender
        secret: forwarder/de/expertsender
        delete:
          mapping:
            - {kind: string, from: email, to: email, required: true}
"""


@pytest.fixture
def clients_config() -> ForwarderConfig:
    return load_config_text(CLIENTS)


def test_a_client_is_found_by_its_access_key_id_or_its_arn(clients_config: ForwarderConfig) -> None:
    by_key = clients_config.client_for("AKIAEXAMPLEBACKEND01", "arn:aws:iam::123456789012:user/other")
    by_arn = clients_config.client_for("AKIAUNKNOWN000000000", "arn:aws:iam::123456789012:user/backend")
    by_role = clients_config.client_for(None, "arn:aws:iam::123456789012:role/ops")

    assert by_key is not None and by_key.name == "backend"
    assert by_arn is not None and by_arn.name == "backend"
    assert by_role is not None and by_role.name == "ops"
    assert clients_config.client_for("AKIAUNKNOWN000000000", None) is None
    assert clients_config.client_for() is None


def test_a_client_may_use_only_its_group_keys_unless_it_has_the_wildcard(
    clients_config: ForwarderConfig,
) -> None:
    backend, ops = clients_config.clients

    assert backend.allows("pl") and not backend.allows("de")
    assert ops.allows("pl") and ops.allows("de") and ops.allows("anything")


def test_a_principal_shared_by_two_clients_is_refused() -> None:
    text = CLIENTS.replace('["arn:aws:iam::123456789012:role/ops"]', "[AKIAEXAMPLEBACKEND01]")

    (problem,) = problems_of(text)

    assert problem.startswith(f"clients[1].principals[0] (line {line_of(text, '[AKIAEXAMPLEBACKEND01]')}): ")
    assert "belongs to both 'backend' and 'ops'" in problem


@pytest.mark.parametrize(
    ("role", "caller", "matches"),
    [
        (
            "arn:aws:iam::123456789012:role/Producer",
            "arn:aws:sts::123456789012:assumed-role/Producer/orders",
            True,
        ),
        (
            "arn:aws:iam::123456789012:role/service/team/Producer",
            "arn:aws:sts::123456789012:assumed-role/Producer/i-0abc123",
            True,
        ),
        (
            "arn:aws-cn:iam::123456789012:role/Producer",
            "arn:aws-cn:sts::123456789012:assumed-role/Producer/orders",
            True,
        ),
        (
            "arn:aws:iam::123456789012:role/Producer",
            "arn:aws:sts::210987654321:assumed-role/Producer/orders",
            False,
        ),
        (
            "arn:aws:iam::123456789012:role/Producer",
            "arn:aws:sts::123456789012:assumed-role/Producer2/orders",
            False,
        ),
        (
            "arn:aws:iam::123456789012:role/Producer",
            "arn:aws-cn:sts::123456789012:assumed-role/Producer/orders",
            False,
        ),
        ("arn:aws:iam::123456789012:role/Producer", "arn:aws:iam::123456789012:user/Producer", False),
        (
            "arn:aws:iam::123456789012:user/Producer",
            "arn:aws:sts::123456789012:assumed-role/Producer/orders",
            False,
        ),
    ],
    ids=[
        "same-role",
        "role-with-a-path",
        "china-partition",
        "other-account",
        "other-name",
        "other-partition",
        "a-user-is-not-a-session",
        "a-user-is-not-a-role",
    ],
)
def test_an_assumed_role_session_is_the_client_of_its_role(role: str, caller: str, matches: bool) -> None:
    # given a client whose principal is an IAM role (or a user), as configured
    config = load_config_text(CLIENTS.replace("arn:aws:iam::123456789012:role/ops", role))
    # when a caller signs as a session of a role (API Gateway's identity.userArn)
    found = config.client_for("ASIAEXAMPLESESSION01", caller)
    # then it is the role's client when partition, account and role name match (the session ARN has no path)
    assert (found.name if found else None) == ("ops" if matches else None)


def test_two_clients_with_roles_their_sessions_cannot_tell_apart_are_refused() -> None:
    # given two clients with roles of one name in one account, on different paths
    team_ops = '"arn:aws:iam::123456789012:role/team/ops"'
    text = CLIENTS.replace(
        "principals: [AKIAEXAMPLEBACKEND01,", f"principals: [{team_ops}, AKIAEXAMPLEBACKEND01,"
    )
    # when the config is checked, then it is refused where the second one is named
    (problem,) = problems_of(text)
    assert problem.startswith("clients[1].principals[0] ")
    assert "have the same name in one account" in problem


def test_matching_by_a_field_no_mapping_fills_is_refused(example_text: str) -> None:
    text = edit(example_text, "match_by: Email", "match_by: CrmId")
    text = edit(text, "            - {kind: string, from: crm_id, to: crmId, transforms: [string]}\n", "")
    [problem] = [found for found in problems_of(text) if "no mapping fills 'crmId'" in found]
    assert problem.startswith(f"{ITEM}.contacts.mapping (line ")
    assert "match_by is CrmId but no mapping fills 'crmId'" in problem


def test_a_consent_renamed_to_a_non_numeric_id_points_at_the_attribute(example_text: str) -> None:
    text = edit(example_text, 'newsletter_consent: "1"', "newsletter_consent: marketing")
    (problem,) = problems_of(text)
    line = line_of(text, "newsletter_consent: marketing")
    assert problem.startswith(f"{ITEM}.contacts.mapping[8].fields.newsletter_consent (line {line})")
    assert "numeric consent ids" in problem


def test_every_problem_of_an_integration_is_reported_at_once(example_text: str) -> None:
    # given five independent mistakes in one integration (before: one per run, five runs)
    text = edit(example_text, "match_by: Email", "match_by: Emial")
    text = edit(text, "batch_size: 100", "batch_size: 0")
    text = edit(text, 'newsletter_consent: "1"', "newsletter_consent: marketing")
    text = edit(text, "from: last_name, to: lastName", "from: last_name, to: surname")
    text = edit(text, "delete_by: email", "delete_by: phone")
    # when it is checked, then each is reported, with its path
    problems = problems_of(text)
    joined = "\n".join(problems)
    assert len(problems) >= 3, joined
    assert "settings.match_by" in joined
    assert "settings.batch_size" in joined
    assert "'surname' is not a field" in joined


def test_every_problem_across_clients_and_group_keys_is_reported_at_once() -> None:
    text = CLIENTS.replace("group_keys: [pl]", "group_keys: [pl, xx, yy]", 1)
    problems = problems_of(text)
    assert sum("unknown group key" in problem for problem in problems) == 2, problems


def test_a_consent_id_beyond_int32_is_refused(example_text: str) -> None:
    # ExpertSender's consent ids are 32-bit integers: before, config check passed and every record was refused
    text = edit(example_text, 'newsletter_consent: "1"', 'newsletter_consent: "2147483648"')
    (problem,) = problems_of(text)
    assert problem.startswith(f"{ITEM}.contacts.mapping[8].fields.newsletter_consent (line ")
    assert "2147483647" in problem


def test_a_confirmation_message_id_beyond_int32_is_refused(example_text: str) -> None:
    text = edit(
        example_text, "match_by: Email", "match_by: Email\n          confirmation_message_id: 2147483648"
    )
    (problem,) = problems_of(text)
    assert "confirmation_message_id" in problem
    assert "2147483647" in problem


def test_deleting_by_a_field_the_delete_mapping_lacks_is_refused(example_text: str) -> None:
    text = edit(example_text, "delete_by: email", "delete_by: phone")
    [problem] = [found for found in problems_of(text) if "no mapping fills 'phone'" in found]
    assert problem.startswith(f"{ITEM}.delete.mapping (line ")
    assert "delete_by is phone but no mapping fills 'phone'" in problem


def test_a_delete_identifier_normalised_unlike_the_stored_one_is_refused(example_text: str) -> None:
    text = edit(example_text, "delete_by: email", "delete_by: phone")
    text = text.rstrip("\n") + "\n            - {kind: string, from: phone, to: phone}\n"
    [problem] = [found for found in problems_of(text) if "normalised as contacts" in found]
    assert problem.startswith(f"{ITEM}.delete.mapping[1] (line ")
    assert "must be normalised as contacts normalises it" in problem


# --- sources: producers writing through SQS or EventBridge ----------------------------------------------------

SOURCES = """
sources:
  - name: shop-queue
    kind: sqs
    group_keys: [demo]
  - name: shop-events
    kind: eventbridge
    event_source: forwarder.shop
    group_keys: ["*"]
"""


def test_the_shipped_config_has_an_sqs_and_an_eventbridge_source_for_demo() -> None:
    config = load_config(SHIPPED)
    queue, events = config.sources
    assert (queue.kind, queue.name, queue.group_keys) == ("sqs", "demo-queue", ["demo"])
    assert (events.kind, events.event_source, events.group_keys) == (
        "eventbridge",
        "forwarder.demo",
        ["demo"],
    )


def test_sources_are_found_by_kind_and_name_or_event_source(example_text: str) -> None:
    config = load_config_text(example_text + SOURCES)
    queue = config.source("sqs", "shop-queue")
    events = config.source("eventbridge", "forwarder.shop")
    assert queue is not None and queue.allows("demo") and not queue.allows("other")
    assert events is not None and events.name == "shop-events" and events.allows("anything")
    # a name of one kind is not a source of the other
    assert config.source("eventbridge", "shop-queue") is None
    assert config.source("sqs", "shop-events") is None
    # and a config without the section has no sources
    assert load_config_text(example_text).sources == []


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        (
            "group_keys: [demo]\n  - name: shop-events",
            "group_keys: [nope]\n  - name: shop-events",
            "sources[0].group_keys[0]",
            "unknown group key 'nope'",
        ),
        (
            "event_source: forwarder.shop",
            "event_source: com.example.shop",
            "sources[1].event_source",
            "must start with 'forwarder.'",
        ),
        (
            "    event_source: forwarder.shop\n",
            "",
            "sources[1]",
            "an eventbridge source needs 'event_source'",
        ),
        ("kind: sqs", "kind: kafka", "sources[0].kind", "'sqs' or 'eventbridge'"),
        ("name: shop-events", "name: shop-queue", "sources[1].name", "already used by sources[0]"),
        (
            "kind: sqs\n",
            "kind: sqs\n    event_source: forwarder.x\n",
            "sources[0]",
            "is for eventbridge sources",
        ),
        (
            "kind: sqs\n",
            "kind: sqs\n    queue_arn: my-queue\n",
            "sources[0].queue_arn",
            "should match pattern",
        ),
    ],
)
def test_a_wrong_source_is_pointed_at(
    example_text: str, old: str, new: str, where: str, message: str
) -> None:
    text = edit(example_text + SOURCES, old, new)
    (problem,) = problems_of(text)
    assert problem.startswith(f"{where} (line "), problem
    assert message in problem, problem


def test_two_sources_with_one_event_source_are_refused(example_text: str) -> None:
    text = (
        example_text
        + SOURCES
        + (
            "  - name: copycat\n    kind: eventbridge\n    event_source: forwarder.shop\n    group_keys: [demo]\n"
        )
    )
    (problem,) = problems_of(text)
    assert problem.startswith("sources[2].event_source (line ")
    assert "already belongs to sources[1]" in problem
