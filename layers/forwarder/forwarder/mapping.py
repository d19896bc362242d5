"""The mapping engine: flat record -> an integration's fields, by declarative rules.

Three kinds (seed 002): ``string`` (attribute -> field, one to one), ``list`` (array attribute -> list field),
``dynamic`` (several attributes into one object under renamed keys). Small transforms run on values in order.
Rules are compiled once per config load into plain closures, so mapping a record costs microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from forwarder.contract import FlatData, Scalar

Value = Any
TransformFn = Callable[[Value], Value]

_MISSING: Any = object()


class MappingError(ValueError):
    """A record cannot be mapped; ``errors`` says which attribute and why, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class TransformValueError(ValueError):
    """A transform cannot handle a value (message says which and why)."""


# --- transforms --------------------------------------------------------------------------------------------

SIMPLE_TRANSFORMS = ("trim", "lower", "upper", "phone", "string", "empty_to_null")
PARAM_TRANSFORMS = ("default", "date", "map", "phone", "truncate")


def _trim(value: Value) -> Value:
    return value.strip() if isinstance(value, str) else value


def _lower(value: Value) -> Value:
    return value.lower() if isinstance(value, str) else value


def _upper(value: Value) -> Value:
    return value.upper() if isinstance(value, str) else value


def _string(value: Value) -> Value:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _empty_to_null(value: Value) -> Value:
    return None if isinstance(value, str) and not value.strip() else value


_PHONE_JUNK = re.compile(r"[\s\-().\u00a0/]")
_PHONE_OK = re.compile(r"^\+?[0-9]{3,20}$")
#: Longer than a national number in most numbering plans: digits starting with the default country code and
#: longer than this already carry it (a "+" left out), e.g. 48600100200 with default_prefix +48.
_NATIONAL_DIGITS_MAX = 10


def _phone(default_prefix: str | None) -> TransformFn:
    def normalise(value: Value) -> Value:
        if value is None:
            return None
        text = _PHONE_JUNK.sub("", str(value) if not isinstance(value, str) else value)
        if text.startswith("00"):
            text = "+" + text[2:]
        if default_prefix and not text.startswith("+"):
            country = default_prefix[1:]
            if text.startswith(country) and len(text) > _NATIONAL_DIGITS_MAX:
                text = "+" + text  # the country code was typed without its "+"
            else:
                text = default_prefix + text.lstrip("0")
        if not _PHONE_OK.match(text):
            raise TransformValueError(f"'{value}' is not a phone number")
        return text

    return normalise


