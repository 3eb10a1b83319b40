"""The money path on the whole running service: stops on every tick, stale and blind prices."""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Harness, running
from tests.support.waiting import wait_until
from tradeguard.brokers import CloseOrder, Fill, PaperBroker
from tradeguard.errors import BrokerError
from tradeguard.positions import Position, Side


def ready(h: Harness, symbol: str) -> None:
    wait_until(lambda: h.system.services.feed_status.connected and any(
        symbol in s for s in h.exchange.subscriptions), 10)


def open_pos(h: Harness, symbol: str, side: str, entry: float, sl: float | None,
             tp: float | None) -> None:
    status, body = h.call("POST", "/api/v1/positions", {
        "symbol": symbol, "side": side, "quantity": 4, "entry_price": entry,
        "stop_loss": sl, "take_profit": tp})
    assert status == 201, body
    ready(h, symbol)


def closed(h: Harness, symbol: str) -> Any:
    wait_until(lambda: h.position(symbol).state.value == "closed", 10)
    return h.position(symbol)


def orders_for(h: Harness, symbol: str) -> int:
    cid = h.position(symbol).client_order_id
    return h.system.services.broker.orders.count(cid) if cid else 0


CASES = [
    # side, entry, stop, target, breach price, reason
    ("long", 100.0, 90.0, 120.0, 89.5, "stop_loss"),
    ("long", 100.0, 90.0, 120.0, 120.0, "take_profit"),
    ("short", 100.0, 110.0, 80.0, 110.0, "stop_loss"),
    ("short", 100.0, 110.0, 80.0, 79.0, "take_profit"),
]


@pytest.mark.parametrize(("side", "entry", "sl", "tp", "breach", "reason"), CASES)
def test_one_breaching_tick_in_a_50_tick_frame_closes_once(
    tmp_path: Path, side: str, entry: float, sl: float, tp: float, breach: float, reason: str
) -> None:
    with running(tmp_path) as h:
        open_pos(h, "SYM", side, entry, sl, tp)
        frame = [("SYM", entry)] * 50
        frame[23] = ("SYM", breach)
        h.exchange.send_ticks(frame)
        position = closed(h, "SYM")
        assert position.reason == reason
        assert orders_for(h, "SYM") == 1
        # More breaching ticks after the close place no second order.
        h.exchange.send_ticks([("SYM", breach)] * 10)
        h.exchange.send_tick("SYM", entry)
        wait_until(lambda: h.system.services.cache.quote("SYM", 0) is not None, 5)
        assert len(h.system.services.broker.orders) == 1


def test_take_profit_and_stop_loss_in_one_batch_resolve_by_tick_order(tmp_path: Path) -> None:
    with running(tmp_path) as h:
        open_pos(h, "FIRSTTP", "long", 100.0, 90.0, 110.0)
        open_pos(h, "FIRSTSL", "long", 100.0, 90.0, 110.0)
        h.exchange.send_ticks([("FIRSTTP", 100.0), ("FIRSTTP", 111.0), ("FIRSTTP", 85.0),
                               ("FIRSTSL", 100.0), ("FIRSTSL", 85.0), ("FIRSTSL", 111.0)])
        assert closed(h, "FIRSTTP").reason == "take_profit"
        assert closed(h, "FIRSTSL").reason == "stop_loss"


def test_stale_path_keeps_checking_and_logs_the_fallback_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with running(tmp_path, prices={"stale_warning_threshold": 0.3, "cache_timeout": 60},
                 feed={"silence_timeout": 60.0}) as h:
        open_pos(h, "BOSCHLTD", "long", 735.0, 700.0, None)
        h.exchange.send_tick("BOSCHLTD", 690.0 + 20.0)
        wait_until(lambda: h.system.services.cache.quote("BOSCHLTD", 0) is not None, 5)
        h.exchange.stop()  # the feed goes dark
        wait_until(lambda: "[FALLBACK] Using stale price for BOSCHLTD: ₹710.00" in caplog.text, 5)
        status = h.system.services.monitor_status
        # The line is logged inside the sweep; the status is written when it ends.
        wait_until(lambda: status.stale_symbols() == ["BOSCHLTD"], 5)
        first = status.last_sweep
        assert first is not None
        # Many sweeps later (0.1 s apart), still stale, still one line and one alert.
        wait_until(lambda: (status.last_sweep or 0.0) - first >= 0.5, 5)
        assert caplog.text.count("[FALLBACK] Using stale price for BOSCHLTD") == 1
        assert [a.kind for a in h.system.services.store.recent_alerts(50)].count(
            "price_stale") == 1
        assert h.position("BOSCHLTD").state.value == "open"
        h.exchange.start()  # back, with a breach: checked as before
        ready(h, "BOSCHLTD")
        h.exchange.send_tick("BOSCHLTD", 699.0)
        position = closed(h, "BOSCHLTD")
        assert position.reason == "stop_loss" and position.exit_price == 699.0


