"""`KiteBroker`: TradeGuard's close orders as Kite Connect regular MARKET orders (SPEC §10).

Kite has no idempotency key (brokers.md §2.3: `guid` is server-made), so the
Broker contract "the same client order id is one order" is built here: the
client order id is the order's `tag` (the Closer's ids are "tg" + 18 hex
digits, 20 letters and digits, as Kite allows), and a tag this process sent
before, whose answer was lost, is looked up in `GET /orders` before anything
is sent again. After a restart the Closer's reconcile does the same through
`lookup`.

A placed order's fill is read from `GET /orders/<order_id>` (the last entry
of its history is its state now), polled until it is final or
`fill_wait` passes; an order update from the ticker (`order_update`) ends the
wait at once. A final REJECTED or CANCELLED with nothing filled is
BrokerRefused; with something filled it is a partial Fill, and the Closer
sends what is still open under a new tag.

An order above the exchange's freeze quantity is refused, not sliced. Kite
refuses it itself (the instrument list carries no freeze limit, so TradeGuard
cannot know it first); its refusal is passed on as BrokerRefused with the
reason spelled out. Slicing is not done because Kite's `autoslice` children
carry the tag `autoslice:<parent>`, not ours: a lost answer could no longer
be found by tag, and a retry could send the whole close a second time.
Splitting by hand would multiply the orders a 10/s limit allows. A close
failed this way is a critical alert; close it by hand or in smaller positions.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from tradeguard.brokers.base import CloseOrder, Fill, Holding
from tradeguard.brokers.kite.instruments import DEFAULT_EXCHANGE, split_symbol
from tradeguard.brokers.kite.rest import KiteRest, TokenRejected
from tradeguard.errors import BrokerRefused, BrokerUnavailable
from tradeguard.positions import Side
from tradeguard.prices import valid_price

logger = logging.getLogger(__name__)

FINAL = frozenset({"COMPLETE", "REJECTED", "CANCELLED"})
TAG = re.compile(r"[A-Za-z0-9]{1,20}")
FILL_WAIT = 5.0  # seconds a placed MARKET order may take to be final
POLL = 0.1  # seconds between order-history reads while waiting
MAX_UPDATES = 1000  # final order updates kept until a wait takes them
UPSTOX_NAMES = {"I": "MIS", "D": "CNC"}  # SPEC §3: either broker's spelling is accepted


class KiteBroker:
    """The Broker protocol over one Kite account's REST calls."""

    def __init__(self, rest: KiteRest, *, product: str = "MIS", market_protection: int = -1,
                 default_exchange: str = DEFAULT_EXCHANGE, fill_wait: float = FILL_WAIT,
                 poll: float = POLL, clock: Callable[[], float] = time.monotonic) -> None:
        self._rest = rest
        self._product = product
        self._protection = market_protection
        self._exchange = default_exchange
        self._fill_wait = fill_wait
        self._poll = poll
        self._clock = clock
        self._lock = threading.Condition()
        self._sent: dict[str, str | None] = {}  # tag -> Kite order id (None: answer lost)
        self._updates: dict[str, Mapping[str, Any]] = {}  # order id -> final ticker update

    # The Broker protocol --------------------------------------------------------

    def place(self, order: CloseOrder) -> Fill:
        tag = _tag(order.client_order_id)
        quantity = _whole(order.quantity)
        what = f"order {tag} ({order.side} {quantity} {order.symbol})"
        order_id = self._earlier(tag)
        if order_id is None:
            order_id = self._send(order, tag, quantity, what)
        return self._await_fill(order_id, what)

    def lookup(self, client_order_id: str) -> Fill | None:
        tag = _tag(client_order_id)
        what = f"lookup of order {tag}"
        with self._lock:
            order_id = self._sent.get(tag)
        order_id = order_id or self._find_by_tag(tag, what)
        if order_id is None:
            return None
        with self._lock:
            self._sent[tag] = order_id  # found: the book need not be read for it again
        return self._await_fill(order_id, what)

    def holding(self, symbol: str, product: str | None = None) -> Holding | None:
        """The net position in `symbol` and `product` (default broker.product), GET positions."""
        exchange, tradingsymbol = split_symbol(symbol, self._exchange)
        product = self._kite_product(product)
        what = f"positions (for {exchange}:{tradingsymbol})"
        data = self._read("/portfolio/positions", what)
        rows = data.get("net") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise BrokerUnavailable(f"Kite {what}: answer has no 'net' list")
        net = sum(_net(row, exchange, tradingsymbol, product) for row in rows)
        return Holding(Side.LONG if net >= 0 else Side.SHORT, float(abs(net)))

    # The ticker's order updates -----------------------------------------------

    def order_update(self, data: Mapping[str, Any]) -> None:
        """A Kite order update (ticker `{"type": "order"}`): a final one ends a wait for it."""
        order_id, status = str(data.get("order_id", "")), data.get("status")
        if order_id and status in FINAL:
            with self._lock:
                self._updates[order_id] = data
                while len(self._updates) > MAX_UPDATES:  # the account's other orders
                    del self._updates[next(iter(self._updates))]
                self._lock.notify_all()

    # Sending ----------------------------------------------------------------

    def _kite_product(self, product: str | None) -> str:
        name = (product or self._product).upper()
        return UPSTOX_NAMES.get(name, name)

    def _earlier(self, tag: str) -> str | None:
        """The order id of an earlier send of `tag` here, looked up if its answer was lost."""
        with self._lock:
            if tag not in self._sent:
                return None
            known = self._sent[tag]
        if known is None:
            known = self._find_by_tag(tag, f"lookup of order {tag} before sending it again")
            if known is not None:
                logger.warning("[KITE] order %s had reached Kite (%s): not sent again", tag, known)
                with self._lock:
                    self._sent[tag] = known
        return known

    def _send(self, order: CloseOrder, tag: str, quantity: int, what: str) -> str:
        exchange, tradingsymbol = split_symbol(order.symbol, self._exchange)
        form = {
            "tradingsymbol": tradingsymbol, "exchange": exchange,
            "transaction_type": "SELL" if order.side == "sell" else "BUY",
            "order_type": "MARKET", "quantity": str(quantity),
            "product": self._kite_product(order.product),
            "validity": "DAY", "market_protection": str(self._protection), "tag": tag,
        }
        with self._lock:
            self._sent[tag] = None  # from here on it may have reached Kite
        try:
            data = self._rest.post("/orders/regular", form, what=what, urgency=order.urgency)
        except BrokerRefused as exc:
            raise _explained(exc) from exc
        order_id = data.get("order_id") if isinstance(data, dict) else None
        if not isinstance(order_id, str | int) or isinstance(order_id, bool) or order_id == "":
            raise BrokerUnavailable(f"Kite {what}: answer has no order_id")
        with self._lock:
            self._sent[tag] = str(order_id)
        return str(order_id)

    def _find_by_tag(self, tag: str, what: str) -> str | None:
        """The id of the order tagged `tag` in today's order book; None if there is none."""
        data = self._read("/orders", what)
        if not isinstance(data, list):
            raise BrokerUnavailable(f"Kite {what}: the order book is not a list")
        found = [str(o["order_id"]) for o in data
                 if isinstance(o, dict) and o.get("order_id") and _tagged(o, tag)]
        if len(found) > 1:
            logger.critical("[KITE] %d orders carry tag %s: %s", len(found), tag, found)
        return found[-1] if found else None

    def _read(self, path: str, what: str) -> Any:
        """A GET; a refused read (a 403 token, a 4xx) says nothing about any order.

        So it is BrokerUnavailable: the Closer retries under the same tag, and
        never takes "cannot read the book" for "the order was refused" (which
        would give the next attempt a new tag and could send the close twice).
        """
        try:
            return self._rest.get(path, what=what)
        except BrokerRefused as exc:
            raise BrokerUnavailable(str(exc)) from exc

    # Waiting for the fill -----------------------------------------------------

    def _await_fill(self, order_id: str, what: str) -> Fill:
        deadline = self._clock() + self._fill_wait
        status = "unknown"
        while True:
            entry = self._final_update(order_id) or self._current(order_id, what)
            status = str(entry.get("status"))
            if status in FINAL:
                return _fill(order_id, entry, what)
            if self._clock() >= deadline:
                raise BrokerUnavailable(f"Kite {what}: order {order_id} still {status} after "
                                        f"{self._fill_wait:g}s")
            with self._lock:
                self._lock.wait_for(lambda: order_id in self._updates, self._poll)

    def _final_update(self, order_id: str) -> Mapping[str, Any] | None:
        with self._lock:
            return self._updates.pop(order_id, None)

    def _current(self, order_id: str, what: str) -> Mapping[str, Any]:
        """The last entry of the order's history: its state now."""
        data = self._read(f"/orders/{order_id}", what)
        if not isinstance(data, list) or not data or not isinstance(data[-1], dict):
            raise BrokerUnavailable(f"Kite {what}: order {order_id} has no history")
        entry: Mapping[str, Any] = data[-1]
        return entry


