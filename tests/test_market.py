"""The trading day (SPEC §14), pure: a calendar and the stop engine on it, on stepped clocks.

The days: Friday 2026-12-04 and the weekend after it, Monday 2026-12-07, and
Tuesday 2026-12-08 made a holiday. Times are India's (Asia/Kolkata).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from zoneinfo import ZoneInfo

import pytest

from tradeguard.config import Config
from tradeguard.market import (
    Calendar,
    Market,
    MarketStatus,
    default_exchange,
    intraday,
    parse_session,
)
from tradeguard.monitoring import RECONCILE, Memory, Monitor, Settings
from tradeguard.positions import Position, Side, State
from tradeguard.prices import PriceCache, Tick

IST = ZoneInfo("Asia/Kolkata")
STALE, UNUSABLE = 30.0, 300.0
SESSIONS = {"NSE": "09:15-15:30", "MCX": "09:00-23:30", "CRYPTO": "always"}
HOLIDAY = "2026-12-08"


def at(local: str) -> float:
    """A wall time from "YYYY-MM-DD HH:MM[:SS]" in India."""
    return dt.datetime.fromisoformat(local).replace(tzinfo=IST).timestamp()


def calendar(**changes: object) -> Calendar:
    values: dict[str, object] = {"timezone": "Asia/Kolkata", "sessions": SESSIONS,
                                 "holidays": [HOLIDAY], "default": "", "square_off": ""}
    values.update(changes)
    return Calendar(**values)  # type: ignore[arg-type]


class Clocks:
    """Wall and monotonic time moving together; the wall one may also be set (a step)."""

    def __init__(self, wall: float) -> None:
        self.wall, self.mono = wall, 10_000.0

    def step(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


# The calendar ------------------------------------------------------------------------------


@pytest.mark.parametrize(("local", "nse", "mcx"), [
    ("2026-12-04 08:59", False, False),
    ("2026-12-04 09:00", False, True),   # NSE pre-open: closed for orders; MCX opens
    ("2026-12-04 09:14:59", False, True),
    ("2026-12-04 09:15", True, True),
    ("2026-12-04 15:29:59", True, True),
    ("2026-12-04 15:30", False, True),
    ("2026-12-04 23:30", False, False),
    ("2026-12-05 10:00", False, False),  # Saturday
    ("2026-12-06 10:00", False, False),  # Sunday
    ("2026-12-07 10:00", True, True),    # Monday
    ("2026-12-08 10:00", False, False),  # the holiday
])
def test_sessions_across_a_day_a_weekend_and_a_holiday(local: str, nse: bool, mcx: bool) -> None:
    cal = calendar()
    assert (cal.is_open("NSE", at(local)), cal.is_open("MCX", at(local))) == (nse, mcx)
    assert cal.is_open("CRYPTO", at(local))  # "always"
    assert cal.is_open("", at(local))  # no exchange: never closed
    assert cal.is_open("LSE", at(local))  # no session known: never closed


def test_the_session_begins_at_its_start_time_in_the_zone() -> None:
    assert calendar().opened_at("NSE", at("2026-12-04 11:00")) == at("2026-12-04 09:15")
    assert calendar(timezone="UTC").opened_at("NSE", at("2026-12-04 11:00")) is None  # 05:30 UTC


def test_a_symbol_s_exchange_is_its_prefix_else_the_default() -> None:
    assert calendar().exchange_of("nse:INFY") == "NSE"
    assert calendar().exchange_of("BOSCHLTD") == ""
    assert calendar(default="NSE").exchange_of("BOSCHLTD") == "NSE"
    assert default_exchange("", "json") == ""
    assert default_exchange("", "kite") == default_exchange("", "upstox") == "NSE"
    assert default_exchange("bse", "kite") == "BSE"


@pytest.mark.parametrize("text", ["9:15", "09:15-", "09:15-25:00", "15:30-09:15", "09:5-10:00",
                                  "sometimes", "09:15-09:15"])
def test_a_bad_session_is_refused_with_its_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"HH:MM|time of day|after it starts"):
        parse_session(text)


@pytest.mark.parametrize(("now", "message"), [
    ("2026-12-04 09:05", "NSE is closed; orders resume at 09:15"),
    ("2026-12-04 16:00", "NSE is closed; orders resume at 09:15 on Mon 07 Dec"),
    ("2026-12-07 15:45", "NSE is closed; orders resume at 09:15 on Wed 09 Dec"),  # past the holiday
])
def test_the_closed_message_says_when_orders_resume(now: str, message: str) -> None:
    clocks = Clocks(at(now))
    assert Market(calendar(), lambda: clocks.wall).closed_message("NSE:INFY") == message


def test_square_off_is_due_from_its_time_on_trading_days_only() -> None:
    cal = calendar(square_off="15:15")
    assert cal.square_off_day(at("2026-12-04 15:14:59")) is None
    assert cal.square_off_day(at("2026-12-04 15:15")) == dt.date(2026, 12, 4)
    assert cal.square_off_day(at("2026-12-05 15:20")) is None  # Saturday
    assert cal.square_off_day(at("2026-12-08 15:20")) is None  # holiday


def test_a_feed_s_market_status_overrides_the_schedule_and_can_give_it_back() -> None:
    """The seam for Upstox `market_info`: its word wins over [market.sessions]."""
    clocks = Clocks(at("2026-12-04 11:00"))
    market = Market(calendar(), lambda: clocks.wall)
    market.set_override("NSE", False)  # e.g. a trading halt
    assert not market.is_open("NSE")
    assert market.status()["NSE"] == "closed"
    market.set_override("NSE", True)
    assert market.opened_at("NSE") == at("2026-12-04 09:15")  # the schedule agrees: since 09:15
    clocks.wall = at("2026-12-04 16:00")
    market.set_override("NSE", None)
    assert not market.is_open("NSE")
    market.set_override("NSE", True)  # open though the schedule says closed: open since now
    assert market.opened_at("NSE") == clocks.wall


def test_the_market_config_builds_the_calendar() -> None:
    cfg = Config().replace("market", sessions={"nse": "always"}, square_off="15:10")
    market = Market.from_config(cfg.replace("feed", protocol="kite"))
    assert market.calendar.sessions["NSE"].always
    assert market.calendar.sessions["MCX"] == parse_session("09:00-23:30")  # defaults kept
    assert market.exchange_of("INFY") == "NSE"


def test_intraday_is_the_mis_and_i_products() -> None:
    @dataclass
    class Held:
        product: str | None

    assert intraday(Held("MIS")) and intraday(Held("i"))
    assert not intraday(Held("CNC")) and not intraday(Held(None)) and not intraday(object())


# The stop engine on the trading day --------------------------------------------------------


@dataclass
class Event:
    local: str
    kind: str  # "close:<reason>" or an alert kind
    detail: str = ""


@dataclass
class Day:
    """A Monitor with a Market over a PriceCache, stepped minute by minute."""

    clocks: Clocks
    blind_policy: str = "close"
    square_off: str = ""
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cache = PriceCache(STALE, UNUSABLE)
        self.market = Market(calendar(square_off=self.square_off), lambda: self.clocks.wall)
        self.memory = Memory(started=self.clocks.mono - 3600.0)
        self.monitor = Monitor(Settings(STALE, blind_policy=self.blind_policy), self.memory,
                               lambda: self.clocks.mono, self.market)

    def local(self) -> str:
        return dt.datetime.fromtimestamp(self.clocks.wall, IST).strftime("%a %H:%M:%S")

    def hold(self, *positions: Position) -> None:
        self.monitor.set_positions(
            [replace(p, opened_mono=self.clocks.mono, id=i) for i, p in enumerate(positions)])

    def tick(self, symbol: str, price: float) -> None:
        tick = Tick(symbol, price, self.clocks.mono)
        self.cache.put(tick)
        for request in self.monitor.on_ticks([tick]):
            self._closed(request.symbol, f"close:{request.reason}", f"{price:g}")

    def sweep(self) -> None:
        now = self.clocks.mono
        result = self.monitor.sweep(now, lambda symbol: self.cache.quote(symbol, now))
        self.events += [Event(self.local(), alert.kind, alert.text) for alert in result.alerts]
        for request in result.closes:
            self._closed(request.symbol, f"close:{request.reason}")

    def _closed(self, symbol: str, kind: str, detail: str = "") -> None:
        self.events.append(Event(self.local(), kind, detail or symbol))
        live = [p for p in self.monitor.positions.values() if p.symbol != symbol]
        self.monitor.close_done(symbol, None, live)

    def run(self, until: str, price: Callable[[float], float | None] = lambda wall: None,
            symbol: str = "NSE:INFY", every: float = 60.0) -> None:
        """Minute by minute to `until`: a tick when `price` gives one, then a sweep.

        `symbol` "*" ticks every position held.
        """
        end = at(until)
        while self.clocks.wall < end:
            self.clocks.step(every)
            value = price(self.clocks.wall)
            symbols = list(self.monitor.positions) if symbol == "*" else [symbol]
            for name in symbols if value is not None else []:
                self.tick(name, value)  # type: ignore[arg-type]
            self.sweep()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def long(symbol: str = "NSE:INFY", stop: float = 95.0, **changes: object) -> Position:
    position = Position(symbol, Side.LONG, 1.0, 100.0, stop, None)
    return replace(position, **changes)  # type: ignore[arg-type]


def nse_feed(steady: float) -> Callable[[float], float | None]:
    """Ticks at `steady` from the pre-open to the close; nothing at night (as NSE's feed)."""
    def price(wall: float) -> float | None:
        local = dt.datetime.fromtimestamp(wall, IST)
        trading = local.weekday() < 5 and local.date().isoformat() != HOLIDAY
        return steady if trading and dt.time(9, 0) <= local.time() < dt.time(15, 30) else None
    return price


def test_a_whole_day_and_weekend_of_a_quiet_night_alerts_nothing_and_closes_nothing() -> None:
    """A position held overnight and over a weekend: no stale, no blind, no blind close.

    The feed goes quiet at 15:30; with blind_policy = "close" the old engine
    turned the position blind at 15:35, alerted all night and sent market
    orders to a closed exchange.
    """
    day = Day(Clocks(at("2026-12-04 08:00")))
    day.hold(long())
    day.run("2026-12-07 09:16", nse_feed(100.0))
    assert day.events == []
    assert day.monitor.positions["NSE:INFY"].state.value == "open"


def test_without_a_monitor_market_the_same_night_goes_blind_and_closes() -> None:
    """The control: what the night did before the trading day existed."""
    day = Day(Clocks(at("2026-12-04 15:00")))
    day.monitor = Monitor(Settings(STALE, blind_policy="close"), day.memory,
                          lambda: day.clocks.mono)
    day.hold(long())
    day.run("2026-12-04 16:00", nse_feed(100.0))
    assert "close:blind" in day.kinds()


def test_a_level_crossed_while_closed_is_decided_by_the_first_tick_after_the_open() -> None:
    """Pre-open prices below the stop close nothing; the first tick after 09:15 decides.

    At 09:15 the cache still holds the 09:14 pre-open price (under the stop
    and fresh): it must not close the position; the first tick after the
    open, back above the stop, keeps it open.
    """
    day = Day(Clocks(at("2026-12-07 08:30")))
    day.hold(long())
    day.run("2026-12-07 09:14", lambda wall: 90.0 if wall >= at("2026-12-07 09:00") else None)
    day.run("2026-12-07 09:15:00")  # the open: the sweep sees only the pre-open price
    assert day.events == []
    day.clocks.step(1.0)
    day.tick("NSE:INFY", 96.0)
    day.sweep()
    assert day.events == []
    day.tick("NSE:INFY", 94.0)
    assert day.kinds() == ["close:stop_loss"]
    assert day.events[0].local == "Mon 09:15:01" and day.events[0].detail == "94"


def test_a_crossing_confirmed_by_the_first_tick_after_the_open_closes_at_once() -> None:
    day = Day(Clocks(at("2026-12-07 09:00")))
    day.hold(long())
    day.run("2026-12-07 09:14", lambda wall: 90.0)
    assert day.events == []
    day.clocks.wall, day.clocks.mono = at("2026-12-07 09:15:00.5"), day.clocks.mono + 60.5
    day.tick("NSE:INFY", 91.0)
    assert [(e.kind, e.detail) for e in day.events] == [("close:stop_loss", "91")]


def test_no_price_after_the_open_is_blind_only_after_the_stale_threshold() -> None:
    """Last night's price is not a price for today; the feed gets the grace a new position gets."""
    day = Day(Clocks(at("2026-12-07 09:10")), blind_policy="alert")
    day.hold(long())
    day.tick("NSE:INFY", 99.0)  # pre-open
    day.run("2026-12-07 09:15:25", every=5.0)
    assert day.events == []
    day.run("2026-12-07 09:15:35", every=5.0)
    assert day.kinds() == ["position_blind"]


def test_the_holiday_is_closed_all_day_even_with_prices_under_the_stop() -> None:
    day = Day(Clocks(at("2026-12-08 08:00")))
    day.hold(long())
    day.run("2026-12-08 20:00", lambda wall: 90.0)
    assert day.events == []


def test_a_bare_symbol_on_the_json_feed_is_never_closed() -> None:
    day = Day(Clocks(at("2026-12-05 11:00")))  # Saturday
    day.hold(long("BOSCHLTD"))
    day.run("2026-12-05 11:02", lambda wall: 90.0, symbol="BOSCHLTD")
    assert day.kinds() == ["close:stop_loss"]


def test_other_markets_keep_their_own_hours() -> None:
    """An MCX position is guarded until 23:30 while NSE sleeps."""
    day = Day(Clocks(at("2026-12-04 16:00")))
    day.hold(long("MCX:GOLD"), long("NSE:INFY"))
    day.run("2026-12-04 16:05", lambda wall: 90.0, symbol="MCX:GOLD")
    day.run("2026-12-04 16:06", lambda wall: 90.0, symbol="NSE:INFY")
    assert [(e.kind, e.detail) for e in day.events] == [("close:stop_loss", "90")]
    assert list(day.monitor.positions) == ["NSE:INFY"]


def test_square_off_closes_intraday_positions_once_a_day_with_one_alert() -> None:
    day = Day(Clocks(at("2026-12-04 15:10")), square_off="15:15")
    day.hold(long("NSE:A", product="MIS"), long("NSE:B", product="I"),
             long("NSE:C", product="CNC"), long("MCX:D", product="MIS"))
    day.run("2026-12-04 15:14", lambda wall: 100.0, symbol="*")
    assert day.events == []
    day.run("2026-12-04 15:20", lambda wall: 100.0, symbol="*")
    kinds = [(e.kind, e.detail) for e in day.events if e.kind != "square_off"]
    assert sorted(kinds) == [("close:square_off", s) for s in ("MCX:D", "NSE:A", "NSE:B")]
    [alert] = [e for e in day.events if e.kind == "square_off"]
    assert "3 intraday positions" in alert.detail and "NSE:A, NSE:B" in alert.detail
    assert list(day.monitor.positions) == ["NSE:C"]  # delivery is kept overnight


def test_square_off_leaves_a_closed_market_alone_and_does_not_repeat_that_day() -> None:
    day = Day(Clocks(at("2026-12-04 16:00")), square_off="15:15")  # started after NSE closed
    day.hold(long("NSE:A", product="MIS"))
    day.run("2026-12-04 16:03")
    assert day.events == []
    day.memory.squared_off = ""  # a later day: only the trading-day rules stand in the way
    day.clocks.wall = at("2026-12-05 15:20")  # Saturday
    day.run("2026-12-05 15:22")
    assert day.events == []


def test_market_status_messages_from_a_feed_override_the_schedule() -> None:
    """The seam an Upstox `market_info` parser feeds: MarketStatus among parsed messages."""
    clocks = Clocks(at("2026-12-05 11:00"))  # Saturday: closed by the schedule
    market = Market(calendar(), lambda: clocks.wall)
    market.feed_messages(["an order update", MarketStatus("nse", True)])  # a special session
    assert market.is_open("NSE") and market.opened_at("NSE") == clocks.wall
    market.feed_messages([MarketStatus("NSE", None)])
    assert not market.is_open("NSE")


def test_a_close_a_crash_left_on_a_closed_market_is_reconciled_at_the_open() -> None:
    """No broker call at night; at the first sweep after the open, not a stuck timer later."""
    day = Day(Clocks(at("2026-12-07 08:00")))
    day.monitor.set_positions([replace(long(), id=1, state=State.CLOSING)])
    assert day.monitor.recover() == []
    day.run("2026-12-07 09:14")
    assert day.events == []
    day.run("2026-12-07 09:15")
    assert [(e.local, e.kind) for e in day.events] == [("Mon 09:15:00", f"close:{RECONCILE}")]
