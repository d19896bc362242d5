"""The embedded stack's console: signed in with the admin secret in headless Chromium, it shows a request's
status per integration, a reject's reason and a dead letter's, and its one button replays the dead letters.

The browser drives Debian's chromium through its chromedriver (selenium), as tests/e2e/test_web_form_hooks.py
does; `make test` installs both when it runs as root."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_aws4auth import AWS4Auth

from forwarder_local.stack import REPO_ROOT, EmbeddedStack, StackOptions
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
EXPERTSENDER_ONLY = REPO_ROOT / "config" / "examples" / "expertsender-only.yaml"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    options = StackOptions(
        state_dir=tmp_path / "state",
        config_path=EXPERTSENDER_ONLY,
        port=0,
        sandbox_port=0,
        retry_base_seconds=0.2,
        retry_max_seconds=0.5,
        retry_horizon_seconds=1.0,  # a delivery still failing after a second is dead-lettered
        circuit_probe_seconds=0.3,
        poll_window_seconds=0.05,
    )
    with EmbeddedStack(options) as running:
        yield running


def send(stack: EmbeddedStack, data: dict[str, Any]) -> str:
    first = stack.first_client()
    assert first is not None and stack.gateway is not None
    _, group_key, access_key, secret_key = first
    response = requests.post(
        stack.gateway.url + "/v1/contacts",
        json={"data": data, "group_key": group_key},
        auth=AWS4Auth(access_key, secret_key, stack.options.region, "execute-api"),
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["request_id"])


def states(stack: EmbeddedStack, request_id: str) -> list[str]:
    _, deliveries = stack.deliveries.request(request_id)
    return [record.state.value for record in deliveries.values()]


def test_the_console_shows_statuses_and_reasons_and_replays_a_dead_letter(
    stack: EmbeddedStack, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    assert stack.sandbox is not None and stack.console is not None
    # given a contact dead-lettered while ExpertSender was down
    stack.sandbox.inject(status=503, times=100_000)
    dead = send(stack, {"email": "down@example.com"})
    wait_for(lambda: states(stack, dead) == ["dead_lettered"], what="the contact dead-lettered")
    stack.sandbox.clear_faults()
    # and, with ExpertSender back, a contact delivered and one rejected at validate (no e-mail)
    good = send(stack, {"email": "jane@example.com", "first_name": "Jane"})
    bad = send(stack, {"first_name": "Nobody"})
    wait_for(lambda: states(stack, good) == ["delivered"], what="the contact delivered")
    wait_for(lambda: stack.deliveries.request(bad)[0] is not None, what="the contact rejected")

    # when the operator opens the console, it asks for the admin secret first
    browser.get(stack.console.url)
    assert "Admin secret" in browser.page_source and good not in browser.page_source
    browser.find_element(By.ID, "secret").send_keys("not-the-secret")
    browser.find_element(By.ID, "sign-in").click()
    wait_for(lambda: browser.find_elements(By.ID, "problem"), what="the wrong secret refused")
    assert good not in browser.page_source
    browser.find_element(By.ID, "secret").send_keys(stack.console_secret)
    browser.find_element(By.ID, "sign-in").click()
    wait_for(lambda: browser.find_elements(By.ID, "requests"), what="the console")

    def row(kind: str, request_id: str) -> str:
        text: str = browser.find_element(By.CSS_SELECTOR, f'tr.{kind}[data-request-id="{request_id}"]').text
        return text

    # then it shows each request's status per integration, with the reasons
    assert "expertsender: delivered" in row("request", good)
    assert "expertsender: rejected" in row("request", bad)
    assert "does not map to ExpertSender" in row("request", bad)
    assert "expertsender: dead_lettered" in row("request", dead)
    # and the reject's reason, and the dead letter's
    assert "does not map to ExpertSender" in row("reject", bad)
    assert "attribute 'email' is required" in row("reject", bad)
    assert "gave up after" in row("dead-letter", dead)
    # and the queues' depths: one dead letter
    assert browser.find_element(By.ID, "queue-delivery-dlq").text.split()[1:] == ["1", "0", "0"]

    # when the operator presses the replay button
    browser.find_element(By.ID, "replay").click()
    wait_for(lambda: browser.find_elements(By.ID, "replayed"), what="the replay's answer")
    assert "Replayed 1 dead letter(s)" in browser.find_element(By.ID, "replayed").text
    # then the dead letter is delivered, and the console shows it so
    wait_for(lambda: stack.sandbox.find(email="down@example.com"), what="the replayed contact delivered")
    wait_for(lambda: states(stack, dead) == ["delivered"], what="the replayed contact recorded delivered")
    browser.get(stack.console.url)
    assert "expertsender: delivered" in row("request", dead)
    assert not browser.find_elements(By.CSS_SELECTOR, "tr.dead-letter")


def test_the_console_refuses_without_the_admin_secret(stack: EmbeddedStack) -> None:
    assert stack.console is not None
    url = stack.console.url
    # given the secret the stack generated into its state folder, readable by its owner only
    path = stack.options.state_dir / "console-secret"
    assert path.read_text().strip() == stack.console_secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # then without it, or with another, nothing is shown and nothing can be replayed
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    assert requests.post(url + "replay", timeout=5).status_code == 401
    wrong = requests.post(url + "login", data={"secret": "wrong"}, allow_redirects=False, timeout=5)
    assert wrong.status_code == 401 and "Set-Cookie" not in wrong.headers
    # and with it, a script reads the page
    page = requests.get(url, headers={"Authorization": f"Bearer {stack.console_secret}"}, timeout=5)
    assert page.status_code == 200 and 'id="queues"' in page.text
    # and a query it does not expect is ignored, not a 500 ("²" is a digit to str.isdigit, not to int)
    odd = requests.get(
        url, params={"replayed": "²"}, headers={"Authorization": f"Bearer {stack.console_secret}"}, timeout=5
    )
    assert odd.status_code == 200 and 'id="replayed"' not in odd.text
    # and a signed-in browser session cannot be made to replay by another site's form (no CSRF token)
    session = requests.Session()
    signed_in = session.post(url + "login", data={"secret": stack.console_secret}, timeout=5)
    assert signed_in.status_code == 200 and 'id="queues"' in signed_in.text
    assert session.post(url + "replay", data={}, timeout=5).status_code == 403
    # and the secret is in its own file only, not in what other commands read
    assert json.dumps(stack.console_secret) not in (stack.options.state_dir / "stack.json").read_text()
