"""MonitorActor: the thread and the workers around the stop engine.

What to decide lives in `tradeguard.monitoring.Monitor` (pure, on the
monotonic clock). This actor gives it each tick batch, a sweep every
`sweep_interval`, the store's positions when they change, and the outcome of
each close; it hands the close requests it gets back to a pool of worker
threads and the alerts to the sink.

Closes run on workers this incarnation owns, so a slow broker never stops the
checking, and there are enough of them that a mass stop-out does not queue
behind a few slow closes; `Closer` and the store make each close happen once
whichever thread or incarnation gets there.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any

from actors.base import GuardActor
from actors.messages import PositionsChanged, Subscribe, TickBatch, Timer, WorkerDone
from tradeguard.errors import PositionError, StoreError, TradeGuardError
from tradeguard.monitoring import RECONCILE, CloseRequest, Monitor, Settings

logger = logging.getLogger(__name__)

# Each close can take its whole retry schedule (tens of seconds with a broker
# that times out); 40 positions stopped out in a crash must not wait for 4.
CLOSE_WORKERS = 32


class MonitorActor(GuardActor):
    def setup(self) -> None:
        self._monitor = Monitor(self._settings(), self.services.monitor_memory,
                                market=self.services.market)
        self._pool = self.own_pool(CLOSE_WORKERS, "close")
        self._reload()
        self._submit_all(self._monitor.recover())
        self.every("sweep", self.services.cfg.monitor.sweep_interval)

    def _settings(self) -> Settings:
        # Read again at every sweep: `services.blind_repeat` may be changed live.
        cfg = self.services.cfg
        return Settings(
            stale_after=cfg.prices.stale_warning_threshold,
            blind_policy=cfg.monitor.blind_policy,
            blind_repeat=self.services.blind_repeat,
            currency=cfg.display.currency,
        )

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

    def _on_ticks(self, batch: TickBatch) -> None:
        for request in self._monitor.on_ticks(batch.ticks):
            self._submit(request)  # first: the log line can wait
            position = self._monitor.positions[request.symbol]
            assert request.hint is not None
            logger.warning("[MONITOR] %s %s at %.4f crosses its %s", position.side.value,
                           request.symbol, request.hint.price, request.reason)
        self.services.metrics.tick_to_decision.observe(time.monotonic() - batch.received_mono)
        self._store_moves()  # after the decisions: a commit never delays one

    def _sweep(self) -> None:
        # The store is read again each sweep, so a missed PositionsChanged, or a
        # close finished by an earlier incarnation's worker, cannot leave the
        # engine deciding on an old map.
        self._submit_all(self._monitor.set_positions(self.services.store.live_positions()))
        self._monitor.settings = self._settings()
        now = time.monotonic()
        cache = self.services.cache
        result = self._monitor.sweep(now, lambda symbol: cache.quote(symbol, now))
        self._submit_all(result.closes)
        for alert in result.alerts:
            self.services.alerts.alert(alert)
        self.services.monitor_status.update(result.blind, result.stale, now)
        self._store_moves()  # also those a reload's replay made

    def _store_moves(self) -> None:
        """Store the trailing stops the engine moved: one commit, one row per position.

        The backstop (SPEC §13), once there is one, is handed the same moves here
        and rate-limits its GTT changes itself. A failed write is logged; the
        engine keeps the moved stop, and the next move writes it again.
        """
        moved = self._monitor.take_moves()
        if not moved:
            return
        try:
            stored = self.services.store.move_stops(moved)
        except StoreError as exc:
            logger.error("[MONITOR] trailing-stop moves of %d position(s) not stored: %s",
                         len(moved), exc)
            return
        self.services.metrics.trailing_stop_moves.inc(stored)

    # Closing ---------------------------------------------------------------

    def _submit_all(self, requests: list[CloseRequest]) -> None:
        for request in requests:
            self._submit(request)

    def _submit(self, request: CloseRequest) -> None:
        if self.ctx.fenced:
            return
        closer, symbol = self.services.closer, request.symbol
        position = self._monitor.positions.get(symbol)
        if request.reason == RECONCILE and position is not None:
            job: Future[Any] = self._pool.submit(closer.reconcile, position)
        else:
            job = self._pool.submit(closer.close, symbol, request.reason, request.hint)

        def done(future: Future[Any]) -> None:
            if not future.cancelled():
                self.post(WorkerDone("close", error=future.exception(), symbol=symbol))

        job.add_done_callback(done)

    def _on_close_done(self, message: WorkerDone) -> None:
        symbol, error = message.symbol, message.error
        if isinstance(error, PositionError) and error.code in (404, 409):
            logger.info("[MONITOR] %s: %s", symbol, error)
        elif isinstance(error, TradeGuardError):
            logger.error("[MONITOR] close of %s failed: %s", symbol, error)
        elif error is not None:
            logger.error("[MONITOR] close of %s raised %r", symbol, error)
        live = self.services.store.live_positions()
        self._submit_all(self._monitor.close_done(symbol, error, live))
        self._subscribe()

    def _reload(self) -> None:
        self._submit_all(self._monitor.set_positions(self.services.store.live_positions()))
        self._subscribe()

    def _subscribe(self) -> None:
        symbols = tuple(sorted(self._monitor.positions))
        if symbols:
            self.ctx.tell("FeedActor", Subscribe(symbols))
