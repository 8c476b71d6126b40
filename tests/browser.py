"""Debian's headless Chromium driven by Selenium, for tests of the pages people look at
(chromium and chromium-driver are installed by `make test`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and shutil.which(DRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are missing: `make test` installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1366,900",  # a laptop screen
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, path: Path, shot: Path) -> str:
    """Load a page from disk; fail on a console error or any request it makes; save a screenshot."""
    driver.get(path.resolve().as_uri())
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
    requests = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert requests == [], f"the page asked for {requests}"
    assert driver.execute_script("return document.querySelectorAll('script, img, link, iframe').length") == 0
    driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:4] == b"\x89PNG"
    return driver.find_element("tag name", "body").text
