"""Fixtures the end-to-end tests share."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian chromium through its chromedriver (selenium). Missing: skipped on a developer machine,
    failed under CI (which runs as root, so `make test` installs both)."""
    if not (CHROMIUM and CHROMEDRIVER):
        missing = "chromium and chromium-driver are not installed (make test installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI runs as root: make test must have installed them
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