def _fill(order_id: str, entry: Mapping[str, Any], what: str) -> Fill:
    """A final history entry as a Fill (always with the quantity filled); BrokerRefused if none."""
    status = entry.get("status")
    filled: Any = entry.get("filled_quantity")
    filled = float(filled) if valid_price(filled) else 0.0
    price: Any = entry.get("average_price")
    if status != "COMPLETE" and filled <= 0:
        reason = entry.get("status_message") or "no reason given"
        raise _explained(BrokerRefused(f"Kite {what}: order {order_id} {status}: {reason}"))
    if not valid_price(price):
        raise BrokerUnavailable(f"Kite {what}: order {order_id} {status} with average_price "
                                f"{price!r}")
    if status == "COMPLETE" and filled <= 0:
        quantity: Any = entry.get("quantity")
        filled = float(quantity) if valid_price(quantity) else 0.0
    return Fill(order_id, float(price), None, filled or None)


def _explained(exc: BrokerRefused) -> BrokerRefused:
    """A freeze-quantity refusal says what to do about it; any other passes as it is."""
    text = str(exc)
    if "freeze" not in text.lower() or isinstance(exc, TokenRejected):
        return exc
    return BrokerRefused(f"{text} -- above the exchange's freeze quantity: TradeGuard does not "
                         "slice a close (slices lose the attempt's tag); close it by hand")


def _tagged(order: Mapping[str, Any], tag: str) -> bool:
    tags = order.get("tags")
    return order.get("tag") == tag or (isinstance(tags, list) and tag in tags)


def _net(row: Any, exchange: str, tradingsymbol: str, product: str) -> int:
    """A `net` row's signed quantity if it is this symbol in this product, else 0."""
    if not isinstance(row, dict) or row.get("tradingsymbol") != tradingsymbol:
        return 0
    if row.get("exchange") != exchange or str(row.get("product", "")).upper() != product:
        return 0
    quantity = row.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        raise BrokerUnavailable(f"Kite positions: {exchange}:{tradingsymbol} has quantity "
                                f"{quantity!r}")
    return quantity


def _tag(client_order_id: str) -> str:
    if not TAG.fullmatch(client_order_id):
        raise BrokerRefused(f"client order id {client_order_id!r} cannot be a Kite tag "
                            "(at most 20 letters and digits)")
    return client_order_id


def _whole(quantity: float) -> int:
    """Kite takes whole quantities only; a fractional one is refused, never rounded."""
    if not float(quantity).is_integer() or quantity <= 0:
        raise BrokerRefused(f"quantity {quantity:g}: Kite orders need a whole number above 0")
    return int(quantity)
