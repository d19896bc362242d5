"""Load and validate a config document; errors point at the exact place (path and line)."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from forwarder.config.models import ConfigProblem, ConfigProblems, ForwarderConfig

if TYPE_CHECKING:
    import yaml


class ConfigError(Exception):
    """The config document is invalid; ``problems`` lists each as 'path (line N): message'."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


def _line_index(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each YAML path to its 1-based line, from the composed node tree."""
    import yaml  # deferred: a handler parses its config on its first invocation, not at import

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(node: yaml.Node | None, path: tuple[str | int, ...]) -> None:
        if node is None:
            return
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                lines[child] = key.start_mark.line + 1
                walk(value, child)
                lines[child] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    walk(root, ())
    return lines


def _where(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> str:
    # Drop pydantic's union tags (e.g. 'string' in mapping[0].string.to) that are not document keys.
    path: list[str | int] = []
    for part in loc:
        candidate = (*path, part)
        if candidate in lines or not lines:
            path.append(part)
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    line = None
    probe = tuple(path)
    while probe and line is None:
        line = lines.get(probe)
        probe = probe[:-1]
    return f"{text or '(document)'}" + (f" (line {line})" if line else "")


def _problems(error: ValidationError, lines: dict[tuple[str | int, ...], int]) -> list[str]:
    problems: list[str] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(
            cause, ConfigProblems
        ):  # a model validator's problems below the model: each at its place
            problems.extend(
                f"{_where((*loc, *found.path), lines)}: {found.message}" for found in cause.problems
            )
            continue
        if isinstance(cause, ConfigProblem):  # a model validator's problem below the model: point at it
            loc, message = (*loc, *cause.path), cause.message
        problems.append(f"{_where(loc, lines)}: {message}")
    return problems


def parse_document(text: str, source: str) -> Any:
    import yaml  # deferred: a handler parses its config on its first invocation, not at import

    try:
        if source.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ConfigError(
            source, [f"not valid {'JSON' if source.endswith('.json') else 'YAML'}: {error}"]
        ) from None


def load_config_text(text: str, source: str = "<config>") -> ForwarderConfig:
    document = parse_document(text, source)
    if not isinstance(document, dict):
        raise ConfigError(source, ["the document must be a mapping with version, clients and group_keys"])
    try:
        return ForwarderConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(source, _problems(error, _line_index(text))) from None


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int) -> ForwarderConfig:
    return load_config_text(Path(path).read_text(encoding="utf-8"), path)


def load_config(path: str | Path) -> ForwarderConfig:
    """Load a config file; cached per (path, modification time), so a warm Lambda parses it once."""
    text = os.fspath(path)  # a plain stat per call (every lookup of a request): no Path objects
    try:
        mtime = os.stat(text).st_mtime_ns
    except OSError as error:
        raise ConfigError(text, [f"cannot read the config: {error.strerror}"]) from None
    return _load_cached(text, mtime)
