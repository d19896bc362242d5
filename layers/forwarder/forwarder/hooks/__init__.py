"""Web-form webhooks: ``POST /v1/hooks/{hook_id}`` turns a form tool's or a browser's post into a flat record.

``bodies`` reads JSON, URL-encoded and multipart bodies; ``formats`` flattens form tools' JSON payloads;
``signatures`` checks HMAC signatures. The flow (``forwarder.flows.hooks``) authenticates a request against
its hook's secret and queues the record through ingest's own path; ``forwarder.api`` answers over HTTP.
"""

from __future__ import annotations

#: The hook route, as API Gateway and template.yaml write it (the embedded gateway and api.py read it here).
HOOK_RESOURCE = "/v1/hooks/{hook_id}"
#: The path prefix of every hook (the hook id is the one segment after it).
HOOK_PATH_PREFIX = "/v1/hooks/"
#: The methods a hook answers: POST (a record) and OPTIONS (a browser's CORS preflight).
HOOK_METHODS = ("POST", "OPTIONS")


def hook_id_of(path: str) -> str | None:
    """The hook id when ``path`` is a hook's route (one non-empty segment after the prefix), else None."""
    if not path.startswith(HOOK_PATH_PREFIX):
        return None
    rest = path[len(HOOK_PATH_PREFIX) :]
    return rest if rest and "/" not in rest else None
