"""Positions, their validation, the stop rules and P&L.

Long: stop-loss when price <= stop_loss, take-profit when price >= take_profit.
Short is the mirror. `tradeguard.monitoring` applies the rule to every tick
of a batch in arrival order, so the first crossing wins and a single breaching
tick inside a burst is never lost, even if the next tick is back inside.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tradeguard.errors import PositionError
from tradeguard.prices import valid_price


class Side(enum.StrEnum):
    LONG = "long"
    SHORT = "short"


class State(enum.StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    CLOSE_FAILED = "close_failed"
    RELEASED = "released"  # no longer guarded, left open at the broker on purpose


LIVE_STATES = frozenset({State.OPEN, State.CLOSING, State.CLOSE_FAILED})  # still held at the broker


class Reason(enum.StrEnum):
    """Why a position was closed (SPEC §6 `reason`)."""

    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    EMERGENCY = "emergency"
    BLIND = "blind"  # closed by blind_policy = "close"
    CLOSED_AT_BROKER = "closed_at_broker"  # the broker held nothing: no order was sent


MANUAL_REASONS = (Reason.STOP_LOSS, Reason.TAKE_PROFIT, Reason.EMERGENCY)  # an operator may give
REASONS = tuple(Reason)


@dataclass(frozen=True)
class Position:
    symbol: str
    side: Side
    quantity: float
    entry_price: float
    stop_loss: float | None
    take_profit: float | None
    state: State = State.OPEN
    id: int | None = None
    client_order_id: str | None = None
    order_id: str | None = None
    exit_price: float | None = None
    pnl: float | None = None
    reason: str | None = None
    opened_at: float | None = None
    closed_at: float | None = None
    close_attempts: int = 0
    last_error: str | None = None
    # time.monotonic() of this process when the position was opened and when its
    # levels last changed; None when that happened in an earlier process (then
    # every price this process received is newer). Decisions compare these with
    # a tick's received time; they are never stored.
    opened_mono: float | None = None
    levels_mono: float | None = None
    # What earlier close attempts filled (a partial fill): quantity and sum of quantity x price.
    filled_quantity: float = 0.0
    filled_value: float = 0.0

    @property
    def remaining(self) -> float:
        """What a close still has to sell (long) or buy (short)."""
        return max(0.0, self.quantity - self.filled_quantity)

    @property
    def exit_side(self) -> str:
        """The broker order side that closes this position."""
        return "sell" if self.side is Side.LONG else "buy"

    def as_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "side": self.side.value,
            "quantity": self.quantity,
            "entry_price": self.entry_price,
            "stop_loss": self.stop_loss,
            "take_profit": self.take_profit,
            "state": self.state.value,
            "exit_price": self.exit_price,
            "pnl": self.pnl,
            "reason": self.reason,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "client_order_id": self.client_order_id,
            "order_id": self.order_id,
        }


def trigger(position: Position, price: float) -> Reason | None:
    """The reason a single price closes the position, or None."""
    sl, tp = position.stop_loss, position.take_profit
    if position.side is Side.LONG:
        if sl is not None and price <= sl:
            return Reason.STOP_LOSS
        if tp is not None and price >= tp:
            return Reason.TAKE_PROFIT
    else:
        if sl is not None and price >= sl:
            return Reason.STOP_LOSS
        if tp is not None and price <= tp:
            return Reason.TAKE_PROFIT
    return None


def safe_band(position: Position) -> tuple[float, float]:
    """The open interval of prices at which `trigger` fires neither level.

    The monitor compares each tick with it first: under load only prices
    outside the band go through the stop rules.
    """
    low, high = ((position.stop_loss, position.take_profit) if position.side is Side.LONG
                 else (position.take_profit, position.stop_loss))
    return (-math.inf if low is None else low, math.inf if high is None else high)


def pnl(position: Position, exit_price: float) -> float:
    """Profit (positive) or loss (negative) of closing at `exit_price`."""
    direction = 1.0 if position.side is Side.LONG else -1.0
    return round(direction * (exit_price - position.entry_price) * position.quantity, 6)


def distance_pct(price: float, level: float | None) -> float | None:
    """How far `level` is from `price`, in percent of the price."""
    if level is None:
        return None
    return round((level - price) / price * 100.0, 3)


def _number(body: Mapping[str, Any], key: str, *, optional: bool) -> float | None:
    value: Any = body.get(key)
    if value is None and optional:
        return None
    if not valid_price(value):
        need = "a number above 0" + (" or null" if optional else "")
        raise PositionError(f"{key}: must be {need}")
    return float(value)


def validate_symbol(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise PositionError("symbol: must be a non-empty string of at most 64 characters")
    symbol = value.strip().upper()
    if not all(c.isalnum() or c in "-_.&:" for c in symbol):
        raise PositionError("symbol: may hold letters, digits and - _ . & : only")
    return symbol


def check_levels(
    side: Side, entry: float, stop_loss: float | None, take_profit: float | None
) -> None:
    """Levels must exist (one at least) and sit on the right side of the entry."""
    if stop_loss is None and take_profit is None:
        raise PositionError("stop_loss and take_profit: at least one must be set")
    below, above = (stop_loss, take_profit) if side is Side.LONG else (take_profit, stop_loss)
    below_name, above_name = (
        ("stop_loss", "take_profit") if side is Side.LONG else ("take_profit", "stop_loss")
    )
    if below is not None and not below < entry:
        raise PositionError(f"{below_name}: must be below entry_price for a {side.value}")
    if above is not None and not above > entry:
        raise PositionError(f"{above_name}: must be above entry_price for a {side.value}")


def position_from_request(body: Any, now: float) -> Position:
    """Validate an open-position request body (SPEC §6) into a new Position."""
    if not isinstance(body, dict):
        raise PositionError("body: must be a JSON object")
    unknown = set(body) - {"symbol", "side", "quantity", "entry_price", "stop_loss",
                           "take_profit"}
    if unknown:
        raise PositionError(f"unknown field(s): {', '.join(sorted(unknown))}")
    symbol = validate_symbol(body.get("symbol"))
    try:
        side = Side(str(body.get("side")))
    except ValueError:
        raise PositionError("side: must be 'long' or 'short'") from None
    quantity = _number(body, "quantity", optional=False)
    entry = _number(body, "entry_price", optional=False)
    assert quantity is not None and entry is not None
    stop_loss = _number(body, "stop_loss", optional=True)
    take_profit = _number(body, "take_profit", optional=True)
    check_levels(side, entry, stop_loss, take_profit)
    return Position(symbol, side, quantity, entry, stop_loss, take_profit, opened_at=now)


def close_from_request(body: Any) -> tuple[str, Reason]:
    """Validate an emergency-close body (SPEC §6) into (symbol, reason)."""
    if not isinstance(body, dict):
        raise PositionError("body: must be a JSON object")
    symbol = validate_symbol(body.get("symbol"))
    reason = body.get("reason", Reason.EMERGENCY)
    if reason not in MANUAL_REASONS:
        raise PositionError(f"reason: must be one of {', '.join(MANUAL_REASONS)}")
    return symbol, Reason(reason)


def levels_from_request(body: Any, position: Position) -> Position:
    """Validate a PATCH body and return the position with its new levels."""
    if not isinstance(body, dict) or not body:
        raise PositionError("body: must be a JSON object with stop_loss and/or take_profit")
    unknown = set(body) - {"stop_loss", "take_profit"}
    if unknown:
        raise PositionError(f"unknown field(s): {', '.join(sorted(unknown))}")
    stop_loss = (
        _number(body, "stop_loss", optional=True) if "stop_loss" in body else position.stop_loss
    )
    take_profit = (
        _number(body, "take_profit", optional=True)
        if "take_profit" in body
        else position.take_profit
    )
    check_levels(position.side, position.entry_price, stop_loss, take_profit)
    return replace(position, stop_loss=stop_loss, take_profit=take_profit)
