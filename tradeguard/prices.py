"""Ticks and the price cache: what a price is and how old it is.

A price's age is measured from when TradeGuard *received* it (wall clock, so
that ages stay honest across restarts when the cache is reloaded from the
store), never from the exchange's timestamp. Fresh below
`stale_warning_threshold`, stale but usable up to `cache_timeout`, unusable
after that. The cache is safe to read from any thread; one owner writes it.
"""

from __future__ import annotations

import enum
import math
import operator
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple


class Tick(NamedTuple):
    """One price for one symbol, stamped with when TradeGuard received it.

    A NamedTuple rather than a frozen dataclass: just as immutable (ticks are
    shared between actors' threads), and built in under half the time, which
    is most of the per-tick cost of a 50-tick frame.
    """

    symbol: str
    price: float
    received_at: float  # wall clock, time.time()
    exchange_ts: float | None = None


tick_symbol = operator.attrgetter("symbol")  # a C-speed key for batches of ticks


class Freshness(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class Quote:
    """A cached price with its age at the moment it was read."""

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


class PriceCache:
    """The last good price per symbol, with receive times."""

    def __init__(self, stale_after: float = 30.0, unusable_after: float = 300.0) -> None:
        self.stale_after = stale_after
        self.unusable_after = unusable_after
        self._lock = threading.Lock()
        self._ticks: dict[str, Tick] = {}

    def put(self, tick: Tick) -> bool:
        """Store a tick; False (and nothing stored) for a bad price or an older tick."""
        if not valid_price(tick.price) or not tick.symbol:
            return False
        with self._lock:
            current = self._ticks.get(tick.symbol)
            if current is not None and current.received_at > tick.received_at:
                return False
            self._ticks[tick.symbol] = tick
        return True

    def put_many(self, ticks: Iterable[Tick]) -> int:
        """Store a batch; returns how many were accepted."""
        return sum(1 for tick in ticks if self.put(tick))

    def quote(self, symbol: str, now: float) -> Quote | None:
        """The cached price with its age, usable or not; None if never seen."""
        with self._lock:
            tick = self._ticks.get(symbol)
        if tick is None:
            return None
        age = max(0.0, now - tick.received_at)
        return Quote(
            symbol, tick.price, tick.received_at, age,
            classify(age, self.stale_after, self.unusable_after),
        )

    def get_cached_price(self, symbol: str, now: float) -> float | None:
        """The seed's semantics: the price if it may still be used, else None."""
        quote = self.quote(symbol, now)
        return quote.price if quote is not None and quote.usable else None

    def get_price_freshness(self, symbol: str, now: float) -> float | None:
        """The seed's semantics: the age in seconds of the cached price, None if uncached."""
        quote = self.quote(symbol, now)
        return quote.age if quote is not None else None

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
