"""The price cache: what it accepts, how it ages prices, and what it hands out."""

from __future__ import annotations

import threading

import pytest

from tradeguard.prices import (
    Freshness,
    PriceCache,
    StaleTracker,
    Tick,
    classify,
    from_wall,
    to_wall,
    valid_price,
)

T0 = 86_400.0  # a monotonic receive time: a day after boot
WALL = 1_767_779_056.0


def price(cache: PriceCache, symbol: str, now: float) -> float | None:
    """The price if it may still be used (the seed's get_cached_price), else None."""
    quote = cache.quote(symbol, now)
    return quote.price if quote is not None and quote.usable else None


@pytest.fixture
def cache() -> PriceCache:
    return PriceCache(stale_after=30.0, unusable_after=300.0)


@pytest.mark.parametrize(
    "price",
    [float("nan"), float("inf"), float("-inf"), 0, 0.0, -0.0, -1, -575.0, True, False,
     "575.0", None, [575.0], pytest.param(10**400, id="huge-int")],
)
def test_a_bad_price_is_refused_and_stores_nothing(cache: PriceCache, price: object) -> None:
    assert valid_price(price) is False
    assert cache.put(Tick("BOSCHLTD", price, T0)) is False  # type: ignore[arg-type]
    assert cache.quote("BOSCHLTD", T0) is None
    assert len(cache) == 0


@pytest.mark.parametrize("price", [575.0, 1, 1e-9, 10**15])
def test_a_finite_positive_number_is_a_price(price: float) -> None:
    assert valid_price(price) is True


def test_a_tick_without_a_symbol_is_refused(cache: PriceCache) -> None:
    assert cache.put(Tick("", 575.0, T0)) is False
    assert len(cache) == 0


def test_a_bad_tick_does_not_replace_a_good_price(cache: PriceCache) -> None:
    cache.put(Tick("BOSCHLTD", 575.0, T0))
    assert cache.put(Tick("BOSCHLTD", float("nan"), T0 + 1)) is False
    assert price(cache, "BOSCHLTD", T0 + 1) == 575.0


def test_age_is_measured_from_the_receive_time_not_the_exchange_time(cache: PriceCache) -> None:
    cache.put(Tick("BOSCHLTD", 575.0, T0, exchange_ts=T0 - 3600.0))
    quote = cache.quote("BOSCHLTD", T0 + 12.5)
    assert quote is not None
    assert quote.age == 12.5
    assert quote.received_at == T0
    assert quote.freshness is Freshness.FRESH


def test_A4_an_age_is_never_clamped_to_hide_a_quote_from_the_future(cache: PriceCache) -> None:
    """A4: the old cache showed a quote stamped ahead of `now` as age 0, fresh for ever."""
    cache.put(Tick("BOSCHLTD", 575.0, T0 + 5.0))
    quote = cache.quote("BOSCHLTD", T0)
    assert quote is not None
    assert quote.age == -5.0


def test_A4_a_snapshot_keeps_each_price_age_across_a_restart() -> None:
    """A4: stored in wall time, back on the new process's monotonic clock with the same age."""
    ticks = [Tick("A", 1.0, T0 - 12.5), Tick("B", 2.0, T0)]
    stored = to_wall(ticks, mono_now=T0, wall_now=WALL)
    assert [t.received_at for t in stored] == [WALL - 12.5, WALL]
    # The next process: its monotonic clock starts near 0; 60 s of wall time have passed.
    back = from_wall(stored, mono_now=3.0, wall_now=WALL + 60.0)
    assert [round(3.0 - t.received_at, 6) for t in back] == [72.5, 60.0]
    assert [(t.symbol, t.price) for t in back] == [("A", 1.0), ("B", 2.0)]


def test_A4_a_wall_clock_stepped_back_across_a_restart_gives_age_zero_not_less() -> None:
    """A4: the snapshot cannot prove a price younger than 0 s; it is not made "future"."""
    stored = to_wall([Tick("A", 1.0, T0)], mono_now=T0, wall_now=WALL)
    back = from_wall(stored, mono_now=3.0, wall_now=WALL - 300.0)
    assert back[0].received_at == 3.0


def test_A4_the_cache_takes_every_new_tick_whatever_the_wall_clock_did(cache: PriceCache) -> None:
    """A4: the old cache refused every tick stamped (wall clock) before the one it held."""
    cache.put(Tick("BOSCHLTD", 575.0, T0))
    assert cache.put(Tick("BOSCHLTD", 560.0, T0 + 0.001))  # monotonic: always later
    assert price(cache, "BOSCHLTD", T0 + 1) == 560.0


@pytest.mark.parametrize(
    ("age", "freshness"),
    [
        (0.0, Freshness.FRESH),
        (30.0, Freshness.FRESH),  # is stale only when age > stale_after
        (30.001, Freshness.STALE),
        (299.999, Freshness.STALE),
        (300.0, Freshness.STALE),  # usable up to and including cache_timeout
        (300.001, Freshness.UNUSABLE),
        (86_400.0, Freshness.UNUSABLE),
    ],
)
def test_freshness_boundaries(cache: PriceCache, age: float, freshness: Freshness) -> None:
    assert classify(age, 30.0, 300.0) is freshness
    cache.put(Tick("BOSCHLTD", 575.0, T0))
    quote = cache.quote("BOSCHLTD", T0 + age)
    assert quote is not None
    assert quote.freshness is freshness
    assert quote.usable is (freshness is not Freshness.UNUSABLE)
    expected_price = None if freshness is Freshness.UNUSABLE else 575.0
    assert price(cache, "BOSCHLTD", T0 + age) == expected_price
    assert quote.age == pytest.approx(age)


