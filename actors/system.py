"""The system: builds the shared services and the supervision tree from a Config.

    Supervisor (one-for-one)
    ├── CacheActor       writes the price cache, persists it
    ├── NotifierActor    delivers the alert outbox (Telegram + log)
    ├── MonitorActor     stop rules on every tick and on a sweep; starts closes
    ├── DnsHealthActor   checks the system resolver and each fallback server
    ├── FeedActor        the WebSocket: resolve, connect, read, batch, reconnect
    └── ApiActor         the HTTP API and status page (waitress)

Children start in that order (consumers before producers) and stop in
reverse. `System` is also what the HTTP layer calls (`tradeguard.web.ports`).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
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
from actors.services import Services
from actors.supervisor import ChildSpec, Supervisor
from tradeguard import alerts
from tradeguard.brokers import Broker, make_broker
from tradeguard.closing import Closer
from tradeguard.config import Config, is_loopback
from tradeguard.errors import PositionError
from tradeguard.metrics import Metrics, Readings
from tradeguard.net.resolver import Resolver, SystemLookup
from tradeguard.notify.outbox import OutboxAlerts
from tradeguard.notify.policy import DeliveryPolicy
from tradeguard.positions import (
    close_from_request,
    distance_pct,
    levels_from_request,
    pnl,
    position_from_request,
    validate_symbol,
)
from tradeguard.prices import Freshness, PriceCache, Quote
from tradeguard.store import Store

logger = logging.getLogger(__name__)

CHILDREN: tuple[tuple[str, type[Any]], ...] = (
    ("CacheActor", CacheActor),
    ("NotifierActor", NotifierActor),
    ("MonitorActor", MonitorActor),
    ("DnsHealthActor", DnsHealthActor),
    ("FeedActor", FeedActor),
    ("ApiActor", ApiActor),
)
API_ASK_TIMEOUT = 5.0


def ensure_api_token(cfg: Config) -> tuple[str, Path | None]:
    """The configured token, or one generated now and written 0600 beside the store."""
    if cfg.api.token:
        return cfg.api.token, None
    token = secrets.token_urlsafe(32)
    path = Path(cfg.store.path).resolve().parent / "api-token"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    return token, path


class System:
    """Everything one `tradeguard run` holds, and the operations the API offers."""

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
        self.api_token, self.token_path = ensure_api_token(cfg)
        self.fault_injection = cfg.debug.fault_injection
        self.protect_reads = not is_loopback(cfg.api.host)
        store = Store(cfg.store.path)
        metrics = Metrics()
        metrics.add_process()
        cache = PriceCache(cfg.prices.stale_warning_threshold, cfg.prices.cache_timeout)
        resolver = Resolver(
            list(cfg.dns.fallback_servers), cfg.dns.timeout, cfg.dns.system_head_start,
            cfg.dns.serve_stale, memory=store, system=system_lookup,
            observer=metrics.dns_observer,
        )
        sink = OutboxAlerts(store, on_enqueued=self._kick_notifier)
        def quote(symbol: str) -> Quote | None:
            return cache.quote(symbol, time.monotonic())

        broker = broker or make_broker(cfg, quote=quote, resolver=resolver)
        closer = Closer(
            store, broker, sink, max_retries=cfg.monitor.max_close_retries, quote=quote,
            currency=cfg.display.currency,
            observe=lambda reason, result: metrics.position_closes.labels(
                reason=reason, result=result).inc(),
        )
        delivery = DeliveryPolicy(cfg.telegram.max_per_minute)
        self.services = Services(cfg, store, cache, resolver, broker, closer, sink, metrics,
                                 delivery, system_lookup=system_lookup)
        self.services.api = self
        self.services.api_port = cfg.api.port if api_port is None else api_port
        self.supervisor = Supervisor(
            cfg.supervisor, self._make_context, on_restart=self._on_restart,
            on_give_up=self._on_give_up, on_liveness=on_liveness,
        )
        for name, actor_cls in CHILDREN:
            self.supervisor.add(ChildSpec(name, _factory(actor_cls)))
        self.services.handles = self.supervisor.handles
        metrics.expect_actors(self.services.handles)  # restart counters at 0 from the start
        metrics.add_state(self.readings)

    # Life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self.supervisor.start()

    def stop(self) -> None:
        self.services.shutdown.set()  # wakes any thread hung by fault injection
        self.supervisor.stop()
        self.services.resolver.close()
        self.services.store.close()

    def _make_context(
        self, name: str, incarnation: int, report: Callable[[str, int, str], None],
        ack: Callable[[int], None],
    ) -> ChildContext:
        return ChildContext(name, incarnation, self.services, report, ack)

    def _kick_notifier(self) -> None:
        handle = self.services.handles.get("NotifierActor")
        if handle is not None:
            handle.tell(Kick("alert"))

    def _on_restart(self, name: str, reason: str, restarts: int) -> None:
        self.services.metrics.actor_restarts.labels(actor=name).inc()
        self.services.alerts.alert(alerts.actor_restarted(name, reason, restarts))

    def _on_give_up(self, name: str, restarts: int) -> None:
        self.services.alerts.alert(alerts.supervisor_gave_up(
            name, restarts, self.cfg.supervisor.within_seconds))

    # What the API calls (tradeguard.web.ports.GuardApi) ---------------------

    def connection_health(self) -> dict[str, Any]:
        now = time.time()
        s = self.services
        threshold = self.cfg.prices.stale_warning_threshold
        entries = {
            symbol: {"price": q.price, "age_seconds": round(q.age, 3),
                     "is_stale": q.age > threshold, "usable": q.usable}
            for symbol, q in sorted(s.cache.snapshot(now).items())
        }
        live = s.store.live_positions()
        return {
            "websocket": s.feed_status.snapshot(),
            "dns": s.dns_status.snapshot(),
            "price_cache": {"cached_symbols": len(entries), "cache_entries": entries},
            "actors": self.supervisor.status(),
            "positions": {"open": len(live), "blind": s.monitor_status.blind_symbols(),
                          "stale": s.monitor_status.stale_symbols()},
            "alerts": {"queued": s.store.pending_count()},
        }

    def list_positions(self) -> list[dict[str, Any]]:
        return [p.as_json() for p in self.services.store.positions()]

    def open_position(self, body: Any) -> dict[str, Any]:
        position = self.services.store.add_position(position_from_request(body, time.time()))
        self._positions_changed(position.symbol)
        logger.info("[POSITION] opened %s %s x%s at %s (SL %s, TP %s)", position.side.value,
                    position.symbol, position.quantity, position.entry_price,
                    position.stop_loss, position.take_profit)
        return position.as_json()

    def patch_position(self, symbol: str, body: Any) -> dict[str, Any]:
        symbol = validate_symbol(symbol)
        current = self.services.store.live_position(symbol)
        if current is None:
            raise PositionError(f"{symbol}: no open position", 404)
        if current.state.value == "closing":
            # SPEC §6 gives PATCH no 409: a position being closed is no longer open.
            raise PositionError(f"{symbol}: no open position (a close is under way)", 404)
        updated = self.services.store.update_levels(levels_from_request(body, current))
        self._positions_changed(symbol)
        return updated.as_json()

    def emergency_close(self, body: Any) -> dict[str, Any]:
        symbol, reason = close_from_request(body)
        try:
            result = self.services.closer.close(symbol, reason)
        finally:
            self._positions_changed(symbol)
        return result.as_json()

    def _positions_changed(self, symbol: str) -> None:
        handles = self.services.handles
        handles["MonitorActor"].tell_durable(PositionsChanged(symbol))
        handles["FeedActor"].tell_durable(Subscribe((symbol,)))

    def health(self) -> tuple[bool, list[str]]:
        down = [name for name, s in self.supervisor.status().items() if not s["alive"]]
        return not down, down

    def inject_fault(self, actor: str, kind: str) -> None:
        """crash / hang on the next message; "start": crash, then fail the next on_start."""
        if actor not in self.services.handles:
            raise ValueError(f"unknown actor {actor!r}")
        if kind == "start":
            self.services.faults.arm_start_failure(actor)
            kind = "crash"
        self.supervisor.inject_fault(actor, kind)

    def metrics_exposition(self) -> bytes:
        return self.services.metrics.exposition()

    def ask(self, actor: str, message: object, timeout: float = API_ASK_TIMEOUT) -> Any:
        return self.services.handles[actor].ask(message, timeout)

    def status_view(self) -> dict[str, Any]:
        now = time.time()
        s = self.services
        rows = []
        for p in s.store.positions(limit=20):
            quote = s.cache.quote(p.symbol, now)
            fresh = "blind" if quote is None or not quote.usable else (
                "stale" if quote.freshness is Freshness.STALE else "fresh")
            price = quote.price if quote else None
            row = p.as_json()
            row.update(
                price=price,
                price_age_seconds=round(quote.age, 1) if quote else None,
                freshness=fresh,
                distance_to_stop_pct=distance_pct(price, p.stop_loss) if price else None,
                distance_to_target_pct=distance_pct(price, p.take_profit) if price else None,
                unrealized_pnl=pnl(p, price) if price and p.state.value != "closed" else None,
            )
            rows.append(row)
        return {
            "now": now,
            "currency": self.cfg.display.currency,
            "thresholds": {"stale": self.cfg.prices.stale_warning_threshold,
                           "blind": self.cfg.prices.cache_timeout},
            "feed": s.feed_status.snapshot(),
            "dns": s.dns_status.snapshot(),
            "actors": self.supervisor.status(),
            "positions": rows,
            "alerts": [
                {"created_at": a.created_at, "severity": a.severity, "kind": a.kind,
                 "text": a.text, "sent": a.sent_at is not None}
                for a in s.store.recent_alerts(15)
            ],
        }

    def readings(self) -> Readings:
        now = time.time()
        s = self.services
        # Closing and close_failed positions are still open at the broker, and
        # a failed one is the one most in need of a price: all of them count.
        live = s.store.live_positions()
        ages: dict[str, float] = {}
        stale = 0
        for p in live:
            quote = s.cache.quote(p.symbol, now)
            if quote is None:
                stale += 1
                continue
            ages[p.symbol] = quote.age
            if quote.freshness is not Freshness.FRESH:
                stale += 1
        status = self.supervisor.status()
        return Readings(
            feed_connected=s.feed_status.connected,
            feed_last_message_age=s.feed_status.last_message_age(),
            price_ages=ages,
            prices_stale=stale,
            positions_open=len(live),
            positions_blind=len(s.monitor_status.blind_symbols()),
            dns_servers_up={k: v["ok"] for k, v in s.dns_status.snapshot()["servers"].items()},
            actors_up={name: bool(v["alive"]) for name, v in status.items()},
            notifications_queued=s.store.pending_count(),
        )


def _factory(actor_cls: type[Any]) -> Callable[[ChildContext], pykka.ActorRef[Any]]:
    def start(ctx: ChildContext) -> pykka.ActorRef[Any]:
        ref: pykka.ActorRef[Any] = actor_cls.start(ctx)
        return ref

    return start
