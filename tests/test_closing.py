"""The Closer on a real store file, against the real loopback broker (SPEC §4 "Closing", §12).

Each test drives `Closer` the way the monitor and the API do, with an
HttpBroker talking HTTP to a BrokerServer on 127.0.0.1, and reads the outcome
back from the SQLite file, the broker's own book and the alert outbox.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.waiting import wait_until
from tradeguard.brokers import CloseOrder, HttpBroker
from tradeguard.closing import MAX_BACKOFF, Closer, backoff
from tradeguard.errors import PositionError, StoreError
from tradeguard.notify.outbox import OutboxAlerts
from tradeguard.positions import Position, Side, State
from tradeguard.prices import PriceCache, Tick
from tradeguard.sim.broker_server import BrokerServer
from tradeguard.store import Store

TOKEN = "closing-broker-token-SECRET"


class Sleeps:
    """Records the waits between attempts instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Prices:
    """Fill prices the broker hands out one after another (the last one repeats)."""

    def __init__(self, *prices: float) -> None:
        self.prices = list(prices)

    def __call__(self, symbol: str) -> float:
        return self.prices.pop(0) if len(self.prices) > 1 else self.prices[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "tradeguard.db")
    yield opened
    opened.close()


@pytest.fixture
def prices() -> Prices:
    return Prices(90.0)


@pytest.fixture
def server(prices: Prices) -> Iterator[BrokerServer]:
    with BrokerServer(TOKEN, price_for=prices) as server:
        yield server