def test_an_unknown_symbol_has_no_quote(cache: PriceCache) -> None:
    assert cache.quote("NOPE", T0) is None


def test_an_unusable_price_still_reports_its_age(cache: PriceCache) -> None:
    cache.put(Tick("BOSCHLTD", 575.0, T0))
    quote = cache.quote("BOSCHLTD", T0 + 301)
    assert quote is not None and not quote.usable and quote.age == 301.0


def test_thresholds_come_from_the_constructor() -> None:
    cache = PriceCache(stale_after=1.0, unusable_after=2.0)
    cache.put(Tick("X", 1.0, T0))
    assert cache.quote("X", T0 + 1.5).freshness is Freshness.STALE  # type: ignore[union-attr]
    assert price(cache, "X", T0 + 2.5) is None


def test_the_defaults_are_the_seed_thresholds() -> None:
    cache = PriceCache()
    assert (cache.stale_after, cache.unusable_after) == (30.0, 300.0)


def test_an_older_tick_does_not_overwrite_a_newer_one(cache: PriceCache) -> None:
    assert cache.put(Tick("BOSCHLTD", 575.0, T0 + 10))
    assert cache.put(Tick("BOSCHLTD", 500.0, T0)) is False  # reordered: refused
    assert price(cache, "BOSCHLTD", T0 + 10) == 575.0
    assert cache.put(Tick("BOSCHLTD", 580.0, T0 + 10))  # same receive time: the later call wins
    assert cache.put(Tick("BOSCHLTD", 590.0, T0 + 11))
    assert price(cache, "BOSCHLTD", T0 + 11) == 590.0


def test_put_many_counts_what_it_accepted(cache: PriceCache) -> None:
    ticks = [Tick("A", 1.0, T0), Tick("B", float("nan"), T0), Tick("C", 3.0, T0),
             Tick("A", 0.5, T0 - 1), Tick("", 2.0, T0)]
    assert cache.put_many(ticks) == 2
    assert len(cache) == 2


def test_snapshot_gives_every_symbol_its_age_and_freshness(cache: PriceCache) -> None:
    cache.put_many([Tick("A", 1.0, T0), Tick("B", 2.0, T0 - 100), Tick("C", 3.0, T0 - 400)])
    snap = cache.snapshot(T0)
    assert set(snap) == {"A", "B", "C"}
    assert (snap["A"].price, snap["A"].age, snap["A"].freshness) == (1.0, 0.0, Freshness.FRESH)
    assert (snap["B"].age, snap["B"].freshness) == (100.0, Freshness.STALE)
    assert (snap["C"].age, snap["C"].freshness) == (400.0, Freshness.UNUSABLE)
    assert sorted(t.symbol for t in cache.ticks()) == ["A", "B", "C"]


def test_concurrent_writers_keep_the_newest_tick(cache: PriceCache) -> None:
    barrier = threading.Barrier(4)

    def writer(offset: int) -> None:
        barrier.wait(timeout=10)
        for i in range(offset, 2000, 4):
            cache.put(Tick("BOSCHLTD", 100.0 + i, T0 + i))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    quote = cache.quote("BOSCHLTD", T0 + 2000)
    assert quote is not None
    assert (quote.price, quote.received_at) == (2099.0, T0 + 1999)


def test_C14_unusable_prices_of_symbols_nobody_holds_are_forgotten(cache: PriceCache) -> None:
    """C14: the cache held every symbol the feed ever sent, for ever."""
    cache.put_many([Tick("HELD", 1.0, T0), Tick("CHATTY", 2.0, T0), Tick("NEW", 3.0, T0 + 299)])
    assert cache.forget({"HELD"}, T0 + 300.5) == ["CHATTY"]
    assert sorted(t.symbol for t in cache.ticks()) == ["HELD", "NEW"]


def test_C14_a_flood_of_symbols_is_bounded_and_spares_what_is_kept() -> None:
    """C14: past max_symbols, the longest-silent tenth not kept makes room."""
    cache = PriceCache(max_symbols=100)
    cache.put(Tick("HELD", 1.0, 0.0))
    cache.forget({"HELD"}, 0.0)
    cache.put_many(Tick(f"S{i}", 1.0, float(i + 1)) for i in range(1000))
    assert len(cache) <= 100
    assert cache.quote("HELD", 1000.0) is not None
    assert cache.quote("S999", 1000.0) is not None


def test_the_stale_line_comes_once_per_crossing() -> None:
    """The "[CACHE] Price for SYM is stale" rule, on a stepped clock (no sleeps)."""
    cache, tracker = PriceCache(stale_after=0.3, unusable_after=60.0), StaleTracker()
    cache.put(Tick("ZZZ", 10.0, T0))
    assert tracker.crossed(cache.snapshot(T0 + 0.2)) == []
    assert tracker.crossed(cache.snapshot(T0 + 0.4)) == ["ZZZ"]
    for step in range(1, 20):  # many more looks while it stays stale: nothing new
        assert tracker.crossed(cache.snapshot(T0 + 0.4 + step)) == []
    cache.put(Tick("ZZZ", 10.5, T0 + 30.0))
    tracker.fresh("ZZZ")  # a tick, and stale again before the next look: a second crossing
    assert tracker.crossed(cache.snapshot(T0 + 31.0)) == ["ZZZ"]


def test_prices_already_stale_at_start_are_not_news() -> None:
    cache = PriceCache(stale_after=0.3, unusable_after=60.0)
    cache.put(Tick("OLD", 1.0, T0))
    tracker = StaleTracker(cache.snapshot(T0 + 5))
    assert tracker.crossed(cache.snapshot(T0 + 6)) == []