def test_blind_alert_repeats_and_close_policy_closes(tmp_path: Path) -> None:
    with running(tmp_path, telegram=True,
                 prices={"stale_warning_threshold": 0.2, "cache_timeout": 0.5},
                 monitor={"blind_policy": "alert"}, feed={"silence_timeout": 60.0}) as h:
        h.system.services.blind_repeat = 0.3
        open_pos(h, "AAA", "long", 100.0, 90.0, None)
        h.exchange.send_tick("AAA", 100.0)
        wait_until(lambda: h.system.services.cache.quote("AAA", 0) is not None, 5)
        h.exchange.stop()
        assert h.telegram is not None
        # Gone blind, then reminded: two texts (the reminder's does not tick, so its own
        # repeats fold rather than crowd out other alerts).
        wait_until(lambda: sum("AAA: position" in t and "BLIND" in t
                               for _, t in h.telegram.messages) >= 2, 10)
        assert h.position("AAA").state.value == "open"  # policy "alert" never closes
        _, health = h.call("GET", "/api/v1/monitoring/connection-health")
        assert health["positions"]["blind"] == ["AAA"]
        h.exchange.start()
        wait_until(lambda: h.system.services.feed_status.connected, 10)
        h.exchange.send_tick("AAA", 100.5)
        wait_until(lambda: any("AAA: priced again" in t for _, t in h.telegram.messages), 10)

    with running(tmp_path / "close", prices={"stale_warning_threshold": 0.2,
                                             "cache_timeout": 0.5},
                 monitor={"blind_policy": "close"}, feed={"silence_timeout": 60.0}) as h:
        open_pos(h, "AAA", "long", 100.0, 90.0, None)
        h.exchange.send_tick("AAA", 101.0)
        wait_until(lambda: h.system.services.cache.quote("AAA", 0) is not None, 5)
        h.exchange.stop()
        position = closed(h, "AAA")
        assert position.reason == "blind" and position.exit_price == 101.0
        assert orders_for(h, "AAA") == 1


