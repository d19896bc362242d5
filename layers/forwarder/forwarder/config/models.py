"""The config document (version 1): who may call, which group keys exist, and per group key which
integrations run for contacts / delete / events, with which mapping. Credentials are never here: an
integration names its secret in the secret store."""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from forwarder.config.hooks import HOOK_ID, HookConfig
from forwarder.config.sources import SourceConfig
from forwarder.contract import Action, FlatData
from forwarder.integrations.base import ActionSpec, Integration
from forwarder.integrations.registry import get_integration, integrations
from forwarder.mapping import DynamicMapping, ListMapping, Mapper, MappingRule, StringMapping, compile_mapping

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SECRETISH = re.compile(r"(api[_-]?key|secret|password|passwd|token|credential)", re.IGNORECASE)

FLOWS = ("contacts", "delete", "events")
# An IAM role (with or without a path) and the ARN its sessions sign as, which names no path:
# arn:aws:iam::123456789012:role/service/Name -> arn:aws:sts::123456789012:assumed-role/Name/session-name
_ROLE_ARN = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role/(?:[^/]+/)*(?P<name>[^/]+)"
)
_ASSUMED_ROLE_ARN = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):sts::(?P<account>\d{12}):assumed-role/(?P<name>[^/]+)/[^/]+"
)


def _role(pattern: re.Pattern[str], arn: str) -> tuple[str, str, str] | None:
    """(partition, account, role name) of a role ARN or an assumed-role ARN, by ``pattern``."""
    match = pattern.fullmatch(arn)
    return (match["partition"], match["account"], match["name"]) if match else None


class ConfigProblem(ValueError):
    """A problem at ``path``, relative to the model being validated. The loader appends ``path`` to pydantic's
    location so the error names the exact key and its line; ``str()`` still reads ``path: message``."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        where = ""
        for part in path:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else part)
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.message = message


class ConfigProblems(ValueError):
    """Several problems found by one validator: the loader reports each (every problem at once)."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems


