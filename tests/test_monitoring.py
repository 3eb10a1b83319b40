"""The stop engine, pure: ticks, sweeps and close outcomes on a clock the test steps."""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace

import pytest

from tradeguard.errors import PositionError, StoreError
from tradeguard.monitoring import (
    FAILED_RETRY,
    FAILED_WARN_EVERY,
    FOLD_STALE_OVER,
    RECONCILE,
    CloseRequest,
    Memory,
    Monitor,
    Settings,
    SweepResult,
)
from tradeguard.positions import Position, Side, State
from tradeguard.prices import PriceCache, Tick, from_wall, to_wall

STALE, UNUSABLE = 30.0, 300.0


class Clock:
    """A monotonic clock the test moves (only forward: it is monotonic)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Rig:
    """A Monitor over a PriceCache, both on one stepped clock."""

    def __init__(self, clock: Clock | None = None, memory: Memory | None = None,
                 **settings: object) -> None:
        self.clock = clock or Clock()
        self.cache = PriceCache(STALE, UNUSABLE)
        self.memory = memory or Memory(started=self.clock.now - 3600.0)
        self.settings = Settings(STALE, **settings)  # type: ignore[arg-type]
        self.monitor = Monitor(self.settings, self.memory, self.clock)

    def tick(self, symbol: str, price: float, received: float | None = None) -> Tick:
        tick = Tick(symbol, price, self.clock.now if received is None else received)
        self.cache.put(tick)
        return tick

    def feed(self, *ticks: Tick) -> list[CloseRequest]:
        return self.monitor.on_ticks(ticks)

    def sweep(self) -> SweepResult:
        now = self.clock.now
        return self.monitor.sweep(now, lambda symbol: self.cache.quote(symbol, now))

    def restart(self) -> None:
        """A new MonitorActor incarnation: a new engine, the system's memory."""
        positions = list(self.monitor.positions.values())
        self.monitor = Monitor(self.settings, self.memory, self.clock)
        self.monitor.set_positions(positions)


def long(symbol: str = "SYM", *, sl: float | None = 90.0, tp: float | None = 120.0,
         id: int = 1, opened: float | None = None, **changes: object) -> Position:
    position = Position(symbol, Side.LONG, 1.0, 100.0, sl, tp, id=id, opened_mono=opened)
    return replace(position, **changes)  # type: ignore[arg-type]


# Ticks -------------------------------------------------------------------------------


def test_the_first_breaching_tick_of_a_batch_closes_once_with_it_as_the_hint() -> None:
    rig = Rig()
    rig.monitor.set_positions([long()])
    batch = [rig.tick("SYM", p) for p in (100.0, 89.0, 121.0, 80.0)]
    assert rig.feed(*batch) == [CloseRequest("SYM", "stop_loss", batch[1])]
    assert rig.feed(rig.tick("SYM", 70.0)) == []  # in flight: no second request
    assert rig.monitor.in_flight("SYM")


def test_ticks_of_symbols_without_a_live_open_position_decide_nothing() -> None:
    rig = Rig()
    rig.monitor.set_positions([long("SYM", state=State.CLOSE_FAILED)])
    assert rig.feed(rig.tick("SYM", 1.0), rig.tick("OTHER", 1.0)) == []


def test_A4_a_wall_clock_step_changes_no_decision() -> None:
    """A4: ages are monotonic; a wall step back or forward, even across a restart, decides nothing.

    The old cache refused every tick whose (wall) stamp was older than the one
    it held, and clamped a future stamp's age to 0, so a clock stepped back
    froze the price as FRESH and nothing ever went stale or blind.
    """
    rig = Rig()
    rig.monitor.set_positions([long()])
    wall = 1_767_779_056.0
    rig.tick("SYM", 100.0)
    # The snapshot is saved with the wall clock, which is then stepped back 5 minutes.
    saved = to_wall(rig.cache.ticks(), mono_now=rig.clock.now, wall_now=wall)
    wall -= 300.0
    rig.clock.step(1.0)
    later = rig.tick("SYM", 99.0)
    assert rig.cache.quote("SYM", rig.clock.now).price == 99.0  # type: ignore[union-attr]
    rig.clock.step(STALE + 1)
    assert rig.sweep().stale == {"SYM"}  # it goes stale on time, step or no step
    rig.clock.step(UNUSABLE)
    assert rig.sweep().blind == {"SYM"}
    # A restart after the step back: the stored price is no younger than 0 s, never "future".
    restored = from_wall(saved, mono_now=5.0, wall_now=wall)
    assert restored[0].received_at == 5.0
    # And forward by an hour: the price is an hour old, as far as anyone can tell.
    assert from_wall(saved, mono_now=5.0, wall_now=wall + 3900.0)[0].received_at == 5.0 - 3600.0
    assert later.received_at < rig.clock.now


