"""MonitorActor: checks every position on every tick and on a sweep, and starts closes.

Tick batches are checked tick by tick in arrival order, so one breaching tick
in a burst fires. The sweep re-checks every position each `sweep_interval`
with the best price the cache has (fresh, then stale with the seed's
`[FALLBACK]` line, then blind: a critical alert, repeated, and with
`blind_policy = "close"` a market close), retries `close_failed` positions,
and is what still catches a breach while the feed is down.

Closes run on a small pool of worker threads this actor owns, so a slow
broker never stops the checking; `Closer` and the store make each close
happen once whichever thread or incarnation gets there.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from actors.base import GuardActor
from actors.messages import PositionsChanged, Subscribe, TickBatch, Timer, WorkerDone
from tradeguard import alerts
from tradeguard.errors import PositionError, TradeGuardError
from tradeguard.positions import Position, Reason, State, safe_band, trigger
from tradeguard.prices import Freshness, Quote, Tick, tick_symbol

logger = logging.getLogger(__name__)

FAILED_RETRY = 5.0  # seconds between sweep retries of a close_failed position
CLOSE_WORKERS = 4


class MonitorActor(GuardActor):
    def setup(self) -> None:
        self._positions: dict[str, Position] = {}
        self._in_flight: set[str] = set()
        self._stale_noted: set[str] = set()
        self._blind_alerted: dict[str, float] = {}
        self._blind_since: dict[str, float] = {}
        self._failed_tried: dict[str, float] = {}
        self._started = time.time()
        self._pool = ThreadPoolExecutor(CLOSE_WORKERS, thread_name_prefix="close")
        self._reload()
        for position in self._positions.values():
            if position.state is State.CLOSING:
                self._submit(position.symbol, "reconcile", None)
        self.every("sweep", self.services.cfg.monitor.sweep_interval)

    def teardown(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            # In-flight closes finish (their outcome is in the store); nothing new starts.
            pool.shutdown(wait=False, cancel_futures=True)

    def handle(self, message: object) -> object:
        if isinstance(message, TickBatch):
            self._on_ticks(message)
        elif isinstance(message, Timer):
            self._sweep()
        elif isinstance(message, PositionsChanged):
            self._reload()
        elif isinstance(message, WorkerDone):
            self._on_close_done(message)
        else:
            return super().handle(message)
        return None

    # Ticks -------------------------------------------------------------------

    def _on_ticks(self, batch: TickBatch) -> None:
        positions = self._positions
        # Under load a batch holds thousands of ticks: each is compared with its
        # position's band, built once per batch, and only a tick outside the
        # band goes through the stop rules.
        bands = {symbol: safe_band(position)
                 for symbol in set(map(tick_symbol, batch.ticks)) & positions.keys()
                 if (position := positions[symbol]).state is State.OPEN}
        for tick in batch.ticks:
            band = bands.get(tick.symbol)
            if band is None or band[0] < tick.price < band[1]:
                continue
            position = positions[tick.symbol]
            if tick.received_at < (position.opened_at or 0.0):
                continue  # a price from before this position existed (a redelivered batch)
            reason = trigger(position, tick.price)
            if reason is not None and tick.symbol not in self._in_flight:
                self._submit(tick.symbol, reason, tick)  # first: the log line can wait
                logger.warning("[MONITOR] %s %s at %.4f crosses its %s", position.side.value,
                               tick.symbol, tick.price, reason)
        self.services.metrics.tick_to_decision.observe(time.monotonic() - batch.received_mono)

    # The sweep -------------------------------------------------------------

    def _sweep(self) -> None:
        now = time.time()
        blind: set[str] = set()
        stale: set[str] = set()
        for symbol, position in list(self._positions.items()):
            if symbol in self._in_flight or position.state is State.CLOSING:
                continue
            if position.state is State.CLOSE_FAILED:
                self._retry_failed(position, now)
                continue
            quote = self.services.cache.quote(symbol, now)
            if quote is None and self._awaiting_first_price(position, now):
                continue
            if quote is None or not quote.usable:
                blind.add(symbol)
                self._on_blind(position, quote, now)
                continue
            self._clear_blind(position, quote, now)
            if quote.freshness is Freshness.STALE:
                stale.add(symbol)
                self._on_stale(position, quote)
            else:
                self._stale_noted.discard(symbol)
            reason = trigger(position, quote.price)
            if reason is not None:
                logger.warning("[MONITOR] %s at cached %.4f (%.1fs old) crosses its %s",
                               symbol, quote.price, quote.age, reason)
                self._submit(symbol, reason, None)
        self.services.monitor_status.update(blind, stale, now)

    def _awaiting_first_price(self, position: Position, now: float) -> bool:
        # A position just opened has had no chance to see a tick yet: it is not
        # blind until the feed has had the stale threshold's time to price it.
        opened = position.opened_at or 0.0
        return now - max(opened, self._started) < self.services.cfg.prices.stale_warning_threshold

    def _on_stale(self, position: Position, quote: Quote) -> None:
        if position.symbol in self._stale_noted:
            return
        self._stale_noted.add(position.symbol)
        currency = self.services.cfg.display.currency
        logger.warning("[FALLBACK] Using stale price for %s: %s%.2f (%.1fs old)",
                       position.symbol, currency, quote.price, quote.age)
        self.services.alerts.alert(alerts.price_stale(position.symbol, quote.price, quote.age,
                                                      currency=currency))

    def _on_blind(self, position: Position, quote: Quote | None, now: float) -> None:
        self._blind_since.setdefault(position.symbol, now)
        last = self._blind_alerted.get(position.symbol)
        policy = self.services.cfg.monitor.blind_policy
        if last is None or now - last >= self.services.blind_repeat:
            self._blind_alerted[position.symbol] = now
            logger.critical("[MONITOR] %s is blind: no price younger than %.0fs",
                            position.symbol, self.services.cfg.prices.cache_timeout)
            self.services.alerts.alert(alerts.position_blind(
                position.symbol, quote.price if quote else None, quote.age if quote else None,
                policy, currency=self.services.cfg.display.currency))
        if policy == "close":
            self._submit(position.symbol, Reason.BLIND, None)

    def _clear_blind(self, position: Position, quote: Quote, now: float) -> None:
        if position.symbol not in self._blind_since:
            return
        since = self._blind_since.pop(position.symbol)
        self._blind_alerted.pop(position.symbol, None)
        self.services.alerts.alert(alerts.position_priced_again(
            position.symbol, quote.price, now - since,
            currency=self.services.cfg.display.currency))

    def _retry_failed(self, position: Position, now: float) -> None:
        if now - self._failed_tried.get(position.symbol, 0.0) < FAILED_RETRY:
            return
        self._failed_tried[position.symbol] = now
        logger.warning("[MONITOR] retrying the failed close of %s", position.symbol)
        self._submit(position.symbol, position.reason or Reason.EMERGENCY, None)

    # Closing ---------------------------------------------------------------

    def _submit(self, symbol: str, reason: str, hint: Tick | None) -> None:
        if symbol in self._in_flight or self.ctx.fenced:
            return
        self._in_flight.add(symbol)
        closer = self.services.closer
        position = self._positions.get(symbol)
        if reason == "reconcile" and position is not None:
            job: Future[Any] = self._pool.submit(closer.reconcile, position)
        else:
            job = self._pool.submit(closer.close, symbol, reason, hint)
        def done(future: Future[Any]) -> None:
            if not future.cancelled():
                self.post(WorkerDone("close", error=future.exception(), extra={"symbol": symbol}))

        job.add_done_callback(done)

    def _on_close_done(self, message: WorkerDone) -> None:
        symbol = str(message.extra.get("symbol"))
        self._in_flight.discard(symbol)
        error = message.error
        if isinstance(error, PositionError) and error.code in (404, 409):
            logger.info("[MONITOR] %s: %s", symbol, error)
        elif isinstance(error, TradeGuardError):
            logger.error("[MONITOR] close of %s failed: %s", symbol, error)
        elif error is not None:
            logger.error("[MONITOR] close of %s raised %r", symbol, error)
        self._reload()
        position = self._positions.get(symbol)
        if error is not None and position is not None and position.state is State.CLOSING:
            # The worker died between claim and record (a store error, a bug): ask the
            # broker about the client order id and finish the close, as after a crash.
            self._submit(symbol, "reconcile", None)

    def _reload(self) -> None:
        live = self.services.store.live_positions()
        self._positions = {p.symbol: p for p in live}
        for gone in set(self._stale_noted) - set(self._positions):
            self._stale_noted.discard(gone)
        symbols = tuple(sorted(self._positions))
        if symbols:
            self.ctx.tell("FeedActor", Subscribe(symbols))

