"""The paper broker: fills at the freshest price TradeGuard has (SPEC §7)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tradeguard.brokers.base import CloseOrder, Fill, Holding
from tradeguard.errors import BrokerUnavailable
from tradeguard.prices import Quote, valid_price


class PaperBroker:
    """Fills at the freshest price it has: the cached quote or the order's hint.

    Prices older than `max_age` are refused. `clock` is the clock the quotes'
    receive times are on: the monotonic one (SPEC §4 "Clocks"). The service passes no limit: a
    market order fills whatever the market does, so a close of a blind
    position fills at the last price seen, and the fill reports its true age.

    Its memory of orders lives in this process only. After a restart, `lookup`
    of a `closing` position's client order id returns None and the caller
    sends the order again, which is right for paper: no order ever left.
    """

    def __init__(
        self,
        quote: Callable[[str], Quote | None],
        clock: Callable[[], float] = time.monotonic,
        *,
        max_age: float = 300.0,  # prices older than this are not filled at
        on_order: Callable[[CloseOrder, float], None] | None = None,
    ) -> None:
        self._quote = quote
        self._clock = clock
        self._max_age = max_age
        self.on_order = on_order  # called with (order, time.monotonic() at arrival)
        self.orders: list[str] = []  # client order ids of filled orders, in arrival order
        self._fills: dict[str, Fill] = {}
        self._lock = threading.Lock()

    def place(self, order: CloseOrder) -> Fill:
        arrived = time.monotonic()
        with self._lock:
            known = self._fills.get(order.client_order_id)
            if known is not None:
                return known
            price, age = self._freshest(order)
            fill = Fill(f"paper-{len(self._fills) + 1}", price, age)
            self._fills[order.client_order_id] = fill
            self.orders.append(order.client_order_id)
        if self.on_order is not None:
            self.on_order(order, arrived)
        return fill

    def lookup(self, client_order_id: str) -> Fill | None:
        with self._lock:
            return self._fills.get(client_order_id)

    def holding(self, symbol: str, product: str | None = None) -> Holding | None:
        """Paper keeps no book of positions: it cannot tell."""
        return None

    def _freshest(self, order: CloseOrder) -> tuple[float, float]:
        """(price, age) of the most recently received usable price for the symbol.

        Most recent by receive order: the cache holds the last tick it was given,
        so the hint wins only if received strictly later. On a tie (ticks of one
        frame share a receive time) the cached, later tick wins, whatever its
        price (A16).
        """
        now = self._clock()
        best: tuple[float, float] | None = None  # (received_at, price)
        cached = self._quote(order.symbol)
        if cached is not None and now - cached.received_at <= self._max_age:
            best = (cached.received_at, cached.price)
        hint = order.hint
        if (
            hint is not None
            and hint.symbol == order.symbol
            and valid_price(hint.price)
            and now - hint.received_at <= self._max_age
            and (best is None or hint.received_at > best[0])
        ):
            best = (hint.received_at, hint.price)
        if best is None:
            raise BrokerUnavailable(f"no usable price for {order.symbol}")
        received_at, price = best
        return price, max(0.0, now - received_at)