def test_twenty_threads_closing_one_position(tmp_path: Path) -> None:
    with running(tmp_path) as h:
        open_pos(h, "RACE", "long", 100.0, 90.0, None)
        h.exchange.send_tick("RACE", 100.0)
        wait_until(lambda: h.system.services.cache.quote("RACE", 0) is not None, 5)
        barrier = threading.Barrier(20)
        answers: list[int] = []
        lock = threading.Lock()

        def close() -> None:
            barrier.wait()
            status, _ = h.call("POST", "/api/v1/monitoring/emergency-close-position",
                               {"symbol": "RACE"})
            with lock:
                answers.append(status)

        threads = [threading.Thread(target=close) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert answers.count(200) == 1
        assert set(answers) <= {200, 404, 409}
        assert orders_for(h, "RACE") == 1
        assert len(h.system.services.broker.orders) == 1


def test_emergency_close_answers_with_the_fill(tmp_path: Path) -> None:
    with running(tmp_path) as h:
        open_pos(h, "BOSCHLTD", "long", 735.0, 700.0, None)
        h.exchange.send_tick("BOSCHLTD", 740.5)
        wait_until(lambda: h.system.services.cache.quote("BOSCHLTD", 0) is not None, 5)
        status, body = h.call("POST", "/api/v1/monitoring/emergency-close-position",
                              {"symbol": "BOSCHLTD", "reason": "emergency"})
        assert status == 200, body
        assert body["exit_price"] == 740.5 and body["pnl"] == pytest.approx(4 * 5.5)
        assert body["order_id"].startswith("paper-") and body["client_order_id"]
        assert 0 <= body["price_age_seconds"] < 5
        assert set(body) >= {"status", "symbol", "side", "quantity", "entry_price",
                             "exit_price", "pnl", "reason", "price_age_seconds", "order_id"}
        assert h.call("POST", "/api/v1/monitoring/emergency-close-position",
                      {"symbol": "BOSCHLTD"})[0] == 404


@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_a_one_tick_breach_while_the_monitor_is_down_still_closes(
    tmp_path: Path, mode: str
) -> None:
    with running(tmp_path) as h:
        open_pos(h, "GAP", "long", 100.0, 90.0, None)
        h.exchange.send_tick("GAP", 100.0)
        wait_until(lambda: h.system.services.cache.quote("GAP", 0) is not None, 5)
        h.system.inject_fault("MonitorActor", mode)
        # Before the supervisor notices (or while it restarts): one tick through the stop,
        # then back inside, so the sweep on cached prices cannot see the breach.
        h.exchange.send_ticks([("GAP", 100.0), ("GAP", 85.0), ("GAP", 100.0)])
        wait_until(lambda: h.system.supervisor.status()["MonitorActor"]["restarts"] >= 1, 10)
        position = closed(h, "GAP")
        assert position.reason == "stop_loss"
        assert orders_for(h, "GAP") == 1


def test_A5_a_position_opened_on_an_old_cached_price_is_not_closed_by_it(tmp_path: Path) -> None:
    """A5: the cache holds 94 from before the open; a long at 100 with SL 95 stays open.

    The old sweep judged it on that price and market-closed it within one sweep.
    """
    with running(tmp_path, feed={"symbols": ["SYM"]},
                 prices={"stale_warning_threshold": 0.3, "cache_timeout": 60}) as h:
        ready(h, "SYM")
        h.exchange.send_tick("SYM", 94.0)
        wait_until(lambda: h.system.services.cache.quote("SYM", 0) is not None, 5)
        open_pos(h, "SYM", "long", 100.0, 95.0, None)
        # Awaiting a price for the stale threshold, then blind (policy "alert"): many
        # sweeps have looked at it by then.
        wait_until(lambda: h.system.services.monitor_status.blind_symbols() == ["SYM"], 10)
        assert h.position("SYM").state.value == "open"
        h.exchange.send_tick("SYM", 94.5)  # the first price after the open decides
        position = closed(h, "SYM")
        assert position.reason == "stop_loss" and position.exit_price == 94.5


class GatedBroker(PaperBroker):
    """A slow broker: each order waits until `width` orders are in flight at once."""

    def __init__(self, width: int) -> None:
        super().__init__(lambda symbol: None, max_age=math.inf)
        self.gate = threading.Barrier(width, timeout=5)

    def place(self, order: CloseOrder) -> Fill:
        try:
            self.gate.wait()
        except threading.BrokenBarrierError:
            raise BrokerError("timed out") from None
        return super().place(order)


def test_A14_a_mass_stop_out_closes_in_parallel(tmp_path: Path) -> None:
    """A14: twelve stops at once reach the broker together, not four at a time."""
    symbols = [f"S{i:02d}" for i in range(12)]
    broker = GatedBroker(len(symbols))
    with running(tmp_path, broker=broker, feed={"symbols": symbols},
                 monitor={"max_close_retries": 0}) as h:
        for symbol in symbols:
            open_pos(h, symbol, "long", 100.0, 90.0, None)
        h.exchange.send_ticks([(symbol, 85.0) for symbol in symbols])
        for symbol in symbols:
            assert closed(h, symbol).reason == "stop_loss"


def test_A17_a_breach_before_the_monitor_knows_the_position_still_closes(tmp_path: Path) -> None:
    """A17: the position is in the store, the monitor not yet told; a one-tick breach comes.

    The old monitor checked that batch against its old map (no such position),
    and by the time it reloaded, the price was back inside: the stop was missed.
    """
    with running(tmp_path, feed={"symbols": ["GAP"]}) as h:
        ready(h, "GAP")
        store = h.system.services.store
        store.add_position(Position("GAP", Side.LONG, 4, 100.0, 90.0, None, opened_at=0.0))
        h.exchange.send_ticks([("GAP", 85.0), ("GAP", 100.0)])
        assert closed(h, "GAP").reason == "stop_loss"


def test_E2_a_monitor_restart_does_not_repeat_the_stale_alert(tmp_path: Path) -> None:
    """E2: the monitor's alert memory is the system's; a new incarnation remembers the crossing."""
    with running(tmp_path, prices={"stale_warning_threshold": 0.3, "cache_timeout": 60},
                 feed={"silence_timeout": 60.0}) as h:
        open_pos(h, "AAA", "long", 100.0, 90.0, None)
        h.exchange.send_tick("AAA", 100.0)
        store = h.system.services.store

        def stale_alerts() -> int:
            return [a.kind for a in store.recent_alerts(50)].count("price_stale")

        wait_until(lambda: stale_alerts() == 1, 5)
        h.system.inject_fault("MonitorActor", "crash")
        wait_until(lambda: h.system.supervisor.status()["MonitorActor"]["restarts"] >= 1
                   and h.system.supervisor.all_up(), 10)
        status = h.system.services.monitor_status
        swept = status.last_sweep or 0.0
        wait_until(lambda: (status.last_sweep or 0.0) - swept >= 0.5, 5)  # the new one swept
        assert status.stale_symbols() == ["AAA"]
        assert stale_alerts() == 1
