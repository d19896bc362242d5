"""The ``sources:`` section: producers that feed records from their own SQS queue or EventBridge bus, and
the group keys each may write to. A record from a producer for any other group key is refused."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from forwarder.producers import EVENT_SOURCE_PREFIX

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# EventBridge: a source is 1 to 256 characters; ours start with the prefix the rule matches on.
_EVENT_SOURCE = r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,255}$"
_QUEUE_ARN = r"^arn:[A-Za-z0-9-]+:sqs:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,80}(\.fifo)?$"


class SourceConfig(BaseModel):
    """A producer. ``sqs``: its messages name it in the ``source`` message attribute and, when ``queue_arn``
    is set, must arrive on that queue. ``eventbridge``: its events carry ``event_source`` as their
    ``source`` and, when ``account`` is set, were put by that AWS account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    kind: Literal["sqs", "eventbridge"]
    group_keys: list[str] = Field(min_length=1, description="group keys it may write to; '*' for all")
    queue_arn: str | None = Field(None, pattern=_QUEUE_ARN, description="sqs: the queue it must write on")
    event_source: str | None = Field(None, pattern=_EVENT_SOURCE, description="eventbridge: its `source`")
    account: str | None = Field(None, pattern=r"^[0-9]{12}$", description="eventbridge: the putting account")

    @model_validator(mode="after")
    def _kind_fields(self) -> SourceConfig:
        if self.kind == "sqs":
            for name in ("event_source", "account"):
                if getattr(self, name) is not None:
                    raise ValueError(f"'{name}' is for eventbridge sources; an sqs source has queue_arn")
        else:
            if self.queue_arn is not None:
                raise ValueError("'queue_arn' is for sqs sources; an eventbridge source has event_source")
            if self.event_source is None:
                raise ValueError(
                    "an eventbridge source needs 'event_source': the `source` its events carry, "
                    f"starting with '{EVENT_SOURCE_PREFIX}'"
                )
        return self

    @field_validator("event_source")
    @classmethod
    def _forwarded_by_the_rule(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(EVENT_SOURCE_PREFIX):
            raise ValueError(
                f"'{value}' must start with '{EVENT_SOURCE_PREFIX}': the stack's rule forwards only those events"
            )
        return value

    def allows(self, group_key: str) -> bool:
        return "*" in self.group_keys or group_key in self.group_keys
