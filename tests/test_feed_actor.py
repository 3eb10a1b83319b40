"""The incident itself, on loopback: DNS fails, the feed drops, TradeGuard keeps seeing prices.

A real WebSocket server (ws and wss with trustme certificates), a real DNS
server on a loopback UDP port, the hostname feed.tradeguard.test that the
(switchable) system resolver cannot resolve, and the whole running service.
Timings are printed for the notes, never asserted tighter than the
configured timeouts allow.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from actors.system import System
from tests.support.harness import FEED_HOST, Harness, SwitchableLookup, fast_config, running
from tests.support.waiting import wait_until
from tradeguard.sim.dns_server import DnsServer
from tradeguard.sim.exchange import SimExchange


def connected(h: Harness) -> bool:
    return h.system.services.feed_status.connected


def feed(h: Harness) -> dict[str, object]:
    return h.system.services.feed_status.snapshot()


def test_system_dns_fails_fallback_connects_over_tls_checked_on_hostname(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    with running(tmp_path, tls_cert_name=FEED_HOST) as h:
        wait_until(lambda: connected(h), 10)
        print(f"\nsystem failing -> connected via fallback in {time.monotonic() - started:.3f}s")
        state = feed(h)
        assert state["connected_ip"] == "127.0.0.1"
        assert state["resolved_via"] == f"fallback:{h.dns.address}"
        assert h.exchange.url_for(FEED_HOST).startswith("wss://")
        wait_until(lambda: any(FEED_HOST in host for host in h.exchange.host_headers), 5)
        h.open_long("TLSSYM", 100.0, 90.0)
        wait_until(lambda: any("TLSSYM" in s for s in h.exchange.subscriptions), 5)
        h.exchange.send_tick("TLSSYM", 101.0)
        wait_until(lambda: h.system.services.cache.quote("TLSSYM", 0) is not None, 5)


def test_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    with running(tmp_path, tls_cert_name="other.test") as h:
        wait_until(lambda: h.system.services.feed_status.network_errors >= 2, 10)
        assert not connected(h)
        assert h.exchange.accepted == 0 or not h.exchange.host_headers
        assert "certificate" in str(feed(h)["last_error"]).lower()


def test_slow_system_resolver_loses_to_the_fallback(tmp_path: Path) -> None:
    with running(tmp_path) as h:
        wait_until(lambda: connected(h), 10)
        h.lookup.mode = "hang"
        resolver = h.system.services.resolver
        started = time.monotonic()
        result = resolver.resolve(FEED_HOST)
        elapsed = time.monotonic() - started
        print(f"\nsystem hanging -> fallback answer in {elapsed:.3f}s "
              f"(head start {h.cfg.dns.system_head_start}s)")
        assert result.via == f"fallback:{h.dns.address}"
        assert elapsed < h.cfg.dns.timeout


def test_every_resolver_failing_uses_the_stale_address(tmp_path: Path) -> None:
    with running(tmp_path) as h:
        wait_until(lambda: connected(h), 10)
        assert feed(h)["resolved_via"] == f"fallback:{h.dns.address}"
        h.dns.mode = "servfail"
        errors = h.system.services.feed_status.network_errors
        h.exchange.stop()
        # The drop, then a refused connect: the cached answer is forgotten, DNS asked again.
        wait_until(lambda: h.system.services.feed_status.network_errors >= errors + 2, 10)
        h.exchange.start()
        wait_until(lambda: connected(h), 15)
        assert feed(h)["resolved_via"] == "stale"
        assert feed(h)["connected_ip"] == "127.0.0.1"


def test_feed_restart_reconnects_with_backoff_and_resubscribes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actors.feed")
    with running(tmp_path, feed={"reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.4,
                                 "reconnect_jitter": 0.5}) as h:
        h.open_long("BOSCHLTD", 735.0, 700.0)
        wait_until(lambda: any("BOSCHLTD" in s for s in h.exchange.subscriptions), 10)
        subscriptions_before = len(h.exchange.subscriptions)
        h.exchange.stop()
        wait_until(lambda: h.system.services.feed_status.reconnect_attempts >= 5, 15)
        back = time.monotonic()
        h.exchange.start()
        wait_until(lambda: connected(h), 15)
        print(f"\nreconnected {time.monotonic() - back:.3f}s after the server came back")
        wait_until(lambda: len(h.exchange.subscriptions) > subscriptions_before, 5)
        assert "BOSCHLTD" in h.exchange.subscriptions[-1]
        h.exchange.send_tick("BOSCHLTD", 736.5)
        wait_until(lambda: (q := h.system.services.cache.quote("BOSCHLTD", 0)) is not None
                   and q.price == 736.5, 5)
        delays = [(float(m[1]), int(m[2])) for m in re.finditer(
            r"Reconnecting in ([\d.]+)s \(attempt (\d+)\)", caplog.text)]
        assert len(delays) >= 5
        for delay, attempt in delays:
            base = min(0.4, 0.05 * 2 ** (attempt - 1))
            assert base - 0.005 <= delay <= base * 1.5 + 0.005, (delay, attempt)


def test_half_open_connection_is_detected_and_replaced(tmp_path: Path) -> None:
    with running(tmp_path, feed={"ping_interval": 0.5, "ping_timeout": 0.3,
                                 "silence_timeout": 5.0}) as h:
        wait_until(lambda: connected(h), 10)
        accepted = h.exchange.accepted
        cut = time.monotonic()
        h.exchange.half_open(True)
        wait_until(lambda: h.system.services.feed_status.network_errors >= 1, 10)
        detected = time.monotonic() - cut
        print(f"\nhalf-open detected after {detected:.3f}s (ping 0.5s + timeout 0.3s)")
        assert "pong" in str(feed(h)["last_error"])
        h.exchange.half_open(False)
        wait_until(lambda: connected(h) and h.exchange.accepted > accepted, 10)


def test_silence_watchdog_drops_a_quiet_connection(tmp_path: Path) -> None:
    with running(tmp_path, feed={"ping_interval": 30.0, "ping_timeout": 5.0,
                                 "silence_timeout": 0.6}) as h:
        wait_until(lambda: connected(h), 10)
        h.exchange.half_open(True)
        wait_until(lambda: "silence" in str(feed(h)["last_error"]), 10)
        h.exchange.half_open(False)


BAD_FRAMES = [
    "not json", "[1, 2", '"a string"', "42", "null", '{"price": 1.0}',
    '{"symbol": "AAA"}', '{"symbol": "AAA", "price": "cheap"}', '{"symbol": "AAA", "price": NaN}',
    '{"symbol": "AAA", "price": Infinity}', '{"symbol": "AAA", "price": -5}',
    '{"symbol": "AAA", "price": 0}', '{"symbol": "AAA", "price": true}',
    '{"symbol": "AAA", "price": 1e400}', '{"symbol": "", "price": 10}',
    '{"symbol": "BBB", "price": 10, "ts": "yesterday"}', '{"type": "mystery"}',
    '[{"symbol": "AAA", "price": -1}, "junk", {"symbol": "AAA", "price": 99.5}]',
    b"\xff\xfe binary garbage",
]


def test_malformed_frames_are_counted_and_never_poison_the_cache(tmp_path: Path) -> None:
    with running(tmp_path) as h:
        h.open_long("AAA", 100.0, 90.0)
        wait_until(lambda: connected(h) and any("AAA" in s for s in h.exchange.subscriptions), 10)
        h.exchange.send_tick("AAA", 100.0)
        wait_until(lambda: h.system.services.cache.quote("AAA", 0) is not None, 5)
        for frame in BAD_FRAMES:
            h.exchange.send_raw(frame)
        # The one good tick inside the mixed array arrives; nothing bad does.
        wait_until(lambda: h.system.services.cache.quote("AAA", 0).price == 99.5, 5)
        rejected = feed(h)["rejected_frames"]
        assert isinstance(rejected, dict) and sum(rejected.values()) >= len(BAD_FRAMES) - 2
        assert h.system.services.metrics.registry.get_sample_value(
            "tradeguard_feed_rejected_total", {"reason": next(iter(rejected))}) >= 1
        # C10: a message over the limit is dropped and counted; the connection stays.
        h.exchange.send_raw(" " * ((1 << 20) + 1))
        h.exchange.send_tick("AAA", 99.75)
        wait_until(lambda: feed(h)["rejected_frames"].get("too_large") == 1, 5)
        wait_until(lambda: h.system.services.cache.quote("AAA", 0).price == 99.75, 5)
        assert connected(h) and h.position("AAA").state.value == "open"
        assert feed(h)["network_errors"] == 0
        assert h.system.supervisor.status()["FeedActor"]["restarts"] == 0


def test_a9_a_dead_first_a_record_does_not_keep_the_feed_down(tmp_path: Path) -> None:
    """A9: the first address refuses, the feed connects to the second and confirms only it."""
    with SimExchange() as exchange, DnsServer() as dns:
        dns.set_record(FEED_HOST, ["127.0.0.2", "127.0.0.1"])  # nothing listens on .2
        system = System(fast_config(tmp_path, exchange, dns, None, {}),
                        system_lookup=SwitchableLookup(), api_port=0)
        system.start()
        try:
            status = system.services.feed_status
            wait_until(lambda: status.connected, 10)
            assert status.connected_ip == "127.0.0.1"
            # A10, the feed's half: only the address a connection proved is remembered.
            wait_until(lambda: system.services.store.load_addresses(FEED_HOST) == ["127.0.0.1"],
                       5)
        finally:
            system.stop()


def test_c14_a_closed_positions_symbol_is_not_resubscribed(tmp_path: Path) -> None:
    """C14/E3: a reconnect subscribes feed.symbols and live positions only, and says so."""
    with running(tmp_path, feed={"symbols": [" always "]}) as h:
        h.open_long("GONE", 100.0, 90.0)
        wait_until(lambda: connected(h) and any("GONE" in s for s in h.exchange.subscriptions),
                   10)
        h.exchange.send_tick("GONE", 80.0)  # the stop fires and the position closes
        wait_until(lambda: h.position("GONE").state.value == "closed", 10)
        assert feed(h)["subscribed_symbols"] == 2
        before = len(h.exchange.subscriptions)
        h.exchange.stop()
        wait_until(lambda: not connected(h), 10)
        h.exchange.start()
        wait_until(lambda: connected(h) and len(h.exchange.subscriptions) > before, 15)
        assert h.exchange.subscriptions[-1] == ["ALWAYS"]
        assert feed(h)["subscribed_symbols"] == 1


def test_ticks_are_stamped_on_the_monotonic_clock(tmp_path: Path) -> None:
    """Contract 1 (A4): a tick's age is measured on time.monotonic(), never the wall clock."""
    with running(tmp_path) as h:
        wait_until(lambda: connected(h), 10)
        before = time.monotonic()
        h.exchange.send_tick("MONO", 5.0)
        wait_until(lambda: h.system.services.cache.quote("MONO", time.monotonic()) is not None, 5)
        quote = h.system.services.cache.quote("MONO", time.monotonic())
        assert quote is not None and before <= quote.received_at <= time.monotonic()
