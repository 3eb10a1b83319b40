"""The feed's ping and silence rules, on a clock the test steps."""

from __future__ import annotations

import time

import pytest

from tradeguard.feed.watchdog import Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def dog(clock: Clock) -> Watchdog:
    return Watchdog(ping_interval=10.0, ping_timeout=5.0, silence_timeout=60.0, clock=clock)


def test_a_ping_goes_out_every_interval(clock: Clock) -> None:
    w = dog(clock)
    clock.now += 9.9
    assert not w.ping_due()
    clock.now += 0.1
    assert w.ping_due()
    assert not w.ping_due()  # counted as sent
    w.observe(10)
    clock.now += 10.0
    assert w.ping_due()


def test_no_byte_after_a_ping_within_the_timeout_is_a_half_open_connection(
    clock: Clock,
) -> None:
    w = dog(clock)
    clock.now += 10.0
    assert w.ping_due()
    clock.now += 5.0
    assert w.failure() is None
    clock.now += 0.01
    assert "no pong within 5.0s" in str(w.failure())


def test_c11_bytes_after_the_ping_answer_it_while_the_pong_waits_behind_ticks(
    clock: Clock,
) -> None:
    """C11: in a burst the pong sits behind unparsed ticks; the ticks prove life."""
    w = dog(clock)
    received = 0
    for _ in range(60):  # a minute of burst: bytes every second, the pong never parsed
        clock.now += 1.0
        received += 300_000
        w.ping_due()
        w.observe(received)
        assert w.failure() is None


def test_a_second_ping_does_not_extend_the_first_ones_deadline(clock: Clock) -> None:
    w = Watchdog(ping_interval=1.0, ping_timeout=2.5, silence_timeout=60.0, clock=clock)
    clock.now += 1.0
    assert w.ping_due()
    clock.now += 1.0
    assert w.ping_due()
    clock.now += 1.0
    assert w.ping_due()
    clock.now += 0.6
    assert "no pong" in str(w.failure())


def test_silence_is_no_byte_at_all_for_the_timeout(clock: Clock) -> None:
    w = Watchdog(ping_interval=100.0, ping_timeout=5.0, silence_timeout=15.0, clock=clock)
    clock.now += 14.0
    w.observe(1)
    clock.now += 15.0
    assert w.failure() is None
    w.observe(1)  # the same count: nothing new arrived
    clock.now += 0.5
    assert "silence timeout" in str(w.failure())


def test_a_backward_wall_clock_step_changes_nothing(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A4: the watchdog reads only its monotonic clock, never time.time()."""
    w = dog(clock)
    clock.now += 10.0
    assert w.ping_due()
    monkeypatch.setattr(time, "time", lambda: 0.0)  # the wall clock jumps back decades
    clock.now += 4.0
    assert w.failure() is None
    clock.now += 1.5
    assert "no pong" in str(w.failure())


def test_a_clock_that_steps_back_never_kills(clock: Clock) -> None:
    w = dog(clock)
    clock.now -= 3600.0
    assert w.failure() is None
    assert not w.ping_due()


def test_a_quiet_feed_while_every_market_is_closed_is_not_dead(clock: Clock) -> None:
    """SPEC §14: the night's silence does not count; after the open it counts again."""
    closed, asked = [True], []

    def quiet_ok() -> bool:
        asked.append(clock.now)
        return closed[0]

    w = Watchdog(ping_interval=1e9, ping_timeout=5.0, silence_timeout=60.0, clock=clock,
                 quiet_ok=quiet_ok)
    for _ in range(600):  # 100 minutes of a night without a byte, checked every 10 s
        clock.now += 10.0
        assert w.failure() is None
    assert len(asked) == 85  # once a silence timeout (every 70 s at 10 s checks), not 600 times
    closed[0] = False  # the open
    assert w.failure() is None  # not at once: the last excuse was less than a timeout ago
    clock.now += 61.0
    assert "silence timeout" in str(w.failure())


def test_an_unanswered_ping_kills_even_while_the_markets_are_closed(clock: Clock) -> None:
    w = Watchdog(ping_interval=10.0, ping_timeout=5.0, silence_timeout=60.0, clock=clock,
                 quiet_ok=lambda: True)
    clock.now += 10.0
    assert w.ping_due()
    clock.now += 5.1
    assert "half-open" in str(w.failure())
