"""Trailing stops (SPEC §4): the engine on every tick, the store, and the whole service.

The price path of issue 18, 100 -> 110 -> 120 -> 113.9 with a 5% trail, moves a
long's stop to 114 and closes it at 113.9: in the pure engine, in a property
test against a plain model of the rule, and end to end (API, loopback
exchange, paper broker, a restart in between).
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.harness import Harness, running
from tests.support.waiting import wait_until
from tradeguard.brokers import PaperBroker
from tradeguard.monitoring import Memory, Monitor, Settings
from tradeguard.positions import (
    Position,
    Side,
    State,
    better,
    start_trailing,
    tighter,
    trail_level,
    trigger,
)
from tradeguard.prices import Tick
from tradeguard.store import SCHEMA_VERSION, Store

PATH = (100.0, 110.0, 120.0, 113.9)


def trailing(side: Side = Side.LONG, entry: float = 100.0, pct: float = 5.0,
             stop: float | None = None, target: float | None = None) -> Position:
    """An open position, stored as id 1 by an earlier process, trailing from its entry."""
    position = Position("SYM", side, 10, entry, stop, target, id=1)
    return start_trailing(position, pct, entry)


def engine(position: Position) -> Monitor:
    monitor = Monitor(Settings(stale_after=30.0), Memory(started=0.0), clock=lambda: 1000.0)
    monitor.set_positions([position])
    return monitor


def ticks(*prices: float) -> list[Tick]:
    return [Tick("SYM", p, 1000.0 + i / 1000) for i, p in enumerate(prices)]


# The engine -----------------------------------------------------------------------


def test_the_issue_path_moves_the_stop_to_114_and_closes_at_113_9() -> None:
    monitor = engine(trailing())
    assert monitor.positions["SYM"].stop_loss == 95.0  # the trail starts at the entry
    stops = []
    for tick in ticks(*PATH[:3]):
        assert monitor.on_ticks([tick]) == []
        stops.append(monitor.positions["SYM"].stop_loss)
    assert stops == [95.0, 104.5, 114.0]
    (request,) = monitor.on_ticks(ticks(113.9))
    assert (request.reason, request.hint and request.hint.price) == ("stop_loss", 113.9)


def test_a_short_trails_down_and_closes_on_the_way_back_up() -> None:
    monitor = engine(trailing(Side.SHORT))
    assert monitor.on_ticks(ticks(100.0, 90.0, 80.0)) == []
    assert monitor.positions["SYM"].stop_loss == 84.0
    (request,) = monitor.on_ticks(ticks(84.1))
    assert request.reason == "stop_loss"


def test_the_tick_that_moves_the_stop_is_checked_against_the_moved_stop() -> None:
    """120 then 113.9 in one frame: 113.9 is judged against 114, not against 95."""
    monitor = engine(trailing())
    (request,) = monitor.on_ticks(ticks(110.0, 120.0, 113.9, 125.0))
    assert request.hint is not None and request.hint.price == 113.9


def test_a_one_tick_dip_inside_a_rising_burst_fires() -> None:
    monitor = engine(trailing())
    burst = [100.0 + i for i in range(21)]  # up to 120: stop 114
    burst[15:15] = [113.0]  # after 114 (stop 108.3): 113 is above it, no close
    assert monitor.on_ticks(ticks(*burst)) == []
    (request,) = monitor.on_ticks(ticks(121.0, 114.0, 130.0))  # 121: stop 114.95
    assert request.hint is not None and request.hint.price == 114.0


def test_a_given_stop_nearer_the_market_stands_until_the_trail_passes_it() -> None:
    monitor = engine(trailing(stop=99.0))
    assert monitor.positions["SYM"].stop_loss == 99.0
    monitor.on_ticks(ticks(103.0))  # trail 97.85: the stop stays at 99
    assert monitor.positions["SYM"].stop_loss == 99.0
    assert monitor.take_moves()[0].best == 103.0  # best follows the price all the same
    monitor.on_ticks(ticks(110.0))
    assert monitor.positions["SYM"].stop_loss == 104.5


def test_take_moves_reports_each_moved_position_once_at_its_last_move() -> None:
    monitor = engine(trailing())
    monitor.on_ticks(ticks(101.0, 105.0, 103.0, 110.0))
    (moved,) = monitor.take_moves()
    assert (moved.best, moved.stop_loss) == (110.0, 104.5)
    assert monitor.take_moves() == []
    monitor.on_ticks(ticks(109.0, 110.0))  # no better price: no move
    assert monitor.take_moves() == []


def test_a_reload_from_a_store_that_is_behind_never_steps_the_stop_back() -> None:
    stored = trailing()
    monitor = engine(stored)
    monitor.on_ticks(ticks(120.0))
    monitor.set_positions([stored])  # the store still says 95 / 100
    assert monitor.positions["SYM"].stop_loss == 114.0
    assert monitor.on_ticks(ticks(113.9))  # still closes at the moved stop


def test_a_patch_since_the_move_decides_afresh() -> None:
    stored = trailing()
    monitor = engine(stored)
    monitor.on_ticks(ticks(120.0))
    patched = replace(stored, stop_loss=90.0, levels_mono=1000.5)  # the operator's own choice
    monitor.set_positions([patched])
    assert monitor.positions["SYM"].stop_loss == 90.0


def test_a_position_learnt_late_trails_through_the_ticks_it_missed() -> None:
    """Ticks that came before its PositionsChanged move the trail in order, then judge."""
    monitor = engine(trailing())
    monitor.set_positions([])
    monitor.on_ticks(ticks(110.0, 120.0, 113.9))  # the monitor does not know it yet
    (request,) = monitor.set_positions([trailing()])
    assert request.reason == "stop_loss" and request.hint and request.hint.price == 113.9


# The rule against a plain model, over any path and any cut into batches ------------------


def model(position: Position, prices: list[float]) -> tuple[list[float | None], int | None]:
    """The stop after each price, and the index of the closing price: SPEC §4 read plainly."""
    assert position.best is not None and position.trailing_stop_pct is not None
    best, stop, stops = position.best, position.stop_loss, []
    for i, price in enumerate(prices):
        if better(position.side, price, best) != best:
            best = price
            stop = tighter(position.side, stop, trail_level(position.side, best, position
                                                            .trailing_stop_pct))
        stops.append(stop)
        if trigger(replace(position, stop_loss=stop), price) is not None:
            return stops, i
    return stops, None


@settings(max_examples=300, deadline=None)
@given(
    side=st.sampled_from(Side),
    pct=st.floats(0.1, 40.0),
    steps=st.lists(st.floats(-8.0, 8.0), min_size=1, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    target=st.none() | st.floats(1.0, 60.0),
)
def test_the_engine_follows_the_model_and_never_loosens_the_stop(
    side: Side, pct: float, steps: list[float], cuts: list[int], target: float | None
) -> None:
    """Any path, any batching: the same close on the same tick, and the stop only tightens."""
    sign = 1.0 if side is Side.LONG else -1.0
    tp = None if target is None else 100.0 + sign * target
    position = trailing(side, pct=pct, target=tp)
    prices = [max(1.0, 100.0 + sum(steps[: i + 1])) for i in range(len(steps))]
    stops, closes_at = model(position, prices)
    monitor = engine(position)
    all_ticks = ticks(*prices)
    bounds = sorted({0, len(all_ticks), *(c for c in cuts if c < len(all_ticks))})
    previous, requests = position.stop_loss, []
    for start, end in itertools.pairwise(bounds):
        requests += monitor.on_ticks(all_ticks[start:end])
        for moved in monitor.take_moves():
            assert moved.stop_loss is not None and previous is not None
            assert tighter(side, previous, moved.stop_loss) == moved.stop_loss  # never looser
            previous = moved.stop_loss
        if not requests:
            assert monitor.positions["SYM"].stop_loss == stops[end - 1]
    if closes_at is None:
        assert requests == []
    else:
        (request,) = requests
        assert request.hint == all_ticks[closes_at]


# The store ------------------------------------------------------------------------


def test_moves_are_stored_and_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    opened = store.add_position(replace(trailing(), id=None, opened_at=1.0))
    assert store.move_stops([replace(opened, best=120.0, stop_loss=114.0)]) == 1
    store.close()
    again = Store(tmp_path / "s.db")
    stored = again.live_position("SYM")
    assert stored is not None
    assert (stored.stop_loss, stored.best, stored.trailing_stop_pct) == (114.0, 120.0, 5.0)
    again.close()


def test_a_stored_move_never_loosens_nor_outlives_its_trail(tmp_path: Path) -> None:
    """A late write from an older move, or one after a PATCH, changes nothing."""
    store = Store(tmp_path / "s.db")
    opened = store.add_position(replace(trailing(), id=None, opened_at=1.0))
    store.move_stops([replace(opened, best=120.0, stop_loss=114.0)])
    store.move_stops([replace(opened, best=110.0, stop_loss=104.5)])  # older, written late
    now = store.live_position("SYM")
    assert now is not None and (now.stop_loss, now.best) == (114.0, 120.0)
    store.update_levels(replace(now, trailing_stop_pct=2.0))  # a PATCH: another trail
    assert store.move_stops([replace(opened, best=130.0, stop_loss=123.5)]) == 0
    store.close()


def test_a_move_is_recorded_even_if_its_close_was_claimed_first(tmp_path: Path) -> None:
    """The close a batch decides runs on a worker; the batch's move is written after it."""
    store = Store(tmp_path / "s.db")
    opened = store.add_position(replace(trailing(), id=None, opened_at=1.0))
    store.claim_close("SYM", "stop_loss")
    assert store.move_stops([replace(opened, best=125.0, stop_loss=118.75)]) == 1
    now = store.live_position("SYM")
    assert now is not None and (now.state, now.stop_loss) == (State.CLOSING, 118.75)
    store.close()


