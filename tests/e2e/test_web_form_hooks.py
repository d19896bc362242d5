"""Web-form hooks end to end on the embedded stack: a plain HTML <form> in headless Chromium, and form tools'
HMAC-signed JSON, through the gateway (no SigV4), ingest, the queues and deliver to the ExpertSender sandbox.

The browser test drives Debian's chromium through its chromedriver (selenium); `make test` installs both when
it runs as root. The hook's token is the one `forwarder hooks create` prints, in the form it prints."""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from forwarder_local.cli import main
from forwarder_local.stack import EmbeddedStack, StackOptions
from tests.hooks_support import (
    SECRETS,
    store_secrets,
    stripe_signature,
    tally_payload,
    tally_signature,
    typeform_payload,
    typeform_signature,
    write_config,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The brand's web site: static pages on their own origin (the form's page and the thank-you page)."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "thanks.html").write_text(
        "<!doctype html><html><head><title>Thank you</title></head><body><p>Thanks!</p></body></html>"
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


@pytest.fixture
def stack(tmp_path: Path, site: tuple[str, Path]) -> Iterator[EmbeddedStack]:
    origin, _ = site
    config = write_config(tmp_path, origin=origin, redirect=f"{origin}/thanks.html")
    options = StackOptions(
        state_dir=tmp_path / "state",
        config_path=config,
        port=0,
        sandbox_port=0,
        retry_base_seconds=0.2,
        retry_max_seconds=1.0,
        poll_window_seconds=0.05,
    )
    with EmbeddedStack(options) as running:
        yield running


def hooks_cli(stack: EmbeddedStack, *args: str) -> str:
    result = CliRunner().invoke(
        main,
        [
            "hooks",
            *args,
            "--state-dir",
            str(stack.options.state_dir),
            "--config",
            str(stack.options.config_path),
        ],
    )
    assert result.exit_code == 0, result.output
    return result.output


def hook_url(stack: EmbeddedStack, hook_id: str) -> str:
    assert stack.gateway is not None
    return f"{stack.gateway.url}/v1/hooks/{hook_id}"


def delivered(stack: EmbeddedStack, email: str) -> dict[str, Any]:
    assert stack.sandbox is not None
    customer: dict[str, Any] = wait_for(
        lambda: stack.sandbox.find(email=email), what=f"{email} in the ExpertSender sandbox"
    )
    return customer


