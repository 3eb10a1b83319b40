"""The trading day end to end (SPEC §14): a real System on loopback, its NSE session just over.

The session is written relative to now, in a time zone where now is daytime,
so that "NSE closed a minute ago" holds whenever the test runs (on a weekend
NSE is closed all day, which the same assertions hold for).
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.support.harness import Harness, running
from tests.support.waiting import wait_until
from tradeguard.positions import Position, Side
from tradeguard.store import Store

SYMBOL = "NSE:INFY"
CACHE_TIMEOUT = 2.0


def daytime_zone() -> tuple[str, dt.datetime]:
    """A fixed-offset zone where it is now between 06:00 and 18:00, and that local now."""
    now = time.time()
    for hours in range(-12, 15):
        name = f"Etc/GMT{-hours:+d}" if hours else "UTC"  # Etc/GMT-5 is UTC+5
        local = dt.datetime.fromtimestamp(now, ZoneInfo(name))
        if 6 <= local.hour < 18:
            return name, local
    raise AssertionError("some zone is always in daytime")


def session_over_a_minute_ago() -> dict[str, Any]:
    zone, local = daytime_zone()
    end = local - dt.timedelta(minutes=1)
    start = end - dt.timedelta(hours=3)
    return {"timezone": zone, "sessions": {"NSE": f"{start:%H:%M}-{end:%H:%M}"}}


PRICES = {"stale_warning_threshold": 0.5, "cache_timeout": CACHE_TIMEOUT}
MONITOR = {"sweep_interval": 0.05, "blind_policy": "close"}


@pytest.fixture
def after_the_close(tmp_path: Path) -> Iterator[Harness]:
    with running(tmp_path, market=session_over_a_minute_ago(), prices=PRICES, monitor=MONITOR) as h:
        yield h


def kinds(h: Harness) -> list[str]:
    return [a.kind for a in h.system.services.store.recent_alerts(100)]


def silent_past_cache_timeout(h: Harness) -> None:
    """One price, then a feed silent until the price is unusable and the monitor swept after."""
    h.open_long(SYMBOL, 100.0, 95.0)
    h.exchange.send_tick(SYMBOL, 100.0)
    cache = h.system.services.cache
    wait_until(lambda: cache.quote(SYMBOL, time.monotonic()) is not None, 5)
    wait_until(lambda: not cache.quote(SYMBOL, time.monotonic()).usable,  # type: ignore[union-attr]
               CACHE_TIMEOUT + 5)
    unusable_at = time.monotonic()
    status = h.system.services.monitor_status
    wait_until(lambda: (status.last_sweep or 0.0) > unusable_at + 1.0, 5,
               message="the monitor kept sweeping after the price went unusable")


def test_a_silent_feed_after_the_close_alerts_nothing_and_sends_no_order(
        after_the_close: Harness) -> None:
    """The issue's overnight case: NSE closed a minute ago, the feed goes quiet for longer
    than cache_timeout; no stale or blind alert comes and no (blind) close is sent."""
    h = after_the_close
    silent_past_cache_timeout(h)
    assert not {"price_stale", "position_blind", "position_closed"} & set(kinds(h))
    position = h.position(SYMBOL)
    assert position is not None and position.state.value == "open"
    assert h.system.services.monitor_status.blind_symbols() == []
    status, health = h.call("GET", "/api/v1/monitoring/connection-health")
    assert status == 200 and health["market"]["NSE"] == "closed"
    assert health["positions"]["blind"] == []


def test_an_emergency_close_while_the_market_is_closed_is_refused_with_when_it_opens(
        after_the_close: Harness) -> None:
    h = after_the_close
    h.open_long(SYMBOL, 100.0, 95.0)
    status, body = h.call("POST", "/api/v1/monitoring/emergency-close-position",
                          {"symbol": SYMBOL})
    assert status == 409, body
    assert body["error"].startswith("NSE is closed; orders resume at "), body
    assert h.position(SYMBOL).state.value == "open"
    status, body = h.call("POST", "/api/v1/monitoring/emergency-close-position",
                          {"symbol": "NSE:NOTHELD"})
    assert status == 404, body  # nothing open: the usual answer


def test_the_metrics_and_the_status_page_show_the_closed_market(after_the_close: Harness) -> None:
    h = after_the_close
    h.open_long(SYMBOL, 100.0, 95.0)
    with urllib.request.urlopen(h.url + "/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert 'tradeguard_market_open{exchange="NSE"} 0.0' in metrics
    assert 'tradeguard_market_open{exchange="MCX"}' in metrics  # every configured exchange
    assert "tradeguard_price_age_seconds{" not in metrics  # a closed market's ages: left out
    assert "tradeguard_prices_stale 0.0" in metrics
    status, view = h.call("GET", "/api/v1/status")
    assert status == 200 and view["market"]["NSE"] == "closed"
    [row] = [r for r in view["positions"] if r["symbol"] == SYMBOL]
    assert row["market_open"] is False
    with urllib.request.urlopen(h.url + "/", timeout=10) as resp:
        page = resp.read().decode()
    assert "Market closed: NSE:INFY wait for the open" in page and "market closed" in page


def test_the_control_an_open_market_goes_blind_and_closes(tmp_path: Path) -> None:
    """The same silence with NSE in session ("always"): blind, alerted, closed, as before."""
    with running(tmp_path, market={"sessions": {"NSE": "always"}}, prices=PRICES,
                 monitor=MONITOR) as h:
        h.open_long(SYMBOL, 100.0, 95.0)
        h.exchange.send_tick(SYMBOL, 100.0)
        wait_until(lambda: "position_blind" in kinds(h), CACHE_TIMEOUT + 10)
        wait_until(lambda: h.position(SYMBOL).state.value == "closed", 10)
        assert h.position(SYMBOL).reason == "blind"


def test_square_off_closes_the_intraday_positions_it_finds_with_one_alert(tmp_path: Path) -> None:
    """market.square_off a minute ago, NSE in session: at its first sweep TradeGuard closes
    the MIS position (reason square_off, one alert for all) and keeps the CNC one."""
    zone, local = daytime_zone()
    if local.weekday() >= 5:
        pytest.skip("square-off runs on trading days only, and today is a weekend there")
    start, end = local - dt.timedelta(hours=3), local + dt.timedelta(hours=1)
    market = {"timezone": zone, "sessions": {"NSE": f"{start:%H:%M}-{end:%H:%M}"},
              "square_off": f"{local - dt.timedelta(minutes=1):%H:%M}"}
    store = Store(tmp_path / "tradeguard.db")  # held before this start, as after a restart
    for symbol, product in (("NSE:MIS1", "MIS"), ("NSE:MIS2", "MIS"), ("NSE:CNC1", "CNC")):
        store.add_position(Position(symbol, Side.LONG, 1, 100.0, 90.0, None,
                                    opened_at=time.time(), product=product))
    store.close()
    monitor = {**MONITOR, "blind_policy": "alert"}  # only square-off may close here
    with running(tmp_path, market=market, prices=PRICES, monitor=monitor) as h:
        wait_until(lambda: any("NSE:CNC1" in s for s in h.exchange.subscriptions), 10)
        for symbol in ("NSE:MIS1", "NSE:MIS2", "NSE:CNC1"):
            h.exchange.send_tick(symbol, 101.0)  # the paper broker fills at the cached price
        for symbol in ("NSE:MIS1", "NSE:MIS2"):
            wait_until(lambda s=symbol: h.position(s).state.value == "closed", 30)  # type: ignore[misc]
            assert h.position(symbol).reason == "square_off"
        assert h.position("NSE:CNC1").state.value == "open"
        assert kinds(h).count("square_off") == 1
        [alert] = [a for a in h.system.services.store.recent_alerts(100) if a.kind == "square_off"]
        assert "2 intraday positions" in alert.text
