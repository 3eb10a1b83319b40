"""Kite's instrument master: `EXCHANGE:TRADINGSYMBOL` <-> instrument token, tick and lot size.

Kite publishes it as one CSV (`GET /instruments`, about 100k rows, gzipped or
plain; columns as kiteconnect 5.2.2 `_parse_instruments` reads them). The
ticker speaks tokens, positions speak symbols, and an order needs the exchange
and trading symbol, so everything Kite-facing goes through a `Master`.

It is fetched at start and once a trading day (`due`: the kept copy is from
before the last 08:00 IST, when Kite's new list is out), and kept in the
store: when a fetch fails, the kept copy is used, with an alert if it is older
than `STALE_TRADING_DAYS` trading days (contracts expire; new ones are
missing), and a critical one if there is none at all.

Cost of a start for 100k rows (5.7 MB of CSV, 1.1 MB gzipped; measured on the
2-core build machine, tests/test_kite_instruments.py prints it): parsing 0.23 s,
keeping it in the store 0.13 s, loading the kept copy 0.18 s; the list in use
holds ~34 MB (54 MB at the peak of a parse; the old list is freed after the swap).
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import gzip
import io
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from tradeguard.alerts import Alert, Severity
from tradeguard.errors import BrokerError, PositionError

logger = logging.getLogger(__name__)

IST = dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")
PUBLISHED_AT = dt.time(8, 0)  # IST; Kite's list for the day is out by then
STALE_TRADING_DAYS = 3
MAX_CSV_BYTES = 64 << 20  # today's list is ~10 MB plain, ~2 MB gzipped
DEFAULT_EXCHANGE = "NSE"
_COLUMNS = ("instrument_token", "tradingsymbol", "tick_size", "lot_size", "segment", "exchange")

Row = tuple[str, int, float, int, str]  # (symbol, token, tick_size, lot_size, segment)


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str  # EXCHANGE:TRADINGSYMBOL
    token: int
    tick_size: float
    lot_size: int
    segment: str  # Kite's segment column: NSE, NFO-FUT, NFO-OPT, CDS-FUT, INDICES, ...

    @property
    def exchange(self) -> str:
        return self.symbol.partition(":")[0]

    @property
    def tradingsymbol(self) -> str:
        return self.symbol.partition(":")[2]


def canonical(symbol: str, default_exchange: str = DEFAULT_EXCHANGE) -> str:
    """`symbol` as Kite writes it: upper case, a bare `INFY` taken as `NSE:INFY` (SPEC §10)."""
    name = symbol.strip().upper()
    return name if ":" in name else f"{default_exchange or DEFAULT_EXCHANGE}:{name}"


def split_symbol(symbol: str, default_exchange: str = DEFAULT_EXCHANGE) -> tuple[str, str]:
    """(exchange, tradingsymbol) of a symbol, bare or not."""
    exchange, _, tradingsymbol = canonical(symbol, default_exchange).partition(":")
    return exchange, tradingsymbol


class Master:
    """One version of the list: lookups both ways, and a close match for a misspelt symbol."""

    def __init__(self, rows: Iterable[Row], fetched_at: float | None) -> None:
        self.fetched_at = fetched_at  # wall time of the fetch; None: there is no list
        self._by_symbol = {r[0]: r for r in rows}
        self._by_token = {r[1]: r[0] for r in self._by_symbol.values()}
        self._names: dict[str, list[str]] | None = None

    def __len__(self) -> int:
        return len(self._by_symbol)

    def get(self, symbol: str) -> Instrument | None:
        row = self._by_symbol.get(symbol)
        return Instrument(*row) if row is not None else None

    def token_of(self, symbol: str) -> int | None:
        row = self._by_symbol.get(symbol)
        return row[1] if row is not None else None

    def symbol_of(self, token: int) -> str | None:
        return self._by_token.get(token)

    def rows(self) -> Iterator[Row]:
        return iter(self._by_symbol.values())

    def suggest(self, symbol: str) -> str | None:
        """The closest known symbol on the same exchange (first letter alike, to stay quick)."""
        exchange, _, name = symbol.partition(":")
        if self._names is None:
            names: dict[str, list[str]] = {}
            for known in self._by_symbol:
                ex, _, rest = known.partition(":")
                names.setdefault(f"{ex}:{rest[:1]}", []).append(rest)
            self._names = names
        pool = self._names.get(f"{exchange}:{name[:1]}", [])
        found = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
        return f"{exchange}:{found[0]}" if found else None

    def admit(self, symbol: str, default_exchange: str = DEFAULT_EXCHANGE) -> Instrument:
        """The instrument of a position's symbol; PositionError 400 naming a close match."""
        name = canonical(symbol, default_exchange)
        found = self.get(name)
        if found is not None:
            return found
        if self.fetched_at is None:
            raise PositionError(f"{name}: Kite's instrument list is not loaded yet, so the "
                                "symbol cannot be checked; try again shortly")
        close = self.suggest(name)
        hint = f"; did you mean {close}?" if close else ""
        raise PositionError(f"{name}: not in Kite's instrument list (EXCHANGE:TRADINGSYMBOL, "
                            f"e.g. NSE:INFY){hint}")