def test_a_plain_html_form_in_a_browser_reaches_the_vendor(
    stack: EmbeddedStack, site: tuple[str, Path], browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    origin, folder = site
    # given the hook's token as `forwarder hooks create` prints it, in a plain form on the brand's page
    printed = hooks_cli(
        stack, "create", "signup-form", "--url", str(stack.gateway.url if stack.gateway else "")
    )
    token = printed.split("its token", 1)[1].splitlines()[2].strip()
    assert f'value="{token}"' in printed
    (folder / "signup.html").write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>Sign up</title></head><body>
<form method="post" action="{html.escape(hook_url(stack, "signup-form"))}" accept-charset="UTF-8">
  <input type="hidden" name="_token" value="{html.escape(token)}">
  <label>E-mail <input type="email" name="email" id="email" required></label>
  <label>First name <input type="text" name="first_name" id="first_name"></label>
  <label><input type="checkbox" name="tags" value="vip" checked> VIP</label>
  <label><input type="checkbox" name="tags" value="beta" checked> Beta</label>
  <input type="text" name="website" id="website" tabindex="-1" autocomplete="off" style="position:absolute;left:-9999px">
  <button type="submit" id="send">Sign up</button>
</form></body></html>""",
        encoding="utf-8",
    )
    # when a visitor fills it in and submits it in Chromium
    browser.get(f"{origin}/signup.html")
    browser.find_element(By.ID, "email").send_keys("Browser.User@Example.com")
    browser.find_element(By.ID, "first_name").send_keys("Zoë")
    browser.find_element(By.ID, "send").click()
    # then the browser lands on the thank-you page
    wait_for(lambda: browser.current_url == f"{origin}/thanks.html", what="the thank-you page")
    assert browser.title == "Thank you"
    # and the record is delivered to the vendor, mapped, with the repeated checkbox as a list
    customer = delivered(stack, "browser.user@example.com")
    assert customer["firstName"] == "Zoë"
    assert {"name": "Tags", "value": "vip,beta"} in customer["customAttributes"]

    # when a bot fills in the honeypot, it lands on the thank-you page too, but nothing is delivered
    browser.get(f"{origin}/signup.html")
    browser.find_element(By.ID, "email").send_keys("bot@spam.example")
    browser.execute_script("document.getElementById('website').value = 'http://spam.example'")
    browser.find_element(By.ID, "send").click()
    wait_for(lambda: browser.current_url == f"{origin}/thanks.html", what="the thank-you page")
    time.sleep(1.0)
    assert stack.sandbox is not None and stack.sandbox.find(email="bot@spam.example") is None

    # when the hook is revoked, the form is refused with a page saying so
    hooks_cli(stack, "revoke", "signup-form")
    browser.get(f"{origin}/signup.html")
    browser.find_element(By.ID, "email").send_keys("late@example.com")
    browser.find_element(By.ID, "send").click()
    wait_for(lambda: "HOOK_REVOKED" in browser.page_source, what="the refusal page")
    assert "The form was not sent" in browser.page_source


def test_a_form_tools_signed_json_is_delivered_and_wrong_or_replayed_signatures_are_refused(
    stack: EmbeddedStack,
) -> None:
    store_secrets(stack.secrets)
    # Typeform: Typeform-Signature: sha256=<base64 HMAC-SHA256 of the raw body>
    body = typeform_payload("typeform.user@example.com", first_name="Tia")
    signed = {"Content-Type": "application/json", "Typeform-Signature": typeform_signature(body)}
    response = requests.post(hook_url(stack, "typeform"), data=body, headers=signed, timeout=10)
    assert response.status_code == 202, response.text
    customer = delivered(stack, "typeform.user@example.com")
    assert customer["firstName"] == "Tia"
    assert {"name": "City", "value": "Oslo"} in customer["customAttributes"]

    # Tally: Tally-Signature: <base64 HMAC-SHA256 of the body>
    body = tally_payload("tally.user@example.com")
    response = requests.post(
        hook_url(stack, "tally"),
        data=body,
        headers={"Content-Type": "application/json", "Tally-Signature": tally_signature(body)},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    assert delivered(stack, "tally.user@example.com")["firstName"] == "Tally"

    # a signature from another secret, and a body changed after signing, are refused
    forged = {"Content-Type": "application/json", "Typeform-Signature": typeform_signature(body, "guess")}
    refused = requests.post(hook_url(stack, "typeform"), data=body, headers=forged, timeout=10)
    assert (refused.status_code, refused.json()["code"]) == (401, "SIGNATURE_INVALID")

    # Stripe-style t=...,v1=...: this hook deletes; a replay and an old signature are refused
    erase = json.dumps({"email": "typeform.user@example.com"}).encode()
    stamped = {
        "Content-Type": "application/json",
        "Stripe-Signature": stripe_signature(erase, int(time.time())),
    }
    accepted = requests.post(hook_url(stack, "stripe-style"), data=erase, headers=stamped, timeout=10)
    assert accepted.status_code == 202, accepted.text
    replayed = requests.post(hook_url(stack, "stripe-style"), data=erase, headers=stamped, timeout=10)
    assert (replayed.status_code, replayed.json()["code"]) == (401, "SIGNATURE_REPLAYED")
    stale = {**stamped, "Stripe-Signature": stripe_signature(erase, int(time.time()) - 3600)}
    expired = requests.post(hook_url(stack, "stripe-style"), data=erase, headers=stale, timeout=10)
    assert (expired.status_code, expired.json()["code"]) == (401, "SIGNATURE_EXPIRED")
    assert stack.sandbox is not None
    wait_for(lambda: stack.sandbox.find(email="typeform.user@example.com") is None, what="the delete")
    assert SECRETS["stripe-style"] not in json.dumps(stack.store.peek("ingest"))
