"""CacheActor and DnsHealthActor on the running service."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from actors.system import System
from tests.support.harness import Harness, SwitchableLookup, running
from tests.support.waiting import wait_until
from tradeguard.positions import Position, Side
from tradeguard.prices import Tick
from tradeguard.store import Store


def outbox_kinds(h: Harness) -> list[str]:
    return [a.kind for a in reversed(h.system.services.store.recent_alerts(100))]


def test_prices_survive_a_process_restart_with_honest_ages(tmp_path: Path) -> None:
    with running(tmp_path) as h:
        h.open_long("AAA", 100.0, 90.0)
        wait_until(lambda: h.system.services.feed_status.connected
                   and any("AAA" in s for s in h.exchange.subscriptions), 10)
        h.exchange.send_tick("AAA", 101.25)
        wait_until(lambda: h.system.services.cache.quote("AAA", 0) is not None, 5)
        received = h.system.services.cache.quote("AAA", 0)
        assert received is not None
        # Persisted about once a second, and on a clean stop.
        wait_until(lambda: [t.price for t in h.system.services.store.load_prices()] == [101.25],
                   5)
        cfg = h.cfg
    # The ages themselves, across a restart and a wall-clock step, are checked on
    # stepped clocks in test_prices.py; here: the real actors carry the price over.
    system = System(cfg, system_lookup=SwitchableLookup(), api_port=0)
    system.start()
    try:
        wait_until(system.supervisor.all_up, 10)
        now = time.monotonic()
        quote = system.services.cache.quote("AAA", now)
        assert quote is not None and quote.price == 101.25
        # As old as the time since it was received, give or take the wall <->
        # monotonic conversion on save and load.
        assert quote.age == pytest.approx(now - received.received_at, abs=0.05)
    finally:
        system.stop()


def test_stale_line_once_per_crossing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="actors.cache")
    with running(tmp_path, prices={"stale_warning_threshold": 0.3, "cache_timeout": 60}) as h:
        wait_until(lambda: h.system.services.feed_status.connected, 10)
        h.exchange.send_tick("ZZZ", 10.0)
        wait_until(lambda: "[CACHE] Price for ZZZ is stale" in caplog.text, 5)
        # Once per crossing however often it looks: test_prices.py, on a stepped clock.
        h.exchange.send_tick("ZZZ", 10.5)  # fresh again, then stale again: a second line
        wait_until(lambda: caplog.text.count("[CACHE] Price for ZZZ is stale") == 2, 5)


def test_system_dns_down_and_back_alert_once_each(tmp_path: Path) -> None:
    with running(tmp_path, dns={"health_interval": 0.2}) as h:
        wait_until(lambda: "dns_down" in outbox_kinds(h), 5)
        status = h.system.services.dns_status.snapshot()
        assert status["system_ok"] is False
        server = h.dns.address
        assert status["servers"][server]["ok"] is True
        assert status["servers"][server]["latency_ms"] is not None
        checks = h.system.services.dns_status.failures
        wait_until(lambda: h.system.services.dns_status.failures >= checks + 3, 5)
        assert outbox_kinds(h).count("dns_down") == 1  # one alert, many failed checks
        h.lookup.answers["feed.tradeguard.test"] = ["127.0.0.1"]
        h.lookup.mode = "answer"
        wait_until(lambda: "dns_back" in outbox_kinds(h), 5)
        assert h.system.services.dns_status.snapshot()["system_ok"] is True
        h.dns.mode = "refuse"
        wait_until(lambda: h.system.services.dns_status.snapshot()["servers"][server]["ok"]
                   is False, 5)
        assert outbox_kinds(h).count("dns_back") == 1
        assert h.system.services.metrics.registry.get_sample_value(
            "tradeguard_dns_server_up", {"server": server}) == 0


def test_C14_prices_nobody_holds_are_forgotten_in_the_cache_and_the_store(tmp_path: Path) -> None:
    """C14: a long-dead symbol's price is not reloaded for ever; a held one stays."""
    store = Store(tmp_path / "tradeguard.db")
    wall = time.time()
    store.save_prices([Tick("GONE", 5.0, wall - 1000.0), Tick("KEPT", 7.0, wall - 1000.0)])
    store.add_position(Position("KEPT", Side.LONG, 1, 10.0, 5.0, None, opened_at=wall))
    store.close()
    with running(tmp_path) as h:
        cache, store = h.system.services.cache, h.system.services.store
        assert cache.quote("GONE", time.monotonic()) is None
        assert cache.quote("KEPT", time.monotonic()) is not None  # unusable, but held
        wait_until(lambda: [t.symbol for t in store.load_prices()] == ["KEPT"], 5)