def parse_csv(data: bytes) -> list[Row]:
    """The rows of Kite's instrument CSV, gzipped or plain; BrokerError if it is not one."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise BrokerError(f"instrument list: bad gzip data: {exc}") from exc
    text = io.StringIO(data.decode("utf-8", errors="replace"))
    reader = csv.reader(text)
    header = next(reader, [])
    try:
        at = [header.index(name) for name in _COLUMNS]
    except ValueError as exc:
        raise BrokerError(f"instrument list: not Kite's CSV (columns {header[:12]})") from exc
    rows = [row for line in reader if (row := _row(line, at)) is not None]
    if not rows:
        raise BrokerError("instrument list: no instruments in it")
    return rows


def _row(line: list[str], at: list[int]) -> Row | None:
    """One CSV line as a Row; None for a line too short or with a bad number (skipped)."""
    try:
        token, name, tick, lot, segment, exchange = (line[i] for i in at)
        return f"{exchange}:{name}", int(token), float(tick), int(float(lot)), segment
    except (IndexError, ValueError):
        return None


class Kept(Protocol):
    """Where the last good list is kept (tradeguard.store.Store)."""

    def save_instruments(self, rows: Iterable[Row], fetched_at: float) -> None: ...

    def load_instruments(self) -> tuple[list[Row], float | None]: ...


def trading_days_between(earlier: float, later: float) -> int:
    """Weekdays (IST) after `earlier`'s day up to and including `later`'s (holidays count)."""
    start = dt.datetime.fromtimestamp(earlier, IST).date()
    end = dt.datetime.fromtimestamp(later, IST).date()
    days, day = 0, start
    while day < end and days < 100:
        day += dt.timedelta(days=1)
        days += day.weekday() < 5
    return days


def due(fetched_at: float | None, now: float) -> bool:
    """True if the list was fetched before the last 08:00 IST (or never)."""
    if fetched_at is None:
        return True
    local = dt.datetime.fromtimestamp(now, IST)
    published = dt.datetime.combine(local.date(), PUBLISHED_AT, IST)
    if local < published:
        published -= dt.timedelta(days=1)
    return fetched_at < published.timestamp()


def list_stale(age_days: int, fetched_at: float) -> Alert:
    when = dt.datetime.fromtimestamp(fetched_at, IST).strftime("%Y-%m-%d %H:%M IST")
    return Alert("instruments_stale", Severity.WARNING,
                 f"Kite's instrument list could not be fetched; using the copy of {when} "
                 f"({age_days} trading days old): contracts listed since are refused")


def list_missing(error: str) -> Alert:
    return Alert("instruments_missing", Severity.CRITICAL,
                 f"CRITICAL: Kite's instrument list could not be fetched and none is kept "
                 f"({error}): no Kite symbol can be priced or checked until it is")


class Instruments:
    """The current Master, fetched by `fetch` (bytes of the CSV), kept in `kept`."""

    def __init__(self, fetch: Callable[[], bytes], kept: Kept, *,
                 on_alert: Callable[[Alert], None] = lambda alert: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._kept = kept
        self._on_alert = on_alert
        self._clock = clock
        self._lock = threading.Lock()
        self.master = Master((), None)

    def start(self) -> Master:
        """Fetch the list, or fall back to the kept copy (alerting if it is old or missing)."""
        try:
            return self.refresh()
        except BrokerError as exc:
            logger.error("[KITE] instrument list fetch failed: %s", exc)
            return self._use_kept(str(exc))

    def refresh(self) -> Master:
        """Fetch, parse, keep and use a new list; BrokerError (the old one stays) if it fails."""
        started = time.monotonic()
        rows = parse_csv(self._fetch())
        now = self._clock()
        master = Master(rows, now)
        self._kept.save_instruments(master.rows(), now)
        with self._lock:
            self.master = master
        logger.info("[KITE] instrument list: %d instruments in %.2fs", len(master),
                    time.monotonic() - started)
        return master

    def refresh_if_due(self) -> bool:
        """Refresh when a new trading day's list is out; True if a new list is in use."""
        if not due(self.master.fetched_at, self._clock()):
            return False
        try:
            self.refresh()
        except BrokerError as exc:
            logger.warning("[KITE] daily instrument list refresh failed (kept the old): %s", exc)
            return False
        return True

    def _use_kept(self, error: str) -> Master:
        rows, fetched_at = self._kept.load_instruments()
        if not rows or fetched_at is None:
            self._on_alert(list_missing(error))
            return self.master
        master = Master(rows, fetched_at)
        with self._lock:
            self.master = master
        age = trading_days_between(fetched_at, self._clock())
        logger.warning("[KITE] using the kept instrument list (%d instruments, %d trading days"
                       " old)", len(master), age)
        if age > STALE_TRADING_DAYS:
            self._on_alert(list_stale(age, fetched_at))
        return master