def _parse_date(value: Value, fmt: str) -> datetime:
    if isinstance(value, bool):
        raise TransformValueError(f"{value!r} is not a date")
    if fmt == "unix":
        try:
            return datetime.fromtimestamp(value if isinstance(value, int | float) else float(value), UTC)
        except (TypeError, ValueError, OverflowError, OSError):  # not a number, NaN, or out of range
            raise TransformValueError(f"'{value}' is not a unix timestamp") from None
    if not isinstance(value, str):
        raise TransformValueError(f"{value!r} is not a date string")
    try:
        parsed = (
            datetime.fromisoformat(value.strip())
            if fmt == "iso8601"
            else datetime.strptime(value.strip(), fmt)
        )
    except ValueError:
        expected = "ISO 8601" if fmt == "iso8601" else f"the format '{fmt}'"
        raise TransformValueError(f"'{value}' is not a date in {expected}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _format_date(moment: datetime, fmt: str) -> str:
    if fmt == "iso8601":  # isoformat, unlike strftime's %Y, always writes a four-digit year
        return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if fmt == "date":
        return date(moment.year, moment.month, moment.day).isoformat()
    return moment.strftime(fmt)


def convert_date(value: Value, input_format: str = "iso8601", output_format: str = "iso8601") -> str:
    """Read a date in ``input_format`` and write it in ``output_format`` (default: ISO 8601 in, a UTC date-time
    with milliseconds and Z out); TransformValueError says why a value does not convert."""
    try:
        return _format_date(_parse_date(value, input_format), output_format)
    except TransformValueError:
        raise
    except (OverflowError, ValueError):  # e.g. 9999-12-31T23:00-05:00 has no UTC date-time
        raise TransformValueError(f"'{value}' is out of the supported date range") from None


def _date(input_format: str, output_format: str) -> TransformFn:
    def convert(value: Value) -> Value:
        return None if value is None else convert_date(value, input_format, output_format)

    return convert


def _default(default: Scalar) -> TransformFn:
    def fill(value: Value) -> Value:
        return default if value is None or value == "" else value

    return fill


def _map(table: dict[str, Scalar]) -> TransformFn:
    """The exact key first; else the key equal ignoring case and surrounding spaces; else the value as is."""
    folded: dict[str, Scalar] = {}
    for key, output in table.items():
        folded.setdefault(key.strip().casefold(), output)

    def translate(value: Value) -> Value:
        key = _string(value)
        if not isinstance(key, str):
            return value
        if key in table:
            return table[key]
        return folded.get(key.strip().casefold(), value)

    return translate


def as_text(value: Value | list[Value]) -> str:
    """A mapped value as a vendor's text field takes it: booleans ``true``/``false``, whole numbers without
    ``.0`` (as the ``string`` transform writes them), a list joined with commas, its nulls and blanks left out."""
    if isinstance(value, list):
        return ",".join(as_text(item) for item in value if not _absent(item))
    text = _string(value)
    return "" if text is None else str(text)


def _truncate(length: int) -> TransformFn:
    def cut(value: Value) -> Value:
        return value[:length] if isinstance(value, str) else value

    return cut


class DateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    input: str = Field("iso8601", description="iso8601, unix, or a strptime pattern such as %d.%m.%Y")
    output: str = Field("iso8601", description="iso8601 (UTC date-time with Z), date, or a strftime pattern")


class PhoneOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_prefix: str | None = Field(None, pattern=r"^\+[0-9]{1,4}$")


def compile_transform(spec: Any) -> TransformFn:
    """Turn one transform spec (``"trim"`` or ``{"date": {...}}``) into a function; ValueError says what's wrong."""
    if isinstance(spec, str):
        simple: dict[str, TransformFn] = {
            "trim": _trim,
            "lower": _lower,
            "upper": _upper,
            "string": _string,
            "empty_to_null": _empty_to_null,
            "phone": _phone(None),
        }
        if spec not in simple:
            raise ValueError(
                f"unknown transform '{spec}'; known: {', '.join(sorted({*SIMPLE_TRANSFORMS, *PARAM_TRANSFORMS}))}"
            )
        return simple[spec]
    if isinstance(spec, dict) and len(spec) == 1:
        ((name, options),) = spec.items()
        if name == "default":
            if isinstance(options, dict | list):
                raise ValueError("'default' takes a single string, number, boolean or null")
            return _default(options)
        if name == "date":
            parsed = DateOptions.model_validate(options or {})
            return _date(parsed.input, parsed.output)
        if name == "map":
            if not isinstance(options, dict) or not options:
                raise ValueError("'map' takes a non-empty object of input value -> output value")
            # Keys as the record's values are compared: YAML `true:` must match a boolean true ("true").
            return _map({str(_string(key)): value for key, value in options.items()})
        if name == "phone":
            return _phone(PhoneOptions.model_validate(options or {}).default_prefix)
        if name == "truncate":
            if not isinstance(options, int) or isinstance(options, bool) or options < 1:
                raise ValueError("'truncate' takes a positive integer length")
            return _truncate(options)
        raise ValueError(f"unknown transform '{name}'; known: {', '.join(sorted(set(PARAM_TRANSFORMS)))}")
    raise ValueError("a transform is a name such as 'trim' or an object with one key such as {'date': {...}}")


def _chain(functions: list[TransformFn]) -> TransformFn:
    def run(value: Value) -> Value:
        for function in functions:
            value = function(value)
        return value

    return run


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    to: str = Field(min_length=1, description="the integration's field")
    transforms: list[Any] = Field(default_factory=list)

    @field_validator("transforms")
    @classmethod
    def _transforms_compile(cls, transforms: list[Any]) -> list[Any]:
        for index, spec in enumerate(transforms):
            try:
                compile_transform(spec)
            except ValueError as error:
                raise ValueError(f"transforms[{index}]: {error}") from None
        return transforms

    def transform(self) -> TransformFn:
        return _chain([compile_transform(spec) for spec in self.transforms])


class StringMapping(_Rule):
    """attribute -> field, one to one; or a constant ``value``."""

    kind: Literal["string"]
    from_: str | None = Field(None, alias="from", min_length=1)
    value: Scalar = None
    required: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> StringMapping:
        if self.from_ is None and self.value is None:
            raise ValueError("give the attribute to read ('from') or a constant ('value')")
        if self.from_ is not None and self.value is not None:
            raise ValueError("give either 'from' or 'value', not both")
        return self


class ListMapping(_Rule):
    """array attribute -> list field; a single value becomes a one-item list; transforms run per item."""

    kind: Literal["list"]
    from_: str = Field(alias="from", min_length=1)
    required: bool = False


class DynamicMapping(_Rule):
    """several attributes -> one object field, under renamed keys (``attribute: key``)."""

    kind: Literal["dynamic"]
    fields: dict[str, str] = Field(min_length=1, description="attribute -> key in the object")
    required: bool = False


MappingRule = Annotated[StringMapping | ListMapping | DynamicMapping, Field(discriminator="kind")]

Mapper = Callable[[FlatData], dict[str, Any]]


def compile_mapping(rules: list[StringMapping | ListMapping | DynamicMapping]) -> Mapper:
    """Compile rules into one function: record -> ``{field: value}``; raises MappingError listing every problem.

    Missing attributes (absent, null or empty after transforms) produce no field unless the rule is required.
    """
    steps: list[Callable[[FlatData, dict[str, Any], list[str]], None]] = []
    for rule in rules:
        transform = rule.transform()
        if isinstance(rule, StringMapping):
            steps.append(_string_step(rule, transform))
        elif isinstance(rule, ListMapping):
            steps.append(_list_step(rule, transform))
        else:
            steps.append(_dynamic_step(rule, transform))

    def apply(data: FlatData) -> dict[str, Any]:
        out: dict[str, Any] = {}
        errors: list[str] = []
        for step in steps:
            step(data, out, errors)
        if errors:
            raise MappingError(errors)
        return out

    return apply


def _absent(value: Value) -> bool:
    return value is None or value == "" or value == []


def _string_step(
    rule: StringMapping, transform: TransformFn
) -> Callable[[FlatData, dict[str, Any], list[str]], None]:
    source, field, constant, required = rule.from_, rule.to, rule.value, rule.required

    def step(data: FlatData, out: dict[str, Any], errors: list[str]) -> None:
        value = constant if source is None else data.get(source)
        if isinstance(value, list):
            errors.append(f"attribute '{source}' is a list; field '{field}' takes a single value")
            return
        try:
            value = transform(value)
        except TransformValueError as error:
            errors.append(f"attribute '{source}': {error}")
            return
        if _absent(value):
            if required:
                errors.append(f"attribute '{source}' is required (it maps to '{field}')")
            return
        out[field] = value

    return step


def _list_step(
    rule: ListMapping, transform: TransformFn
) -> Callable[[FlatData, dict[str, Any], list[str]], None]:
    source, field, required = rule.from_, rule.to, rule.required

    def step(data: FlatData, out: dict[str, Any], errors: list[str]) -> None:
        raw = data.get(source)
        items = raw if isinstance(raw, list) else ([] if raw is None else [raw])
        values: list[Any] = []
        for index, item in enumerate(items):
            try:
                item = transform(item)
            except TransformValueError as error:
                errors.append(f"attribute '{source}[{index}]': {error}")
                continue
            if not _absent(item):
                values.append(item)
        if not values:
            if required:
                errors.append(f"attribute '{source}' is required (it maps to '{field}')")
            return
        out[field] = values

    return step


def _dynamic_step(
    rule: DynamicMapping, transform: TransformFn
) -> Callable[[FlatData, dict[str, Any], list[str]], None]:
    pairs, field, required = list(rule.fields.items()), rule.to, rule.required

    def step(data: FlatData, out: dict[str, Any], errors: list[str]) -> None:
        values: dict[str, Any] = {}
        for attribute, key in pairs:
            value = data.get(attribute, _MISSING)
            if value is _MISSING:
                continue
            try:
                value = transform(value)
            except TransformValueError as error:
                errors.append(f"attribute '{attribute}': {error}")
                continue
            if not _absent(value):
                values[key] = value
        if not values:
            if required:
                errors.append(
                    f"none of the attributes {', '.join(rule.fields)} is present (they map to '{field}')"
                )
            return
        out.setdefault(field, {}).update(values)

    return step
