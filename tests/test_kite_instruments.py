"""Kite's instrument master: fetched from the stand-in, kept in a real SQLite store, used when a
fetch fails, refreshed once a trading day; symbols checked against it with a close match.

Also the venue bundle: one KiteVenue builds the broker and the ticker protocol on the same
token source and master, and the Guard refuses a symbol Kite does not list (400).
"""

from __future__ import annotations

import datetime as dt
import gzip
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.system import System
from tests.support.waiting import wait_until
from tradeguard.alerts import Alert
from tradeguard.brokers import make_broker, make_venue
from tradeguard.brokers.kite import KiteBroker, KiteVenue
from tradeguard.brokers.kite.instruments import (
    IST,
    Instruments,
    Master,
    canonical,
    due,
    parse_csv,
    trading_days_between,
)
from tradeguard.config import DEFAULT_SESSIONS, config_from_mapping
from tradeguard.errors import BrokerError, PositionError
from tradeguard.feed import make_protocol
from tradeguard.positions import Position, Side, State
from tradeguard.sim.kite import ACCESS_TOKEN, API_KEY, KiteStandIn
from tradeguard.sim.kite.instruments import COLUMNS
from tradeguard.store import Store

HEADER = ",".join(COLUMNS)


class Sink:
    def __init__(self) -> None:
        self.seen: list[Alert] = []

    def alert(self, alert: Alert) -> None:
        self.seen.append(alert)


def _csv(n: int) -> bytes:
    lines = [HEADER]
    for i in range(n):
        lines.append(f"{i * 256 + 1},{i},SYM{i},NAME {i},0,,0,0.05,1,EQ,NSE,NSE")
    return ("\n".join(lines) + "\n").encode()


def _ist(y: int, m: int, d: int, hh: int = 12, mm: int = 0) -> float:
    return dt.datetime(y, m, d, hh, mm, tzinfo=IST).timestamp()


@pytest.fixture
def kite() -> Iterator[KiteStandIn]:
    with KiteStandIn(heartbeat_interval=None) as standin:
        yield standin


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "tg.db")
    yield s
    s.close()


def _cfg(kite: KiteStandIn, tmp_path: Path, **broker: Any) -> Any:
    b = {"kind": "kite", "url": kite.api_url, "api_key": API_KEY, "token": ACCESS_TOKEN,
         **broker}
    return config_from_mapping({"broker": b, "feed": {"protocol": "kite"},
                                "store": {"path": str(tmp_path / "tg.db")}}, {})


# Parsing -------------------------------------------------------------------------


def test_plain_and_gzipped_csv_parse_alike() -> None:
    data = _csv(3)
    assert parse_csv(data) == parse_csv(gzip.compress(data))
    assert parse_csv(data)[1] == ("NSE:SYM1", 257, 0.05, 1, "NSE")


def test_a_bad_line_is_skipped_and_a_bad_file_refused() -> None:
    rows = parse_csv(_csv(2) + b"x,NSE\n1,2,BAD,N,0,,0,notanumber,1,EQ,NSE,NSE\n")
    assert [r[0] for r in rows] == ["NSE:SYM0", "NSE:SYM1"]
    with pytest.raises(BrokerError, match="not Kite's CSV"):
        parse_csv(b"<html>502 Bad Gateway</html>")
    with pytest.raises(BrokerError, match="gzip"):
        parse_csv(b"\x1f\x8bnot really gzip")
    with pytest.raises(BrokerError, match="no instruments"):
        parse_csv((HEADER + "\n").encode())


def test_symbols_as_kite_writes_them_and_a_close_match() -> None:
    master = Master(parse_csv(_csv(20)), fetched_at=1.0)
    assert canonical(" infy ") == "NSE:INFY"
    assert canonical("nfo:nifty26decfut") == "NFO:NIFTY26DECFUT"
    assert master.admit("sym3").symbol == "NSE:SYM3"
    with pytest.raises(PositionError, match="did you mean NSE:SYM12") as refused:
        master.admit("NSE:SYM12X")
    assert refused.value.code == 400
    with pytest.raises(PositionError, match="not loaded"):
        Master((), None).admit("NSE:INFY")


# Trading days ------------------------------------------------------------------------


def test_a_new_list_is_due_after_eight_ist_each_day() -> None:
    fetched = _ist(2026, 12, 3, 9, 0)
    assert not due(fetched, _ist(2026, 12, 3, 23, 0))
    assert not due(fetched, _ist(2026, 12, 4, 7, 59))
    assert due(fetched, _ist(2026, 12, 4, 8, 1))
    assert due(None, fetched)


def test_weekends_are_not_trading_days() -> None:
    friday = _ist(2026, 12, 4)
    assert trading_days_between(friday, _ist(2026, 12, 7)) == 1  # Monday
    assert trading_days_between(friday, _ist(2026, 12, 10)) == 4  # Thursday


