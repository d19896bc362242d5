"""Form tools' JSON payloads as flat records.

* ``fields``: the body is the record itself, a JSON object of flat attributes.
* ``typeform``: Typeform's ``form_response``: each answer under its field's ``ref`` (set readable refs such as
  ``email`` in Typeform), choices as their labels, plus the hidden fields.
* ``tally``: Tally's ``FORM_RESPONSE``: each field under its label (else its key), chosen options as their
  texts. File uploads, payments and matrices are not flat and are left out of the record.
"""

from __future__ import annotations

from typing import Any

from forwarder.contract import ContractError

Record = dict[str, Any]
#: Typeform answer types whose value is a scalar under the key of the type's name.
_TYPEFORM_SCALARS = ("text", "email", "url", "file_url", "date", "phone_number", "number", "boolean")


def record_from_json(document: Any, format: str) -> Record:
    """The flat record a JSON body carries, read by the hook's ``format``. Raises ContractError (400)."""
    if format == "typeform":
        return _typeform(document)
    if format == "tally":
        return _tally(document)
    if not isinstance(document, dict):
        raise ContractError(
            400, "INVALID_BODY", 'the body must be a JSON object of the record\'s attributes: {"email": ...}'
        )
    return document


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _typeform(document: Any) -> Record:
    response = document.get("form_response") if isinstance(document, dict) else None
    if not isinstance(response, dict):
        raise ContractError(
            400, "INVALID_PAYLOAD", "not a Typeform webhook payload: it has no 'form_response' object"
        )
    record: Record = {}
    hidden = response.get("hidden")
    if isinstance(hidden, dict):
        record.update({str(name): value for name, value in hidden.items() if _scalar(value)})
    answers = response.get("answers")
    for answer in answers if isinstance(answers, list) else []:
        if not isinstance(answer, dict) or not isinstance(answer.get("field"), dict):
            continue
        field = answer["field"]
        name = field.get("ref") or field.get("id")
        value = _typeform_value(answer)
        if isinstance(name, str) and name and value is not _SKIP:
            record[name] = value
    return record


_SKIP = object()


def _typeform_value(answer: dict[str, Any]) -> Any:
    kind = answer.get("type")
    if kind in _TYPEFORM_SCALARS and _scalar(answer.get(kind)):
        return answer.get(kind)
    if kind == "choice" and isinstance(answer.get("choice"), dict):
        choice = answer["choice"]
        label = choice.get("label", choice.get("other"))
        return label if _scalar(label) else _SKIP
    if kind == "choices" and isinstance(answer.get("choices"), dict):
        choices = answer["choices"]
        labels = [label for label in choices.get("labels") or [] if isinstance(label, str)]
        if isinstance(choices.get("other"), str):
            labels.append(choices["other"])
        return labels
    return _SKIP  # payment, multi_format, file uploads: not flat


def _tally(document: Any) -> Record:
    data = document.get("data") if isinstance(document, dict) else None
    fields = data.get("fields") if isinstance(data, dict) else None
    if not isinstance(fields, list):
        raise ContractError(
            400, "INVALID_PAYLOAD", "not a Tally webhook payload: it has no 'data.fields' list"
        )
    record: Record = {}
    for field in fields:
        if not isinstance(field, dict):
            continue
        name = field.get("label") or field.get("key")
        value = field.get("value")
        options = {
            option.get("id"): option.get("text")
            for option in field.get("options") or []
            if isinstance(option, dict) and isinstance(option.get("text"), str)
        }
        if isinstance(value, list) and options:
            value = [options.get(item, item) for item in value]
        if not isinstance(name, str) or not name:
            continue
        if _scalar(value) or (isinstance(value, list) and all(_scalar(item) for item in value)):
            record[name] = value
    return record