def test_a_move_stored_during_a_patch_waits_for_it_and_is_not_undone(tmp_path: Path) -> None:
    """A PATCH of the target reads the stop and writes it back: a move in between must wait."""
    store = Store(tmp_path / "s.db")
    opened = store.add_position(replace(trailing(), id=None, opened_at=1.0))
    mover = threading.Thread(
        target=store.move_stops, args=([replace(opened, best=120.0, stop_loss=114.0)],))

    def patch(current: Position) -> Position:
        mover.start()
        mover.join(0.05)
        assert mover.is_alive()  # held off until the PATCH has committed
        return replace(current, take_profit=150.0)

    store.change_levels("SYM", patch)
    mover.join(5)
    now = store.live_position("SYM")
    assert now is not None and (now.stop_loss, now.best, now.take_profit) == (114.0, 120.0,
                                                                              150.0)
    store.close()


def test_the_store_refuses_a_trail_without_a_best_price(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    with pytest.raises(Exception, match="CHECK"):
        store.add_position(replace(trailing(), id=None, opened_at=1.0, best=None))
    store.close()


V2_POSITIONS = """CREATE TABLE positions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT NOT NULL, side TEXT NOT NULL,
    quantity REAL NOT NULL, entry_price REAL NOT NULL, stop_loss REAL, take_profit REAL,
    state TEXT NOT NULL, client_order_id TEXT UNIQUE, order_id TEXT, exit_price REAL, pnl REAL,
    reason TEXT, opened_at REAL NOT NULL, closed_at REAL,
    close_attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    filled_quantity REAL NOT NULL DEFAULT 0, filled_value REAL NOT NULL DEFAULT 0,
    failure_alerted INTEGER NOT NULL DEFAULT 0)"""


def test_a_version_2_store_is_migrated_with_no_trail_and_no_product(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        db.execute(V2_POSITIONS)
        db.execute("INSERT INTO positions (symbol, side, quantity, entry_price, stop_loss,"
                   " state, opened_at, failure_alerted) VALUES"
                   " ('AAA', 'long', 10, 100, 90, 'open', 1.0, 1)")
    db.close()
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION >= 3
    (old,) = store.live_positions()
    assert (old.symbol, old.stop_loss, old.trailing_stop_pct, old.best) == ("AAA", 90.0, None,
                                                                             None)
    assert (old.product, old.source, old.intraday) == (None, "api", False)
    store.close()


# The whole service -------------------------------------------------------------------


def listed(h: Harness, symbol: str) -> dict[str, Any]:
    status, body = h.call("GET", "/api/v1/positions")
    assert status == 200, body
    return next(p for p in body["positions"] if p["symbol"] == symbol)


def ready(h: Harness, symbol: str) -> None:
    wait_until(lambda: h.system.services.feed_status.connected and any(
        symbol in s for s in h.exchange.subscriptions), 10)


def moves_counted(h: Harness) -> float:
    value = h.system.services.metrics.registry.get_sample_value(
        "tradeguard_trailing_stop_moves_total")
    return value or 0.0


def test_end_to_end_the_trail_is_stored_shown_survives_a_restart_and_closes(
    tmp_path: Path
) -> None:
    with running(tmp_path) as h:
        status, body = h.call("POST", "/api/v1/positions", {
            "symbol": "TRAIL", "side": "long", "quantity": 4, "entry_price": 100.0,
            "stop_loss": None, "take_profit": None, "trailing_stop_pct": 5})
        assert status == 201, body
        assert (body["stop_loss"], body["trailing_stop_pct"], body["product"],
                body["source"]) == (95.0, 5.0, "MIS", "api")
        ready(h, "TRAIL")
        for price in PATH[:3]:
            h.exchange.send_tick("TRAIL", price)
        wait_until(lambda: listed(h, "TRAIL")["stop_loss"] == 114.0, 10)
        assert moves_counted(h) >= 1
    with running(tmp_path) as h:  # the same store file: a restart
        assert listed(h, "TRAIL")["stop_loss"] == 114.0
        ready(h, "TRAIL")
        h.exchange.send_tick("TRAIL", 113.9)
        wait_until(lambda: h.position("TRAIL").state is State.CLOSED, 10)
        closed = listed(h, "TRAIL")
        assert (closed["reason"], closed["exit_price"]) == ("stop_loss", 113.9)
        assert closed["pnl"] == pytest.approx(4 * 13.9)
        broker = h.system.services.broker
        assert isinstance(broker, PaperBroker) and len(broker.orders) == 1


def test_end_to_end_a_trail_set_by_patch_starts_at_the_price_and_closes(tmp_path: Path) -> None:
    with running(tmp_path) as h:
        h.open_long("LATE", 100.0, 90.0)
        ready(h, "LATE")
        h.exchange.send_tick("LATE", 110.0)
        wait_until(lambda: h.system.services.cache.quote("LATE", 0) is not None, 5)
        status, body = h.call("PATCH", "/api/v1/positions/LATE", {"trailing_stop_pct": 5})
        assert status == 200, body
        assert (body["stop_loss"], body["trailing_stop_pct"]) == (104.5, 5.0)
        h.exchange.send_ticks([("LATE", 115.0), ("LATE", 120.0)])
        wait_until(lambda: listed(h, "LATE")["stop_loss"] == 114.0, 10)
        h.exchange.send_ticks([("LATE", 125.0), ("LATE", 118.0)])  # 125: stop 118.75
        wait_until(lambda: h.position("LATE").state is State.CLOSED, 10)
        closed = listed(h, "LATE")
        assert (closed["reason"], closed["exit_price"], closed["stop_loss"]) == (
            "stop_loss", 118.0, 118.75)
