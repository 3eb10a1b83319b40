"""The reconnect schedule: exponential, capped, jittered, reset once stable."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tradeguard.backoff import Backoff


def spec_base(initial: float, maximum: float, attempt: int) -> float:
    """SPEC: base = min(max, initial * 2**(n-1)), computed without the class."""
    return min(maximum, initial * 2.0 ** (attempt - 1))


schedules = st.tuples(
    st.floats(0.001, 100.0),  # initial
    st.floats(0.001, 1000.0),  # maximum
    st.floats(0.0, 2.0),  # jitter
).filter(lambda t: t[0] <= t[1])


@given(schedule=schedules, draws=st.lists(st.floats(0.0, 1.0, exclude_max=True), max_size=60))
def test_every_delay_is_its_base_plus_at_most_jitter_of_it(
    schedule: tuple[float, float, float], draws: list[float]
) -> None:
    initial, maximum, jitter = schedule
    backoff = Backoff(initial, maximum, jitter, stable_after=10.0, rand=iter(draws).__next__)
    previous_base = 0.0
    for attempt in range(1, len(draws) + 1):
        delay = backoff.next_delay()
        base = spec_base(initial, maximum, attempt)
        assert backoff.attempts == attempt
        assert backoff.base_delay(attempt) == base
        assert base <= delay <= base * (1 + jitter) + 1e-9 * base
        assert base >= previous_base  # monotone non-decreasing
        assert delay <= maximum * (1 + jitter) + 1e-9 * maximum
        previous_base = base


@given(schedule=schedules, seed=st.integers(0, 2**32))
def test_the_default_random_source_stays_in_bounds(
    schedule: tuple[float, float, float], seed: int
) -> None:
    initial, maximum, jitter = schedule
    backoff = Backoff(initial, maximum, jitter, 10.0, rand=random.Random(seed).random)
    for attempt in range(1, 30):
        base = spec_base(initial, maximum, attempt)
        assert base <= backoff.next_delay() <= base * (1 + jitter) + 1e-9 * base


def test_the_seed_schedule() -> None:
    backoff = Backoff(1.0, 60.0, 0.5, 10.0, rand=lambda: 0.0)
    assert [backoff.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    top = Backoff(1.0, 60.0, 0.5, 10.0, rand=lambda: 1.0)
    assert [top.next_delay() for _ in range(3)] == [1.5, 3.0, 6.0]


def test_a_very_long_outage_stays_capped() -> None:
    backoff = Backoff(1.0, 60.0, 0.5, 10.0, rand=lambda: 0.5)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 75.0


def test_a_tiny_initial_delay_still_grows_to_the_maximum() -> None:
    backoff = Backoff(1e-25, 60.0, 0.0, 10.0)
    assert backoff.base_delay(200) == 60.0


def test_a_stable_connection_resets_the_schedule_when_it_drops() -> None:
    backoff = Backoff(1.0, 60.0, 0.0, stable_after=10.0)
    for _ in range(4):
        backoff.next_delay()
    backoff.connected(now=100.0)
    backoff.disconnected(now=110.0)  # up exactly stable_after
    assert backoff.attempts == 0
    assert backoff.next_delay() == 1.0


def test_a_short_connection_does_not_reset_the_schedule() -> None:
    backoff = Backoff(1.0, 60.0, 0.0, stable_after=10.0)
    for _ in range(4):
        backoff.next_delay()
    backoff.connected(now=100.0)
    backoff.disconnected(now=109.9)
    assert backoff.attempts == 4
    assert backoff.next_delay() == 16.0


def test_a_drop_without_a_connection_does_not_reset() -> None:
    backoff = Backoff(1.0, 60.0, 0.0, stable_after=0.0)
    backoff.next_delay()
    backoff.disconnected(now=1e9)
    assert backoff.attempts == 1


def test_check_stable_resets_once_the_connection_has_lasted() -> None:
    backoff = Backoff(1.0, 60.0, 0.0, stable_after=10.0)
    for _ in range(3):
        backoff.next_delay()
    assert backoff.check_stable(now=50.0) is False  # not connected
    backoff.connected(now=100.0)
    assert backoff.check_stable(now=105.0) is False
    assert backoff.attempts == 3
    assert backoff.check_stable(now=110.0) is True
    assert backoff.attempts == 0
    backoff.disconnected(now=111.0)
    assert backoff.check_stable(now=200.0) is False
