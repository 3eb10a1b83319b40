"""Closing a position exactly once, and never more than the broker holds.

The order of events is what makes it safe:
1. `Store.claim_close` turns the position `closing` and gives it its client
   order id, durably, before anything is sent. Of racing callers (a stop
   firing while an operator presses emergency close, twenty threads, a new
   monitor incarnation) exactly one wins; the rest get 409 or 404.
2. A broker that can tell what it holds is asked first (SPEC §12): the order
   is for the smaller of what is guarded and what it holds on that side;
   nothing held means no order, and the position is `closed_at_broker`.
3. The order goes to the broker under that client order id, retried up to
   `max_close_retries` times with a backoff capped at 30 s. The broker treats
   a repeated id as one order. An attempt it refused or filled in part is
   over: its fill is counted and what is still open gets a new id.
4. The fill makes the position `closed`, or, after the retries, `close_failed`:
   each transition writes its alert in its own transaction, and the sweep
   claims a failed close again later.
After a crash, `reconcile` asks the broker about a `closing` position's
client order id before sending anything for it. An attempt in flight in this
process is never reconciled under it (a 409 means someone else owns it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tradeguard import alerts
from tradeguard.brokers import Broker, CloseOrder, Fill
from tradeguard.errors import BrokerError, BrokerRefused, PositionError, StoreError
from tradeguard.positions import Position, Reason, Side, State, past_stop
from tradeguard.prices import Quote, Tick
from tradeguard.store import Store

logger = logging.getLogger(__name__)

MAX_BACKOFF = 30.0  # seconds, SPEC §4
CLAIM_LOG_EVERY = 60.0  # seconds between CRITICAL lines about an unwritable store


def backoff(retry_delay: float, attempt: int) -> float:
    """The wait after failed attempt `attempt` (from 1): doubling, capped, never overflowing."""
    return min(MAX_BACKOFF, retry_delay * 2.0 ** min(max(attempt - 1, 0), 64))


def _no_quote(symbol: str) -> Quote | None:
    return None


@dataclass(frozen=True)
class CloseResult:
    position: Position
    fill: Fill | None  # None when the broker held nothing and no order went out
    price_age: float | None  # of the freshest price TradeGuard had when the close was decided

    def as_json(self) -> dict[str, object]:
        p = self.position
        return {
            "status": "success",
            "symbol": p.symbol,
            "side": p.side.value,
            "quantity": p.quantity,
            "entry_price": p.entry_price,
            "exit_price": p.exit_price,
            "pnl": p.pnl,
            "reason": p.reason,
            "price_age_seconds": None if self.price_age is None else round(self.price_age, 3),
            "order_id": p.order_id,
            "client_order_id": p.client_order_id,
        }


def _parts(position: Position, fill: Fill, ordered: float) -> tuple[float, float]:
    """(filled quantity, filled value) over every part, this fill included."""
    quantity = ordered if fill.quantity is None else fill.quantity
    return (position.filled_quantity + quantity,
            position.filled_value + quantity * fill.fill_price)


def _exit_and_pnl(position: Position, quantity: float, value: float) -> tuple[float, float]:
    """The average exit price over the parts, and the P&L of the parts."""
    direction = 1.0 if position.side is Side.LONG else -1.0
    return value / quantity, round(direction * (value - position.entry_price * quantity), 6)


class Closer:
    """Claims, orders and records closes; safe to call from any thread.

    `quote(symbol)` is the freshest price TradeGuard has (the cache, read on
    the monotonic clock); its age is the close answer's `price_age_seconds`.
    """

    def __init__(
        self,
        store: Store,
        broker: Broker,
        alert_sink: alerts.QueuingSink,
        *,
        max_retries: int,
        currency: str = "₹",
        retry_delay: float = 0.25,
        observe: Callable[[str, str], None] = lambda reason, result: None,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.time,
        quote: Callable[[str], Quote | None] = _no_quote,
        mono: Callable[[], float] = time.monotonic,
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
        self._quote = quote
        self._mono = mono
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()  # symbols with an attempt running in this process
        self._reconcile_failures: dict[int, int] = {}
        self.claim_failures = 0  # claims the store could not write (A11), for health/metrics
        self.claim_failing = False  # the last claim could not be written
        self._claim_logged: float | None = None  # when the last CRITICAL line was written

    # Who owns a close ---------------------------------------------------------

    def owns(self, symbol: str) -> bool:
        """True while a close attempt of `symbol` runs in this process.

        A caller that got 409 from `close` finds its owner here: do nothing,
        the owner records the outcome. No reconcile is needed, or done.
        """
        with self._lock:
            return symbol in self._in_flight

    @contextmanager
    def _owning(self, symbol: str) -> Iterator[bool]:
        with self._lock:
            taken = symbol not in self._in_flight
            self._in_flight.add(symbol)
        try:
            yield taken
        finally:
            if taken:
                with self._lock:
                    self._in_flight.discard(symbol)

    # Entry points ------------------------------------------------------------

    def close(self, symbol: str, reason: str, hint: Tick | None = None) -> CloseResult:
        """Close the live position of `symbol`; PositionError 404/409/502 otherwise."""
        age = self._decision_age(symbol, hint)
        with self._owning(symbol) as taken:
            if not taken:
                raise PositionError(f"{symbol}: a close is already under way", 409)
            position = self._claim(symbol, reason)
            logger.warning("[CLOSE] %s %s: closing (%s), client order id %s",
                           position.side.value, symbol, reason, position.client_order_id)
            return self._execute(position, hint, age)

    def reconcile(self, position: Position) -> CloseResult | None:
        """Finish a `closing` position left by a crash: ask the broker first, then send.

        None, and nothing done, while this process has an attempt of it in flight.
        A reconcile that keeps failing with a non-broker error waits longer each time.
        """
        assert position.id is not None and position.client_order_id is not None
        with self._owning(position.symbol) as taken:
            if not taken:
                logger.info("[CLOSE] %s: close in flight here; no reconcile", position.symbol)
                return None
            self._pause_before_reconcile(position.id)
            current = self.store.position(position.id)
            if current is None or current.state is not State.CLOSING:
                return None  # finished (or failed) since the caller looked
            try:
                result = self._reconcile(current)
            except PositionError:
                result = None
            except Exception:
                with self._lock:
                    failures = self._reconcile_failures.get(position.id, 0) + 1
                    self._reconcile_failures[position.id] = failures
                raise
            with self._lock:
                self._reconcile_failures.pop(position.id, None)
            return result

    def _pause_before_reconcile(self, position_id: int) -> None:
        with self._lock:
            failures = self._reconcile_failures.get(position_id, 0)
        if failures:
            self._sleep(backoff(max(self.retry_delay, 0.25), failures))

    def _reconcile(self, position: Position) -> CloseResult | None:
        assert position.client_order_id is not None
        age = self._decision_age(position.symbol, None)
        try:
            fill = self.broker.lookup(position.client_order_id)
        except BrokerRefused as exc:
            logger.error("[CLOSE] %s: the broker refused %s: %s", position.symbol,
                         position.client_order_id, exc)
            ended = self.store.end_attempt(position, str(exc))
            return None if ended is None else self._execute(ended, None, age)
        except BrokerError as exc:
            logger.error("[CLOSE] %s: broker lookup of %s failed: %s",
                         position.symbol, position.client_order_id, exc)
            self._fail(position, f"reconcile: {exc}", self.max_retries + 1)
            return None
        if fill is None:
            return self._execute(position, None, age)
        logger.warning("[CLOSE] %s: broker already filled %s; recording it",
                       position.symbol, position.client_order_id)
        if not fill.partial(position.remaining):
            return self._record(position, fill, position.remaining, age)
        ended = self._end_partial(position, fill)
        return None if ended is None else self._execute(ended, None, age)

    # One round of attempts ------------------------------------------------------

    def _claim(self, symbol: str, reason: str) -> Position:
        try:
            position = self.store.claim_close(symbol, reason)
        except StoreError as exc:
            self._claim_unwritable(symbol, exc)
            raise
        self.claim_failing = False
        return position

    def _claim_unwritable(self, symbol: str, exc: StoreError) -> None:
        """A11: no close can go out while claims cannot be written; say so loudly, not often."""
        self.claim_failures += 1
        self.claim_failing = True
        now = self._mono()
        if self._claim_logged is None or now - self._claim_logged >= CLAIM_LOG_EVERY:
            self._claim_logged = now
            logger.critical("[CLOSE] cannot record the close of %s, so no order is sent: %s"
                            " (%d claims failed so far; check the disk and store.path)",
                            symbol, exc, self.claim_failures)

    def _execute(self, position: Position, hint: Tick | None, age: float | None) -> CloseResult:
        error = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                position, order = self._order(position, hint)
                if order is None:
                    return self._nothing_held(position, age)
                fill = self.broker.place(order)
            except BrokerRefused as exc:
                error = str(exc)
                logger.error("[CLOSE] %s: attempt %d refused: %s", position.symbol, attempt, error)
                position = self.store.end_attempt(position, error) or position
                break  # the same order would be refused again at once
            except BrokerError as exc:
                error = str(exc)
                self.store.record_attempt(self._id(position), error)
                logger.error("[CLOSE] %s: attempt %d failed: %s", position.symbol, attempt, error)
                if attempt <= self.max_retries:
                    self._sleep(backoff(self.retry_delay, attempt))
                continue
            if not fill.partial(order.quantity):
                return self._record(position, fill, order.quantity, age)
            error = f"partly filled: {fill.quantity:g} of {order.quantity:g}"
            position = self._end_partial(position, fill) or position
        self._fail(position, error, attempt)
        raise PositionError(
            f"{position.symbol}: broker failed after {attempt} attempt(s): {error}", 502)

    def _order(
        self, position: Position, hint: Tick | None
    ) -> tuple[Position, CloseOrder | None]:
        """The order that closes what is still open, never more than the broker holds.

        None when the broker holds nothing on this side. A smaller holding
        becomes the position's quantity (stored, alerted once).
        """
        assert position.client_order_id is not None
        held = self.broker.holding(position.symbol, position.product)  # same product (§12)
        if held is not None:
            on_side = held.on_side(position.side)
            if on_side <= 1e-9:
                return position, None
            if on_side < position.remaining - 1e-9:
                position = self._follow(position, on_side)
        assert position.client_order_id is not None
        return position, CloseOrder(position.client_order_id, position.symbol,
                                    position.exit_side, position.remaining,
                                    position.reason or Reason.EMERGENCY, hint,
                                    product=position.product,
                                    urgency=self._urgency(position, hint))

    def _follow(self, position: Position, held: float) -> Position:
        logger.warning("[CLOSE] %s: the broker holds %g, not %g; closing what it holds",
                       position.symbol, held, position.remaining)
        self.alerts.alert(alerts.reduced_at_broker(position.symbol, position.remaining, held))
        followed = self.store.follow_holding(self._id(position), position.filled_quantity + held)
        return followed or position

    def _end_partial(self, position: Position, fill: Fill) -> Position | None:
        assert fill.quantity is not None
        logger.warning("[CLOSE] %s: %s filled %g of %g at %s; the rest gets a new id",
                       position.symbol, position.client_order_id, fill.quantity,
                       position.remaining, alerts.money(fill.fill_price, self.currency))
        return self.store.end_attempt(position, "partly filled", fill.quantity, fill.fill_price)

    # Outcomes -------------------------------------------------------------------

    def _record(
        self, position: Position, fill: Fill, ordered: float, age: float | None
    ) -> CloseResult:
        quantity, value = _parts(position, fill, ordered)
        exit_price, result = _exit_and_pnl(position, quantity, value)
        reason = position.reason or Reason.EMERGENCY
        alert = alerts.position_closed(
            position.symbol, position.side.value, quantity, reason=reason,
            exit_price=exit_price, pnl=result, price_age=age, currency=self.currency)
        closed = self.store.finish_close(
            self._id(position), fill.order_id, exit_price, result, self._clock(), alert=alert,
            filled_quantity=quantity, filled_value=value)
        if closed is None:
            # Another path (a reconcile, an older incarnation) recorded it first.
            return CloseResult(self.store.position(self._id(position)) or position, fill, age)
        self._observe(reason, "ok")
        logger.warning("[CLOSE] %s closed at %s (%s), P&L %s, order %s", closed.symbol,
                       alerts.money(exit_price, self.currency), reason,
                       alerts.money(result, self.currency, signed=True), fill.order_id)
        self.alerts.queued(alert)
        return CloseResult(closed, fill, age)

    def _nothing_held(self, position: Position, age: float | None) -> CloseResult:
        """The broker holds none of it: our own order whose answer was lost, or closed outside.

        Raises BrokerError if the lookup fails (the attempt failed; nothing recorded).
        """
        assert position.client_order_id is not None
        fill = self.broker.lookup(position.client_order_id)
        if fill is None:
            return self._closed_at_broker(position, age)
        logger.warning("[CLOSE] %s: the broker had filled %s; recording it",
                       position.symbol, position.client_order_id)
        return self._record(position, fill, position.remaining, age)

    def _closed_at_broker(self, position: Position, age: float | None) -> CloseResult:
        """The broker holds nothing on this side: no order, so no reverse (SPEC §12)."""
        exit_price = pnl_ = None
        if position.filled_quantity > 0:
            exit_price, pnl_ = _exit_and_pnl(
                position, position.filled_quantity, position.filled_value)
        alert = alerts.closed_at_broker(position.symbol, position.side.value, position.remaining)
        closed = self.store.finish_close(
            self._id(position), position.order_id, exit_price, pnl_, self._clock(), alert=alert,
            reason=Reason.CLOSED_AT_BROKER)
        logger.warning("[CLOSE] %s: the broker holds none of it; no order sent",
                       position.symbol)
        if closed is None:
            return CloseResult(self.store.position(self._id(position)) or position, None, age)
        self._observe(Reason.CLOSED_AT_BROKER, "ok")
        self.alerts.queued(alert)
        return CloseResult(closed, None, age)

    def _fail(self, position: Position, error: str, attempts: int) -> None:
        self._observe(position.reason or Reason.EMERGENCY, "error")
        alert = alerts.close_failed(position.symbol, attempts, error)
        failed = self.store.fail_close(self._id(position), error, alert=alert, now=self._clock())
        if failed is not None and failed[1]:
            self.alerts.queued(alert)

    # Helpers ------------------------------------------------------------------------

    def _urgency(self, position: Position, hint: Tick | None) -> float:
        """How far past its stop the position is, on the tick that fired or the cached price."""
        if hint is not None and hint.symbol == position.symbol:
            return past_stop(position, hint.price)
        quote = self._quote(position.symbol)
        return past_stop(position, quote.price) if quote is not None else 0.0

    def _decision_age(self, symbol: str, hint: Tick | None) -> float | None:
        """Age of the freshest price TradeGuard has for `symbol` now (SPEC §6)."""
        ages = []
        quote = self._quote(symbol)
        if quote is not None:
            ages.append(quote.age)
        if hint is not None and hint.symbol == symbol:
            ages.append(max(0.0, self._mono() - hint.received_at))
        return min(ages) if ages else None

    @staticmethod
    def _id(position: Position) -> int:
        assert position.id is not None
        return position.id
