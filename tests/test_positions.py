"""Stop rules, P&L and the validation of position requests."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeguard.errors import PositionError
from tradeguard.monitoring import Memory, Monitor, Settings
from tradeguard.positions import (
    Position,
    Side,
    State,
    close_from_request,
    distance_pct,
    levels_from_request,
    pnl,
    position_from_request,
    safe_band,
    start_trailing,
    trail,
    trail_level,
    trigger,
    validate_symbol,
)
from tradeguard.prices import Tick

LONG = Position("BOSCHLTD", Side.LONG, 10, 575.0, stop_loss=560.0, take_profit=600.0)
SHORT = Position("BOSCHLTD", Side.SHORT, 10, 575.0, stop_loss=600.0, take_profit=560.0)


def ticks(*prices: float, symbol: str = "BOSCHLTD") -> list[Tick]:
    return [Tick(symbol, p, 1000.0 + i) for i, p in enumerate(prices)]


def first_trigger(position: Position, *batches: list[Tick]) -> tuple[str, Tick] | None:
    """What the production stop engine closes for these batches, given in order."""
    monitor = Monitor(Settings(stale_after=30.0), Memory(started=0.0), clock=lambda: 1000.0)
    monitor.set_positions([position])
    requests = [r for batch in batches for r in monitor.on_ticks(batch)]
    assert len(requests) <= 1  # one close per position, however many ticks breach
    if not requests:
        return None
    assert requests[0].symbol == position.symbol and requests[0].hint is not None
    return requests[0].reason, requests[0].hint


# Single prices --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "price", "reason"),
    [
        (LONG, 575.0, None),
        (LONG, 560.01, None),
        (LONG, 560.0, "stop_loss"),  # <= stop_loss
        (LONG, 450.1, "stop_loss"),
        (LONG, 599.99, None),
        (LONG, 600.0, "take_profit"),  # >= take_profit
        (LONG, 700.0, "take_profit"),
        (SHORT, 575.0, None),
        (SHORT, 599.99, None),
        (SHORT, 600.0, "stop_loss"),  # >= stop_loss
        (SHORT, 800.0, "stop_loss"),
        (SHORT, 560.01, None),
        (SHORT, 560.0, "take_profit"),  # <= take_profit
        (SHORT, 1.0, "take_profit"),
    ],
)
def test_trigger_levels_and_boundaries(
    position: Position, price: float, reason: str | None
) -> None:
    assert trigger(position, price) == reason


def test_a_missing_level_never_triggers() -> None:
    sl_only = Position("X", Side.LONG, 1, 100.0, stop_loss=90.0, take_profit=None)
    tp_only = Position("X", Side.SHORT, 1, 100.0, stop_loss=None, take_profit=90.0)
    assert trigger(sl_only, 10_000.0) is None
    assert trigger(sl_only, 90.0) == "stop_loss"
    assert trigger(tp_only, 10_000.0) is None
    assert trigger(tp_only, 90.0) == "take_profit"


# Batches ------------------------------------------------------------------------


def test_a_one_tick_breach_inside_a_batch_triggers() -> None:
    batch = ticks(575.0, 559.0, 575.0, 576.0)
    assert first_trigger(LONG, batch) == ("stop_loss", batch[1])


def test_a_take_profit_and_a_stop_loss_in_one_batch_resolve_by_tick_order() -> None:
    tp_first = ticks(601.0, 450.0)
    sl_first = ticks(450.0, 601.0)
    assert first_trigger(LONG, tp_first) == ("take_profit", tp_first[0])
    assert first_trigger(LONG, sl_first) == ("stop_loss", sl_first[0])
    short_batch = ticks(570.0, 555.0, 650.0)
    assert first_trigger(SHORT, short_batch) == ("take_profit", short_batch[1])


def test_ticks_of_other_symbols_are_ignored() -> None:
    batch = [Tick("INFY", 1.0, 1.0), Tick("INFY", 10_000.0, 2.0), Tick("BOSCHLTD", 575.0, 3.0)]
    assert first_trigger(LONG, batch) is None
    assert first_trigger(LONG, []) is None


def test_later_batches_after_a_breach_close_nothing_more() -> None:
    assert first_trigger(LONG, ticks(575.0), ticks(559.0), ticks(450.0, 601.0)) == (
        "stop_loss", ticks(559.0)[0])


@st.composite
def positions(draw: st.DrawFn) -> Position:
    side = draw(st.sampled_from(Side))
    entry = draw(st.floats(10.0, 1000.0))
    below = draw(st.none() | st.floats(1.0, entry).filter(lambda v: v < entry))
    above = draw(st.none() | st.floats(entry, 2000.0).filter(lambda v: v > entry))
    if below is None and above is None:
        below = entry / 2
    sl, tp = (below, above) if side is Side.LONG else (above, below)
    return Position("SYM", side, 1.0, entry, stop_loss=sl, take_profit=tp)


def crossing(position: Position, price: float) -> str | None:
    """The rule written out independently of `trigger`."""
    sl, tp = position.stop_loss, position.take_profit
    if position.side is Side.LONG:
        hit_sl = sl is not None and price <= sl
        hit_tp = tp is not None and price >= tp
    else:
        hit_sl = sl is not None and price >= sl
        hit_tp = tp is not None and price <= tp
    return "stop_loss" if hit_sl else "take_profit" if hit_tp else None


@given(
    position=positions(),
    moves=st.lists(st.tuples(st.booleans(), st.floats(0.5, 2500.0)), max_size=40),
    cuts=st.sets(st.integers(0, 40), max_size=5),
)
def test_the_monitor_closes_exactly_at_the_first_crossing_tick(
    position: Position, moves: list[tuple[bool, float]], cuts: set[int]
) -> None:
    """The engine production runs (tradeguard.monitoring), over the batches the feed cut."""
    batch = [Tick("SYM" if own else "OTHER", price, float(i))
             for i, (own, price) in enumerate(moves)]
    crossings = [(crossing(position, t.price), t) for t in batch
                 if t.symbol == "SYM" and crossing(position, t.price)]
    edges = [0, *sorted(min(cut, len(batch)) for cut in cuts), len(batch)]
    batches = [batch[a:b] for a, b in itertools.pairwise(edges)]
    result = first_trigger(position, *batches)
    if not crossings:
        assert result is None
    else:
        assert result is not None
        assert result[0] == crossings[0][0]
        assert result[1] is crossings[0][1]


# P&L and helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "exit_price", "expected"),
    [
        (LONG, 600.0, 250.0),
        (LONG, 450.1, -1249.0),
        (LONG, 575.0, 0.0),
        (SHORT, 560.0, 150.0),
        (SHORT, 600.0, -250.0),
    ],
)
def test_pnl(position: Position, exit_price: float, expected: float) -> None:
    assert pnl(position, exit_price) == pytest.approx(expected)


def test_exit_side_and_distance() -> None:
    assert LONG.exit_side == "sell"
    assert SHORT.exit_side == "buy"
    assert distance_pct(500.0, 450.0) == -10.0
    assert distance_pct(500.0, None) is None


def test_as_json_has_the_spec_fields() -> None:
    body = LONG.as_json()
    spec_fields = {"symbol", "side", "quantity", "entry_price", "stop_loss", "take_profit",
                   "state", "exit_price", "pnl", "reason", "opened_at", "closed_at"}
    assert spec_fields <= set(body)
    assert body["side"] == "long"
    assert body["state"] == "open"
    assert "client_order_id" in body


# Requests -----------------------------------------------------------------------


def good_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"symbol": "boschltd", "side": "long", "quantity": 10,
                            "entry_price": 575.0, "stop_loss": 560.0, "take_profit": 600}
    body.update(changes)
    return body


def test_a_good_request_becomes_an_open_position() -> None:
    position = position_from_request(good_body(), now=1234.5)
    assert position == Position("BOSCHLTD", Side.LONG, 10.0, 575.0, 560.0, 600.0,
                                state=State.OPEN, opened_at=1234.5)
    assert isinstance(position.take_profit, float)


@pytest.mark.parametrize(
    "body",
    [
        good_body(stop_loss=None),
        good_body(take_profit=None),
        {k: v for k, v in good_body().items() if k != "take_profit"},
        good_body(side="short", stop_loss=600.0, take_profit=None),
        good_body(symbol="  M&M.NS-1_A:B  "),
    ],
)
def test_one_level_is_enough(body: dict[str, Any]) -> None:
    position_from_request(body, now=0.0)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([], "JSON object"),
        ("{}", "JSON object"),
        (None, "JSON object"),
        (good_body(colour="red"), "unknown field(s): colour"),
        ({**good_body(), "a": 1, "b": 2}, "unknown field(s): a, b"),
        (good_body(symbol=None), "symbol"),
        (good_body(symbol=""), "symbol"),
        (good_body(symbol="   "), "symbol"),
        (good_body(symbol=5), "symbol"),
        (good_body(symbol="X" * 65), "symbol"),
        (good_body(symbol="BOSCH LTD"), "symbol"),
        (good_body(symbol="A/B"), "symbol"),
        (good_body(side="sideways"), "side"),
        (good_body(side=None), "side"),
        (good_body(side=["long"]), "side"),
        (good_body(side="LONG"), "side"),
        (good_body(quantity=0), "quantity"),
        (good_body(quantity=-1), "quantity"),
        (good_body(quantity=None), "quantity"),
        (good_body(quantity="10"), "quantity"),
        (good_body(quantity=True), "quantity"),
        (good_body(quantity=float("nan")), "quantity"),
        pytest.param(good_body(quantity=10**400), "quantity", id="huge-int-quantity"),
        (good_body(entry_price=0), "entry_price"),
        (good_body(entry_price=float("inf")), "entry_price"),
        (good_body(entry_price="575"), "entry_price"),
        (good_body(stop_loss=-5), "stop_loss"),
        (good_body(stop_loss="560"), "stop_loss"),
        (good_body(take_profit=[600]), "take_profit"),
        (good_body(stop_loss=None, take_profit=None), "at least one"),
        ({k: v for k, v in good_body().items() if k not in ("stop_loss", "take_profit")},
         "at least one"),
        (good_body(stop_loss=575.0), "stop_loss: must be below"),
        (good_body(stop_loss=580.0), "stop_loss: must be below"),
        (good_body(take_profit=575.0), "take_profit: must be above"),
        (good_body(take_profit=500.0), "take_profit: must be above"),
        (good_body(side="short"), "take_profit: must be below"),
        (good_body(side="short", take_profit=None), "stop_loss: must be above"),
        (good_body(side="short", stop_loss=575.0, take_profit=None), "stop_loss: must be above"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_problem(body: Any, words: str) -> None:
    with pytest.raises(PositionError) as info:
        position_from_request(body, now=0.0)
    assert info.value.code == 400
    assert words in str(info.value)


def test_validate_symbol_normalises() -> None:
    assert validate_symbol(" boschltd ") == "BOSCHLTD"


OPEN = position_from_request(good_body(), now=0.0)


@pytest.mark.parametrize(
    ("body", "stop_loss", "take_profit"),
    [
        ({"stop_loss": 565.0}, 565.0, 600.0),
        ({"take_profit": 610}, 560.0, 610.0),
        ({"stop_loss": 550.0, "take_profit": 650.0}, 550.0, 650.0),
        ({"stop_loss": None}, None, 600.0),
        ({"take_profit": None}, 560.0, None),
    ],
)
def test_new_levels_replace_only_what_is_given(
    body: dict[str, Any], stop_loss: float | None, take_profit: float | None
) -> None:
    updated = levels_from_request(body, OPEN)
    assert (updated.stop_loss, updated.take_profit) == (stop_loss, take_profit)
    assert (updated.symbol, updated.entry_price, updated.opened_at) == ("BOSCHLTD", 575.0, 0.0)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "JSON object"),
        ([], "JSON object"),
        ("stop_loss", "JSON object"),
        ({"stop_loss": 550.0, "quantity": 5}, "unknown field(s): quantity"),
        ({"stop_loss": None, "take_profit": None}, "at least one"),
        ({"stop_loss": 580.0}, "stop_loss: must be below"),
        ({"take_profit": 570.0}, "take_profit: must be above"),
        ({"stop_loss": "550"}, "stop_loss"),
        ({"take_profit": float("nan")}, "take_profit"),
        ({"stop_loss": 0}, "stop_loss"),
    ],
)
def test_bad_new_levels_are_a_400(body: Any, words: str) -> None:
    with pytest.raises(PositionError) as info:
        levels_from_request(body, OPEN)
    assert info.value.code == 400
    assert words in str(info.value)


def test_new_levels_of_a_short_are_checked_mirrored() -> None:
    short = position_from_request(good_body(side="short", stop_loss=600.0, take_profit=550.0),
                                  now=0.0)
    assert levels_from_request({"stop_loss": 590.0}, short).stop_loss == 590.0
    with pytest.raises(PositionError, match="stop_loss: must be above"):
        levels_from_request({"stop_loss": 560.0}, short)


@given(
    side=st.sampled_from([Side.LONG, Side.SHORT]),
    price=st.floats(min_value=1, max_value=2000, allow_nan=False),
    sl_off=st.one_of(st.none(), st.floats(min_value=0.01, max_value=500)),
    tp_off=st.one_of(st.none(), st.floats(min_value=0.01, max_value=500)),
)
def test_safe_band_is_exactly_where_no_level_fires(
    side: Side, price: float, sl_off: float | None, tp_off: float | None
) -> None:
    entry = 1000.0
    sign = 1 if side is Side.LONG else -1
    sl = None if sl_off is None else entry - sign * sl_off
    tp = None if tp_off is None else entry + sign * tp_off
    position = Position("SYM", side, 1, entry, sl, tp)
    low, high = safe_band(position)
    assert (low < price < high) == (trigger(position, price) is None)


def test_close_request_defaults_to_emergency_and_refuses_other_reasons() -> None:
    assert close_from_request({"symbol": "boschltd"}) == ("BOSCHLTD", "emergency")
    assert close_from_request({"symbol": "X", "reason": "take_profit"}) == ("X", "take_profit")
    bodies: list[Any] = [[], {"symbol": "X", "reason": "blind"}, {"reason": "emergency"}]
    for body in bodies:
        with pytest.raises(PositionError) as err:
            close_from_request(body)
        assert err.value.code == 400


# Trailing stops (SPEC §4) and products -------------------------------------------------


@st.composite
def trailing_positions(draw: st.DrawFn) -> Position:
    """A position from `positions()` with a trailing stop set at some best price."""
    position = draw(positions())
    pct = draw(st.floats(0.01, 99.99))
    sign = 1.0 if position.side is Side.LONG else -1.0
    best = position.entry_price * (1 + sign * draw(st.floats(0.0, 0.5)))
    return start_trailing(position, pct, best)


@given(position=trailing_positions(), prices=st.lists(st.floats(0.5, 3000.0), max_size=30))
def test_trail_only_ever_tightens_the_stop_and_betters_best(
    position: Position, prices: list[float]
) -> None:
    long = position.side is Side.LONG
    for price in prices:
        moved = trail(position, price)
        if moved is None:
            assert position.best is not None
            assert (price <= position.best) if long else (price >= position.best)
            continue
        assert moved.best == price
        assert moved.stop_loss is not None and position.stop_loss is not None
        assert (moved.stop_loss >= position.stop_loss) if long else (
            moved.stop_loss <= position.stop_loss)
        assert trigger(moved, price) != "stop_loss"  # the tick that moves it never fires it
        position = moved


@given(position=trailing_positions(), price=st.floats(0.5, 3000.0))
def test_safe_band_with_a_trail_is_where_nothing_fires_and_nothing_moves(
    position: Position, price: float
) -> None:
    low, high = safe_band(position)
    if low < price < high:
        assert trigger(position, price) is None and trail(position, price) is None


@given(pct=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 200))
def test_trailing_pct_is_accepted_exactly_between_0_and_100(pct: float) -> None:
    """Above 0 and below 100, and not so small that the stop would sit on the entry."""
    body = {"symbol": "X", "side": "long", "quantity": 1, "entry_price": 100.0,
            "stop_loss": None, "take_profit": None, "trailing_stop_pct": pct}
    if 0 < pct < 100 and trail_level(Side.LONG, 100.0, pct) < 100.0:
        position = position_from_request(body, 0.0)
        assert position.stop_loss == trail_level(Side.LONG, 100.0, float(pct))
        assert position.best == 100.0 and position.stop_loss < 100.0
    else:
        with pytest.raises(PositionError, match="trailing_stop_pct"):
            position_from_request(body, 0.0)


def test_product_is_either_brokers_spelling_or_left_for_the_default() -> None:
    body = {"symbol": "X", "side": "long", "quantity": 1, "entry_price": 100.0,
            "stop_loss": 90.0}
    assert position_from_request(body, 0.0).product is None
    assert position_from_request({**body, "product": "I"}, 0.0).intraday
    assert not position_from_request({**body, "product": "CNC"}, 0.0).intraday
    with pytest.raises(PositionError, match="product"):
        position_from_request({**body, "product": "intraday"}, 0.0)
