"""Shared fixtures: every test leaves no actor running; the web tests get the real Guard.

As in Flask's tutorial, `app` is the real app on a temporary database: the
real `tradeguard.guard.Guard` over a real SQLite store, price cache, Closer
and paper broker. The one stand-in is `ActorTable`, the Guard's port to the
actors (what a running supervisor would answer), so a test can say an actor
is down and see which positions the Guard told the actors about.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flask
import pykka
import pytest
from flask.testing import FlaskClient

from tradeguard.brokers import PaperBroker
from tradeguard.closing import Closer
from tradeguard.config import Config, config_from_mapping
from tradeguard.guard import ActorPorts, Guard, Statuses
from tradeguard.health import DnsStatus, FeedStatus, MonitorStatus, ServerHealth
from tradeguard.metrics import Metrics
from tradeguard.notify.outbox import OutboxAlerts
from tradeguard.prices import PriceCache, Quote, Tick
from tradeguard.sim.exchange import SimExchange
from tradeguard.store import Store
from tradeguard.web.app import create_app

GUARD_TOKEN = "tg-api-Zq9x7Lw2-s3cret"  # the token the web tests' app is built with
ACTORS = ("CacheActor", "NotifierActor", "MonitorActor", "DnsHealthActor", "FeedActor",
          "ApiActor")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long soak/chaos tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long run: use --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture
def exchange() -> Iterator[SimExchange]:
    """A real WebSocket feed on loopback, stopped after the test."""
    with SimExchange() as sim:
        yield sim


@dataclass
class ActorTable:
    """What the supervisor would answer the Guard: actor records, faults, notifications."""

    records: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        name: {"alive": True, "restarts": 0, "last_failure": None} for name in ACTORS})
    faults: list[tuple[str, str]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # symbols, as positions_changed got them

    def ports(self) -> ActorPorts:
        return ActorPorts(self.changed.append, self.status, self.inject_fault)

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: dict(record) for name, record in self.records.items()}

    def inject_fault(self, actor: str, kind: str) -> None:
        """A crash counts a restart at once, as the supervisor would; a hang leaves it down."""
        if actor not in self.records:
            raise ValueError(f"unknown actor {actor!r}")
        self.faults.append((actor, kind))
        record = self.records[actor]
        record["last_failure"] = f"injected {kind}"
        if kind == "crash":
            record["restarts"] += 1
        else:
            record["alive"] = False


@dataclass
class World:
    """The real parts under the web tests' Guard, for the tests to drive and inspect."""

    cfg: Config
    store: Store
    cache: PriceCache
    broker: PaperBroker
    feed: FeedStatus
    dns: DnsStatus
    monitor: MonitorStatus
    actors: ActorTable
    metrics: Metrics
    closer: Closer

    def tick(self, symbol: str, price: float, age: float = 0.0) -> None:
        """A price for `symbol`, received `age` seconds ago, as the feed would deliver it."""
        self.cache.put(Tick(symbol, price, time.monotonic() - age))
        self.feed.update(connected=True, connected_ip="127.0.0.1", resolved_via="system",
                         last_message_mono=time.monotonic() - age)

    def dns_check(self, system_ok: bool, servers: dict[str, ServerHealth]) -> None:
        system = ServerHealth(system_ok, 1.0 if system_ok else None,
                              None if system_ok else "SERVFAIL")
        self.dns.record(system, servers, time.time())

    def guard(self, cfg: Config | None = None) -> Guard:
        """A Guard on these parts (another config: say, another broker.kind)."""
        cfg = cfg or self.cfg
        return Guard(cfg, store=self.store, cache=self.cache, closer=self.closer,
                     metrics=self.metrics, statuses=Statuses(self.feed, self.dns, self.monitor),
                     actors=self.actors.ports(), api_token=cfg.api.token)


def web_config(tmp_path: Path) -> Config:
    return config_from_mapping({
        "api": {"token": GUARD_TOKEN},
        "store": {"path": str(tmp_path / "guard.db")},
        "monitor": {"max_close_retries": 1},
        "debug": {"fault_injection": True},
    }, {})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    cfg = web_config(tmp_path)
    store = Store(cfg.store.path)
    cache = PriceCache(cfg.prices.stale_warning_threshold, cfg.prices.cache_timeout)
    metrics = Metrics()

    def quote(symbol: str) -> Quote | None:
        return cache.quote(symbol, time.monotonic())

    broker = PaperBroker(quote, max_age=math.inf)  # as make_broker builds it for "paper"
    closer = Closer(store, broker, OutboxAlerts(store), max_retries=cfg.monitor.max_close_retries,
                    retry_delay=0.0, quote=quote,
                    observe=lambda reason, result: metrics.position_closes.labels(
                        reason=reason, result=result).inc())
    parts = World(cfg, store, cache, broker, FeedStatus(host="feed.tradeguard.test"),
                  DnsStatus(), MonitorStatus(), ActorTable(), metrics, closer)
    yield parts
    store.close()


@pytest.fixture
def guard(world: World) -> Guard:
    """The real Guard the web tests serve, on the world's parts."""
    built = world.guard()
    world.metrics.add_state(built.readings)
    return built


@pytest.fixture
def app(guard: Guard) -> flask.Flask:
    app = create_app(guard)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: flask.Flask) -> FlaskClient:
    return app.test_client()
