"""Ticks and the price cache: what a price is and how old it is.

A price's age is measured from when TradeGuard *received* it, on this
process's monotonic clock, never from the exchange's timestamp and never from
the wall clock: a wall-clock step (NTP, a VM that booted with a fast clock)
must change no decision (SPEC §4 "Clocks"). Only the persisted snapshot is in
wall-clock time, because the monotonic clock means nothing to the next
process; `to_wall` and `from_wall` convert it, keeping each price's age.

Fresh below `stale_warning_threshold`, stale but usable up to `cache_timeout`,
unusable after that. The cache is safe to read from any thread; one owner
writes it.
"""

from __future__ import annotations

import enum
import math
import operator
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

MAX_SYMBOLS = 20_000  # a feed that sends every symbol it has must not grow the cache forever


class Tick(NamedTuple):
    """One price for one symbol, stamped with when TradeGuard received it.

    A NamedTuple rather than a frozen dataclass: just as immutable (ticks are
    shared between actors' threads), and built in under half the time, which
    is most of the per-tick cost of a 50-tick frame.
    """

    symbol: str
    price: float
    received_at: float  # time.monotonic() of this process (wall clock only in the store)
    exchange_ts: float | None = None


tick_symbol = operator.attrgetter("symbol")  # a C-speed key for batches of ticks


class Freshness(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class Quote:
    """A cached price with its age at the moment it was read.

    The age is not clamped: a negative one means the caller read its `now`
    before the tick arrived, and a clamp would hide a clock that is wrong.
    """

    symbol: str
    price: float
    received_at: float
    age: float
    freshness: Freshness

    @property
    def usable(self) -> bool:
        return self.freshness is not Freshness.UNUSABLE


def valid_price(price: object) -> bool:
    """A price TradeGuard will act on: a finite number above zero."""
    if not isinstance(price, int | float) or isinstance(price, bool):
        return False
    try:
        return math.isfinite(price) and price > 0
    except OverflowError:  # an int too large for a float (JSON integers are unbounded)
        return False


def classify(age: float, stale_after: float, unusable_after: float) -> Freshness:
    if age > unusable_after:
        return Freshness.UNUSABLE
    if age > stale_after:
        return Freshness.STALE
    return Freshness.FRESH


def to_wall(ticks: Iterable[Tick], *, mono_now: float, wall_now: float) -> list[Tick]:
    """Ticks stamped in wall-clock time for the store, each with the age it has now."""
    return [t._replace(received_at=wall_now - (mono_now - t.received_at)) for t in ticks]


def from_wall(ticks: Iterable[Tick], *, mono_now: float, wall_now: float) -> list[Tick]:
    """Stored ticks back on this process's monotonic clock.

    The age a snapshot gives is the wall time elapsed since it was saved, so a
    wall clock stepped back across the restart would make it negative: it is
    clamped to 0 (the price is as old as it can be shown to be, no younger).
    """
    return [t._replace(received_at=mono_now - max(0.0, wall_now - t.received_at))
            for t in ticks]


class PriceCache:
    """The last good price per symbol, with monotonic receive times.

    Bounded: `forget` drops unusable prices of symbols nobody needs, and past
    `max_symbols` a new symbol evicts the longest-silent tenth of those not kept.
    """

    def __init__(self, stale_after: float = 30.0, unusable_after: float = 300.0,
                 max_symbols: int = MAX_SYMBOLS) -> None:
        self.stale_after = stale_after
        self.unusable_after = unusable_after
        self.max_symbols = max_symbols
        self._lock = threading.Lock()
        self._ticks: dict[str, Tick] = {}
        self._keep: frozenset[str] = frozenset()

    def put(self, tick: Tick) -> bool:
        """Store a tick; False (and nothing stored) for a bad price or an older tick.

        "Older" is on the monotonic clock, so only a reordered or redelivered
        tick is refused, never one that arrived after a wall-clock step.
        """
        if not valid_price(tick.price) or not tick.symbol:
            return False
        with self._lock:
            current = self._ticks.get(tick.symbol)
            if current is not None and current.received_at > tick.received_at:
                return False
            if current is None and len(self._ticks) >= self.max_symbols:
                self._evict()
            self._ticks[tick.symbol] = tick
        return True

    def _evict(self) -> None:
        # A tenth at a time, so a flood of new symbols costs a sort per
        # thousands of ticks rather than a scan per tick.
        candidates = sorted((t for t in self._ticks.values() if t.symbol not in self._keep),
                            key=operator.attrgetter("received_at"))
        for tick in candidates[: max(1, self.max_symbols // 10)]:
            del self._ticks[tick.symbol]

    def put_many(self, ticks: Iterable[Tick]) -> int:
        """Store a batch; returns how many were accepted."""
        return sum(1 for tick in ticks if self.put(tick))

    def quote(self, symbol: str, now: float) -> Quote | None:
        """The cached price with its age at `now` (time.monotonic()); None if never seen."""
        with self._lock:
            tick = self._ticks.get(symbol)
        if tick is None:
            return None
        age = now - tick.received_at
        return Quote(
            symbol, tick.price, tick.received_at, age,
            classify(age, self.stale_after, self.unusable_after),
        )

    def forget(self, keep: Collection[str], now: float) -> list[str]:
        """Drop the unusable prices of symbols not in `keep`; returns the symbols dropped.

        `keep` (held or subscribed symbols) is also what eviction spares.
        """
        with self._lock:
            self._keep = frozenset(keep)
            gone = [s for s, t in self._ticks.items()
                    if s not in self._keep and now - t.received_at > self.unusable_after]
            for symbol in gone:
                del self._ticks[symbol]
        return gone

    def ticks(self) -> list[Tick]:
        """Every cached tick (for persisting a snapshot)."""
        with self._lock:
            return list(self._ticks.values())

    def snapshot(self, now: float) -> dict[str, Quote]:
        """Every cached symbol's quote at `now` (for the health endpoint)."""
        return {
            tick.symbol: quote
            for tick in self.ticks()
            if (quote := self.quote(tick.symbol, now)) is not None
        }

    def __len__(self) -> int:
        with self._lock:
            return len(self._ticks)


class StaleTracker:
    """When a symbol's price crosses into stale: once per crossing, not once per look.

    `fresh` is told of every accepted tick (the next crossing is news again);
    `crossed` is given the cache's snapshot now and then and returns the
    symbols that went stale since the previous look.
    """

    def __init__(self, snapshot: Mapping[str, Quote] | None = None) -> None:
        self._stale: set[str] = set()
        if snapshot is not None:
            self.crossed(snapshot)

    def fresh(self, symbol: str) -> None:
        self._stale.discard(symbol)

    def crossed(self, snapshot: Mapping[str, Quote]) -> list[str]:
        stale_now = {s for s, q in snapshot.items() if q.freshness is not Freshness.FRESH}
        news = sorted(stale_now - self._stale)
        self._stale = stale_now
        return news
