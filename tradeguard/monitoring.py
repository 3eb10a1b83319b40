"""The stop engine: what the monitor decides on every tick batch and every sweep.

Pure: no threads, no I/O, a monotonic clock passed in (SPEC §4 "Clocks": a
wall-clock step changes no decision). MonitorActor owns one `Monitor` per
incarnation, feeds it ticks, sweeps and close outcomes, and carries out what it
returns: close requests for its workers, alerts for the sink.

The rules, and why:
- Ticks are checked one by one in arrival order, so one breaching tick in a
  burst fires; a tick received before its position opened, or before its levels
  last changed, decides nothing for it (a redelivered batch must not be judged
  against levels the operator set after it arrived).
- A position the monitor learns about late (its PositionsChanged came after
  ticks already checked against the old map) is checked against the recent
  ticks received since it opened, so a one-tick breach in that gap still fires.
- The sweep re-checks every position on the best cached price: fresh, then
  stale (logged once per crossing), then blind. A price received before the
  position opened does not count: until its first price the position is
  "awaiting a price", and blind only once that has lasted the stale threshold.
- Blind positions raise one critical alert when they go blind (one for all
  that go blind in the same sweep) and, while any stay blind, one reminder for
  all of them per interval, with a text that does not tick, so a backlog folds.
- A close someone else owns (409) is theirs: nothing is done about it. A close
  of ours that died between claim and record is reconciled with backoff, and
  a `closing` position nobody finishes is reconciled after `stuck_after`.
- A trailing stop moves on every tick that betters its best price, before that
  tick is checked against it, in the same pass (a tick outside the safe band);
  moves are reported by `take_moves` for the caller to store, and a reload
  from a store that is behind never steps a stop back.
- The trading day (SPEC §14): while a position's exchange is closed nothing is
  decided for it (no stale or blind alert, no close of any kind); a price
  received before its session opened counts as one from before the position
  opened, so a level crossed overnight is acted on at the first tick after
  the open, never on last night's cached price. At `market.square_off` on a
  trading day, every intraday position whose market is open is closed, once,
  with one alert for all of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from tradeguard import alerts
from tradeguard.backoff import Backoff
from tradeguard.errors import PositionError
from tradeguard.market import Market, intraday
from tradeguard.positions import (
    Position,
    Reason,
    State,
    better,
    safe_band,
    tighter,
    trail,
    trigger,
)
from tradeguard.prices import Freshness, Quote, Tick, tick_symbol

logger = logging.getLogger(__name__)

RECONCILE = "reconcile"  # a CloseRequest reason: finish a `closing` position via the broker
FAILED_RETRY = 5.0  # seconds between sweep retries of a close_failed position
FAILED_WARN_EVERY = 300.0  # one warning per close_failed position this often, not per retry
RECENT_SECONDS = 5.0  # how long ticks are kept to check positions learnt about late
RECENT_TICKS = 50_000  # ... and at most this many (a few seconds of a busy feed)
STUCK_CLOSING = 300.0  # a `closing` position nobody here owns is reconciled after this
MAX_REMEMBERED_SYMBOLS = 100_000  # symbol -> exchange entries kept for the tick path
FOLD_STALE_OVER = 5  # more positions going stale in one sweep than this: one alert for all

Key = tuple[str, int | None]  # a position: its symbol and store id (a later one differs)


def key(position: Position) -> Key:
    return position.symbol, position.id


def opened_from(position: Position) -> float:
    """The monotonic time from which a cached price may decide for this position.

    None means "opened in an earlier process": every price of this one is newer.
    """
    return -math.inf if position.opened_mono is None else position.opened_mono


def judged_from(position: Position) -> float:
    """The monotonic time from which a tick is judged against the position's levels.

    A tick is judged once, on arrival, against the levels of that moment; one
    from before the levels last changed (a batch redelivered after a restart)
    must not be judged again against levels set after it arrived. The sweep's
    cached price is the current price, so it is judged on the current levels.
    """
    changed = -math.inf if position.levels_mono is None else position.levels_mono
    return max(opened_from(position), changed)


@dataclass(frozen=True, slots=True)
class CloseRequest:
    symbol: str
    reason: str  # a Reason, or RECONCILE
    hint: Tick | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    stale_after: float  # prices.stale_warning_threshold: also the "awaiting a price" grace
    blind_policy: str = "alert"
    blind_repeat: float = 60.0
    currency: str = "₹"
    stuck_after: float = STUCK_CLOSING


@dataclass
class SweepResult:
    closes: list[CloseRequest] = field(default_factory=list)
    alerts: list[alerts.Alert] = field(default_factory=list)
    blind: set[str] = field(default_factory=set)
    stale: set[str] = field(default_factory=set)


@dataclass
class _Sweep:
    """One sweep in progress: its time, its result, and what it gathers for alerts."""

    now: float
    result: SweepResult = field(default_factory=SweepResult)
    blind: list[tuple[Position, Quote | None]] = field(default_factory=list)
    priced: list[tuple[str, float, float]] = field(default_factory=list)
    stale: list[tuple[str, float, float]] = field(default_factory=list)
    session: float = -math.inf  # the position at hand: its session_from
    squared: list[CloseRequest] = field(default_factory=list)


@dataclass
class Memory:
    """What the monitor has told the operator and when, across its incarnations.

    Held by the system (Services), so a MonitorActor restart neither repeats a
    "price stale" alert for the same crossing nor forgets how long a position
    has been blind. `started` is the process's start, for "awaiting a price".
    """

    started: float = field(default_factory=time.monotonic)
    stale: set[Key] = field(default_factory=set)
    blind_since: dict[Key, float] = field(default_factory=dict)
    blind_alerted: float | None = None  # when the last blind alert (any position) went out
    failed_tried: dict[Key, float] = field(default_factory=dict)
    failed_warned: dict[Key, float] = field(default_factory=dict)
    recovered: bool = False  # the first incarnation has reconciled what a crash left closing
    squared_off: str = ""  # the trading day (ISO date) square-off last ran on

    def prune(self, alive: set[Key]) -> None:
        """Forget positions that are gone, so a later one on the symbol starts afresh."""
        self.stale &= alive
        for memo in (self.blind_since, self.failed_tried, self.failed_warned):
            for gone in set(memo) - alive:
                del memo[gone]


class Monitor:
    """One incarnation's stop engine over the live positions."""

    def __init__(self, settings: Settings, memory: Memory,
                 clock: Callable[[], float] = time.monotonic,
                 market: Market | None = None) -> None:
        self.settings = settings
        self.memory = memory
        self._clock = clock
        self._market = market  # None: every position's market is always open
        self._exchanges: dict[str, str] = {}  # symbol -> its exchange, as the market says
        self._positions: dict[str, Position] = {}
        self._moves: dict[str, Position] = {}  # trailing stops moved since take_moves
        self._in_flight: set[str] = set()
        self._recent: deque[Sequence[Tick]] = deque()
        self._recent_count = 0
        self._reconcile_at: dict[Key, float] = {}
        self._reconcile_backoff: dict[Key, Backoff] = {}
        self._closing_since: dict[Key, float] = {}

    @property
    def positions(self) -> dict[str, Position]:
        return self._positions

    def in_flight(self, symbol: str) -> bool:
        return symbol in self._in_flight

    # Positions -------------------------------------------------------------

    def set_positions(self, live: Iterable[Position]) -> list[CloseRequest]:
        """Take the store's live positions; check new or re-levelled ones on recent ticks."""
        old = self._positions
        self._positions = {p.symbol: _kept_trail(old.get(p.symbol), p) for p in live}
        alive = {key(p) for p in self._positions.values()}
        self.memory.prune(alive)
        for memo in (self._reconcile_at, self._reconcile_backoff, self._closing_since):
            for gone in set(memo) - alive:
                del memo[gone]
        changed = [p for s, p in self._positions.items() if p.state is State.OPEN
                   and not _same_levels(old.get(s), p)]
        return [r for p in changed if (r := self._replay(p)) is not None]

    def recover(self) -> list[CloseRequest]:
        """Once per process: reconcile every `closing` position a crash left behind."""
        if self.memory.recovered:
            return []
        self.memory.recovered = True
        now, session = self._clock(), self._sessions(self._clock())
        left = [p for p in self._positions.values()
                if p.state is State.CLOSING and p.symbol not in self._in_flight]
        for position in left:
            if session(position.symbol) == math.inf:
                self._reconcile_at[key(position)] = now  # due: the first sweep after the open
        return [self._request(p.symbol, RECONCILE) for p in left
                if session(p.symbol) < math.inf]

    def _replay(self, position: Position) -> CloseRequest | None:
        if position.symbol in self._in_flight:
            return None  # judged when that close ends (close_done)
        since = max(judged_from(position), self.session_from(position.symbol, self._clock()))
        for batch in self._recent:
            for tick in batch:
                if tick.symbol == position.symbol and tick.received_at >= since:
                    position = self._trailed(position, tick.price)
                    reason = trigger(position, tick.price)
                    if reason is not None:
                        logger.warning("[MONITOR] %s crossed its %s at %.4f before the monitor"
                                       " knew it", position.symbol, reason, tick.price)
                        return self._request(position.symbol, reason, tick)
        return None

    # Ticks -----------------------------------------------------------------

    def on_ticks(self, ticks: Sequence[Tick]) -> list[CloseRequest]:
        """Close requests for the first breaching tick of each position, in tick order."""
        self._remember(ticks)
        positions = self._positions
        # Under load a batch holds thousands of ticks: each is compared with its
        # position's band, built once per batch, and only a tick outside the
        # band goes through the stop rules.
        session = self._sessions(self._clock())
        checks = {symbol: (safe_band(position), position,
                           max(judged_from(position), session(symbol)))
                  for symbol in set(map(tick_symbol, ticks)) & positions.keys()
                  if (position := positions[symbol]).state is State.OPEN
                  and symbol not in self._in_flight}
        requests = []
        for tick in ticks:
            check = checks.get(tick.symbol)
            if check is None or check[0][0] < tick.price < check[0][1]:
                continue
            _, position, since = check
            if tick.received_at < since:
                continue  # from before this position existed, took these levels, or its session
            if (moved := self._trailed(position, tick.price)) is not position:
                position = moved  # the stop moves before this tick is checked against it
                checks[tick.symbol] = (safe_band(position), position, since)
            reason = trigger(position, tick.price)
            if reason is not None:
                requests.append(self._request(tick.symbol, reason, tick))
                del checks[tick.symbol]
        return requests

    def _trailed(self, position: Position, price: float) -> Position:
        """`position` with its trailing stop moved by `price` (noted for take_moves), or itself."""
        moved = trail(position, price)
        if moved is None:
            return position
        self._positions[position.symbol] = self._moves[position.symbol] = moved
        return moved

    def take_moves(self) -> list[Position]:
        """The positions whose trailing stop moved since the last call, each once, at its last move.

        The caller stores them (one write per position per batch) and hands them
        to the backstop when there is one (SPEC §13, which rate-limits its own
        GTT changes): the engine itself does no I/O.
        """
        moves, self._moves = self._moves, {}
        return [now for s, p in moves.items() if (now := self._positions.get(s)) is not None
                and now.id == p.id and now.trailing_stop_pct == p.trailing_stop_pct]

    def _remember(self, ticks: Sequence[Tick]) -> None:
        # Whole batches, not per symbol: O(1) per batch on the hot path; the scan
        # happens only when a position is learnt about late.
        if not ticks:
            return
        self._recent.append(ticks)
        self._recent_count += len(ticks)
        horizon = self._clock() - RECENT_SECONDS
        while self._recent and (self._recent_count > RECENT_TICKS
                                or self._recent[0][-1].received_at < horizon):
            self._recent_count -= len(self._recent.popleft())

    # Closes ----------------------------------------------------------------

    def _request(self, symbol: str, reason: str, hint: Tick | None = None) -> CloseRequest:
        self._in_flight.add(symbol)
        return CloseRequest(symbol, reason, hint)

    def close_done(self, symbol: str, error: BaseException | None,
                   live: Iterable[Position]) -> list[CloseRequest]:
        """A worker finished; `live` is the store's positions after it."""
        self._in_flight.discard(symbol)
        requests = self.set_positions(live)
        position = self._positions.get(symbol)
        if position is not None and position.state is State.OPEN:
            # A new position on the symbol, learnt of while this close held it in
            # flight: its ticks since it opened have not been judged yet.
            return requests + [r for r in [self._replay(position)] if r is not None]
        if position is None or position.state is not State.CLOSING:
            return requests
        if error is None or (isinstance(error, PositionError) and error.code in (404, 409)):
            return requests  # someone else owns this close (A3): theirs to finish
        self._schedule_reconcile(position, self._clock())
        return requests

    def _schedule_reconcile(self, position: Position, now: float) -> None:
        backoff = self._reconcile_backoff.setdefault(
            key(position), Backoff(1.0, 30.0, jitter=0.0, stable_after=math.inf))
        delay = backoff.next_delay()
        self._reconcile_at[key(position)] = now + delay
        logger.warning("[MONITOR] %s is still closing after a failed close; reconciling in"
                       " %.0fs", position.symbol, delay)

    # The sweep -------------------------------------------------------------

    def sweep(self, now: float, quote_of: Callable[[str], Quote | None]) -> SweepResult:
        """Re-check every position on the cache at `now` (monotonic)."""
        sweep = _Sweep(now)
        session = self._sessions(now)
        squaring = self._square_off_due()
        for symbol, position in self._positions.items():
            if symbol in self._in_flight:
                continue
            sweep.session = session(symbol)
            if sweep.session == math.inf:
                self._market_closed(position)
                continue
            if position.state is State.CLOSING:
                self._watch_closing(position, now, sweep.result)
                continue
            self._closing_since.pop(key(position), None)
            if position.state is State.CLOSE_FAILED:
                self._retry_failed(position, now, sweep.result)
            elif squaring and position.state is State.OPEN and intraday(position):
                sweep.squared.append(self._request(symbol, Reason.SQUARE_OFF))
            elif position.state is State.OPEN:
                self._check(position, quote_of(symbol), sweep)
        self._square_off(sweep)
        self._stale_alerts(sweep)
        self._blind_alerts(sweep.blind, now, sweep.result)
        if sweep.priced:
            sweep.result.alerts.append(
                alerts.positions_priced_again(sweep.priced, self.settings.currency))
        return sweep.result

    def _check(self, position: Position, quote: Quote | None, sweep: _Sweep) -> None:
        result = sweep.result
        if quote is not None and quote.received_at < max(opened_from(position), sweep.session):
            quote = None  # from before the position or its session opened: decides nothing (A5)
        if quote is None and self._awaiting(position, sweep.now, sweep.session):
            return
        if quote is None or not quote.usable:
            result.blind.add(position.symbol)
            sweep.blind.append((position, quote))
            if self.settings.blind_policy == "close":
                result.closes.append(self._request(position.symbol, Reason.BLIND))
            return
        since = self.memory.blind_since.pop(key(position), None)
        if since is not None:
            sweep.priced.append((position.symbol, quote.price, sweep.now - since))
        self._note_freshness(position, quote, sweep)
        reason = trigger(position, quote.price)
        if reason is not None:
            logger.warning("[MONITOR] %s at cached %.4f (%.1fs old) crosses its %s",
                           position.symbol, quote.price, quote.age, reason)
            result.closes.append(self._request(position.symbol, reason))

    def _awaiting(self, position: Position, now: float, session: float = -math.inf) -> bool:
        # A position just opened (or a process just started, or its market just
        # opened) has had no chance to see a tick yet: not blind until the feed
        # has had the stale threshold's time to price it.
        opened = self.memory.started if position.opened_mono is None else position.opened_mono
        return now - max(opened, session) < self.settings.stale_after

    def _note_freshness(self, position: Position, quote: Quote, sweep: _Sweep) -> None:
        if quote.freshness is not Freshness.STALE:
            self.memory.stale.discard(key(position))
            return
        sweep.result.stale.add(position.symbol)
        if key(position) in self.memory.stale:
            return
        self.memory.stale.add(key(position))
        logger.warning("[FALLBACK] Using stale price for %s: %s%.2f (%.1fs old)",
                       position.symbol, self.settings.currency, quote.price, quote.age)
        sweep.stale.append((position.symbol, quote.price, quote.age))

    def _stale_alerts(self, sweep: _Sweep) -> None:
        # One alert each for a few; a feed outage staling a crowd at once is one
        # alert, so one sweep never writes (and fsyncs) hundreds of outbox rows.
        currency = self.settings.currency
        if len(sweep.stale) > FOLD_STALE_OVER:
            sweep.result.alerts.append(alerts.prices_stale(sweep.stale, currency))
            return
        sweep.result.alerts += [alerts.price_stale(symbol, price, age, currency)
                                for symbol, price, age in sweep.stale]

    def _blind_alerts(self, blind: list[tuple[Position, Quote | None]], now: float,
                      result: SweepResult) -> None:
        memory, policy = self.memory, self.settings.blind_policy
        new = [(p, q) for p, q in blind if key(p) not in memory.blind_since]
        for position, _ in new:
            memory.blind_since[key(position)] = now
        if new:
            seen = [(p.symbol, q.price if q else None, q.age if q else None) for p, q in new]
            alert = alerts.positions_blind(seen, policy, self.settings.currency)
        elif blind and (memory.blind_alerted is None
                        or now - memory.blind_alerted >= self.settings.blind_repeat):
            alert = alerts.still_blind(sorted(p.symbol for p, _ in blind), policy)
        else:
            return
        memory.blind_alerted = now
        names = sorted(p.symbol for p, _ in blind)
        logger.critical("[MONITOR] blind, no usable price: %d position(s): %s%s", len(names),
                        ", ".join(names[:alerts.MAX_LISTED]),
                        " ..." if len(names) > alerts.MAX_LISTED else "")
        result.alerts.append(alert)

    # The trading day --------------------------------------------------------

    def session_from(self, symbol: str, now: float) -> float:
        """The monotonic time from which a price may decide for `symbol`'s market.

        -inf for a market that never closes; +inf while it is closed; else the
        moment its session opened, carried over from wall time to `now`.
        """
        return self._sessions(now)(symbol)

    def _session_of(self, market: Market, exchange: str, now: float) -> float:
        opened = market.opened_at(exchange)
        if opened is None or opened == -math.inf:
            return math.inf if opened is None else -math.inf
        return now - max(0.0, market.now() - opened)

    def _sessions(self, now: float) -> Callable[[str], float]:
        """`session_from` for many symbols at `now`, worked out once per exchange.

        On the tick path: a symbol's exchange is remembered, so a batch costs
        two dict lookups per symbol and one calendar look per exchange.
        """
        market = self._market
        if market is None:
            return _never_closed
        exchanges, marks = self._exchanges, dict[str, float]()
        if len(exchanges) > MAX_REMEMBERED_SYMBOLS:
            exchanges.clear()

        def of(symbol: str) -> float:
            exchange = exchanges.get(symbol)
            if exchange is None:
                exchange = exchanges[symbol] = market.exchange_of(symbol)
            mark = marks.get(exchange)
            if mark is None:
                mark = marks[exchange] = self._session_of(market, exchange, now)
            return mark
        return of

    def _market_closed(self, position: Position) -> None:
        # Tomorrow's first blind or stale spell is news again; last night's is not.
        self.memory.blind_since.pop(key(position), None)
        self.memory.stale.discard(key(position))

    def _square_off_due(self) -> bool:
        day = None if self._market is None else self._market.square_off_day()
        if day is None or day.isoformat() == self.memory.squared_off:
            return False
        self.memory.squared_off = day.isoformat()
        return True

    def _square_off(self, sweep: _Sweep) -> None:
        if not sweep.squared:
            return
        sweep.result.closes += sweep.squared
        symbols = sorted(request.symbol for request in sweep.squared)
        logger.warning("[MONITOR] square-off: closing %d intraday position(s): %s%s",
                       len(symbols), ", ".join(symbols[:alerts.MAX_LISTED]),
                       " ..." if len(symbols) > alerts.MAX_LISTED else "")
        sweep.result.alerts.append(alerts.squared_off(symbols))

    def _retry_failed(self, position: Position, now: float, result: SweepResult) -> None:
        memory, k = self.memory, key(position)
        tried = memory.failed_tried.get(k)
        if tried is not None and now - tried < FAILED_RETRY:
            return
        memory.failed_tried[k] = now
        warned = memory.failed_warned.get(k)
        if warned is None or now - warned >= FAILED_WARN_EVERY:
            memory.failed_warned[k] = now
            logger.warning("[MONITOR] retrying the failed close of %s every %.0fs (next"
                           " notice in %.0fs)", position.symbol, FAILED_RETRY, FAILED_WARN_EVERY)
        result.closes.append(self._request(position.symbol, position.reason or Reason.EMERGENCY))

    def _watch_closing(self, position: Position, now: float, result: SweepResult) -> None:
        k = key(position)
        due = self._reconcile_at.get(k)
        if due is None:
            since = self._closing_since.setdefault(k, now)
            if now - since < self.settings.stuck_after:
                return
            self._schedule_reconcile(position, now)
            due = self._reconcile_at[k]
        if now >= due:
            del self._reconcile_at[k]
            self._closing_since[k] = now
            result.closes.append(self._request(position.symbol, RECONCILE))


def _never_closed(symbol: str) -> float:
    return -math.inf


def _same_levels(old: Position | None, new: Position) -> bool:
    return (old is not None and old.id == new.id and old.state is State.OPEN
            and (old.stop_loss, old.take_profit, old.trailing_stop_pct, old.levels_mono)
            == (new.stop_loss, new.take_profit, new.trailing_stop_pct, new.levels_mono))


def _kept_trail(old: Position | None, new: Position) -> Position:
    """The store's `new`, with the trail `old` had reached if the store is behind.

    A move is written after the batch that made it, so a reload may read the
    level from before it; the stop must not step back in between. Only for the
    same position on the same trail and levels: a PATCH since decides afresh.
    """
    if (old is None or old.id != new.id or old.levels_mono != new.levels_mono
            or new.trailing_stop_pct is None or old.trailing_stop_pct != new.trailing_stop_pct
            or old.best is None or new.best is None or old.stop_loss is None):
        return new
    return replace(new, best=better(new.side, old.best, new.best),
                   stop_loss=tighter(new.side, new.stop_loss, old.stop_loss))
