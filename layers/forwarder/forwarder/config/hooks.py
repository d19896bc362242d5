"""Web-form webhooks in the config: ``hooks:`` maps a hook id (the last segment of ``POST /v1/hooks/{hook_id}``)
to the group key and flow its records go to, how a body becomes a flat record, and how a request proves it may
post (an HMAC of the body, or a form token). The secret lives in the secret store, named by ``secret``."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: A hook id is one URL path segment: letters, digits, '-' and '_'.
HOOK_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
#: Hook secrets live under a ``hooks/`` folder of the secret store: the ingest function may read those only.
HOOK_SECRET = re.compile(r"^(?:[A-Za-z0-9/_+=.@-]*/)?hooks/[A-Za-z0-9/_+=.@-]+$")
_HEADER = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HmacAuth(_Strict):
    """The sender signs the raw body with the hook's secret and sends the MAC in ``header``.

    Typeform: ``{kind: hmac, header: Typeform-Signature, encoding: base64, prefix: "sha256="}``.
    Tally: ``{kind: hmac, header: Tally-Signature, encoding: base64}``.
    Stripe-style ``t=...,v1=...``: ``{kind: hmac, header: Stripe-Signature, signature_key: v1,
    timestamp_key: t}``: the MAC is then over ``<timestamp>.<body>`` and an old timestamp is refused.
    """

    kind: Literal["hmac"]
    header: str = Field(pattern=_HEADER, description="the request header holding the signature")
    algorithm: Literal["sha1", "sha256", "sha384", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = Field("", max_length=32, description="text before the MAC, e.g. 'sha256='")
    signature_key: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,16}$",
        description="the header is a list 'k=v,k=v': the signatures are its items with this key (e.g. v1)",
    )
    timestamp_key: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,16}$", description="the signed timestamp is this item of the list"
    )
    timestamp_header: str | None = Field(
        None, pattern=_HEADER, description="or: the signed timestamp is in this header of its own"
    )
    tolerance_seconds: int = Field(
        300, ge=1, le=3600, description="a timestamp further than this from now is refused (replays)"
    )

    @model_validator(mode="after")
    def _one_timestamp(self) -> HmacAuth:
        if self.timestamp_key and self.timestamp_header:
            raise ValueError("give timestamp_key or timestamp_header, not both")
        if self.timestamp_key and not self.signature_key:
            raise ValueError("timestamp_key reads the header as a 'k=v,k=v' list: set signature_key too")
        return self

    @property
    def timestamped(self) -> bool:
        return bool(self.timestamp_key or self.timestamp_header)


class FormTokenAuth(_Strict):
    """A plain HTML form posted from a browser: the hook's token in a hidden field (or a query parameter),
    the form's pages on ``allowed_origins``, a honeypot field bots fill in, and a thank-you page."""

    kind: Literal["form_token"]
    field: str = Field("_token", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="field holding the token")
    allowed_origins: list[str] = Field(min_length=1, description="origins of the pages the form is on")
    honeypot: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="a field people leave empty and bots fill in"
    )
    redirect: str = Field(description="the thank-you page a browser is sent to (303) after posting")

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or origin != _origin_of(origin):
                raise ValueError(
                    f"'{origin}' is not an origin: write scheme://host[:port] without a path or '/' at the end "
                    "(e.g. https://www.example.com)"
                )
        return origins

    @field_validator("redirect")
    @classmethod
    def _absolute(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"'{url}' is not an absolute http(s) URL of the thank-you page")
        return url


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


HookAuth = Annotated[HmacAuth | FormTokenAuth, Field(discriminator="kind")]


class HookConfig(_Strict):
    group_key: str = Field(min_length=1)
    flow: Literal["contacts", "delete", "events"] = "contacts"
    secret: str = Field(description="the secret's name in the secret store, under a 'hooks/' folder")
    format: Literal["fields", "typeform", "tally"] = Field(
        "fields",
        description="a JSON body's shape: 'fields' (the body is the flat record), or a form tool's payload",
    )
    auth: HookAuth

    @field_validator("secret")
    @classmethod
    def _under_hooks(cls, name: str) -> str:
        if not HOOK_SECRET.match(name):
            raise ValueError(
                f"'{name}' is not under a 'hooks/' folder: hook secrets live at <prefix>hooks/<name> (e.g. "
                "forwarder/hooks/newsletter), the only secrets the ingest function may read"
            )
        return name

    @model_validator(mode="after")
    def _forms_are_fields(self) -> HookConfig:
        if self.auth.kind == "form_token" and self.format != "fields":
            raise ValueError(f"a form_token hook takes form fields: remove 'format: {self.format}'")
        return self
