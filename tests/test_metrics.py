"""SPEC §8 on the running service: /metrics scraped over HTTP, read by Prometheus's own parser.

Every metric the SPEC names is exposed with its type and labels, and each one
moves when the state behind it moves: the feed going down and coming back, a
tick reaching the monitor, a crash, the resolver's rungs, a bad frame, a
price going stale then blind, a close.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from actors.messages import Kick
from tests.support.harness import Harness, running
from tests.support.waiting import wait_until

ACTORS = ["ApiActor", "CacheActor", "DnsHealthActor", "FeedActor", "MonitorActor",
          "NotifierActor"]
# Family name as the parser gives it (a counter's without "_total"): type, label names.
SPEC_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tradeguard_feed_connected": ("gauge", ()),
    "tradeguard_feed_reconnect_attempts": ("counter", ()),
    "tradeguard_feed_network_errors": ("counter", ()),
    "tradeguard_feed_ticks": ("counter", ()),
    "tradeguard_feed_rejected": ("counter", ("reason",)),
    "tradeguard_feed_last_message_age_seconds": ("gauge", ()),
    "tradeguard_dns_resolutions": ("counter", ("result", "via")),
    "tradeguard_dns_server_up": ("gauge", ("server",)),
    "tradeguard_price_age_seconds": ("gauge", ("symbol",)),
    "tradeguard_prices_stale": ("gauge", ()),
    "tradeguard_positions_open": ("gauge", ()),
    "tradeguard_positions_blind": ("gauge", ()),
    "tradeguard_position_closes": ("counter", ("reason", "result")),
    "tradeguard_tick_to_decision_seconds": ("histogram", ()),
    "tradeguard_actor_up": ("gauge", ("actor",)),
    "tradeguard_actor_restarts": ("counter", ("actor",)),
    "tradeguard_notifications": ("counter", ("result",)),
    "tradeguard_notifications_queued": ("gauge", ()),
}


class Scrape:
    """One scrape of /metrics, parsed."""

    def __init__(self, h: Harness) -> None:
        with urllib.request.urlopen(h.url + "/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers.get_content_type() == "text/plain"
            text = resp.read().decode("utf-8")
        self.families: dict[str, Metric] = {
            f.name: f for f in text_string_to_metric_families(text)}

    def value(self, sample: str, **labels: str) -> float | None:
        """The value of the sample with exactly these labels, or None if it is not there."""
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample and s.labels == labels:
                    return float(s.value)
        return None

    def number(self, sample: str, **labels: str) -> float:
        found = self.value(sample, **labels)
        assert found is not None, f"no sample {sample}{labels}"
        return found

    def labelsets(self, sample: str) -> list[dict[str, str]]:
        return [s.labels for f in self.families.values() for s in f.samples if s.name == sample]


def value_becomes(h: Harness, sample: str, expected: float, timeout: float = 10,
                  **labels: str) -> None:
    wait_until(lambda: Scrape(h).value(sample, **labels) == expected, timeout, interval=0.05,
               message=f"{sample}{labels} never became {expected}")


def cached(h: Harness, symbol: str, price: float) -> bool:
    quote = h.system.services.cache.quote(symbol, 0)
    return quote is not None and quote.price == price


def open_and_price(h: Harness, symbol: str, price: float, stop: float) -> None:
    h.open_long(symbol, price, stop)
    wait_until(lambda: h.system.services.feed_status.connected
               and any(symbol in s for s in h.exchange.subscriptions), 10)
    h.exchange.send_tick(symbol, price)
    wait_until(lambda: cached(h, symbol, price), 5)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Harness]:
    with running(tmp_path) as h:
        yield h


def test_every_spec_metric_is_exposed_with_its_type_and_labels(live: Harness) -> None:
    open_and_price(live, "AAA", 100.0, 90.0)
    live.exchange.send_raw("not json")
    wait_until(lambda: Scrape(live).labelsets("tradeguard_feed_rejected_total"), 5)
    scrape = Scrape(live)
    for name, (kind, labels) in SPEC_METRICS.items():
        family = scrape.families.get(name)
        assert family is not None, f"{name} is not exposed"
        assert family.type == kind, f"{name} is a {family.type}"
        assert family.samples, f"{name} has no samples"
        for sample in family.samples:
            if not sample.name.endswith(("_created", "_bucket")):
                assert tuple(sorted(sample.labels)) == labels, sample
    assert scrape.value("tradeguard_feed_rejected_total", reason="bad_json") == 1
    assert {s["actor"] for s in scrape.labelsets("tradeguard_actor_up")} == set(ACTORS)
    # Counters that alert rules watch start at 0, so their first increase is seen.
    for actor in ACTORS:
        assert scrape.value("tradeguard_actor_restarts_total", actor=actor) == 0
    assert scrape.value("tradeguard_position_closes_total", reason="stop_loss",
                        result="error") == 0


def test_feed_connected_follows_the_feed(live: Harness) -> None:
    value_becomes(live, "tradeguard_feed_connected", 1)
    before = Scrape(live)
    live.exchange.stop()
    value_becomes(live, "tradeguard_feed_connected", 0)
    errors = before.number("tradeguard_feed_network_errors_total")
    assert Scrape(live).number("tradeguard_feed_network_errors_total") > errors
    attempts = before.number("tradeguard_feed_reconnect_attempts_total")
    wait_until(lambda: Scrape(live).number("tradeguard_feed_reconnect_attempts_total")
               > attempts, 10)
    live.exchange.start()
    value_becomes(live, "tradeguard_feed_connected", 1)


def test_ticks_move_the_tick_counter_and_the_decision_histogram(live: Harness) -> None:
    open_and_price(live, "AAA", 100.0, 90.0)
    before = Scrape(live)
    count = before.number("tradeguard_tick_to_decision_seconds_count")
    ticks = before.number("tradeguard_feed_ticks_total")
    assert count >= 1
    for price in (101.0, 102.0, 103.0):
        live.exchange.send_tick("AAA", price)
        wait_until(lambda p=price: cached(live, "AAA", p), 5)  # type: ignore[misc]
    wait_until(lambda: Scrape(live).number("tradeguard_tick_to_decision_seconds_count")
               >= count + 3, 5)
    after = Scrape(live)
    assert after.number("tradeguard_feed_ticks_total") == ticks + 3
    assert after.number("tradeguard_tick_to_decision_seconds_sum") > before.number(
        "tradeguard_tick_to_decision_seconds_sum")
    assert 0 <= after.number("tradeguard_price_age_seconds", symbol="AAA") < 5
    assert after.number("tradeguard_feed_last_message_age_seconds") < 5
    assert after.number("tradeguard_positions_open") == 1


def test_a_crash_moves_the_restart_counter(live: Harness) -> None:
    value_becomes(live, "tradeguard_actor_restarts_total", 0, actor="CacheActor")
    status, _ = live.call("POST", "/api/v1/debug/fault", {"actor": "CacheActor",
                                                          "kind": "crash"})
    assert status == 202
    value_becomes(live, "tradeguard_actor_restarts_total", 1, actor="CacheActor")
    value_becomes(live, "tradeguard_actor_up", 1, actor="CacheActor")
    assert Scrape(live).value("tradeguard_actor_restarts_total", actor="FeedActor") == 0


def test_dns_metrics_follow_the_resolver_ladder(live: Harness) -> None:
    # The harness's system resolver fails: the feed host came from the fallback server.
    value_becomes(live, "tradeguard_feed_connected", 1)
    scrape = Scrape(live)
    fallback_ok = scrape.value("tradeguard_dns_resolutions_total", via="fallback", result="ok")
    assert fallback_ok is not None and fallback_ok >= 1
    assert scrape.value("tradeguard_dns_server_up", server=live.dns.address) == 1
    assert scrape.value("tradeguard_dns_server_up", server="system") == 0

    live.dns.mode = "refuse"
    live.system.services.handles["DnsHealthActor"].tell(Kick("test"))
    value_becomes(live, "tradeguard_dns_server_up", 0, server=live.dns.address)

    live.lookup.answers["feed.tradeguard.test"] = ["127.0.0.1"]
    live.lookup.mode = "answer"
    # Answers are cached for their TTL (SPEC §4): let the fallback's answer expire,
    # so the reconnect resolves again, by the system this time.
    live.system.services.resolver.forget("feed.tradeguard.test")
    live.exchange.restart()
    value_becomes(live, "tradeguard_dns_resolutions_total", 1, via="system", result="ok")
    live.system.services.handles["DnsHealthActor"].tell(Kick("test"))
    value_becomes(live, "tradeguard_dns_server_up", 1, server="system")


def test_a_price_going_stale_then_blind_moves_the_gauges(tmp_path: Path) -> None:
    with running(tmp_path, prices={"stale_warning_threshold": 1.0, "cache_timeout": 2.0}) as h:
        open_and_price(h, "AAA", 100.0, 90.0)
        value_becomes(h, "tradeguard_positions_open", 1)
        value_becomes(h, "tradeguard_prices_stale", 1)  # no tick for a second
        value_becomes(h, "tradeguard_positions_blind", 1)  # nor for two
        # A tick with every look, as a live market would send: fresh again.
        wait_until(lambda: h.exchange.send_tick("AAA", 100.5) and (
            (s := Scrape(h)).value("tradeguard_positions_blind") == 0
            and s.value("tradeguard_prices_stale") == 0), 10, interval=0.05)


def test_a_failed_close_still_counts_as_open(live: Harness) -> None:
    live.open_long("BBB", 50.0, 45.0)  # never priced: the paper broker cannot fill it
    status, _ = live.call("POST", "/api/v1/monitoring/emergency-close-position",
                          {"symbol": "BBB"})
    assert status == 502
    scrape = Scrape(live)
    assert scrape.number("tradeguard_positions_open") == 1  # still open at the broker
    assert scrape.number("tradeguard_prices_stale") == 1
    assert scrape.number("tradeguard_position_closes_total", reason="emergency",
                         result="error") >= 1


def test_a_close_moves_the_close_counter_and_the_open_gauge(live: Harness) -> None:
    open_and_price(live, "AAA", 100.0, 90.0)
    value_becomes(live, "tradeguard_positions_open", 1)
    logged = Scrape(live).value("tradeguard_notifications_total", result="logged") or 0.0
    live.exchange.send_tick("AAA", 89.0)
    value_becomes(live, "tradeguard_position_closes_total", 1, reason="stop_loss", result="ok")
    value_becomes(live, "tradeguard_positions_open", 0)
    assert Scrape(live).value("tradeguard_price_age_seconds", symbol="AAA") is None
    # The "closed" alert goes to the log (no Telegram here) and is counted there.
    wait_until(lambda: (Scrape(live).value("tradeguard_notifications_total", result="logged")
                        or 0) > logged, 10)
    value_becomes(live, "tradeguard_notifications_queued", 0)
