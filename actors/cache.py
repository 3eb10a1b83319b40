"""CacheActor: the only writer of the price cache; persists it and says when prices go stale."""

from __future__ import annotations

import logging
import time

from actors.base import GuardActor
from actors.messages import TickBatch, Timer
from tradeguard.errors import StoreError
from tradeguard.prices import Freshness, tick_symbol

logger = logging.getLogger(__name__)

PERSIST_EVERY = 1.0


class CacheActor(GuardActor):
    """Stores every tick batch; a snapshot goes to the store about once a second.

    The cache object itself belongs to the system, so a restart of this actor
    loses nothing; the store snapshot (receive times in wall clock) carries
    prices, with honest ages, across a restart of the process.
    """

    def setup(self) -> None:
        cache = self.services.cache
        if len(cache) == 0:
            loaded = cache.put_many(self.services.store.load_prices())
            if loaded:
                logger.info("[CACHE] Reloaded %d cached prices from the store", loaded)
        self._dirty: set[str] = set()
        self._stale: set[str] = {
            s for s, q in cache.snapshot(time.time()).items()
            if q.freshness is not Freshness.FRESH
        }
        self.every("persist", PERSIST_EVERY)

    def handle(self, message: object) -> object:
        if isinstance(message, TickBatch):
            # Only a symbol's last tick stays cached, and under load a batch holds
            # thousands of ticks for a few hundred symbols: one put per symbol.
            latest = dict(zip(map(tick_symbol, message.ticks), message.ticks, strict=True))
            for tick in latest.values():
                if self.services.cache.put(tick):
                    self._dirty.add(tick.symbol)
                    self._stale.discard(tick.symbol)  # fresh again: the next crossing is news
        elif isinstance(message, Timer):
            self._persist()
            self._note_stale()
        else:
            return super().handle(message)
        return None

    def teardown(self) -> None:
        self._persist()

    def _persist(self) -> None:
        if not getattr(self, "_dirty", None):
            return
        cache, dirty = self.services.cache, self._dirty
        now = time.time()
        ticks = [t for t in cache.ticks() if t.symbol in dirty]
        try:
            self.services.store.save_prices(ticks)
        except StoreError as exc:
            logger.error("[CACHE] Could not persist prices: %s", exc)
            return
        self._dirty = set()
        logger.debug("[CACHE] Persisted %d prices at %.3f", len(ticks), now)

    def _note_stale(self) -> None:
        """The seed's line, once per symbol each time its price crosses the threshold."""
        now = time.time()
        stale_now = set()
        for symbol, quote in self.services.cache.snapshot(now).items():
            if quote.freshness is Freshness.FRESH:
                continue
            stale_now.add(symbol)
            if symbol not in self._stale:
                logger.warning("[CACHE] Price for %s is stale", symbol)
        self._stale = stale_now