# Fetch, keep, fall back ------------------------------------------------------------------


def test_the_list_is_kept_and_used_when_a_fetch_fails(store: Store) -> None:
    sink = Sink()
    now = [_ist(2026, 12, 3, 9, 0)]
    fetches: list[bytes | Exception] = [_csv(5), BrokerError("HTTP 503")]

    def fetch() -> bytes:
        answer = fetches.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    Instruments(fetch, store, on_alert=sink.alert, clock=lambda: now[0]).start()
    now[0] = _ist(2026, 12, 4, 9, 0)  # the next trading day, the fetch fails
    later = Instruments(fetch, store, on_alert=sink.alert, clock=lambda: now[0])
    master = later.start()
    assert len(master) == 5 and master.token_of("NSE:SYM4") == 4 * 256 + 1
    assert sink.seen == [], "one trading day old: no alert"


def test_a_kept_list_older_than_three_trading_days_is_an_alert(store: Store) -> None:
    sink = Sink()
    store.save_instruments(parse_csv(_csv(2)), _ist(2026, 11, 30))  # a Monday

    def down() -> bytes:
        raise BrokerError("cannot resolve api.kite.trade")

    master = Instruments(down, store, on_alert=sink.alert,
                         clock=lambda: _ist(2026, 12, 4)).start()
    assert len(master) == 2
    assert [a.kind for a in sink.seen] == ["instruments_stale"]
    assert "4 trading days old" in sink.seen[0].text


def test_no_list_at_all_is_a_critical_alert(store: Store) -> None:
    sink = Sink()

    def down() -> bytes:
        raise BrokerError("HTTP 502")

    master = Instruments(down, store, on_alert=sink.alert).start()
    assert len(master) == 0
    assert [a.kind for a in sink.seen] == ["instruments_missing"]
    assert sink.seen[0].text.startswith("CRITICAL")


def test_a_failed_daily_refresh_keeps_the_old_list(store: Store) -> None:
    now = [_ist(2026, 12, 3, 9, 0)]
    answers: list[bytes | Exception] = [_csv(3), BrokerError("timeout"), _csv(4)]

    def fetch() -> bytes:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    instruments = Instruments(fetch, store, clock=lambda: now[0])
    instruments.start()
    assert instruments.refresh_if_due() is False, "not due yet: nothing fetched"
    now[0] = _ist(2026, 12, 4, 8, 30)
    assert instruments.refresh_if_due() is False and len(instruments.master) == 3
    assert instruments.refresh_if_due() is True and len(instruments.master) == 4


# The venue over the stand-in ----------------------------------------------------------------


def test_the_venue_fetches_the_master_and_shares_it(kite: KiteStandIn, tmp_path: Path,
                                                    store: Store) -> None:
    cfg = _cfg(kite, tmp_path)
    venue = make_venue(cfg, resolver=None, store=store, alerts=Sink())  # type: ignore[arg-type]
    assert isinstance(venue, KiteVenue)
    try:
        assert len(venue.instruments.master) == len(kite.book.instruments)
        broker = make_broker(cfg, quote=lambda s: None, resolver=None,  # type: ignore[arg-type]
                             venue=venue)
        assert broker is venue.broker()
        feed = make_protocol(cfg, venue)
        assert feed.target().url.startswith("wss://ws.kite.trade?api_key=")
        assert feed.subscribe(["INFY"]), "the ticker finds a bare symbol's token"
        kept, when = store.load_instruments()
        assert len(kept) == len(kite.book.instruments) and when is not None
        admitted = venue.admit(Position("infy", Side.LONG, 10, 1500.0, 1400.0, None))
        assert admitted.symbol == "NSE:INFY"
        with pytest.raises(PositionError, match="did you mean NSE:INFY"):
            venue.admit(Position("NSE:INFI", Side.LONG, 10, 1500.0, 1400.0, None))
        with pytest.raises(PositionError, match="whole numbers"):
            venue.admit(Position("NSE:INFY", Side.LONG, 2.5, 1500.0, 1400.0, None))
    finally:
        venue.close()


def test_the_gzipped_master_file_is_read_too(kite: KiteStandIn, tmp_path: Path,
                                             store: Store) -> None:
    cfg = _cfg(kite, tmp_path, instruments_url=kite.api_url + "/instruments.csv.gz")
    venue = KiteVenue(cfg, resolver=None, store=store, alerts=Sink())
    try:
        assert venue.instruments.master.token_of("NSE:INFY") == 408065
    finally:
        venue.close()


def test_a_token_kite_refuses_at_the_master_fetch_falls_back_with_one_alert(
        kite: KiteStandIn, tmp_path: Path, store: Store) -> None:
    store.save_instruments(parse_csv(_csv(2)), time.time())
    sink = Sink()
    venue = KiteVenue(_cfg(kite, tmp_path, token="stale"), resolver=None, store=store,
                      alerts=sink)
    try:
        assert len(venue.instruments.master) == 2
        assert [a.kind for a in sink.seen] == ["token_rejected"]
        assert "stale" not in sink.seen[0].text
    finally:
        venue.close()


