"""The system: builds the shared services, the Guard and the supervision tree from a Config.

    Supervisor (one-for-one)
    ├── CacheActor       writes the price cache, persists it
    ├── NotifierActor    delivers the alert outbox (Telegram + log)
    ├── MonitorActor     stop rules on every tick and on a sweep; starts closes
    ├── DnsHealthActor   checks the system resolver and each fallback server
    ├── FeedActor        the WebSocket: resolve, connect, read, batch, reconnect
    └── ApiActor         the HTTP API and status page (waitress)

Children start in that order (consumers before producers) and stop in
reverse. This module only wires: what the API offers and shows is
`tradeguard.guard.Guard`, which reaches the actors through the three
callables built here (`ActorPorts`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from actors.api import ApiActor
from actors.base import ChildContext
from actors.cache import CacheActor
from actors.dns_health import DnsHealthActor
from actors.feed import FeedActor
from actors.messages import Kick, PositionsChanged, Subscribe
from actors.monitor import MonitorActor
from actors.notifier import NotifierActor
from actors.services import ApiEndpoint, Services
from actors.supervisor import ChildSpec, Supervisor
from tradeguard import alerts
from tradeguard.brokers import Broker, Venue, make_broker, make_venue
from tradeguard.closing import Closer
from tradeguard.config import Config
from tradeguard.guard import ActorPorts, Guard, Statuses
from tradeguard.health import DnsStatus, FeedStatus, MonitorStatus
from tradeguard.market import Market
from tradeguard.metrics import Metrics
from tradeguard.net.resolver import Resolver, SystemLookup
from tradeguard.notify.outbox import OutboxAlerts
from tradeguard.notify.policy import DeliveryPolicy
from tradeguard.prices import PriceCache, Quote
from tradeguard.store import Store
from tradeguard.web.token import api_token

logger = logging.getLogger(__name__)

CHILDREN: tuple[tuple[str, type[Any]], ...] = (
    ("CacheActor", CacheActor),
    ("NotifierActor", NotifierActor),
    ("MonitorActor", MonitorActor),
    ("DnsHealthActor", DnsHealthActor),
    ("FeedActor", FeedActor),
    ("ApiActor", ApiActor),
)
START_POLL = 0.05


class System:
    """Everything one `tradeguard run` holds, wired together."""

    def __init__(
        self,
        cfg: Config,
        *,
        system_lookup: SystemLookup | None = None,
        broker: Broker | None = None,
        on_liveness: Callable[[bool], None] | None = None,
        api_port: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.api_token = api_token(cfg.api.token, cfg.store.path).value
        self.supervisor = Supervisor(
            cfg.supervisor, self._make_context, on_restart=self._on_restart,
            on_give_up=self._on_give_up, on_liveness=on_liveness,
        )
        for name, actor_cls in CHILDREN:
            self.supervisor.add(ChildSpec(name, _factory(actor_cls)))
        store, metrics = Store(cfg.store.path), Metrics()
        metrics.add_process()
        cache = PriceCache(cfg.prices.stale_warning_threshold, cfg.prices.cache_timeout)
        resolver = _resolver(cfg, store, metrics, system_lookup)
        sink = OutboxAlerts(store, on_enqueued=self._kick_notifier)
        # Kite: one venue object gives the broker, the feed protocol and the symbol check.
        self.venue = make_venue(cfg, resolver=resolver, store=store, alerts=sink)
        broker, closer = _closer(cfg, store, cache, resolver=resolver, sink=sink,
                                 metrics=metrics, broker=broker, venue=self.venue)
        statuses = Statuses(FeedStatus(), DnsStatus(), MonitorStatus())
        market = Market.from_config(cfg)
        self.guard = Guard(
            cfg, store=store, cache=cache, closer=closer, metrics=metrics, statuses=statuses,
            api_token=self.api_token, market=market,
            admit=self.venue.admit if self.venue is not None else None,
            name=self.venue.name if self.venue is not None else None,
            actors=ActorPorts(self._positions_changed, self.supervisor.status,
                              self.inject_fault),
        )
        self.services = Services(
            cfg, store, cache, resolver, broker, closer, sink, metrics,
            DeliveryPolicy(cfg.telegram.max_per_minute),
            api=ApiEndpoint(self.guard, cfg.api.port if api_port is None else api_port),
            handles=self.supervisor.handles, feed_status=statuses.feed,
            dns_status=statuses.dns, monitor_status=statuses.monitor,
            system_lookup=system_lookup, market=market, venue=self.venue,
        )
        metrics.expect_actors(self.services.handles)  # restart counters at 0 from the start
        metrics.add_state(self.guard.readings)

    # Life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self.supervisor.start()

    def wait_started(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """True once every child has finished starting and the API listens.

        False when `timeout` passes first, the supervisor gives up, or `stop` is set.
        """
        stop = stop or threading.Event()
        deadline = time.monotonic() + timeout
        while not (self.supervisor.all_up() and self.api_port):
            if self.supervisor.gave_up.is_set() or time.monotonic() >= deadline:
                return False
            if stop.wait(START_POLL):
                return False
        return True

    @property
    def api_port(self) -> int:
        """The port the API listens on; 0 until ApiActor has bound it."""
        return self.services.api.bound

    def stop(self) -> None:
        self.services.shutdown.set()  # wakes any thread hung by fault injection
        self.supervisor.stop()
        for sock in self.services.api.sockets or ():
            sock.close()
        if self.venue is not None:
            self.venue.close()
        self.services.resolver.close()
        self.services.store.close()

    def reload_token(self) -> None:
        """SIGHUP: read broker.token_file again (a venue's token; nothing else is reloaded)."""
        if self.venue is not None:
            self.venue.reload_token()

    # What the Guard and the supervisor call back ---------------------------------

    def _make_context(
        self, name: str, incarnation: int, report: Callable[[str, int, str], None],
        ack: Callable[[int], None],
    ) -> ChildContext:
        return ChildContext(name, incarnation, self.services, report, ack)

    def _positions_changed(self, symbol: str) -> None:
        handles = self.services.handles
        handles["MonitorActor"].tell_durable(PositionsChanged(symbol))
        handles["FeedActor"].tell_durable(Subscribe((symbol,)))

    def inject_fault(self, actor: str, kind: str) -> None:
        """crash / hang on the next message; "start": crash, then fail the next on_start."""
        if actor not in self.services.handles:
            raise ValueError(f"unknown actor {actor!r}")
        if kind == "start":
            self.services.faults.arm_start_failure(actor)
            kind = "crash"
        self.supervisor.inject_fault(actor, kind)

    def ask(self, actor: str, message: object, timeout: float) -> Any:
        """A blocking ask of a child, for the edges (tools, tests), never for an actor."""
        return self.services.handles[actor].ask(message, timeout)

    def _kick_notifier(self) -> None:
        handle = self.supervisor.handles.get("NotifierActor")
        if handle is not None:
            handle.tell(Kick("alert"))

    def _on_restart(self, name: str, reason: str, restarts: int) -> None:
        self.services.metrics.actor_restarts.labels(actor=name).inc()
        self.services.alerts.alert(alerts.actor_restarted(name, reason, restarts))

    def _on_give_up(self, name: str, restarts: int) -> None:
        self.services.alerts.alert(alerts.supervisor_gave_up(
            name, restarts, self.cfg.supervisor.within_seconds))


def _resolver(cfg: Config, store: Store, metrics: Metrics,
              system_lookup: SystemLookup | None) -> Resolver:
    dns = cfg.dns
    return Resolver(list(dns.fallback_servers), dns.timeout, dns.system_head_start,
                    dns.serve_stale, memory=store, system=system_lookup,
                    observer=metrics.dns_observer)


def _closer(cfg: Config, store: Store, cache: PriceCache, *, resolver: Resolver,
            sink: OutboxAlerts, metrics: Metrics, broker: Broker | None,
            venue: Venue | None = None) -> tuple[Broker, Closer]:
    """The broker `broker.kind` names (unless a test gives one) and the Closer over it."""

    def quote(symbol: str) -> Quote | None:
        return cache.quote(symbol, time.monotonic())

    broker = broker or make_broker(cfg, quote=quote, resolver=resolver, venue=venue)
    closer = Closer(
        store, broker, sink, max_retries=cfg.monitor.max_close_retries, quote=quote,
        currency=cfg.display.currency,
        observe=lambda reason, result: metrics.position_closes.labels(
            reason=reason, result=result).inc(),
    )
    return broker, closer


def _factory(actor_cls: type[Any]) -> Callable[[ChildContext], pykka.ActorRef[Any]]:
    def start(ctx: ChildContext) -> pykka.ActorRef[Any]:
        ref: pykka.ActorRef[Any] = actor_cls.start(ctx)
        return ref

    return start