def test_A19_a_redelivered_tick_from_before_a_level_change_is_not_judged_on_new_levels() -> None:
    """A19: a batch replayed after a monitor restart predates a PATCH: it closes nothing."""
    rig = Rig()
    old_tick = rig.tick("SYM", 92.0)  # inside SL 90 when it arrived
    rig.clock.step(2.0)
    patched = long(sl=93.0, levels_mono=rig.clock.now)  # the operator tightened the stop
    rig.monitor.set_positions([patched])
    assert rig.feed(old_tick) == []
    rig.clock.step(0.1)
    fresh = rig.tick("SYM", 92.0)
    assert rig.feed(fresh) == [CloseRequest("SYM", "stop_loss", fresh)]


def test_A17_a_tick_between_the_insert_and_positions_changed_still_closes() -> None:
    """A17: the breach arrived while the monitor's map did not yet hold the new position."""
    rig = Rig()
    before = rig.tick("SYM", 50.0)  # before the position opened: never counts
    rig.clock.step(0.5)
    opened = rig.clock.now
    rig.clock.step(0.002)
    breach = rig.tick("SYM", 85.0)
    assert rig.feed(before, breach, rig.tick("SYM", 100.0)) == []  # the old map: no SYM
    assert rig.monitor.set_positions([long(opened=opened)]) == [
        CloseRequest("SYM", "stop_loss", breach)]


def test_A17_only_recent_ticks_are_kept() -> None:
    """A17: the memory is a few seconds: a position learnt of later is not judged on old ticks."""
    rig = Rig()
    rig.feed(rig.tick("SYM", 85.0))
    rig.clock.step(10.0)
    rig.feed(rig.tick("OTHER", 1.0))
    assert rig.monitor.set_positions([long()]) == []


def test_a_level_change_is_checked_against_the_ticks_since_it() -> None:
    """A17 for a PATCH: a tick between the store update and PositionsChanged counts."""
    rig = Rig()
    rig.monitor.set_positions([long()])
    rig.clock.step(1.0)
    changed = rig.clock.now
    breach = rig.tick("SYM", 94.0)
    assert rig.feed(breach) == []  # judged on SL 90
    assert rig.monitor.set_positions([long(sl=95.0, levels_mono=changed)]) == [
        CloseRequest("SYM", "stop_loss", breach)]


# The sweep ---------------------------------------------------------------------------


def test_a_cached_breach_closes_on_the_sweep() -> None:
    rig = Rig()
    rig.monitor.set_positions([long()])
    rig.tick("SYM", 89.0)
    result = rig.sweep()
    assert result.closes == [CloseRequest("SYM", "stop_loss")]
    assert rig.sweep().closes == []  # in flight


def test_A5_a_price_from_before_the_position_opened_decides_nothing() -> None:
    """A5: the feed was down, the cache holds 94 (stale); a long at 100, SL 95, stays open."""
    rig = Rig(blind_policy="close")
    rig.tick("SYM", 94.0)
    rig.clock.step(120.0)  # stale but usable
    rig.monitor.set_positions([long(sl=95.0, opened=rig.clock.now)])
    for _ in range(int(STALE) - 1):
        rig.clock.step(1.0)
        result = rig.sweep()
        assert (result.closes, result.blind, result.alerts) == ([], set(), [])
    rig.clock.step(1.0)  # awaiting a price for the stale threshold: now it is blind
    result = rig.sweep()
    assert result.blind == {"SYM"}
    assert result.closes == [CloseRequest("SYM", "blind")]
    assert "No price received for it at all" in result.alerts[0].text


def test_A5_the_first_price_after_opening_decides() -> None:
    """A5: once a price arrives after the open, the sweep judges on it."""
    rig = Rig()
    rig.tick("SYM", 94.0)
    rig.clock.step(1.0)
    rig.monitor.set_positions([long(sl=95.0, opened=rig.clock.now)])
    assert rig.sweep().closes == []
    rig.clock.step(0.1)
    rig.tick("SYM", 94.5)
    assert rig.sweep().closes == [CloseRequest("SYM", "stop_loss")]


def test_a_position_of_an_earlier_process_takes_any_price() -> None:
    rig = Rig()
    rig.tick("SYM", 89.0, received=rig.clock.now - 100.0)  # reloaded from the snapshot
    rig.monitor.set_positions([long(opened=None)])
    assert rig.sweep().closes == [CloseRequest("SYM", "stop_loss")]


