"""The stand-in's GTTs (Kite's good-till-triggered orders, the backstop of SPEC §13).

Stored in Kite's shapes (brokers.md §2.4; pykiteconnect `_get_gtt_payload`),
fired when a price set on the book crosses a trigger, or by `trigger` by hand:
the leg's LIMIT order is placed on the book and the GTT shows its result.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from tradeguard.sim.kite.errors import KiteRefusal, stamp

if TYPE_CHECKING:
    from tradeguard.sim.kite.book import KiteBook

LIFETIME = 365 * 86_400  # Kite's GTTs last about a year


class Gtts:
    """The GTTs by id; guarded by the book's lock."""

    def __init__(self, book: KiteBook) -> None:
        self._book = book
        self._items: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(100_001)

    def all(self) -> list[dict[str, Any]]:
        with self._book.lock:
            return list(self._items.values())

    def price_moved(self, symbol: str, price: float) -> None:
        """Fire every active GTT of `symbol` that `price` crosses (the book holds its lock)."""
        for gtt_id in self._crossed(symbol, price):
            self.trigger(gtt_id)

    def place(self, form: dict[str, Any]) -> int:
        with self._book.lock:
            gtt_id = next(self._ids)
            self._items[gtt_id] = self._build(gtt_id, form, stamp())
            return gtt_id

    def modify(self, gtt_id: int, form: dict[str, Any]) -> int:
        with self._book.lock:
            old = self._active(gtt_id)
            self._items[gtt_id] = self._build(gtt_id, form, old["created_at"])
            return gtt_id

    def delete(self, gtt_id: int) -> int:
        with self._book.lock:
            self._active(gtt_id)["status"] = "deleted"
            return gtt_id

    def get(self, gtt_id: int) -> dict[str, Any]:
        with self._book.lock:
            if gtt_id not in self._items:
                raise KiteRefusal(404, "InputException", "Trigger not found")
            return self._items[gtt_id]

    def _active(self, gtt_id: int) -> dict[str, Any]:
        gtt = self.get(gtt_id)
        if gtt["status"] != "active":
            raise KiteRefusal(400, "InputException", f"Trigger is {gtt['status']}")
        return gtt

    def _build(self, gtt_id: int, form: dict[str, Any], created: str) -> dict[str, Any]:
        kind, condition, orders = form["type"], form["condition"], form["orders"]
        values = condition.get("trigger_values") or []
        if kind not in ("single", "two-leg") or len(values) != (1 if kind == "single" else 2):
            raise KiteRefusal(400, "InputException", "Invalid trigger type or trigger values")
        if len(orders) != len(values):
            raise KiteRefusal(400, "InputException", "One order per trigger value")
        instrument = self._book.instrument(f"{condition['exchange']}:{condition['tradingsymbol']}")
        for order in orders:
            if order.get("order_type") != "LIMIT":
                raise KiteRefusal(400, "InputException", "Only LIMIT orders are allowed in a GTT")
        return {
            "id": gtt_id, "user_id": "AB1234", "parent_trigger": None, "type": kind,
            "created_at": created, "updated_at": stamp(),
            "expires_at": stamp(time.time() + LIFETIME),
            "status": "active",
            "condition": {"exchange": instrument.exchange,
                          "tradingsymbol": instrument.tradingsymbol,
                          "instrument_token": instrument.token,
                          "last_price": float(condition.get("last_price") or 0),
                          "trigger_values": [float(v) for v in values]},
            "orders": [dict(o, result=None) for o in orders], "meta": None,
        }

    def _crossed(self, symbol: str, price: float) -> list[int]:
        crossed = []
        for gtt in self._items.values():
            cond = gtt["condition"]
            mine = f"{cond['exchange']}:{cond['tradingsymbol']}" == symbol
            if gtt["status"] == "active" and mine and _leg(gtt, price) is not None:
                crossed.append(gtt["id"])
        return crossed

    def trigger(self, gtt_id: int, leg: int | None = None) -> str:
        """Fire the GTT (the leg the price chose, or `leg`): its LIMIT order is placed, filled."""
        with self._book.lock:
            gtt = self._active(gtt_id)
            cond = gtt["condition"]
            price = self._book.price(f"{cond['exchange']}:{cond['tradingsymbol']}")
            chosen = leg if leg is not None else (_leg(gtt, price) or 0)
            order = gtt["orders"][chosen]
            form = {k: str(order[k]) for k in ("exchange", "tradingsymbol", "transaction_type",
                                               "quantity", "product", "price")}
            form.update(order_type="LIMIT", validity="DAY")
            order_id = self._book.place("regular", form, placed_by="GTT")
            self._book.forms.pop()
            gtt["status"], gtt["updated_at"] = "triggered", stamp()
            gtt["orders"][chosen]["result"] = {
                "account_id": "AB1234", "exchange": order["exchange"],
                "tradingsymbol": order["tradingsymbol"], "validity": "DAY",
                "product": order["product"],
                "order_type": "LIMIT", "transaction_type": order["transaction_type"],
                "quantity": int(order["quantity"]), "price": float(order["price"]),
                "meta": "", "timestamp": stamp(), "triggered_at": price,
                "order_result": {"status": "success", "order_id": order_id, "rejection_reason": ""},
            }
            return order_id



def _leg(gtt: dict[str, Any], price: float) -> int | None:
    """Which leg a price fires: single fires when the price reaches its value from last_price's
    side; two-leg fires the lower leg at or below it, the upper at or above it."""
    values = gtt["condition"]["trigger_values"]
    if gtt["type"] == "two-leg":
        return 0 if price <= values[0] else 1 if price >= values[1] else None
    last = gtt["condition"]["last_price"]
    below = last > values[0]
    return 0 if (price <= values[0] if below else price >= values[0]) else None
