"""The trading day (SPEC §14): which exchange takes orders when.

An exchange's session is `HH:MM-HH:MM` in `market.timezone`, Monday to
Friday, or "always"; `market.holidays` close every exchange for the day. A
position's exchange is its symbol's `EXCH:` prefix, else
`market.default_exchange` (NSE with kite and upstox; with the json feed a bare
symbol has no exchange and is always open, as is an exchange no session
names). The pre-open auction (09:00-09:15 on NSE) lies outside the 09:15
session, so it is closed for orders like the night.

A feed that reports market status itself (Upstox's `market_info`) overrides
the schedule: its protocol's `parse` returns a `MarketStatus` among its
messages, and the feed actor hands those to `Market.feed_messages`.

Pure: `Calendar` takes the wall time as an argument; `Market` is a calendar
plus the wall clock it reads (injected, so tests step it).
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tradeguard.positions import INTRADAY_PRODUCTS

if TYPE_CHECKING:
    from tradeguard.config import Config

ALWAYS = "always"
OPEN = "open"
CLOSED = "closed"
LOOKAHEAD_DAYS = 21  # how far next_open looks (long exchange closures are holidays too)
WEEKDAYS = range(5)  # Monday to Friday


@dataclass(frozen=True, slots=True)
class MarketStatus:
    """A feed's word on one exchange: open, closed, or None (back to the schedule)."""

    exchange: str
    is_open: bool | None


@dataclass(frozen=True, slots=True)
class Session:
    """One exchange's daily window; both None means "always"."""

    start: dt.time | None
    end: dt.time | None

    @property
    def always(self) -> bool:
        return self.start is None


def parse_clock(text: str) -> dt.time:
    """ "HH:MM" (24 hours) as a time; ValueError otherwise."""
    hours, sep, minutes = text.strip().partition(":")
    if not sep or len(minutes) != 2 or not hours.isdigit() or not minutes.isdigit():
        raise ValueError(f"{text!r} is not HH:MM")
    if int(hours) > 23 or int(minutes) > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00-23:59)")
    return dt.time(int(hours), int(minutes))


def parse_session(text: str) -> Session:
    """ "HH:MM-HH:MM" or "always"; ValueError with the reason otherwise."""
    if text.strip().lower() == ALWAYS:
        return Session(None, None)
    first, sep, second = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not \"HH:MM-HH:MM\" or \"always\"")
    start, end = parse_clock(first), parse_clock(second)
    if end <= start:
        raise ValueError(f"{text!r} must end after it starts (no session crosses midnight)")
    return Session(start, end)


