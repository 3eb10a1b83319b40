"""Prometheus metrics (SPEC §8) on a registry the system creates.

Counters and the histogram are updated where things happen. Values that are
only known at scrape time (price ages, the feed's last message age, which
actors are up) come from `StateCollector`, which asks a callback for a
`Readings` snapshot each scrape, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tradeguard.positions import REASONS

PREFIX = "tradeguard_"
CLOSE_RESULTS = ("ok", "error")  # as tradeguard.closing.Closer reports them


@dataclass
class Readings:
    """Everything the scrape-time collector reports, read at once."""

    feed_connected: bool = False
    feed_last_message_age: float | None = None
    price_ages: dict[str, float] = field(default_factory=dict)  # symbols with open positions
    prices_stale: int = 0
    positions_open: int = 0
    positions_blind: int = 0
    dns_servers_up: dict[str, bool] = field(default_factory=dict)
    actors_up: dict[str, bool] = field(default_factory=dict)
    notifications_queued: int = 0
    market_open: dict[str, bool] = field(default_factory=dict)  # exchange -> in session


class StateCollector(Collector):
    def __init__(self, read: Callable[[], Readings]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        r = self._read()
        yield _gauge("feed_connected", "1 while the price feed is connected", 1 if r.feed_connected
                     else 0)
        yield _gauge("feed_last_message_age_seconds", "Seconds since the feed's last frame",
                     r.feed_last_message_age if r.feed_last_message_age is not None
                     else float("nan"))
        ages = GaugeMetricFamily(PREFIX + "price_age_seconds",
                                 "Age of the cached price of each symbol with an open position",
                                 labels=["symbol"])
        for symbol, age in sorted(r.price_ages.items()):
            ages.add_metric([symbol], age)
        yield ages
        yield _gauge("prices_stale", "Open-position symbols whose price is stale or unusable",
                     r.prices_stale)
        yield _gauge("positions_open", "Positions not yet closed", r.positions_open)
        yield _gauge("positions_blind", "Open positions with no usable price", r.positions_blind)
        dns = GaugeMetricFamily(PREFIX + "dns_server_up", "1 if the resolver answered its last "
                                "health check", labels=["server"])
        for server, ok in sorted(r.dns_servers_up.items()):
            dns.add_metric([server], 1 if ok else 0)
        yield dns
        actors = GaugeMetricFamily(PREFIX + "actor_up", "1 while the actor is running",
                                   labels=["actor"])
        for actor, ok in sorted(r.actors_up.items()):
            actors.add_metric([actor], 1 if ok else 0)
        yield actors
        yield _gauge("notifications_queued", "Alerts in the outbox not yet delivered",
                     r.notifications_queued)
        markets = GaugeMetricFamily(PREFIX + "market_open", "1 while the exchange's session is "
                                    "open (orders go out), 0 while it is closed",
                                    labels=["exchange"])
        for exchange, is_open in sorted(r.market_open.items()):
            markets.add_metric([exchange], 1 if is_open else 0)
        yield markets


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


class Metrics:
    """Every event-driven metric of SPEC §8, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.feed_reconnect_attempts = Counter(
            PREFIX + "feed_reconnect_attempts", "Feed connection attempts after the first",
            registry=reg)
        self.feed_network_errors = Counter(
            PREFIX + "feed_network_errors", "Feed connections that failed or dropped", registry=reg)
        self.feed_ticks = Counter(PREFIX + "feed_ticks", "Ticks accepted from the feed",
                                  registry=reg)
        self.feed_rejected = Counter(PREFIX + "feed_rejected", "Feed input rejected, by reason",
                                     ["reason"], registry=reg)
        self.dns_resolutions = Counter(PREFIX + "dns_resolutions", "Host resolutions, by rung "
                                       "of the ladder and result", ["via", "result"], registry=reg)
        self.position_closes = Counter(PREFIX + "position_closes", "Close attempts, by reason "
                                       "and result", ["reason", "result"], registry=reg)
        self.tick_to_decision = Histogram(
            PREFIX + "tick_to_decision_seconds",
            "From frame receipt to the monitor's decision on it",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1.0),
            registry=reg)
        self.actor_restarts = Counter(PREFIX + "actor_restarts", "Actor restarts by the "
                                      "supervisor", ["actor"], registry=reg)
        self.notifications = Counter(PREFIX + "notifications", "Alert deliveries, by result",
                                     ["result"], registry=reg)
        self.trailing_stop_moves = Counter(
            PREFIX + "trailing_stop_moves", "Trailing-stop moves stored (at most one per "
            "position per tick batch)", registry=reg)
        # Alert rules watch failed closes with increase(): a series that first
        # appears at 1 shows no increase, so the first failure would go unseen.
        for reason in REASONS:
            for result in CLOSE_RESULTS:
                self.position_closes.labels(reason=reason, result=result)

    def expect_actors(self, names: Iterable[str]) -> None:
        """Give every actor its restart counter at 0, so its first restart is an increase."""
        for name in names:
            self.actor_restarts.labels(actor=name)

    def add_state(self, read: Callable[[], Readings]) -> None:
        self.registry.register(StateCollector(read))

    def add_process(self) -> None:
        ProcessCollector(registry=self.registry)

    def dns_observer(self, via: str, result: str) -> None:
        self.dns_resolutions.labels(via=via, result=result).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
