"""CacheActor: the only writer of the price cache; persists it and says when prices go stale."""

from __future__ import annotations

import logging
import time

from actors.base import ChildContext, GuardActor
from actors.messages import TickBatch, Timer
from tradeguard.errors import StoreError
from tradeguard.prices import StaleTracker, from_wall, tick_symbol, to_wall

logger = logging.getLogger(__name__)

PERSIST_EVERY = 1.0
FORGET_EVERY = 60  # persists between prunes of prices nobody holds or subscribes to


class CacheActor(GuardActor):
    """Stores every tick batch; a snapshot goes to the store about once a second.

    The cache object itself belongs to the system, so a restart of this actor
    loses nothing; the store snapshot (receive times converted to wall clock)
    carries prices, with honest ages, across a restart of the process.
    """

    def __init__(self, ctx: ChildContext) -> None:
        super().__init__(ctx)
        self._dirty: set[str] = set()
        self._forgotten: list[str] = []
        self._persists = 0
        self._stale = StaleTracker()

    def setup(self) -> None:
        cache = self.services.cache
        if len(cache) == 0:
            stored = self.services.store.load_prices()
            loaded = cache.put_many(from_wall(stored, mono_now=time.monotonic(),
                                              wall_now=time.time()))
            if loaded:
                logger.info("[CACHE] Reloaded %d cached prices from the store", loaded)
        self._forget()  # at once: what eviction spares is known from the start
        self._stale = StaleTracker(cache.snapshot(time.monotonic()))
        self.every("persist", PERSIST_EVERY)

    def handle(self, message: object) -> object:
        if isinstance(message, TickBatch):
            # Only a symbol's last tick stays cached, and under load a batch holds
            # thousands of ticks for a few hundred symbols: one put per symbol.
            latest = dict(zip(map(tick_symbol, message.ticks), message.ticks, strict=True))
            for tick in latest.values():
                if self.services.cache.put(tick):
                    self._dirty.add(tick.symbol)
                    self._stale.fresh(tick.symbol)  # the next crossing is news
        elif isinstance(message, Timer):
            self._persist()
            self._note_stale()
        else:
            return super().handle(message)
        return None

    def teardown(self) -> None:
        self._persist()

    def _persist(self) -> None:
        self._persists += 1
        if self._persists % FORGET_EVERY == 0:
            self._forget()
        if not self._dirty and not self._forgotten:
            return
        cache, dirty = self.services.cache, self._dirty
        ticks = [t for t in cache.ticks() if t.symbol in dirty]
        try:
            self.services.store.save_prices(
                to_wall(ticks, mono_now=time.monotonic(), wall_now=time.time()),
                forget=self._forgotten)
        except StoreError as exc:
            logger.error("[CACHE] Could not persist prices: %s", exc)
            return
        self._dirty, self._forgotten = set(), []
        logger.debug("[CACHE] Persisted %d prices", len(ticks))

    def _forget(self) -> None:
        """Drop unusable prices of symbols no live position holds and no config subscribes."""
        keep = set(self.services.cfg.feed.symbols)
        try:
            keep |= {p.symbol for p in self.services.store.live_positions()}
        except StoreError as exc:
            logger.error("[CACHE] Could not read positions to prune prices: %s", exc)
            return
        gone = self.services.cache.forget(keep, time.monotonic())
        self._forgotten += gone
        self._dirty -= set(gone)

    def _note_stale(self) -> None:
        """The seed's line, once per symbol each time its price crosses the threshold."""
        for symbol in self._stale.crossed(self.services.cache.snapshot(time.monotonic())):
            logger.warning("[CACHE] Price for %s is stale", symbol)