def parse_holiday(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a YYYY-MM-DD date") from None


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known time zone (e.g. \"Asia/Kolkata\")") from None


def default_exchange(configured: str, protocol: str) -> str:
    """SPEC §3: "" means NSE with kite and upstox, and no exchange with the json feed."""
    if configured:
        return configured.strip().upper()
    return "NSE" if protocol in ("kite", "upstox") else ""


class Calendar:
    """Sessions and holidays of every configured exchange; every answer for a given wall time."""

    def __init__(self, *, timezone: str, sessions: Mapping[str, str],
                 holidays: Iterable[str] = (), default: str = "",
                 square_off: str = "") -> None:
        self.tz = zone(timezone)
        self.sessions = {name.upper(): parse_session(text) for name, text in sessions.items()}
        self.holidays = frozenset(parse_holiday(day) for day in holidays)
        self.default = default
        self.square_off = parse_clock(square_off) if square_off else None

    def exchange_of(self, symbol: str) -> str:
        prefix, sep, _ = symbol.partition(":")
        return prefix.strip().upper() if sep else self.default

    def local(self, wall: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(wall, self.tz)

    def trading_day(self, day: dt.date) -> bool:
        return day.weekday() in WEEKDAYS and day not in self.holidays

    def is_open(self, exchange: str, wall: float) -> bool:
        return self.opened_at(exchange, wall) is not None

    def opened_at(self, exchange: str, wall: float) -> float | None:
        """The wall time the current session began; -inf for always; None while closed."""
        session = self.sessions.get(exchange)
        if session is None or session.always:
            return -math.inf  # no exchange, or none we know the hours of: never closed
        now = self.local(wall)
        if not self.trading_day(now.date()):
            return None
        assert session.start is not None and session.end is not None
        if not session.start <= now.time().replace(tzinfo=None) < session.end:
            return None
        return now.replace(hour=session.start.hour, minute=session.start.minute, second=0,
                           microsecond=0).timestamp()

    def next_open(self, exchange: str, wall: float) -> dt.datetime | None:
        """When the exchange next opens (local time), or None if not within LOOKAHEAD_DAYS."""
        session = self.sessions.get(exchange)
        if session is None or session.always or session.start is None:
            return None
        now = self.local(wall)
        for ahead in range(LOOKAHEAD_DAYS):
            day = now.date() + dt.timedelta(days=ahead)
            start = dt.datetime.combine(day, session.start, self.tz)
            if self.trading_day(day) and start > now:
                return start
        return None

    def square_off_day(self, wall: float) -> dt.date | None:
        """Today, once `square_off` has passed on a trading day; else None."""
        if self.square_off is None:
            return None
        now = self.local(wall)
        if not self.trading_day(now.date()) or now.time().replace(tzinfo=None) < self.square_off:
            return None
        return now.date()


def intraday(position: object) -> bool:
    """MIS (Kite) or I (Upstox); a position without a product is not intraday."""
    product = getattr(position, "product", None)
    return isinstance(product, str) and product.upper() in INTRADAY_PRODUCTS


class Market:
    """A calendar read at the wall clock, plus what a feed says about market status."""

    def __init__(self, calendar: Calendar, clock: Callable[[], float] = time.time) -> None:
        self.calendar = calendar
        self._clock = clock
        self._lock = threading.Lock()
        self._overrides: dict[str, float | None] = {}  # exchange -> opened at (wall), None closed

    @classmethod
    def from_config(cls, cfg: Config, clock: Callable[[], float] = time.time) -> Market:
        """From a validated configuration (so nothing here raises)."""
        market = cfg.market
        return cls(Calendar(
            timezone=market.timezone, sessions=market.sessions, holidays=market.holidays,
            default=default_exchange(market.default_exchange, cfg.feed.protocol),
            square_off=market.square_off), clock)

    def now(self) -> float:
        return self._clock()

    def exchange_of(self, symbol: str) -> str:
        return self.calendar.exchange_of(symbol)

    def set_override(self, exchange: str, is_open: bool | None) -> None:
        """A feed's word on an exchange (Upstox `market_info`); None: the schedule's again."""
        name, now = exchange.upper(), self._clock()
        with self._lock:
            if is_open is None:
                self._overrides.pop(name, None)
            elif not is_open:
                self._overrides[name] = None
            elif self._overrides.get(name) is None:
                # Open since the schedule says so, or since now if the schedule disagrees.
                scheduled = self.calendar.opened_at(name, now)
                self._overrides[name] = now if scheduled is None else scheduled

    def feed_messages(self, messages: Iterable[object]) -> None:
        """Take the `MarketStatus` messages among what a feed protocol parsed."""
        for message in messages:
            if isinstance(message, MarketStatus):
                self.set_override(message.exchange, message.is_open)

    def opened_at(self, exchange: str) -> float | None:
        """The wall time the exchange's current session began; None while it is closed."""
        with self._lock:
            if exchange in self._overrides:
                return self._overrides[exchange]
        return self.calendar.opened_at(exchange, self._clock())

    def is_open(self, exchange: str) -> bool:
        return self.opened_at(exchange) is not None

    def symbol_open(self, symbol: str) -> bool:
        return self.is_open(self.exchange_of(symbol))

    def all_closed(self, symbols: Iterable[str]) -> bool:
        """True when there is an exchange among the symbols' and every one is closed."""
        exchanges = {self.exchange_of(s) for s in symbols}
        return bool(exchanges) and not any(self.is_open(e) for e in exchanges)

    def status(self) -> dict[str, str]:
        """Every configured (or feed-reported) exchange: "open" or "closed"."""
        with self._lock:
            names = set(self.calendar.sessions) | set(self._overrides)
        return {name: OPEN if self.is_open(name) else CLOSED for name in sorted(names)}

    def closed_message(self, symbol: str) -> str:
        """Why an order is refused: "NSE is closed; orders resume at 09:15"."""
        exchange, now = self.exchange_of(symbol), self._clock()
        opens = self.calendar.next_open(exchange, now)
        if opens is None:
            return f"{exchange} is closed; orders resume when it opens"
        when = opens.strftime("%H:%M")
        if opens.date() != self.calendar.local(now).date():
            when += opens.strftime(" on %a %d %b")
        return f"{exchange} is closed; orders resume at {when}"

    def square_off_day(self) -> dt.date | None:
        return self.calendar.square_off_day(self._clock())