# What a start costs ---------------------------------------------------------------------------


def test_start_up_cost_of_a_100k_row_master(store: Store, capsys: pytest.CaptureFixture[str],
                                           ) -> None:
    """Parse, keep and load 100k rows: printed (pytest -s) for the docs, bounded loosely."""
    data = gzip.compress(_csv(100_000))
    tracemalloc.start()
    started = time.perf_counter()
    master = Instruments(lambda: data, store).start()
    fetched = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    started = time.perf_counter()
    rows, _ = store.load_instruments()
    Master(rows, 1.0)
    loaded = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n100k instruments: parse+keep {fetched:.2f}s (peak {peak / 1e6:.0f} MB), "
              f"load kept {loaded:.2f}s, {len(data) / 1e6:.1f} MB gzipped")
    assert len(master) == 100_000
    assert fetched < 10 and loaded < 10


def test_the_system_wires_one_venue_and_refuses_an_unlisted_symbol(
        kite: KiteStandIn, tmp_path: Path) -> None:
    """actors.system: the broker, the feed's protocol and the API's symbol check share a venue."""
    system = System(_cfg(kite, tmp_path))
    try:
        venue = system.venue
        assert isinstance(venue, KiteVenue)
        assert system.services.broker is venue.broker()
        assert isinstance(system.services.broker, KiteBroker)
        assert system.services.venue is system.venue
        with pytest.raises(PositionError, match="did you mean NSE:INFY") as refused:
            system.guard.open_position(Position("NSE:INFI", Side.LONG, 10, 1500.0, 1400.0,
                                                None))
        assert refused.value.code == 400
    finally:
        system.stop()


def test_a_bare_symbol_in_the_api_finds_the_kite_position(kite: KiteStandIn,
                                                           tmp_path: Path) -> None:
    """Opened as INFY, stored as NSE:INFY: an emergency close or a release of INFY finds it."""
    system = System(_cfg(kite, tmp_path))
    try:
        assert system.venue is not None and system.venue.name(" infy") == "NSE:INFY"
        with pytest.raises(PositionError) as missing:
            system.guard.release_position("INFY")
        assert "NSE:INFY" in str(missing.value) and missing.value.code == 404
        system.services.store.add_position(
            Position("NSE:INFY", Side.LONG, 10, 1500.0, 1400.0, None, opened_at=1.0))
        assert system.guard.release_position("infy")["state"] == "released"
    finally:
        system.stop()



def test_a_breach_on_kites_ticker_closes_once_through_kites_rest(kite: KiteStandIn,
                                                                tmp_path: Path) -> None:
    """End to end on loopback: the venue's ticker prices NSE:INFY, the stop fires, one order."""
    cfg = config_from_mapping({
        "broker": {"kind": "kite", "url": kite.api_url, "api_key": API_KEY,
                   "token": ACCESS_TOKEN},
        "feed": {"protocol": "kite", "url": kite.ticker_url, "reconnect_initial_delay": 0.05,
                 "reconnect_max_delay": 0.5},
        "dns": {"fallback_servers": ["127.0.0.1:9"]},
        "monitor": {"sweep_interval": 0.1},
        "store": {"path": str(tmp_path / "tg.db")},
        "market": {"sessions": dict.fromkeys(DEFAULT_SESSIONS, "always")},
    }, {})
    kite.book.hold("NSE:INFY", 10, 1500.0)
    system = System(cfg, api_port=0)
    system.start()
    try:
        assert system.wait_started(20.0)
        system.guard.open_position(Position("INFY", Side.LONG, 10, 1500.0, 1490.0, None))


        def priced() -> bool:  # a tick each look, until the subscription has landed
            kite.set_price("NSE:INFY", 1501.0)
            return system.services.cache.quote("NSE:INFY", time.monotonic()) is not None
        wait_until(priced, 10.0, interval=0.05)
        kite.set_price("NSE:INFY", 1485.0)
        wait_until(lambda: system.services.store.live_position("NSE:INFY") is None, 10.0)
        [row] = [p for p in system.services.store.positions() if p.symbol == "NSE:INFY"]
        assert row.state is State.CLOSED and row.exit_price == 1485.0
        [form] = kite.book.forms
        assert {k: form[k] for k in ("exchange", "tradingsymbol", "transaction_type",
                                     "quantity", "product", "order_type")} == {
            "exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "SELL",
            "quantity": "10", "product": "MIS", "order_type": "MARKET"}
        assert form["tag"] == row.client_order_id and kite.book.net_quantity("NSE:INFY") == 0
    finally:
        system.stop()