def test_stale_is_alerted_once_per_crossing() -> None:
    rig = Rig()
    rig.monitor.set_positions([long()])
    rig.tick("SYM", 100.0)
    rig.clock.step(STALE + 1)
    first = rig.sweep()
    assert first.stale == {"SYM"} and [a.kind for a in first.alerts] == ["price_stale"]
    rig.clock.step(1.0)
    assert rig.sweep().alerts == []
    rig.tick("SYM", 100.0)
    rig.sweep()  # fresh again
    rig.clock.step(STALE + 1)
    assert [a.kind for a in rig.sweep().alerts] == ["price_stale"]


def test_E2_a_monitor_restart_does_not_repeat_the_stale_alert() -> None:
    """E2: the alert memory outlives the incarnation: one alert for one crossing."""
    rig = Rig()
    rig.monitor.set_positions([long()])
    rig.tick("SYM", 100.0)
    rig.clock.step(STALE + 1)
    assert [a.kind for a in rig.sweep().alerts] == ["price_stale"]
    rig.restart()
    rig.clock.step(1.0)
    result = rig.sweep()
    assert result.stale == {"SYM"} and result.alerts == []


def blind_rig(n: int) -> Rig:
    rig = Rig(blind_repeat=60.0)
    rig.monitor.set_positions([long(f"S{i:03d}", id=i) for i in range(n)])
    for i in range(n):
        rig.tick(f"S{i:03d}", 100.0 + i)
    rig.clock.step(UNUSABLE + 1)
    return rig


def test_C1_C9_positions_going_blind_together_raise_one_alert() -> None:
    """C1/C9: 200 positions blind in one sweep: one critical (one outbox row), not 200."""
    rig = blind_rig(200)
    result = rig.sweep()
    assert len(result.blind) == 200
    assert [a.kind for a in result.alerts] == ["position_blind"]
    assert "200 positions BLIND" in result.alerts[0].text


def test_C1_the_reminder_is_one_alert_per_interval_with_a_text_that_does_not_tick() -> None:
    """C1: an hour blind with 50 positions: 60 reminders (not 3,000), all with one text."""
    rig = blind_rig(50)
    rig.sweep()
    reminders = []
    for _ in range(3600):
        rig.clock.step(1.0)
        reminders += rig.sweep().alerts
    assert len(reminders) == 60
    assert len({a.text for a in reminders}) == 1
    assert "50 positions still BLIND" in reminders[0].text


def test_a_single_blind_position_keeps_its_own_texts() -> None:
    rig = blind_rig(1)
    first = rig.sweep().alerts
    assert "S000: position BLIND" in first[0].text and "old: too old" in first[0].text
    rig.clock.step(60.0)
    assert "S000: position still BLIND" in rig.sweep().alerts[0].text
    rig.tick("S000", 101.0)
    rig.clock.step(1.0)
    again = rig.sweep().alerts
    assert [a.kind for a in again] == ["position_priced"]
    assert "after 1m 01s blind" in again[0].text


def test_positions_priced_again_together_raise_one_alert() -> None:
    """C9 on the way back: the feed returns for all of them, one alert."""
    rig = blind_rig(30)
    rig.sweep()
    for i in range(30):
        rig.tick(f"S{i:03d}", 100.0)
    alerts = rig.sweep().alerts
    assert [a.kind for a in alerts] == ["position_priced"]
    assert "30 positions priced again" in alerts[0].text


def test_E1_a_later_position_on_a_blind_symbol_is_not_priced_again() -> None:
    """E1: the blind memory of a position that went is pruned: no "priced again after 5h"."""
    rig = blind_rig(1)
    rig.sweep()
    rig.monitor.set_positions([])  # closed by hand
    rig.clock.step(5 * 3600.0)
    rig.monitor.set_positions([long("S000", id=2)])
    rig.tick("S000", 100.0)
    assert rig.sweep().alerts == []
    assert rig.memory.blind_since == {}


def test_no_price_at_all_is_awaited_for_the_stale_threshold_after_the_start() -> None:
    clock = Clock()
    rig = Rig(clock, Memory(started=clock.now))
    rig.monitor.set_positions([long(opened=None)])
    clock.step(STALE - 1)
    assert rig.sweep().blind == set()
    clock.step(1.0)
    assert rig.sweep().blind == {"SYM"}


# Close outcomes ----------------------------------------------------------------------


def closing_rig() -> Rig:
    rig = Rig()
    rig.monitor.set_positions([long()])
    rig.tick("SYM", 80.0)
    assert rig.sweep().closes == [CloseRequest("SYM", "stop_loss")]
    return rig


