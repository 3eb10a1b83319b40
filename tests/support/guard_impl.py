"""A `GuardApi` for tests of the HTTP layer, built from the parts the system uses.

Not a mock: positions live in a real `Store` (SQLite on disk), prices in a
real `PriceCache`, requests are validated by `tradeguard.positions`, and a
close is claimed in the store and filled by the real `Closer` through a real
`PaperBroker` at the cached price (so no usable price means a broker failure,
retries and a 502). Metrics are a real `Metrics` registry. What it has no
need for is actors: health and fault injection act on a table of actor
records, where a crash counts a restart at once (as the supervisor would) and
a hang leaves the actor down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tradeguard.brokers import PaperBroker
from tradeguard.closing import Closer
from tradeguard.errors import PositionError
from tradeguard.health import DnsStatus, FeedStatus, ServerHealth
from tradeguard.metrics import Metrics, Readings
from tradeguard.notify.outbox import OutboxAlerts
from tradeguard.positions import (
    Position,
    State,
    distance_pct,
    levels_from_request,
    pnl,
    position_from_request,
    validate_symbol,
)
from tradeguard.prices import Freshness, PriceCache, Tick
from tradeguard.store import Store

ACTORS = ("CacheActor", "NotifierActor", "MonitorActor", "DnsHealthActor", "FeedActor",
          "ApiActor")
STALE_AFTER = 30.0
UNUSABLE_AFTER = 300.0


GUARD_TOKEN = "tg-api-Zq9x7Lw2-s3cret"  # the token the web tests' app is built with


class GuardImpl:
    """Everything the HTTP layer can ask of a running TradeGuard, minus the actors."""

    def __init__(
        self,
        store_path: Path,
        *,
        api_token: str,
        protect_reads: bool = False,
        fault_injection: bool = True,
        max_close_retries: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_token = api_token
        self.protect_reads = protect_reads
        self.fault_injection = fault_injection
        self.clock = clock
        self.store = Store(store_path)
        self.cache = PriceCache(STALE_AFTER, UNUSABLE_AFTER)
        self.feed = FeedStatus(host="feed.tradeguard.test")
        self.dns = DnsStatus()
        self.actors: dict[str, dict[str, Any]] = {
            name: {"alive": True, "restarts": 0, "last_failure": None} for name in ACTORS
        }
        self.faults: list[tuple[str, str]] = []
        self.metrics = Metrics()
        self.metrics.add_state(self.readings)
        self.broker = PaperBroker(lambda symbol: self.cache.quote(symbol, clock()), clock,
                                  max_age=UNUSABLE_AFTER)
        self.closer = Closer(
            self.store, self.broker, OutboxAlerts(self.store, clock=clock),
            max_retries=max_close_retries, retry_delay=0.0, clock=clock,
            observe=lambda reason, result: self.metrics.position_closes.labels(
                reason=reason, result=result).inc(),
        )

    def close(self) -> None:
        self.store.close()

    # Driving it, as the feed and the DNS health checks would -----------------

    def tick(self, symbol: str, price: float, age: float = 0.0) -> None:
        """A price for `symbol`, received `age` seconds ago."""
        now = self.clock()
        self.cache.put(Tick(symbol, price, now - age))
        self.feed.update(connected=True, connected_ip="127.0.0.1", resolved_via="system",
                         last_message_mono=time.monotonic() - age)

    def dns_check(self, system_ok: bool, servers: dict[str, ServerHealth]) -> None:
        system = ServerHealth(system_ok, 1.0 if system_ok else None,
                              None if system_ok else "SERVFAIL")
        self.dns.record(system, servers, self.clock())

    # GuardApi ------------------------------------------------------------------

    def connection_health(self) -> dict[str, Any]:
        now = self.clock()
        entries = {
            symbol: {"price": q.price, "age_seconds": round(q.age, 3),
                     "is_stale": q.age > STALE_AFTER}
            for symbol, q in sorted(self.cache.snapshot(now).items())
        }
        return {
            "websocket": self.feed.snapshot(),
            "dns": self.dns.snapshot(),
            "price_cache": {"cached_symbols": len(entries), "cache_entries": entries},
            "actors": {name: dict(record) for name, record in self.actors.items()},
            "positions": {"open": len(self.store.live_positions()), "blind": self._blind()},
        }

    def list_positions(self) -> list[dict[str, Any]]:
        return [p.as_json() for p in self.store.positions()]

    def open_position(self, body: Any) -> dict[str, Any]:
        return self.store.add_position(position_from_request(body, self.clock())).as_json()

    def patch_position(self, symbol: str, body: Any) -> dict[str, Any]:
        symbol = validate_symbol(symbol)
        current = self.store.live_position(symbol)
        if current is None:
            raise PositionError(f"{symbol}: no open position", 404)
        return self.store.update_levels(levels_from_request(body, current)).as_json()

    def emergency_close(self, body: Any) -> dict[str, Any]:
        return self.closer.close(validate_symbol(body["symbol"]), body["reason"]).as_json()

    def health(self) -> tuple[bool, list[str]]:
        down = [name for name, record in self.actors.items() if not record["alive"]]
        return not down, down

    def inject_fault(self, actor: str, kind: str) -> None:
        if actor not in self.actors:
            raise ValueError(f"unknown actor {actor!r}")
        if kind not in ("crash", "hang"):
            raise ValueError(f"unknown fault kind {kind!r}")
        self.faults.append((actor, kind))
        record = self.actors[actor]
        record["last_failure"] = f"injected {kind}"
        if kind == "crash":
            record["restarts"] += 1
        else:
            record["alive"] = False

    def metrics_exposition(self) -> bytes:
        return self.metrics.exposition()

    def status_view(self) -> dict[str, Any]:
        now = self.clock()
        alerts = self.store.recent_alerts(15)
        return {
            "now": now,
            "currency": "₹",
            "thresholds": {"stale": STALE_AFTER, "blind": UNUSABLE_AFTER},
            "feed": self.feed.snapshot(),
            "dns": self.dns.snapshot(),
            "actors": {name: dict(record) for name, record in self.actors.items()},
            "positions": [self._status_row(p, now) for p in self.store.positions(20)],
            "alerts": [
                {"created_at": a.created_at, "severity": a.severity, "kind": a.kind,
                 "text": a.text, "sent": a.sent_at is not None}
                for a in alerts
            ],
        }

    # Helpers -------------------------------------------------------------------

    def _status_row(self, position: Position, now: float) -> dict[str, Any]:
        quote = self.cache.quote(position.symbol, now)
        price = quote.price if quote is not None else None
        if quote is None or not quote.usable:
            freshness = "blind"
        else:
            freshness = "stale" if quote.freshness is Freshness.STALE else "fresh"
        row = position.as_json()
        row.update(
            price=price,
            price_age_seconds=round(quote.age, 1) if quote is not None else None,
            freshness=freshness,
            distance_to_stop_pct=distance_pct(price, position.stop_loss) if price else None,
            distance_to_target_pct=distance_pct(price, position.take_profit) if price else None,
            unrealized_pnl=(pnl(position, price)
                            if price and position.state is not State.CLOSED else None),
        )
        return row

    def _blind(self) -> list[str]:
        now = self.clock()
        return sorted(
            p.symbol for p in self.store.live_positions()
            if (q := self.cache.quote(p.symbol, now)) is None or not q.usable
        )

    def readings(self) -> Readings:
        now = self.clock()
        live = self.store.live_positions()
        quotes = {p.symbol: self.cache.quote(p.symbol, now) for p in live}
        return Readings(
            feed_connected=self.feed.connected,
            feed_last_message_age=self.feed.last_message_age(),
            price_ages={s: q.age for s, q in quotes.items() if q is not None},
            prices_stale=sum(1 for q in quotes.values()
                             if q is None or q.freshness is not Freshness.FRESH),
            positions_open=len(live),
            positions_blind=len(self._blind()),
            dns_servers_up={k: v["ok"] for k, v in self.dns.snapshot()["servers"].items()},
            actors_up={name: bool(r["alive"]) for name, r in self.actors.items()},
            notifications_queued=self.store.pending_count(),
        )
