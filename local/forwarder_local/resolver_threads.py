"""The ingest handler's Powertools resolver, made safe for the embedded gateway's threads.

Powertools' REST resolver keeps the request it resolves in class attributes (``BaseRouter.current_event``,
``BaseRouter.lambda_context``, assigned at class level in ``resolve``) and in its instance's ``context`` dict.
On AWS that is right: a Lambda container runs one invocation at a time. The embedded gateway runs the ingest
handler in several threads at once (so that concurrent requests share the queue's fsynced commits), and there
two requests resolved at the same moment would read each other's body and headers: one record queued twice,
another never. ``install()`` keeps those attributes per thread in this process instead; the resolver's code is
unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

from aws_lambda_powertools.event_handler import api_gateway

__all__ = ["install"]

_PER_THREAD = ("current_event", "lambda_context")
_local = threading.local()
_installed = threading.Lock()


def _get(name: str) -> Any:
    return getattr(_local, name, None)


def _contexts() -> dict[int, dict[str, Any]]:
    contexts: dict[int, dict[str, Any]] | None = getattr(_local, "contexts", None)
    if contexts is None:
        contexts = _local.contexts = {}
    return contexts


class _PerThreadRouter:
    """Stands in for ``BaseRouter`` where api_gateway's functions name it (``BaseRouter.current_event = ...``):
    the per-request attributes go to this thread's slot, everything else to the real class."""

    def __init__(self, real: type) -> None:
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> Any:
        if name in _PER_THREAD:
            return _get(name)
        return getattr(object.__getattribute__(self, "_real"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PER_THREAD:
            setattr(_local, name, value)
        else:
            setattr(object.__getattribute__(self, "_real"), name, value)


def _per_thread_property(name: str) -> property:
    def read(self: Any) -> Any:
        return _get(name)

    def write(self: Any, value: Any) -> None:
        setattr(_local, name, value)

    return property(read, write)


def _context_read(self: Any) -> dict[str, Any]:
    return _contexts().setdefault(id(self), {})


def _context_write(self: Any, value: dict[str, Any]) -> None:
    _contexts()[id(self)] = value


def install() -> None:
    """Keep the resolver's per-request state per thread in this process (idempotent)."""
    with _installed:
        if isinstance(api_gateway.BaseRouter, _PerThreadRouter):
            return
        real = api_gateway.BaseRouter
        for name in _PER_THREAD:
            setattr(real, name, _per_thread_property(name))  # instances read and write their thread's
        setattr(real, "context", property(_context_read, _context_write))  # noqa: B010
        setattr(api_gateway, "BaseRouter", _PerThreadRouter(real))  # noqa: B010