def test_A3_after_a_409_the_monitor_leaves_the_close_to_its_owner() -> None:
    """A3: someone else (an emergency close) holds the claim: no reconcile, no second order."""
    rig = closing_rig()
    done = rig.monitor.close_done("SYM", PositionError("SYM: a close is already under way", 409),
                                  [long(state=State.CLOSING)])
    assert done == []
    for _ in range(120):
        rig.clock.step(1.0)
        assert rig.sweep().closes == []


def test_C4_a_close_that_died_while_closing_is_reconciled_with_backoff() -> None:
    """C4: a store error after the fill leaves it `closing`: reconciles 1 s, 2 s, 4 s apart."""
    rig = closing_rig()
    closing = [long(state=State.CLOSING)]
    assert rig.monitor.close_done("SYM", StoreError("disk full"), closing) == []
    times = []
    for _ in range(80):
        rig.clock.step(0.1)
        if rig.sweep().closes == [CloseRequest("SYM", RECONCILE)]:
            times.append(rig.clock.now)
            rig.monitor.close_done("SYM", StoreError("disk full"), closing)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    assert len(times) == 3 and gaps == [2.0, 4.0]


def test_a_closing_position_nobody_finishes_is_reconciled_eventually() -> None:
    rig = Rig(stuck_after=300.0)
    rig.monitor.set_positions([long(state=State.CLOSING)])
    assert rig.monitor.recover() == [CloseRequest("SYM", RECONCILE)]  # first incarnation
    rig.monitor.close_done("SYM", None, [long(state=State.CLOSING)])
    rig.restart()
    assert rig.monitor.recover() == []  # later incarnations: an owner may be at work
    rig.clock.step(1.0)
    assert rig.sweep().closes == []
    rig.clock.step(300.0)
    rig.sweep()
    rig.clock.step(1.0)
    assert rig.sweep().closes == [CloseRequest("SYM", RECONCILE)]


def test_E5_a_failed_close_is_retried_every_few_seconds_but_warned_about_rarely(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """E5: an hour of close_failed: 720 retries, 12 warnings (not 720)."""
    caplog.set_level(logging.WARNING, logger="tradeguard.monitoring")
    rig = Rig()
    failed = [long(state=State.CLOSE_FAILED, reason="stop_loss")]
    rig.monitor.set_positions(failed)
    retries = 0
    for _ in range(3600):
        result = rig.sweep()
        if result.closes:
            assert result.closes == [CloseRequest("SYM", "stop_loss")]
            retries += 1
            rig.monitor.close_done("SYM", PositionError("broker down", 502), failed)
        rig.clock.step(1.0)
    assert retries == 3600 / FAILED_RETRY
    assert caplog.text.count("retrying the failed close of SYM") == 3600 / FAILED_WARN_EVERY


def test_the_sweep_judges_the_cached_price_on_levels_changed_after_it() -> None:
    """The cached price is the current price: a stop tightened above it closes (SPEC §4)."""
    rig = Rig()
    rig.monitor.set_positions([long()])
    rig.tick("SYM", 94.0)
    rig.clock.step(40.0)  # the feed is dark: stale
    rig.monitor.set_positions([long(sl=95.0, levels_mono=rig.clock.now)])
    assert rig.sweep().closes == [CloseRequest("SYM", "stop_loss")]


def test_A17_a_position_opened_while_the_last_close_was_in_flight_is_checked_when_it_ends() -> None:
    """A17: the new position's breach arrived while the old close still held the symbol."""
    rig = closing_rig()
    rig.clock.step(0.5)
    new = long(id=2, opened=rig.clock.now)
    rig.clock.step(0.001)
    breach = rig.tick("SYM", 85.0)
    assert rig.monitor.set_positions([new]) == []  # still in flight: not judged yet
    assert rig.feed(breach) == []
    assert rig.monitor.close_done("SYM", None, [new]) == [CloseRequest("SYM", "stop_loss", breach)]


def test_C9_a_crowd_going_stale_together_is_one_alert_a_few_are_one_each() -> None:
    """C9: the feed goes dark under 200 positions: one stale alert (one fsync), not 200."""
    texts = {}
    for count in (200, FOLD_STALE_OVER):
        rig = Rig()
        rig.monitor.set_positions([long(f"S{i:03d}", id=i) for i in range(count)])
        for i in range(count):
            rig.tick(f"S{i:03d}", 100.0)
        rig.clock.step(STALE + 1)
        result = rig.sweep()
        assert len(result.stale) == count
        texts[count] = [a.text for a in result.alerts if a.kind == "price_stale"]
    assert len(texts[200]) == 1 and "200 positions: price stale" in texts[200][0]
    assert len(texts[FOLD_STALE_OVER]) == FOLD_STALE_OVER
