"""What the API offers and shows (SPEC §6): the operations and the views, without Pykka.

`actors.system.System` builds one `Guard` from the shared parts and hands it
to `tradeguard.web.app.create_app`; the web tests build the same class on a
temporary store. The Guard reaches the running actors only through
`ActorPorts`, three callables the System supplies, so nothing here blocks on
an actor or knows there are any.

Requests arrive parsed and typed (`tradeguard.web.api` checks a body once):
a symbol, a `Reason`, a `Position` to open, a `LevelChange`. What only the
Guard can judge, because it needs the store or a price, is judged here.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tradeguard.closing import Closer
from tradeguard.config import Config
from tradeguard.errors import PositionError
from tradeguard.health import DnsStatus, FeedStatus, MonitorStatus
from tradeguard.market import Market
from tradeguard.metrics import Metrics, Readings
from tradeguard.net.addresses import is_loopback
from tradeguard.positions import (
    Position,
    Reason,
    Side,
    State,
    better,
    distance_pct,
    pnl,
    start_trailing,
)
from tradeguard.prices import Freshness, PriceCache, Quote
from tradeguard.store import Store

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class Keep(enum.Enum):
    """A level a PATCH body did not mention: it stays as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True)
class LevelChange:
    """A checked PATCH body: each level a new value, None (cleared), or KEEP."""

    stop_loss: float | Keep | None = KEEP
    take_profit: float | Keep | None = KEEP
    trailing_stop_pct: float | Keep | None = KEEP

    def applied_to(self, position: Position, price: float) -> Position:
        """The position with these levels; `price` is where a newly set trail starts.

        A trail (re)set tightens the stop to its level at once; one kept keeps its
        best price, and sets the stop again if the stop was cleared; null ends it
        and leaves the stop where the trail had moved it.
        """
        sl = position.stop_loss if self.stop_loss is KEEP else self.stop_loss
        tp = position.take_profit if self.take_profit is KEEP else self.take_profit
        moved = replace(position, stop_loss=sl, take_profit=tp)
        pct = self.trailing_stop_pct
        if pct is None:
            return replace(moved, trailing_stop_pct=None, best=None)
        if pct is KEEP:
            if position.trailing_stop_pct is None or position.best is None:
                return moved
            pct, best = position.trailing_stop_pct, position.best
            return moved if sl is not None else start_trailing(moved, pct, best)
        best = price if position.best is None else better(position.side, position.best, price)
        return start_trailing(moved, pct, best)


@dataclass(frozen=True)
class ActorPorts:
    """The Guard's only ways to reach the running actors."""

    positions_changed: Callable[[str], None]  # the monitor reloads, the feed subscribes
    actor_status: Callable[[], dict[str, dict[str, Any]]]  # Supervisor.status() shape
    inject_fault: Callable[[str, str], None]  # ValueError for an unknown actor


@dataclass(frozen=True)
class Statuses:
    """The status records the actors write and the views read."""

    feed: FeedStatus
    dns: DnsStatus
    monitor: MonitorStatus


def check_levels_at(position: Position, price: float, what: str) -> None:
    """Levels exist (one at least) and sit on the right side of `price`.

    A PATCH is judged against the latest usable price, not the entry (SPEC §6,
    finding A6): a long's stop may move above its entry to lock in profit, as
    long as it is still below the market, or it would fire at once.
    """
    if position.stop_loss is None and position.take_profit is None:
        raise PositionError("stop_loss and take_profit: at least one must be set")
    long = position.side is Side.LONG
    below, above = ((position.stop_loss, position.take_profit) if long
                    else (position.take_profit, position.stop_loss))
    below_name, above_name = (("stop_loss", "take_profit") if long
                              else ("take_profit", "stop_loss"))
    if below is not None and not below < price:
        raise PositionError(f"{below_name}: must be below {what} for a {position.side}")
    if above is not None and not above > price:
        raise PositionError(f"{above_name}: must be above {what} for a {position.side}")


def freshness(quote: Quote | None) -> str:
    """The status page's word for a price: fresh, stale or blind."""
    if quote is None or not quote.usable:
        return "blind"
    return "stale" if quote.freshness is Freshness.STALE else "fresh"