def raise_all(problems: list[ConfigProblem]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigProblems(problems)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FlowConfig(_Strict):
    """What an integration does for one flow: the action (default: the integration's) and the mapping."""

    action: str | None = None
    mapping: list[MappingRule] = Field(min_length=1)


class IntegrationConfig(_Strict):
    name: str = Field(pattern=_NAME, description="unique within the group key; names its queue messages")
    type: str
    enabled: bool = True
    secret: str | None = Field(None, min_length=1, description="the secret's name in the secret store")
    max_requests_per_second: float | None = Field(
        None, gt=0, description="the vendor's rate limit: requests per second at most (halved on a 429)"
    )
    settings: dict[str, Any] = Field(default_factory=dict)
    contacts: FlowConfig | None = None
    delete: FlowConfig | None = None
    events: FlowConfig | None = None

    _settings: BaseModel = PrivateAttr()
    _mappers: dict[str, Mapper] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_against_integration(self) -> IntegrationConfig:
        problems: list[ConfigProblem] = []
        if self.type not in integrations():
            raise ConfigProblem(
                ("type",),
                f"unknown integration type '{self.type}'; known: {', '.join(sorted(integrations()))}",
            )
        integration = get_integration(self.type)
        for key in _secret_like_keys(self.settings):
            problems.append(
                ConfigProblem(
                    ("settings", key),
                    f"'{key}' looks like a credential; credentials never go in the config: store them in "
                    f"the secret store and name the secret with 'secret:'",
                )
            )
        settings: BaseModel | None = None
        credentials = set(_secret_like_keys(self.settings))
        try:
            settings = integration.settings_model.model_validate(
                {key: value for key, value in self.settings.items() if key not in credentials}
            )
        except ValidationError as error:
            problems.extend(ConfigProblem(("settings", *item["loc"]), item["msg"]) for item in error.errors())
        if integration.secret_keys and not self.secret:
            problems.append(
                ConfigProblem(
                    ("secret",),
                    f"'{self.type}' needs a secret holding {', '.join(integration.secret_keys)}: "
                    "set 'secret: <name in the secret store>'",
                )
            )
        if not any(getattr(self, flow) for flow in FLOWS):
            problems.append(ConfigProblem((), "configure at least one of contacts, delete, events"))
        configured: dict[str, tuple[str, list[Any]]] = {}
        for flow in FLOWS:
            flow_config: FlowConfig | None = getattr(self, flow)
            if flow_config is None:
                continue
            try:
                spec = _action_for(integration, flow, flow_config.action)
            except ConfigProblem as problem:
                problems.append(problem)
                continue
            found = _check_targets(flow, spec, flow_config.mapping)
            problems.extend(found)
            if not found:
                self._mappers[flow] = compile_mapping(list(flow_config.mapping))
                configured[flow] = (spec.name, list(flow_config.mapping))
        if settings is not None:
            self._settings = settings
            problems.extend(
                ConfigProblem(path, message)
                for path, message in integration.check_config(settings, configured)
            )
        raise_all(problems)
        return self

    @property
    def integration(self) -> Integration:
        return get_integration(self.type)

    @property
    def parsed_settings(self) -> BaseModel:
        return self._settings

    def operation(self, action: Action) -> str | None:
        """The integration action run for a record's action, or None when this integration skips it."""
        flow_config: FlowConfig | None = getattr(self, action.flow)
        if flow_config is None:
            return None
        return flow_config.action or self.integration.default_actions[action.flow]

    def map(self, action: Action, data: FlatData) -> dict[str, Any]:
        return self._mappers[action.flow](data)


def _secret_like_keys(settings: dict[str, Any]) -> list[str]:
    return [key for key in settings if _SECRETISH.search(key)]


def _action_for(integration: Integration, flow: str, name: str | None) -> ActionSpec:
    if name is None:
        default = integration.default_actions.get(flow)
        if default is None:
            raise ConfigProblem((flow,), f"{integration.title} has no action for {flow}; remove '{flow}'")
        name = default
    spec = integration.actions.get(name)
    if spec is None:
        raise ConfigProblem(
            (flow, "action"),
            f"unknown action '{name}'; {integration.title} has: {', '.join(sorted(integration.actions))}",
        )
    if flow not in spec.flows:
        raise ConfigProblem(
            (flow, "action"), f"'{name}' cannot serve {flow} (it serves {', '.join(sorted(spec.flows))})"
        )
    return spec


def _check_targets(
    flow: str, spec: ActionSpec, rules: list[StringMapping | ListMapping | DynamicMapping]
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        field = spec.fields.get(rule.to)
        if field is None:
            problems.append(
                ConfigProblem(
                    (flow, "mapping", index, "to"),
                    f"'{rule.to}' is not a field of {spec.name}; fields: {', '.join(spec.fields)}",
                )
            )
            continue
        if field.kind != rule.kind:
            problems.append(
                ConfigProblem(
                    (flow, "mapping", index, "kind"),
                    f"field '{rule.to}' takes a {field.kind} mapping, not {rule.kind}",
                )
            )
        if rule.to in seen and rule.kind != "dynamic":
            problems.append(
                ConfigProblem(
                    (flow, "mapping", index, "to"),
                    f"'{rule.to}' is already mapped by mapping[{seen[rule.to]}]",
                )
            )
        seen[rule.to] = index
    return problems


class GroupKeyConfig(_Strict):
    description: str = ""
    integrations: list[IntegrationConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> GroupKeyConfig:
        first: dict[str, int] = {}
        for index, integration in enumerate(self.integrations):
            if integration.name in first:
                raise ConfigProblem(
                    ("integrations", index, "name"),
                    f"integration name '{integration.name}' is already used by integrations[{first[integration.name]}]; "
                    "names are unique per group key",
                )
            first[integration.name] = index
        return self

    def integration(self, name: str) -> IntegrationConfig | None:
        return next((item for item in self.integrations if item.name == name), None)


class ClientConfig(_Strict):
    """A caller: the principals it signs as (access key ids, IAM user or role ARNs) and the group keys it may
    use. A role's principal also matches its sessions (``arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION``)."""

    name: str = Field(pattern=_NAME)
    principals: list[str] = Field(min_length=1)
    group_keys: list[str] = Field(min_length=1, description="group keys this client may use; '*' for all")

    def allows(self, group_key: str) -> bool:
        return "*" in self.group_keys or group_key in self.group_keys


class ForwarderConfig(_Strict):
    version: Literal[1]
    clients: list[ClientConfig] = Field(min_length=1)
    group_keys: dict[str, GroupKeyConfig] = Field(min_length=1)
    hooks: dict[str, HookConfig] = Field(
        default_factory=dict, description="web-form webhooks: POST /v1/hooks/{hook_id}"
    )
    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="producers writing through SQS or EventBridge (forwarder.config.sources)",
    )

    @model_validator(mode="after")
    def _references(self) -> ForwarderConfig:
        problems: list[ConfigProblem] = []
        for hook_id, hook in self.hooks.items():
            try:
                _check_hook(hook_id, hook, self.group_keys)
            except ConfigProblem as problem:
                problems.append(problem)
        for index, client in enumerate(self.clients):
            for position, group_key in enumerate(client.group_keys):
                if group_key != "*" and group_key not in self.group_keys:
                    problems.append(
                        ConfigProblem(
                            ("clients", index, "group_keys", position),
                            f"unknown group key '{group_key}'; known: {', '.join(sorted(self.group_keys))}",
                        )
                    )
        owners: dict[str, str] = {}
        for index, client in enumerate(self.clients):
            for position, principal in enumerate(client.principals):
                if principal in owners:
                    problems.append(
                        ConfigProblem(
                            ("clients", index, "principals", position),
                            f"principal '{principal}' belongs to both '{owners[principal]}' and '{client.name}'",
                        )
                    )
                owners.setdefault(principal, client.name)
        roles: dict[tuple[str, str, str], tuple[str, str]] = {}
        for index, client in enumerate(self.clients):
            for position, principal in enumerate(client.principals):
                role = _role(_ROLE_ARN, principal)
                if role is None:
                    continue
                owner = roles.setdefault(role, (principal, client.name))
                if owner[1] != client.name:
                    problems.append(
                        ConfigProblem(
                            ("clients", index, "principals", position),
                            f"role '{principal}' of '{client.name}' and '{owner[0]}' of '{owner[1]}' have the "
                            "same name in one account: their sessions' assumed-role ARNs, which name no path, "
                            "cannot tell them apart",
                        )
                    )
        problems.extend(self._check_sources())
        raise_all(problems)
        return self

    def hook_action(self, hook_id: str) -> Action | None:
        """The action a hook's records ask for, or None when there is no such hook."""
        hook = self.hooks.get(hook_id)
        return None if hook is None else next(action for action in Action if action.flow == hook.flow)

    def _check_sources(self) -> list[ConfigProblem]:
        problems: list[ConfigProblem] = []
        names: dict[str, int] = {}
        event_sources: dict[str, int] = {}
        for index, source in enumerate(self.sources):
            if source.name in names:
                problems.append(
                    ConfigProblem(
                        ("sources", index, "name"),
                        f"source name '{source.name}' is already used by sources[{names[source.name]}]",
                    )
                )
            names.setdefault(source.name, index)
            for position, group_key in enumerate(source.group_keys):
                if group_key != "*" and group_key not in self.group_keys:
                    problems.append(
                        ConfigProblem(
                            ("sources", index, "group_keys", position),
                            f"unknown group key '{group_key}'; known: {', '.join(sorted(self.group_keys))}",
                        )
                    )
            if source.event_source is not None:
                if source.event_source in event_sources:
                    problems.append(
                        ConfigProblem(
                            ("sources", index, "event_source"),
                            f"event source '{source.event_source}' already belongs to "
                            f"sources[{event_sources[source.event_source]}]: one producer per event source",
                        )
                    )
                event_sources.setdefault(source.event_source, index)
        return problems

    @cached_property
    def _by_principal(self) -> dict[str, ClientConfig]:
        return {principal: client for client in self.clients for principal in client.principals}

    def source(self, kind: Literal["sqs", "eventbridge"], name: str) -> SourceConfig | None:
        """The producer of ``kind`` with this name (sqs) or event source (eventbridge), or None."""
        for source in self.sources:
            if source.kind == kind and (source.name if kind == "sqs" else source.event_source) == name:
                return source
        return None

    @cached_property
    def _by_role(self) -> dict[tuple[str, str, str], ClientConfig]:
        return {
            role: client
            for client in self.clients
            for principal in client.principals
            if (role := _role(_ROLE_ARN, principal)) is not None
        }

    def client_for(self, *principals: str | None) -> ClientConfig | None:
        """The client whose principals include any of the caller's identities (access key id, user ARN), or
        whose role the caller's assumed-role session belongs to (matched on partition, account and role
        name: an assumed-role ARN drops the role's path)."""
        for principal in principals:
            if principal and principal in self._by_principal:
                return self._by_principal[principal]
        for principal in principals:
            role = _role(_ASSUMED_ROLE_ARN, principal) if principal else None
            if role is not None and role in self._by_role:
                return self._by_role[role]
        return None


def _check_hook(hook_id: str, hook: HookConfig, group_keys: dict[str, GroupKeyConfig]) -> None:
    if not re.match(HOOK_ID, hook_id):
        raise ConfigProblem(
            ("hooks", hook_id),
            f"hook id '{hook_id}' is not one URL path segment: use letters, digits, '-' and '_' (at most 64)",
        )
    group = group_keys.get(hook.group_key)
    if group is None:
        raise ConfigProblem(
            ("hooks", hook_id, "group_key"),
            f"unknown group key '{hook.group_key}'; known: {', '.join(sorted(group_keys))}",
        )
    if not any(item.enabled and getattr(item, hook.flow) for item in group.integrations):
        raise ConfigProblem(
            ("hooks", hook_id, "flow"),
            f"no enabled integration of group key '{hook.group_key}' handles {hook.flow}: every record of "
            "this hook would be refused",
        )
