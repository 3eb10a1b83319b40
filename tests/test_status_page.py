"""The status page in a real browser: headless Chromium, driven by Selenium.

The page is served by the running system (tests/support/harness.py). It must
show each position with its price and how fresh that price is, and follow the
market without a reload: a tick changes the row in place, and a price that
stops moving is marked stale. When reads need the token, the page asks for it
and shows nothing until it is given. A screenshot of each page is saved in the
test's tmp dir.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs
them); a Selenium that fetched its own browser could not work offline.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import API_TOKEN, Harness, running
from tests.support.waiting import wait_until

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,1500"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or not Path(CHROMEDRIVER).exists(),
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def text(browser: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, selector).text)


def class_of(browser: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, selector).get_attribute("class"))


def page_errors(browser: Any) -> list[str]:
    """What the page wrote to the console as errors (a script error, a CSP refusal)."""
    return [entry["message"] for entry in browser.get_log("browser")
            if entry["level"] == "SEVERE"]


def priced_position(h: Harness, symbol: str, price: float) -> None:
    h.open_long(symbol, price, price * 0.9, price * 1.2)
    wait_until(lambda: h.system.services.feed_status.connected
               and any(symbol in s for s in h.exchange.subscriptions), 10)
    h.exchange.send_tick(symbol, price)
    wait_until(lambda: h.system.services.cache.quote(symbol, 0) is not None, 5)


def test_the_page_follows_a_tick_and_a_price_going_stale_without_a_reload(
    browser: Any, tmp_path: Path
) -> None:
    with running(tmp_path, prices={"stale_warning_threshold": 3.0}) as h:
        priced_position(h, "BOSCHLTD", 575.0)
        browser.get(h.url + "/")
        row = 'tr[data-symbol="BOSCHLTD"]'
        assert text(browser, f"{row} .price") == "₹575.00"
        assert text(browser, f"{row} .freshness .label").lower() == "fresh"
        # Gone after a reload: its presence at the end proves the page updated in place.
        browser.execute_script("window.notReloaded = true;")
        first_refresh = int(browser.execute_script("return document.body.dataset.refreshes || 0"))

        h.exchange.send_tick("BOSCHLTD", 581.25)
        wait_until(lambda: text(browser, f"{row} .price") == "₹581.25", 10,
                   message="the price on the page did not follow the tick")
        assert text(browser, f"{row} .freshness .label").lower() == "fresh"
        assert text(browser, f"{row} .unrealized-pnl") == "+₹62.50"  # 10 x (581.25 - 575)
        assert text(browser, "#feed-connected") == "connected"
        browser.save_screenshot(str(tmp_path / "status-page-fresh.png"))

        wait_until(lambda: text(browser, f"{row} .freshness .label").lower() == "stale", 10,
                   message="the page never marked the price stale")
        age = text(browser, f"{row} .freshness .age")
        assert age.endswith("s") and float(age.rstrip("s")) >= 3.0, age
        assert "Stale price: BOSCHLTD" in text(browser, "#summary")
        browser.save_screenshot(str(tmp_path / "status-page-stale.png"))

        h.exchange.stop()
        wait_until(lambda: text(browser, "#feed-connected") == "DISCONNECTED", 10)
        assert class_of(browser, "#feed-connected") == "down"  # red, not the green of "up"
        assert "Feed disconnected" in text(browser, "#summary")

        assert browser.execute_script("return window.notReloaded === true")
        refreshes = int(browser.execute_script("return document.body.dataset.refreshes"))
        assert refreshes > first_refresh
        assert page_errors(browser) == []


def test_a_protected_page_asks_for_the_token_first(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with running(tmp_path) as h:
        priced_position(h, "INFY", 1500.0)
        h.system.guard.protect_reads = True  # what a non-loopback api.host sets
        browser.get(h.url + "/")
        form = browser.find_element(By.ID, "token-form")
        wait_until(form.is_displayed, 10, message="the page did not ask for the token")
        assert "INFY" not in browser.page_source
        assert not browser.find_element(By.TAG_NAME, "main").is_displayed()

        browser.find_element(By.ID, "token-input").send_keys("not-the-token")
        form.submit()
        wait_until(lambda: "refused" in text(browser, "#token-error"), 10)
        browser.find_element(By.ID, "token-input").send_keys(API_TOKEN)
        form.submit()
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, 'tr[data-symbol="INFY"]'), 10,
                   message="the page did not show the positions once given the token")
        assert text(browser, 'tr[data-symbol="INFY"] .price') == "₹1,500.00"
        # Drawn by the script alone (the server sent an empty page): states keep their colours.
        assert class_of(browser, "#feed-connected") == "up"
        assert class_of(browser, "#dns-system") == "down"
        assert API_TOKEN not in browser.page_source
        browser.save_screenshot(str(tmp_path / "status-page-token.png"))
        # A 401 logs a console error by itself; anything else would be the page's fault.
        assert [e for e in page_errors(browser) if "401" not in e] == []