@pytest.fixture
def cache() -> PriceCache:
    return PriceCache(30.0, 300.0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def closer(store: Store, server: BrokerServer, cache: PriceCache, sleeps: Sleeps) -> Closer:
    broker = HttpBroker(server.url, TOKEN, 2.0, resolver=None)
    return Closer(store, broker, OutboxAlerts(store), max_retries=3, retry_delay=0.25,
                  sleep=sleeps, quote=lambda symbol: cache.quote(symbol, time.monotonic()))


def open_long(store: Store, symbol: str = "AAA", quantity: float = 10) -> Position:
    return store.add_position(Position(symbol, Side.LONG, quantity, 100.0, stop_loss=95.0,
                                       take_profit=None, opened_at=time.time()))


def outbox(store: Store) -> list[str]:
    return [a.text.removeprefix("CRITICAL: ").split("\n")[0] for a in store.pending_alerts()]


# A2: a refused or partly filled attempt is finished; the rest gets a new id ------------


def test_a_rejected_close_is_retried_under_a_new_id_and_then_fills(
    store: Store, server: BrokerServer, closer: Closer, sleeps: Sleeps
) -> None:
    """A2: after 'rejected' (a circuit limit) the next round sends a new id, and it fills."""
    open_long(store)
    server.reject_next(1)
    with pytest.raises(PositionError) as info:
        closer.close("AAA", "stop_loss")
    assert info.value.code == 502
    assert server.order_count == 1 and sleeps.waits == []  # not retried within the round
    failed = store.live_position("AAA")
    assert failed is not None and failed.state is State.CLOSE_FAILED
    (rejected_id, rejected), = server.orders.items()
    assert rejected["status"] == "rejected"
    assert failed.client_order_id != rejected_id

    result = closer.close("AAA", "stop_loss")  # the sweep's next round, the circuit lifted
    closed = result.position
    assert (closed.state, closed.exit_price, closed.pnl) == (State.CLOSED, 90.0, -100.0)
    assert closed.client_order_id == failed.client_order_id != rejected_id
    assert [o["status"] for o in server.orders.values()] == ["rejected", "filled"]
    assert outbox(store) == ["AAA: close FAILED after 1 attempts",
                             "AAA: position closed (stop-loss)"]


def test_a_partial_fill_is_recorded_and_the_rest_sent_under_a_new_id(
    store: Store, server: BrokerServer, closer: Closer, prices: Prices
) -> None:
    """A2: 4 of 10 fill at 90; the other 6 go out under a new id and fill at 80."""
    open_long(store, quantity=10)
    prices.prices = [90.0, 80.0]
    server.partial_next(4)
    result = closer.close("AAA", "stop_loss")
    first, second = server.orders.values()
    assert (first["status"], first["quantity"], first["filled_quantity"]) == (
        "partially_filled", 10, 4)
    assert (second["status"], second["quantity"]) == ("filled", 6)
    assert first["client_order_id"] != second["client_order_id"]
    closed = result.position
    assert closed.state is State.CLOSED and closed.quantity == 10
    assert closed.filled_quantity == 10
    assert closed.exit_price == pytest.approx(84.0)  # (4 x 90 + 6 x 80) / 10
    assert closed.pnl == pytest.approx(-160.0)
    assert closed.client_order_id == second["client_order_id"]
    assert result.as_json()["order_id"] == second["order_id"]


def test_a_partial_fill_found_by_reconcile_is_not_sent_again_in_full(
    store: Store, server: BrokerServer, closer: Closer
) -> None:
    """A2: after a crash, a partly filled id is counted; only the rest is sent."""
    open_long(store, quantity=10)
    claimed = store.claim_close("AAA", "stop_loss")
    server.partial_next(3)
    HttpBroker(server.url, TOKEN, 2.0, None).place(  # the order of a killed process
        _order(claimed))
    closer.reconcile(claimed)
    quantities = [o["quantity"] for o in server.orders.values()]
    assert quantities == [10, 7]
    closed = store.position(claimed.id or 0)
    assert closed is not None and closed.state is State.CLOSED and closed.filled_quantity == 10


def _order(position: Position) -> CloseOrder:
    """The order a process sent for `position` before it was killed."""
    assert position.client_order_id is not None
    return CloseOrder(position.client_order_id, position.symbol, "sell", position.quantity,
                      "stop_loss")


# A1: never more than the broker holds ---------------------------------------------------


def test_a_position_closed_by_hand_gets_no_reverse_order(
    store: Store, server: BrokerServer, closer: Closer
) -> None:
    """A1: the broker holds nothing any more: no order, closed_at_broker, an alert."""
    open_long(store, quantity=10)
    server.hold("AAA", "long", 10)
    server.down()
    with pytest.raises(PositionError):
        closer.close("AAA", "stop_loss")  # the backend is down: close_failed
    server.up()
    server.close_by_hand("AAA")  # the operator sold it at the broker
    result = closer.close("AAA", "stop_loss")  # the sweep's retry
    assert server.order_count == 0 and server.held("AAA") == 0
    closed = result.position
    assert (closed.state, closed.reason, closed.exit_price, closed.pnl) == (
        State.CLOSED, "closed_at_broker", None, None)
    assert result.as_json()["exit_price"] is None
    assert outbox(store)[-1] == "AAA: already closed at the broker"


def test_a_short_held_at_the_broker_is_not_doubled(
    store: Store, server: BrokerServer, closer: Closer
) -> None:
    """A1: the broker holds the other side (a short): selling more would deepen it."""
    open_long(store)
    server.hold("AAA", "short", 10)
    assert closer.close("AAA", "emergency").position.reason == "closed_at_broker"
    assert server.order_count == 0 and server.held("AAA") == -10


def test_a_reduced_holding_closes_only_what_is_held(
    store: Store, server: BrokerServer, closer: Closer
) -> None:
    """A1: the broker holds 6 of the 10 guarded: the order is for 6, with an alert."""
    open_long(store, quantity=10)
    server.hold("AAA", "long", 6)
    closed = closer.close("AAA", "stop_loss").position
    (order,) = server.orders.values()
    assert order["quantity"] == 6 and server.held("AAA") == 0
    assert (closed.quantity, closed.exit_price, closed.pnl) == (6, 90.0, -60.0)
    assert outbox(store)[0] == "AAA: the broker holds less than TradeGuard guarded"


def test_the_close_failed_alert_names_the_release_route(
    store: Store, server: BrokerServer, closer: Closer
) -> None:
    """A1: the alert no longer leads the operator to a reverse order: it names release."""
    open_long(store)
    server.down()
    with pytest.raises(PositionError):
        closer.close("AAA", "stop_loss")
    (text,) = [a.text for a in store.pending_alerts()]
    assert "POST /api/v1/positions/AAA/release" in text
    assert "You can: close it at your broker now." not in text
    released = store.release_position("AAA", time.time())
    assert released.state is State.RELEASED
    with pytest.raises(PositionError) as info:
        closer.close("AAA", "stop_loss")  # nothing left to retry
    assert info.value.code == 404


# A3: a 409 means someone else owns it ---------------------------------------------------


def test_no_reconcile_runs_under_a_close_in_flight(
    store: Store, server: BrokerServer, closer: Closer
) -> None:
    """A3: while the API's order is in flight, a reconcile sends nothing and flips nothing."""
    open_long(store)
    server.slow(0.5)
    results: list[object] = []
    api = threading.Thread(target=lambda: results.append(closer.close("AAA", "emergency")))
    api.start()
    wait_until(lambda: server.order_count == 1, 5)
    assert closer.owns("AAA")
    closing = store.live_position("AAA")
    assert closing is not None and closing.state is State.CLOSING
    assert closer.reconcile(closing) is None
    with pytest.raises(PositionError) as info:
        closer.close("AAA", "stop_loss")
    assert info.value.code == 409
    api.join(5)
    assert server.requests == 2 and len(results) == 1  # GET /positions, the one POST
    closed = store.position(closing.id or 0)
    assert closed is not None and closed.state is State.CLOSED
    assert not closer.owns("AAA")
    assert outbox(store) == ["AAA: position closed (emergency)"]


# A7, C4: bounded waits ------------------------------------------------------------------


def test_backoff_is_capped_and_never_overflows() -> None:
    """A7: 30 s at most, for any attempt number."""
    assert [backoff(0.25, n) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
    assert backoff(0.25, 15) == MAX_BACKOFF == 30.0
    assert backoff(0.25, 10**6) == 30.0


def test_many_retries_wait_at_most_30_seconds_each(
    store: Store, server: BrokerServer, sleeps: Sleeps, cache: PriceCache
) -> None:
    """A7: max_close_retries = 40 neither overflows nor sleeps for hours."""
    broker = HttpBroker(server.url, TOKEN, 2.0, resolver=None)
    closer = Closer(store, broker, OutboxAlerts(store), max_retries=40, sleep=sleeps)
    open_long(store)
    server.fail_next(41, status=503)
    with pytest.raises(PositionError):
        closer.close("AAA", "stop_loss")
    assert len(sleeps.waits) == 40 and max(sleeps.waits) == 30.0
    assert sum(sleeps.waits) < 40 * 30.0


def read_only(store: Store) -> None:
    """The store's file can no longer be written (a full or read-only disk)."""
    store._db.close()
    store._db = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True,
                                check_same_thread=False, isolation_level=None)
    store._db.row_factory = sqlite3.Row


def test_a_reconcile_that_keeps_failing_backs_off(
    store: Store, server: BrokerServer, closer: Closer, sleeps: Sleeps
) -> None:
    """C4: a fill that cannot be recorded is retried ever more slowly, not in a hot loop."""
    open_long(store)
    claimed = store.claim_close("AAA", "stop_loss")
    HttpBroker(server.url, TOKEN, 2.0, None).place(_order(claimed))
    read_only(store)
    for _ in range(4):
        with pytest.raises(StoreError):
            closer.reconcile(claimed)
    assert sleeps.waits == [0.25, 0.5, 1.0]
    assert server.order_count == 1


# A11: an unwritable store is loud, once a minute ------------------------------------------


def test_a_claim_that_cannot_be_written_is_counted_and_logged_critical_once(
    store: Store, closer: Closer, caplog: pytest.LogCaptureFixture
) -> None:
    """A11: no close can go out; a CRITICAL line (not one per tick) and a counter say so."""
    open_long(store)
    read_only(store)
    caplog.set_level(logging.CRITICAL, logger="tradeguard.closing")
    for _ in range(50):
        with pytest.raises(StoreError):
            closer.close("AAA", "stop_loss")
    assert closer.claim_failures == 50 and closer.claim_failing
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert "cannot record the close of AAA" in critical[0].getMessage()


# SPEC §6: the price age in the answer ---------------------------------------------------


def test_the_answer_carries_the_age_of_the_freshest_price_for_any_broker(
    store: Store, closer: Closer, cache: PriceCache
) -> None:
    """SPEC §6: price_age_seconds is the cache's age at the decision, for the http broker too."""
    open_long(store)
    cache.put(Tick("AAA", 94.0, time.monotonic() - 2.0))
    answer = closer.close("AAA", "emergency").as_json()
    assert 2.0 <= answer["price_age_seconds"] < 3.0  # type: ignore[operator]
    open_long(store, "BBB")
    hint = Tick("BBB", 94.0, time.monotonic() - 0.5)
    answer = closer.close("BBB", "stop_loss", hint).as_json()
    assert 0.5 <= answer["price_age_seconds"] < 1.5  # type: ignore[operator]
    open_long(store, "CCC")
    assert closer.close("CCC", "emergency").as_json()["price_age_seconds"] is None


def test_an_order_whose_answer_was_lost_is_recorded_not_taken_for_a_hand_close(
    store: Store, server: BrokerServer, sleeps: Sleeps
) -> None:
    """A1: the broker holds nothing because our own order filled: its fill is recorded."""
    broker = HttpBroker(server.url, TOKEN, 0.3, resolver=None)
    closer = Closer(store, broker, OutboxAlerts(store), max_retries=3, sleep=sleeps)
    open_long(store, quantity=10)
    server.hold("AAA", "long", 10)
    server.slow(2.0)  # the order fills, its answer comes too late
    closed = closer.close("AAA", "stop_loss").position
    server.slow(0)
    assert server.order_count == 1 and server.held("AAA") == 0
    (order,) = server.orders.values()
    assert (closed.state, closed.reason, closed.exit_price) == (State.CLOSED, "stop_loss", 90.0)
    assert closed.order_id == order["order_id"]