class Guard:
    """The operations and views of SPEC §6, over the shared parts of one TradeGuard."""

    def __init__(
        self,
        cfg: Config,
        *,
        store: Store,
        cache: PriceCache,
        closer: Closer,
        metrics: Metrics,
        statuses: Statuses,
        actors: ActorPorts,
        api_token: str,
        clock: Clock = time.time,
        mono: Clock = time.monotonic,
        market: Market | None = None,
        admit: Callable[[Position], Position] | None = None,
        name: Callable[[str], str] | None = None,
    ) -> None:
        self.cfg = cfg
        # The venue's symbol check (Kite: in the instrument master, NSE:INFY for INFY);
        # None: any symbol the API accepted.
        self._admit = admit or (lambda position: position)
        self._name = name or (lambda symbol: symbol)  # Kite: "INFY" in a URL is NSE:INFY
        self._market = market  # None: every market always open
        self.api_token = api_token
        self.fault_injection = cfg.debug.fault_injection
        self.api_host = cfg.api.host
        self.protect_reads = not is_loopback(cfg.api.host)
        self._store = store
        self._cache = cache
        self._closer = closer
        self._metrics = metrics
        self._status = statuses
        self._actors = actors
        self._clock = clock  # wall time: what is stored or shown
        self._mono = mono  # price ages: the cache ages prices on the monotonic clock

    # Operations --------------------------------------------------------------

    def list_positions(self) -> list[dict[str, Any]]:
        return [p.as_json() for p in self._store.positions()]

    def open_position(self, request: Position) -> dict[str, Any]:
        """Open a checked position; PositionError 409 if its symbol has a live one."""
        stamped = replace(self._admit(request), opened_at=self._clock(),  # store: opened_mono
                          product=request.product or self.cfg.broker.product)
        position = self._store.add_position(stamped)
        self._actors.positions_changed(position.symbol)
        logger.info("[POSITION] opened %s %s x%s at %s (SL %s, TP %s, trailing %s%%, %s)",
                    position.side, position.symbol, position.quantity, position.entry_price,
                    position.stop_loss, position.take_profit, position.trailing_stop_pct,
                    position.product)
        return position.as_json()

    def patch_position(self, symbol: str, change: LevelChange) -> dict[str, Any]:
        """Move levels; 400 for a level on the wrong side of the price, 404 for none open."""
        symbol = self._name(symbol)
        updated = self._store.change_levels(symbol, lambda current: self._moved(current, change))
        self._actors.positions_changed(symbol)
        logger.info("[POSITION] %s levels now SL %s, TP %s, trailing %s%%", symbol,
                    updated.stop_loss, updated.take_profit, updated.trailing_stop_pct)
        return updated.as_json()

    def emergency_close(self, symbol: str, reason: Reason) -> dict[str, Any]:
        """SPEC §6 success body; PositionError 404 / 409 (also: its market is closed) / 502."""
        symbol = self._name(symbol)
        self._refuse_if_closed(symbol)
        try:
            result = self._closer.close(symbol, reason)
        finally:
            self._actors.positions_changed(symbol)
        return result.as_json()

    def _refuse_if_closed(self, symbol: str) -> None:
        """No order goes to a closed exchange (SPEC §14): 409, saying when orders resume."""
        market = self._market
        if market is None or market.symbol_open(symbol):
            return
        if self._store.live_position(symbol) is None:
            return  # the closer answers 404 for it
        raise PositionError(market.closed_message(symbol), 409)

    def market_view(self) -> dict[str, str]:
        """connection-health `market`: each configured exchange "open" or "closed"."""
        return {} if self._market is None else self._market.status()

    def release_position(self, symbol: str) -> dict[str, Any]:
        """Stop guarding a position without closing it; PositionError 404 / 409."""
        symbol = self._name(symbol)
        released = self._store.release_position(symbol, self._clock())
        self._actors.positions_changed(symbol)
        logger.warning("[POSITION] %s released: no longer guarded, left open at the broker",
                       symbol)
        return released.as_json()

    def inject_fault(self, actor: str, kind: str) -> None:
        self._actors.inject_fault(actor, kind)

    def health(self) -> tuple[bool, list[str]]:
        down = [name for name, s in self._actors.actor_status().items() if not s["alive"]]
        return not down, down

    def metrics_exposition(self) -> bytes:
        return self._metrics.exposition()

    # Views ---------------------------------------------------------------------

    def connection_health(self) -> dict[str, Any]:
        threshold = self.cfg.prices.stale_warning_threshold
        entries = {
            symbol: {"price": q.price, "age_seconds": round(q.age, 3),
                     "is_stale": q.age > threshold, "usable": q.usable}
            for symbol, q in sorted(self._cache.snapshot(self._mono()).items())
        }
        monitor = self._status.monitor
        return {
            "websocket": self._status.feed.snapshot(),
            "dns": self._status.dns.snapshot(),
            "price_cache": {"cached_symbols": len(entries), "cache_entries": entries},
            "actors": self._actors.actor_status(),
            "positions": {"open": len(self._store.live_positions()),
                          "blind": monitor.blind_symbols(), "stale": monitor.stale_symbols()},
            "alerts": {"queued": self._store.pending_count()},
            "broker": self.broker_view(),
            "market": self.market_view(),
        }

    def broker_view(self) -> dict[str, Any]:
        """Which broker closes go to; a paper one says so loudly (finding A15)."""
        kind = self.cfg.broker.kind
        view: dict[str, Any] = {"kind": kind, "paper": kind == "paper"}
        if kind == "paper":
            view["warning"] = ("paper broker: closes are simulated here and no order reaches "
                               "a real broker; set [broker] kind to guard real positions")
        return view

    def status_view(self) -> dict[str, Any]:
        """Everything the status page shows, as JSON."""
        now = self._mono()
        return {
            "now": self._clock(),
            "currency": self.cfg.display.currency,
            "thresholds": {"stale": self.cfg.prices.stale_warning_threshold,
                           "blind": self.cfg.prices.cache_timeout},
            "feed": self._status.feed.snapshot(),
            "dns": self._status.dns.snapshot(),
            "actors": self._actors.actor_status(),
            "broker": self.broker_view(),
            "market": self.market_view(),
            "positions": [self._row(p, self._cache.quote(p.symbol, now))
                          for p in self._store.positions(limit=20)],
            "alerts": [
                {"created_at": a.created_at, "severity": a.severity, "kind": a.kind,
                 "text": a.text, "sent": a.sent_at is not None}
                for a in self._store.recent_alerts(15)
            ],
        }

    def readings(self) -> Readings:
        """The scrape-time metrics (SPEC §8)."""
        now = self._mono()
        # Closing and close_failed positions are still open at the broker, and
        # a failed one is the one most in need of a price: all of them count.
        live = self._store.live_positions()
        # A closed market's prices age all night by design (SPEC §14): they are
        # left out, so an age or staleness alert rule does not cry wolf at night.
        quotes = {p.symbol: self._cache.quote(p.symbol, now) for p in live
                  if self._market is None or self._market.symbol_open(p.symbol)}
        feed = self._status.feed
        return Readings(
            feed_connected=feed.connected,
            feed_last_message_age=feed.last_message_age(),
            price_ages={s: q.age for s, q in quotes.items() if q is not None},
            prices_stale=sum(1 for q in quotes.values()
                             if q is None or q.freshness is not Freshness.FRESH),
            positions_open=len(live),
            positions_blind=len(self._status.monitor.blind_symbols()),
            dns_servers_up={k: v["ok"] for k, v in
                            self._status.dns.snapshot()["servers"].items()},
            actors_up={name: bool(v["alive"]) for name, v in self._actors.actor_status().items()},
            notifications_queued=self._store.pending_count(),
            market_open={name: state == "open" for name, state in self.market_view().items()},
        )

    # Helpers -------------------------------------------------------------------

    def _moved(self, current: Position, change: LevelChange) -> Position:
        """`current` with `change`, judged against the price; run inside the store's transaction,
        so a trail move stored meanwhile waits for it."""
        if current.state is State.CLOSING:
            # SPEC §6 gives PATCH no 409: a position being closed is no longer open.
            raise PositionError(f"{current.symbol}: no open position (a close is under way)", 404)
        price, what = self._reference(current)
        moved = change.applied_to(current, price)
        check_levels_at(moved, price, what)
        return moved

    def _reference(self, position: Position) -> tuple[float, str]:
        """The price a level change is judged against: the latest usable one, else the entry."""
        quote = self._cache.quote(position.symbol, self._mono())
        if quote is not None and quote.usable:
            return quote.price, f"the price ({quote.price:g})"
        return position.entry_price, "entry_price (no usable price)"

    def _row(self, p: Position, quote: Quote | None) -> dict[str, Any]:
        price = quote.price if quote is not None else None
        row = p.as_json()
        market_open = self._market is None or self._market.symbol_open(p.symbol)
        row.update(
            price=price,
            price_age_seconds=round(quote.age, 1) if quote is not None else None,
            # A quiet night is not a blind position (SPEC §14): the page says why.
            freshness=freshness(quote) if market_open else "market_closed",
            distance_to_stop_pct=distance_pct(price, p.stop_loss) if price else None,
            distance_to_target_pct=distance_pct(price, p.take_profit) if price else None,
            unrealized_pnl=pnl(p, price) if price and p.state is not State.CLOSED else None,
            market_open=market_open,
        )
        return row
