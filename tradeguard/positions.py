"""Positions, their validation, the stop rules and P&L.

Long: stop-loss when price <= stop_loss, take-profit when price >= take_profit.
Short is the mirror. `tradeguard.monitoring` applies the rule to every tick
of a batch in arrival order, so the first crossing wins and a single breaching
tick inside a burst is never lost, even if the next tick is back inside.

A trailing stop (`trailing_stop_pct`) follows `best`, the best price since it
was set: a long's stop rises to `best x (1 - pct/100)` whenever `best` rises and
never falls (a short's mirrored). `trail` is that rule for one price; the
monitor applies it to every tick before the tick is checked against the stop.
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
    SQUARE_OFF = "square_off"  # an intraday position closed at market.square_off
    CLOSED_AT_BROKER = "closed_at_broker"  # the broker held nothing: no order was sent


MANUAL_REASONS = (Reason.STOP_LOSS, Reason.TAKE_PROFIT, Reason.EMERGENCY)  # an operator may give
REASONS = tuple(Reason)

# SPEC §3 broker.product: Kite's names and Upstox's, either accepted and kept as given.
PRODUCTS = ("MIS", "CNC", "NRML", "MTF", "I", "D")
INTRADAY_PRODUCTS = frozenset({"MIS", "I"})  # what the broker squares off itself
SOURCES = ("api", "broker")  # who told TradeGuard about the position (broker: adopted)


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
    trailing_stop_pct: float | None = None
    best: float | None = None  # best price since the trailing stop was set; None if none is
    product: str | None = None  # None: stored before TradeGuard knew products (never intraday)
    source: str = "api"

    @property
    def intraday(self) -> bool:
        """An intraday product (MIS, I): closed at market.square_off."""
        return self.product in INTRADAY_PRODUCTS

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
            "trailing_stop_pct": self.trailing_stop_pct,
            "product": self.product,
            "source": self.source,
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
    """The open interval of prices at which `trigger` fires neither level and `trail` moves nothing.

    The monitor compares each tick with it first: under load only prices
    outside the band go through the stop rules.
    """
    long = position.side is Side.LONG
    low, high = ((position.stop_loss, position.take_profit) if long
                 else (position.take_profit, position.stop_loss))
    low_f, high_f = -math.inf if low is None else low, math.inf if high is None else high
    if position.trailing_stop_pct is not None and position.best is not None:
        # A better price than `best` moves the stop: it must leave the band.
        return (low_f, min(high_f, position.best)) if long else (max(low_f, position.best), high_f)
    return low_f, high_f


def trail_level(side: Side, best: float, pct: float) -> float:
    """Where a trailing stop `pct` percent from `best` stands."""
    factor = (100.0 - pct) if side is Side.LONG else (100.0 + pct)
    level = best * factor / 100.0
    shown = round(level, 6)  # 114.0, not 113.99999999999999, unless that reaches `best`
    return shown if (shown < best if side is Side.LONG else shown > best) else level


def better(side: Side, a: float, b: float) -> float:
    """The better of two prices for the holder: the higher for a long, the lower for a short."""
    return max(a, b) if side is Side.LONG else min(a, b)


def tighter(side: Side, stop: float | None, level: float) -> float:
    """The stop nearer the market of the two (the higher for a long)."""
    return level if stop is None else better(side, stop, level)


def trail(position: Position, price: float) -> Position | None:
    """The position with its trailing stop moved by `price`, or None if it does not move.

    `best` follows only a better price, and the stop only ever tightens: a long's
    never moves down, a short's never up.
    """
    pct, best, side = position.trailing_stop_pct, position.best, position.side
    if pct is None or best is None:
        return None
    if not (price > best if side is Side.LONG else price < best):
        return None
    stop = tighter(side, position.stop_loss, trail_level(side, price, pct))
    return _with_trail(position, price, stop)


def _with_trail(position: Position, best: float, stop: float) -> Position:
    """`replace(position, best=best, stop_loss=stop)`, made directly.

    In a rally every tick moves the stop, and `replace` re-runs `__init__` over
    every field (about 7 µs, against under 1 µs for this copy).
    """
    moved = object.__new__(Position)
    moved.__dict__.update(position.__dict__, best=best, stop_loss=stop)
    return moved


def start_trailing(position: Position, pct: float, best: float) -> Position:
    """The trailing stop (re)set at `pct` from `best`: the stop tightens to it at once.

    A stop already nearer the market stays: setting or widening the trail never
    loosens a stop (only an explicit `stop_loss` does).
    """
    level = trail_level(position.side, best, pct)
    return replace(position, trailing_stop_pct=pct, best=best,
                   stop_loss=tighter(position.side, position.stop_loss, level))


def past_stop(position: Position, price: float) -> float:
    """How far `price` is beyond the stop-loss, as a fraction of it; 0 when it is not.

    A broker that must queue closes (Kite's 10 orders a second) sends the
    worst first: the position whose price has run furthest through its stop.
    """
    stop = position.stop_loss
    if stop is None:
        return 0.0
    beyond = stop - price if position.side is Side.LONG else price - stop
    return max(0.0, beyond / stop)


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
    side: Side, entry: float, stop_loss: float | None, take_profit: float | None,
    *, trailing: bool = False,
) -> None:
    """Levels must exist (one at least, unless a trailing stop will set the stop) and sit
    on the right side of the entry."""
    if stop_loss is None and take_profit is None and not trailing:
        raise PositionError("stop_loss and take_profit: at least one must be set")
    below, above = (stop_loss, take_profit) if side is Side.LONG else (take_profit, stop_loss)
    below_name, above_name = (
        ("stop_loss", "take_profit") if side is Side.LONG else ("take_profit", "stop_loss")
    )
    if below is not None and not below < entry:
        raise PositionError(f"{below_name}: must be below entry_price for a {side.value}")
    if above is not None and not above > entry:
        raise PositionError(f"{above_name}: must be above entry_price for a {side.value}")


def trailing_pct(value: Any) -> float | None:
    """A checked `trailing_stop_pct`: null, or a percentage strictly between 0 and 100."""
    if value is None:
        return None
    if not valid_price(value) or not value < 100:
        raise PositionError("trailing_stop_pct: must be a number above 0 and below 100, or null")
    return float(value)


def product_from(value: Any) -> str | None:
    """A checked `product` (either broker's spelling, SPEC §3); None: the broker.product default."""
    if value is None:
        return None
    if value not in PRODUCTS:
        raise PositionError(f"product: must be one of {', '.join(PRODUCTS)} (or null)")
    return str(value)


OPEN_FIELDS = frozenset({"symbol", "side", "quantity", "entry_price", "stop_loss",
                         "take_profit", "trailing_stop_pct", "product"})


def position_from_request(body: Any, now: float) -> Position:
    """Validate an open-position request body (SPEC §6) into a new Position.

    With `trailing_stop_pct` the stop may be null: the trail starts at the entry
    (the best price so far), and its level is the stop unless one nearer the
    market is given. A `product` left out is None, for the caller's default.
    """
    if not isinstance(body, dict):
        raise PositionError("body: must be a JSON object")
    unknown = set(body) - OPEN_FIELDS
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
    pct = trailing_pct(body.get("trailing_stop_pct"))
    check_levels(side, entry, stop_loss, take_profit, trailing=pct is not None)
    position = Position(symbol, side, quantity, entry, stop_loss, take_profit, opened_at=now,
                        product=product_from(body.get("product")))
    if pct is None:
        return position
    trailing = start_trailing(position, pct, entry)
    if trailing.stop_loss == entry:
        raise PositionError("trailing_stop_pct: too small to put the stop apart from entry_price")
    return trailing


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
