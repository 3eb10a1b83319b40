"""Closing a position exactly once.

The order of events is what makes it safe:
1. `Store.claim_close` turns the position `closing` and gives it its client
   order id, durably, before anything is sent. Of racing callers (a stop
   firing while an operator presses emergency close, twenty threads, a new
   monitor incarnation) exactly one wins; the rest get 409 or 404.
2. The order goes to the broker under that client order id, retried up to
   `max_close_retries` times. The broker treats a repeated id as one order.
3. The fill makes the position `closed` (only from `closing`), or, after the
   retries, `close_failed`: a critical alert, and the monitor's sweep claims it
   again later with the same client order id.
After a crash, `reconcile` asks the broker about every `closing` position by
its client order id before sending anything for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tradeguard import alerts
from tradeguard.brokers import Broker, CloseOrder, Fill
from tradeguard.errors import BrokerError, PositionError
from tradeguard.positions import Position, Reason, pnl
from tradeguard.prices import Tick
from tradeguard.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloseResult:
    position: Position
    fill: Fill

    def as_json(self) -> dict[str, object]:
        p = self.position
        return {
            "status": "success",
            "symbol": p.symbol,
            "side": p.side.value,
            "quantity": p.quantity,
            "entry_price": p.entry_price,
            "exit_price": self.fill.fill_price,
            "pnl": p.pnl,
            "reason": p.reason,
            "price_age_seconds": self.fill.price_age,
            "order_id": self.fill.order_id,
            "client_order_id": p.client_order_id,
        }


class Closer:
    """Claims, orders and records closes; safe to call from any thread."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        alert_sink: alerts.AlertSink,
        *,
        max_retries: int,
        currency: str = "₹",
        retry_delay: float = 0.25,
        observe: Callable[[str, str], None] = lambda reason, result: None,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.broker = broker
        self.alerts = alert_sink
        self.max_retries = max_retries
        self.currency = currency
        self.retry_delay = retry_delay
        self._observe = observe
        self._sleep = sleep
        self._clock = clock
        self._alerted: set[int] = set()  # ids of positions whose failure this process alerted
        self._alerted_lock = threading.Lock()

    def close(self, symbol: str, reason: str, hint: Tick | None = None) -> CloseResult:
        """Close the live position of `symbol`; PositionError 404/409/502 otherwise."""
        position = self.store.claim_close(symbol, reason)
        logger.warning("[CLOSE] %s %s: closing (%s), client order id %s",
                       position.side.value, symbol, reason, position.client_order_id)
        return self._execute(position, hint)

    def reconcile(self, position: Position) -> CloseResult | None:
        """Finish a `closing` position left by a crash: ask the broker first, then send."""
        assert position.id is not None and position.client_order_id is not None
        try:
            fill = self.broker.lookup(position.client_order_id)
        except BrokerError as exc:
            logger.error("[CLOSE] %s: broker lookup of %s failed: %s",
                         position.symbol, position.client_order_id, exc)
            self._fail(position, f"reconcile: {exc}")
            return None
        if fill is not None:
            logger.warning("[CLOSE] %s: broker already filled %s; recording it",
                           position.symbol, position.client_order_id)
            return self._record(position, fill)
        try:
            return self._execute(position, None)
        except PositionError:
            return None

    def _execute(self, position: Position, hint: Tick | None) -> CloseResult:
        assert position.id is not None and position.client_order_id is not None
        order = CloseOrder(position.client_order_id, position.symbol, position.exit_side,
                           position.quantity, position.reason or Reason.EMERGENCY, hint)
        error = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                fill = self.broker.place(order)
            except BrokerError as exc:
                error = str(exc)
                self.store.record_attempt(position.id, error)
                logger.error("[CLOSE] %s: attempt %d failed: %s", position.symbol, attempt, error)
                if attempt <= self.max_retries:
                    self._sleep(self.retry_delay * 2 ** (attempt - 1))
                continue
            return self._record(position, fill)
        self._fail(position, error)
        raise PositionError(
            f"{position.symbol}: broker failed after {self.max_retries + 1} attempts: {error}",
            502,
        )

    def _record(self, position: Position, fill: Fill) -> CloseResult:
        assert position.id is not None
        result = pnl(position, fill.fill_price)
        closed = self.store.finish_close(position.id, fill.order_id, fill.fill_price, result,
                                         self._clock())
        if closed is None:
            # Another path (a reconcile, an older incarnation) recorded it first.
            closed = self.store.position(position.id) or position
            return CloseResult(closed, fill)
        self._observe(closed.reason or Reason.EMERGENCY, "ok")
        logger.warning("[CLOSE] %s closed at %s (%s), P&L %s, order %s", closed.symbol,
                       alerts.money(fill.fill_price, self.currency), closed.reason,
                       alerts.money(result, self.currency, signed=True), fill.order_id)
        self.alerts.alert(alerts.position_closed(
            closed.symbol, closed.side.value, closed.quantity,
            reason=closed.reason or Reason.EMERGENCY, exit_price=fill.fill_price, pnl=result,
            price_age=fill.price_age,
            currency=self.currency))
        return CloseResult(closed, fill)

    def _fail(self, position: Position, error: str) -> None:
        assert position.id is not None
        self._observe(position.reason or Reason.EMERGENCY, "error")
        failed = self.store.fail_close(position.id, error)
        if failed is not None and self._first_failure(position):
            self.alerts.alert(alerts.close_failed(position.symbol, self.max_retries + 1, error))

    def _first_failure(self, position: Position) -> bool:
        """True for the failure that raises the alert: once per position, not per round.

        A failed round records `max_retries + 1` attempts, so more than
        `max_retries` at claim time means an earlier round, perhaps in a process
        killed since, has alerted; fewer means none has finished (a kill -9 in
        the middle of the first). The set silences this process's later rounds.
        """
        assert position.id is not None
        with self._alerted_lock:
            if position.id in self._alerted or position.close_attempts > self.max_retries:
                return False
            self._alerted.add(position.id)
            return True
