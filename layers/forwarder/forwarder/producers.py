"""The producers' contract: how a record arrives from a brand's own queue (SQS) or event bus (EventBridge).

Both carry the API's envelope, ``{"group_key": "...", "data": {...flat...}}``; what the API says with its
route, a producer says with

* **SQS** (a message on the producer queue): the body is the envelope; the message attribute ``action``
  (String) is ``upsert_contact``, ``delete_contact`` or ``event``, and the attribute ``source`` (String)
  names the producer (a ``sources:`` entry of kind ``sqs``);
* **EventBridge** (an event put on the producer bus): ``detail`` is the envelope, ``detail-type`` is one of
  :data:`DETAIL_TYPES`, and ``source`` is the producer's event source, which starts with
  :data:`EVENT_SOURCE_PREFIX` (the rule forwards no other) and names a ``sources:`` entry of kind
  ``eventbridge``.
"""

from __future__ import annotations

from typing import Final

from forwarder.contract import Action

#: The message attributes of an SQS producer message.
ACTION_ATTRIBUTE: Final = "action"
SOURCE_ATTRIBUTE: Final = "source"

#: The ``detail-type`` of a producer's EventBridge event -> what it asks for. The stack's rule forwards
#: exactly these (tests/unit/test_template.py holds the template to this table).
DETAIL_TYPES: Final[dict[str, Action]] = {
    "Contact Upserted": Action.UPSERT_CONTACT,
    "Contact Deleted": Action.DELETE_CONTACT,
    "Custom Event": Action.EVENT,
}

#: Every producer's EventBridge ``source`` starts with this: the rule matches on it, so the bus's other
#: traffic (and its events that happen to share a detail-type) never reaches the forwarder.
EVENT_SOURCE_PREFIX: Final = "forwarder."


def detail_type(action: Action) -> str:
    """The ``detail-type`` an event for ``action`` carries."""
    return next(name for name, mapped in DETAIL_TYPES.items() if mapped is action)
