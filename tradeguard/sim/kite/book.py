"""The stand-in broker's state: prices, orders, net positions, GTTs and the faults to play.

One lock guards it all; the REST server and the ticker read and change it
from their own threads. Listeners hear of every order change (the ticker
turns them into order-update messages) and of every price set (ticks).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tradeguard.sim.kite.errors import KiteRefusal, stamp
from tradeguard.sim.kite.gtt import Gtts
from tradeguard.sim.kite.instruments import DEFAULT_INSTRUMENTS, Instrument
from tradeguard.sim.kite.packets import Level, Quote

OrderListener = Callable[[dict[str, Any]], object]
PriceListener = Callable[[Quote], object]
TRANSIENT = ("PUT ORDER REQ RECEIVED", "VALIDATION PENDING", "OPEN PENDING", "OPEN")


@dataclass
class Position:
    instrument: Instrument
    product: str
    quantity: int = 0
    average_price: float = 0.0
    buy_quantity: int = 0
    sell_quantity: int = 0
    buy_value: float = 0.0
    sell_value: float = 0.0


@dataclass
class Faults:
    """What the next orders and requests will meet (each consumed as it is used)."""

    reject: list[str] = field(default_factory=list)  # rejection reasons, one per order
    partial: list[int] = field(default_factory=list)  # filled quantities, one per order
    statuses: list[tuple[int, str]] = field(default_factory=list)  # (429|5xx, path prefix)
    drop_answers: int = 0  # orders recorded, then the connection cut before the answer
    history_lag: list[float] = field(default_factory=list)  # seconds REST shows OPEN, per order


class KiteBook:
    """Everything the stand-in knows; every public method is thread-safe."""

    def __init__(self, api_key: str, access_token: str,
                 instruments: tuple[Instrument, ...] = DEFAULT_INSTRUMENTS) -> None:
        self.api_key = api_key
        self._token = access_token
        self.lock = threading.RLock()
        self.instruments = {i.symbol: i for i in instruments}
        self.by_token = {i.token: i for i in instruments}
        self.quotes: dict[str, Quote] = {}
        self.orders: dict[str, list[dict[str, Any]]] = {}  # order id -> history
        self._final_at: dict[str, float] = {}  # order id -> monotonic time REST shows it final
        self.forms: list[dict[str, str]] = []  # every place-order form received
        self.positions: dict[tuple[str, str], Position] = {}
        self.gtts = Gtts(self)
        self.faults = Faults()
        self.order_listeners: list[OrderListener] = []
        self.price_listeners: list[PriceListener] = []
        self._ids = itertools.count(260_101_000_000_001)

    # Tokens ------------------------------------------------------------------

    @property
    def access_token(self) -> str:
        with self.lock:
            return self._token

    def rotate_token(self, new_token: str) -> None:
        """The morning routine: the old token is refused from now on."""
        with self.lock:
            self._token = new_token

    def check_auth(self, api_key: str, access_token: str) -> bool:
        with self.lock:
            return api_key == self.api_key and access_token == self._token

    # Prices --------------------------------------------------------------------

    def instrument(self, symbol: str) -> Instrument:
        if symbol not in self.instruments:
            raise KiteRefusal(400, "InputException", f"Invalid instrument {symbol}")
        return self.instruments[symbol]

    def set_price(self, symbol: str, price: float) -> Quote:
        """Move the market; listeners send the tick, active GTTs that it crosses trigger."""
        quote = self.set_price_quietly(symbol, price)
        for listener in list(self.price_listeners):
            listener(quote)
        return quote

    def set_price_quietly(self, symbol: str, price: float) -> Quote:
        """Move the market without telling the listeners (the caller sends the tick)."""
        with self.lock:
            quote = self._move(self.instrument(symbol), price)
            self.gtts.price_moved(symbol, price)
            return quote

    def price(self, symbol: str) -> float:
        with self.lock:
            quote = self.quotes.get(symbol)
            if quote is None:
                raise KiteRefusal(400, "InputException", f"No price for {symbol}")
            return quote.last_price

    def _move(self, instrument: Instrument, price: float) -> Quote:
        quote = self.quotes.get(instrument.symbol)
        now = int(time.time())
        if quote is None:
            quote = Quote(instrument.token, price, open=price, high=price, low=price,
                          close=price, average_price=price)
            self.quotes[instrument.symbol] = quote
        quote.change = price - quote.close
        quote.last_price = price
        quote.high, quote.low = max(quote.high, price), min(quote.low, price)
        quote.volume += quote.last_quantity
        quote.last_trade_time = quote.exchange_time = now
        tick = instrument.tick_size or 0.05
        quote.bids, quote.offers = _ladder(price, -tick), _ladder(price, tick)
        return quote

    # Positions -----------------------------------------------------------------

    def hold(self, symbol: str, quantity: int, average_price: float, product: str = "MIS") -> None:
        """What the account holds already (signed: negative is short), e.g. the trader's entry."""
        with self.lock:
            position = self._position(self.instrument(symbol), product)
            position.quantity, position.average_price = quantity, average_price
            if quantity > 0:
                position.buy_quantity, position.buy_value = quantity, quantity * average_price
            else:
                position.sell_quantity, position.sell_value = -quantity, -quantity * average_price
            if symbol not in self.quotes:
                self._move(position.instrument, average_price)

    def _position(self, instrument: Instrument, product: str) -> Position:
        key = (instrument.symbol, product)
        if key not in self.positions:
            self.positions[key] = Position(instrument, product)
        return self.positions[key]

    def net_quantity(self, symbol: str, product: str = "MIS") -> int:
        with self.lock:
            position = self.positions.get((symbol, product))
            return 0 if position is None else position.quantity

    def _fill(self, position: Position, side: str, quantity: int, price: float) -> None:
        signed = quantity if side == "BUY" else -quantity
        if side == "BUY":
            position.buy_quantity += quantity
            position.buy_value += quantity * price
        else:
            position.sell_quantity += quantity
            position.sell_value += quantity * price
        before = position.quantity
        position.quantity += signed
        if before == 0 or (before > 0) == (signed > 0):
            total = abs(before) * position.average_price + quantity * price
            position.average_price = total / abs(position.quantity) if position.quantity else 0.0
        elif position.quantity == 0:
            position.average_price = 0.0

    def position_rows(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self._position_row(p) for p in self.positions.values()]

    def _position_row(self, p: Position) -> dict[str, Any]:
        quote = self.quotes.get(p.instrument.symbol)
        last = 0.0 if quote is None else quote.last_price
        pnl = (p.sell_value - p.buy_value) + p.quantity * last
        return {
            "tradingsymbol": p.instrument.tradingsymbol, "exchange": p.instrument.exchange,
            "instrument_token": p.instrument.token, "product": p.product,
            "quantity": p.quantity, "overnight_quantity": 0, "multiplier": 1,
            "average_price": p.average_price, "close_price": 0, "last_price": last,
            "value": p.sell_value - p.buy_value, "pnl": pnl, "m2m": pnl,
            "unrealised": pnl, "realised": 0,
            "buy_quantity": p.buy_quantity, "buy_price": _avg(p.buy_value, p.buy_quantity),
            "buy_value": p.buy_value, "buy_m2m": p.buy_value,
            "sell_quantity": p.sell_quantity, "sell_price": _avg(p.sell_value, p.sell_quantity),
            "sell_value": p.sell_value, "sell_m2m": p.sell_value,
            "day_buy_quantity": p.buy_quantity, "day_buy_price": _avg(p.buy_value, p.buy_quantity),
            "day_buy_value": p.buy_value, "day_sell_quantity": p.sell_quantity,
            "day_sell_price": _avg(p.sell_value, p.sell_quantity), "day_sell_value": p.sell_value,
        }

    # Orders --------------------------------------------------------------------

    def place(self, variety: str, form: dict[str, str], placed_by: str = "AB1234") -> str:
        """A regular order: checked, recorded, filled at the last price (or as the faults say)."""
        with self.lock:
            self.forms.append(dict(form))
            instrument, side, quantity = self._validate(variety, form)
            order_id = str(next(self._ids))
            base = self._order(order_id, variety, form, instrument=instrument, side=side,
                               quantity=quantity, placed_by=placed_by)
            history = [dict(base, status=status) for status in TRANSIENT]
            history.append(self._final(base, self.positions_for(instrument, form)))
            self.orders[order_id] = history
            lag = self.faults.history_lag.pop(0) if self.faults.history_lag else 0.0
            self._final_at[order_id] = time.monotonic() + lag
            final = history[-1]
        self._tell(final)
        return order_id

    def positions_for(self, instrument: Instrument, form: dict[str, str]) -> Position:
        return self._position(instrument, form.get("product", "MIS"))

    def _validate(self, variety: str, form: dict[str, str]) -> tuple[Instrument, str, int]:
        if variety != "regular":
            raise KiteRefusal(400, "InputException", f"Variety {variety} is not served here")
        missing = [k for k in ("tradingsymbol", "exchange", "transaction_type", "order_type",
                               "quantity", "product") if not form.get(k)]
        if missing:
            raise KiteRefusal(400, "InputException", f"Missing `{missing[0]}`")
        instrument = self.instrument(f"{form['exchange']}:{form['tradingsymbol']}")
        side = form["transaction_type"]
        if side not in ("BUY", "SELL"):
            raise KiteRefusal(400, "InputException", "Invalid `transaction_type`")
        if not form["quantity"].isdigit() or int(form["quantity"]) <= 0:
            raise KiteRefusal(400, "InputException", "Invalid `quantity`")
        quantity = int(form["quantity"])
        if instrument.lot_size > 1 and quantity % instrument.lot_size:
            raise KiteRefusal(400, "InputException", "Quantity should be a multiple of lot size")
        tag = form.get("tag", "")
        if tag and (len(tag) > 20 or not tag.isalnum()):
            raise KiteRefusal(400, "InputException", "Invalid `tag`")
        if form["order_type"] == "MARKET" and form.get("market_protection", "0") == "0":
            raise KiteRefusal(400, "InputException",
                              "Market orders without market protection are not allowed")
        return instrument, side, quantity

    def _order(self, order_id: str, variety: str, form: dict[str, str], *,
               instrument: Instrument, side: str, quantity: int, placed_by: str) -> dict[str, Any]:
        tag = form.get("tag") or None
        now = stamp()
        return {
            "placed_by": placed_by, "order_id": order_id, "exchange_order_id": None,
            "parent_order_id": None, "status": "", "status_message": None,
            "status_message_raw": None, "order_timestamp": now, "exchange_update_timestamp": None,
            "exchange_timestamp": None, "variety": variety, "modified": False,
            "exchange": instrument.exchange, "tradingsymbol": instrument.tradingsymbol,
            "instrument_token": instrument.token, "order_type": form["order_type"],
            "transaction_type": side, "validity": form.get("validity", "DAY"),
            "validity_ttl": 0, "product": form["product"], "quantity": quantity,
            "disclosed_quantity": 0, "price": float(form.get("price") or 0),
            "trigger_price": float(form.get("trigger_price") or 0), "average_price": 0,
            "filled_quantity": 0, "pending_quantity": quantity, "cancelled_quantity": 0,
            "market_protection": int(form.get("market_protection") or 0), "meta": {},
            "tag": tag, "tags": [tag] if tag else [], "guid": f"{order_id}x{placed_by}",
        }

    def _final(self, base: dict[str, Any], position: Position) -> dict[str, Any]:
        final = dict(base, exchange_order_id=f"13{base['order_id'][-14:]}",
                     exchange_timestamp=stamp(), exchange_update_timestamp=stamp())
        if self.faults.reject:
            reason = self.faults.reject.pop(0)
            return dict(final, status="REJECTED", status_message=reason,
                        status_message_raw=reason, pending_quantity=0, exchange_order_id=None)
        quantity = base["quantity"]
        filled = min(self.faults.partial.pop(0), quantity) if self.faults.partial else quantity
        price = self.quotes[position.instrument.symbol].last_price
        self._fill(position, base["transaction_type"], filled, price)
        status = "COMPLETE" if filled == quantity else "CANCELLED"
        message = None if filled == quantity else "Market protection: rest of the order cancelled"
        return dict(final, status=status, status_message=message, average_price=price,
                    filled_quantity=filled, pending_quantity=0,
                    cancelled_quantity=quantity - filled)

    def history(self, order_id: str) -> list[dict[str, Any]]:
        with self.lock:
            if order_id not in self.orders:
                raise KiteRefusal(400, "InputException", "Couldn't find that order")
            return [dict(entry) for entry in self._visible(order_id)]

    def order_book(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(self._visible(order_id)[-1]) for order_id in self.orders]

    def _visible(self, order_id: str) -> list[dict[str, Any]]:
        """The history REST shows now: still OPEN while a `lag_history_next` lag runs."""
        history = self.orders[order_id]
        return history if time.monotonic() >= self._final_at[order_id] else history[:-1]

    def close_by_hand(self, symbol: str, product: str = "MIS") -> str | None:
        """The trader squares off on Kite's own app: an order without a tag, filled now."""
        with self.lock:
            quantity = self.net_quantity(symbol, product)
            if quantity == 0:
                return None
            instrument = self.instrument(symbol)
            form = {"tradingsymbol": instrument.tradingsymbol, "exchange": instrument.exchange,
                    "transaction_type": "SELL" if quantity > 0 else "BUY", "order_type": "MARKET",
                    "quantity": str(abs(quantity)), "product": product, "validity": "DAY",
                    "market_protection": "-1"}
            faults, self.faults = self.faults, Faults()  # a hand close meets no test faults
            try:
                order_id = self.place("regular", form, placed_by="KITEWEB")
            finally:
                self.faults = faults
                self.forms.pop()  # not an API order: keep `forms` to what clients sent
            return order_id

    def _tell(self, order: dict[str, Any]) -> None:
        for listener in list(self.order_listeners):
            listener(dict(order))

    # Faults --------------------------------------------------------------------

    def reject_next(self, reason: str = "RMS: Margin exceeds") -> None:
        with self.lock:
            self.faults.reject.append(reason)

    def partial_next(self, filled: int) -> None:
        with self.lock:
            self.faults.partial.append(filled)

    def lag_history_next(self, seconds: float) -> None:
        """The next order's fill shows in REST only after `seconds` (the ticker's order
        update carries it at once), as when Kite's order update beats its order book."""
        with self.lock:
            self.faults.history_lag.append(seconds)

    def fail_next(self, status: int, path: str = "/", count: int = 1) -> None:
        """The next `count` requests under `path` answer `status` (429, 500, 502 as HTML, 503)."""
        with self.lock:
            self.faults.statuses.extend([(status, path)] * count)

    def drop_next_answer(self) -> None:
        """The next order is placed, but its answer is lost (the connection is cut)."""
        with self.lock:
            self.faults.drop_answers += 1

    def take_status(self, path: str) -> int | None:
        with self.lock:
            for i, (status, prefix) in enumerate(self.faults.statuses):
                if path.startswith(prefix):
                    del self.faults.statuses[i]
                    return status
            return None

    def take_drop(self) -> bool:
        with self.lock:
            if self.faults.drop_answers:
                self.faults.drop_answers -= 1
                return True
            return False

def _ladder(price: float, step: float) -> list[Level]:
    return [Level(10 * (i + 1), round(price + step * (i + 1), 4), i + 1) for i in range(5)]


def _avg(value: float, quantity: int) -> float:
    return value / quantity if quantity else 0.0
