"""Kite's ticker (SPEC §10): KiteFeed's frames and decoding, then the feed actor on loopback.

Packets are built here from the byte layouts in brokers.md §1.3 (not with
TradeGuard's own code), and every decoded price is also checked against the
official SDK's parser (`KiteTicker._parse_binary`) when it is installed.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeguard.brokers.kite import protocol as kite
from tradeguard.brokers.kite.ticker import KiteFeed, KiteOrderUpdate
from tradeguard.errors import FeedError

INFY, TCS, USDINR, BCDFUT, NIFTY, NCOFUT = 408065, 2953217, 412675, (4822 << 8) | 6, 256265, \
    (38580 << 8) | 12  # the low byte of a token is its segment
SYMBOLS = {"NSE:INFY": INFY, "NSE:TCS": TCS, "CDS:USDINR26DECFUT": USDINR,
           "BCD:EURINR26DECFUT": BCDFUT, "NSE:NIFTY 50": NIFTY, "NCO:GASFUT": NCOFUT}
DATA = Path(__file__).parent / "data" / "kite"


class Master:
    """The smallest instrument master: the InstrumentLookup protocol over a dict."""

    def __init__(self, symbols: dict[str, int]) -> None:
        self.tokens = dict(symbols)
        self.names = {t: s for s, t in symbols.items()}

    def token(self, symbol: str) -> int | None:
        return self.tokens.get(symbol if ":" in symbol else f"NSE:{symbol}")

    def symbol(self, token: int) -> str | None:
        return self.names.get(token)


def feed(mode: str = "ltp", token: str = "access-SECRET", symbols: dict[str, int] | None = None,
         **kwargs: object) -> KiteFeed:
    f = KiteFeed("wss://ws.kite.trade", "apikey1", lambda: token, Master(symbols or SYMBOLS),
                 mode, **kwargs)  # type: ignore[arg-type]
    f.target()
    return f


def ltp(token: int, units: int) -> bytes:
    return struct.pack(">Ii", token, units)


def quote(token: int, units: int) -> bytes:
    # ltq, avg, volume, buy qty, sell qty, open, high, low, close
    return struct.pack(">Iiiiiiiiiii", token, units, 5, units, 1000, 10, 20, units - 100,
                       units + 200, units - 300, units - 50)


def full(token: int, units: int, exchange_ts: int = 1767779056) -> bytes:
    depth = b"".join(struct.pack(">IiHxx", 5 + i, units - 10 * (i + 1), 1 + i) for i in range(10))
    return quote(token, units) + struct.pack(">IIIII", exchange_ts - 1, 0, 0, 0,
                                             exchange_ts) + depth


def index_quote(token: int, units: int) -> bytes:
    # last, high, low, open, close, change: the index order (brokers.md §1.3)
    return struct.pack(">Iiiiiii", token, units, units + 100, units - 100, units - 20,
                       units - 50, -36)


def index_full(token: int, units: int, exchange_ts: int = 1767779057) -> bytes:
    return index_quote(token, units) + struct.pack(">I", exchange_ts)


def frame(packets: Iterable[bytes]) -> bytes:
    items = list(packets)
    return struct.pack(">H", len(items)) + b"".join(struct.pack(">H", len(p)) + p for p in items)


def sdk_prices(data: bytes) -> list[tuple[int, float]] | None:
    """(token, last price) as the official SDK decodes the frame; None without the SDK."""
    try:
        from kiteconnect import KiteTicker  # a test-only peer
    except ImportError:
        return None
    ticks = KiteTicker("k", "t")._parse_binary(data)
    return [(t["instrument_token"], t["last_price"]) for t in ticks]


# Connecting and subscribing -------------------------------------------------


def test_target_carries_api_key_and_the_token_read_before_every_connect() -> None:
    tokens = iter(["first-SECRET", "second-SECRET"])
    f = KiteFeed("wss://ws.kite.trade", "apikey1", lambda: next(tokens), Master(SYMBOLS))
    first, second = f.target(), f.target()
    assert first.url == "wss://ws.kite.trade?api_key=apikey1&access_token=first-SECRET"
    assert second.url.endswith("access_token=second-SECRET")
    assert first.headers == {"X-Kite-Version": "3"}


def test_no_token_or_api_key_is_a_clear_feed_error() -> None:
    with pytest.raises(FeedError, match="no access token"):
        KiteFeed("", "apikey1", lambda: "", Master(SYMBOLS)).target()
    with pytest.raises(FeedError, match="api_key"):
        KiteFeed("", "", lambda: "t", Master(SYMBOLS)).target()
    with pytest.raises(FeedError, match="mode"):
        KiteFeed("", "k", lambda: "t", Master(SYMBOLS), "snapquote")


def test_credential_is_a_fingerprint_that_changes_with_the_token() -> None:
    token = ["one-SECRET"]
    f = KiteFeed("", "k", lambda: token[0], Master(SYMBOLS))
    before = f.credential()
    token[0] = "two-SECRET"
    assert f.credential() != before
    assert "SECRET" not in before


@pytest.mark.parametrize("mode", kite.MODES)
def test_subscribe_sends_subscribe_then_mode_for_the_tokens(mode: str) -> None:
    f = feed(mode)
    frames = f.subscribe(["NSE:INFY", "TCS"])
    assert [json.loads(str(x)) for x in frames] == [
        {"a": "subscribe", "v": [INFY, TCS]}, {"a": "mode", "v": [mode, [INFY, TCS]]}]
    assert f.subscribe(["NSE:INFY"]) == []  # already on this connection
    f.target()  # a new connection subscribes everything again
    assert len(f.subscribe(["NSE:INFY"])) == 2


def test_unknown_symbol_is_refused_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    f = feed()
    frames = f.subscribe(["NSE:NOSUCH", "NSE:INFY"])
    assert json.loads(str(frames[0]))["v"] == [INFY]
    assert f.parse([], 0.0).rejects["unknown_symbol"] == 1
    assert "NSE:NOSUCH" in caplog.text


def test_more_than_3000_tokens_on_one_connection_are_refused_clearly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    many = {f"NSE:S{i}": (i << 8) | 1 for i in range(1, 3006)}
    f = feed(symbols=many)
    frames = f.subscribe(sorted(many))
    assert len(json.loads(str(frames[0]))["v"]) == kite.MAX_TOKENS_PER_CONNECTION
    assert f.parse([], 0.0).rejects["too_many_tokens"] == 5
    assert "at most 3000 instruments" in caplog.text
    assert f.parse([], 0.0).rejects == {}  # counted once


# Decoding -------------------------------------------------------------------


@pytest.mark.parametrize(("build", "token", "units", "price"), [
    (ltp, INFY, 157370, 1573.70),
    (quote, INFY, 157370, 1573.70),
    (full, INFY, 157370, 1573.70),
    (index_quote, NIFTY, 2456755, 24567.55),
    (index_full, NIFTY, 2456755, 24567.55),
    (full, USDINR, 834512500, 83.45125),  # CDS: /10^7
    (quote, BCDFUT, 905025, 90.5025),  # BCD: /10^4
    (ltp, NCOFUT, 312345, 31.2345),  # NCO: /10^4 (pykiteconnect 5.2.2 EXCHANGE_MAP)
])
@pytest.mark.parametrize("mode", kite.MODES)
def test_every_packet_kind_is_decoded_with_its_segment_divisor_whatever_the_mode(
    build: object, token: int, units: int, price: float, mode: str,
) -> None:
    f = feed(mode)
    f.subscribe(sorted(SYMBOLS))
    data = frame([build(token, units)])  # type: ignore[operator]
    parsed = f.parse([data], 7.0)
    assert parsed.rejects == {}
    [tick] = parsed.ticks
    assert (tick.symbol, tick.received_at) == (SYMBOLS_BY_TOKEN[token], 7.0)
    assert tick.price == pytest.approx(price, abs=1e-9)
    peer = sdk_prices(data)
    if peer is not None:
        assert peer == [(token, pytest.approx(tick.price, abs=1e-9))]


SYMBOLS_BY_TOKEN = {t: s for s, t in SYMBOLS.items()}


def test_full_packets_carry_the_exchange_time_and_ltp_packets_none() -> None:
    f = feed()
    f.subscribe(sorted(SYMBOLS))
    parsed = f.parse([frame([full(INFY, 157370, 1767779056)]), frame([ltp(TCS, 400000)]),
                      frame([index_full(NIFTY, 2456755, 1767779057)])], 1.0)
    assert [t.exchange_ts for t in parsed.ticks] == [1767779056.0, None, 1767779057.0]


def test_a_frame_mixing_every_length_is_walked_packet_by_packet() -> None:
    f = feed("full")
    f.subscribe(sorted(SYMBOLS))
    data = frame([ltp(INFY, 100), full(TCS, 200), index_quote(NIFTY, 300), quote(BCDFUT, 400),
                  index_full(NIFTY, 500), full(USDINR, 600)])
    parsed = f.parse([data], 1.0)
    assert [t.price for t in parsed.ticks] == pytest.approx([1.0, 2.0, 3.0, 0.04, 5.0, 0.00006],
                                                            abs=1e-12)
    assert parsed.rejects == {}
    peer = sdk_prices(data)
    if peer is not None:
        assert [p for _, p in peer] == pytest.approx([t.price for t in parsed.ticks])


def test_fifty_full_packets_in_one_frame_keep_their_order() -> None:
    f = feed("full")
    f.subscribe(["NSE:INFY"])
    parsed = f.parse([frame(full(INFY, 150000 + i) for i in range(50))], 1.0)
    assert [t.price for t in parsed.ticks] == [1500.0 + i / 100 for i in range(50)]


def test_one_byte_frame_is_a_heartbeat() -> None:
    parsed = feed().parse([b"\x00"], 1.0)
    assert parsed.heartbeat and not parsed.ticks and not parsed.rejects


def test_bad_packets_are_counted_and_never_raise() -> None:
    f = feed()
    f.subscribe(["NSE:INFY"])
    frames: list[str | bytes] = [
        frame([ltp(INFY, 100), b"\x00" * 12, ltp(INFY, 200)]),  # a length Kite never sends
        frame([ltp(999_999, 100)]),  # a token nobody subscribed and the master lacks
        frame([ltp(INFY, 0), ltp(INFY, -5)]),  # not positive (a set high bit reads negative)
        frame([ltp(INFY, 300)])[:-3],  # cut short
        frame([ltp(INFY, 400)]) + b"xx",  # trailing bytes: the packet still counts
        struct.pack(">H", 3) + struct.pack(">H", 8) + ltp(INFY, 500),  # fewer packets than said
        b"",
    ]
    parsed = f.parse(frames, 1.0)
    assert [t.price for t in parsed.ticks] == [1.0, 2.0, 4.0, 5.0]
    assert parsed.rejects == {"bad_length": 1, "unknown_token": 1, "non_positive_price": 2,
                              "truncated": 2, "trailing_bytes": 1, "short_frame": 1}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=600), st.text(max_size=200)), max_size=5),
       st.lists(st.sampled_from((*kite.PACKET_LENGTHS, 0, 7, 300)), max_size=60))
def test_any_bytes_or_text_never_raise_and_every_tick_is_a_positive_price(
    frames: list[str | bytes], lengths: list[int],
) -> None:
    f = feed()
    f.subscribe(sorted(SYMBOLS))
    # also frames whose header is right and whose packets are anything
    frames.append(frame(struct.pack(">I", INFY) + bytes(max(0, n - 4)) for n in lengths))
    parsed = f.parse(frames, 1.0)
    for tick in parsed.ticks:
        assert tick.price > 0 and tick.symbol in SYMBOLS


def test_a_token_not_subscribed_but_in_the_master_is_priced_under_its_symbol() -> None:
    f = feed()
    parsed = f.parse([frame([ltp(TCS, 400000)])], 1.0)
    assert [(t.symbol, t.price) for t in parsed.ticks] == [("NSE:TCS", 4000.0)]


def test_a_token_subscribed_under_two_names_prices_both() -> None:
    f = feed()
    f.subscribe(["NSE:INFY", "INFY"])
    parsed = f.parse([frame([ltp(INFY, 157370)])], 1.0)
    assert sorted(t.symbol for t in parsed.ticks) == ["INFY", "NSE:INFY"]


def test_text_frames_order_updates_pass_on_errors_and_messages_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    order = {"order_id": "151220000000000", "status": "COMPLETE", "tag": "TG1a2b3c",
             "average_price": 1573.7, "filled_quantity": 10}
    frames: list[str | bytes] = [
        json.dumps({"type": "order", "data": order}),
        json.dumps({"type": "error", "data": "Invalid instrument token"}),
        json.dumps({"type": "message", "data": "Market closes early today"}),
        json.dumps({"type": "message", "data": "second, not logged within 10s"}),
        "not json", json.dumps([1, 2]), json.dumps({"type": "what"}),
    ]
    parsed = feed().parse(frames, 3.0)
    assert parsed.messages == [KiteOrderUpdate(order, 3.0)]
    assert parsed.rejects == {"kite_error": 1, "kite_message": 2, "bad_json": 1,
                              "unknown_message": 2}
    assert "Invalid instrument token" in caplog.text
    assert "Market closes early" in caplog.text
    assert "second, not logged" not in caplog.text


def _vector(name: str) -> bytes | None:
    path = DATA / name
    if not path.exists():
        return None
    raw = path.read_bytes().strip()
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return raw


@pytest.mark.parametrize(("name", "length"), [("ticker_full.packet", 184),
                                              ("ticker_quote.packet", 44)])
def test_kites_published_packets_decode_to_1573_70(name: str, length: int) -> None:
    """kiteconnect-mocks' packets (one packet, no frame header): token 408065, 1573.70."""
    packet = _vector(name)
    if packet is None:
        pytest.skip(f"tests/data/kite/{name} is not there yet")
    expected = json.loads((DATA / name.replace(".packet", ".expected.json")).read_text())
    assert len(packet) == length
    parsed = feed().parse([frame([packet])], 1.0)
    assert [(t.symbol, t.price) for t in parsed.ticks] == [("NSE:INFY", expected["last_price"])]
    assert parsed.rejects == {}


def test_the_stand_ins_frames_decode_to_the_ticks_the_sdk_reads() -> None:
    """tests/data/kite/frames.json: every packet kind and segment, 50-packet and mixed frames."""
    path = DATA / "frames.json"
    if not path.exists():
        pytest.skip("tests/data/kite/frames.json is not there yet")
    vectors = json.loads(path.read_text())["frames"]
    tokens = {t["instrument_token"] for v in vectors for t in v["ticks"]}
    f = feed("full", symbols={f"T:{t}": t for t in tokens})
    for vector in vectors:
        parsed = f.parse([base64.b64decode(vector["frame"])], 1.0)
        assert parsed.rejects == {}, vector["name"]
        assert [(t.symbol, t.price) for t in parsed.ticks] == [
            (f"T:{t['instrument_token']}", pytest.approx(t["last_price"], abs=1e-9))
            for t in vector["ticks"]], vector["name"]
        assert parsed.heartbeat == (not vector["ticks"]), vector["name"]


# Config ---------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "mode", "problem"), [
    ("kite", "", None), ("kite", "full", None), ("kite", "quote", None),
    ("kite", "fast", "feed.mode: feed.protocol 'kite' has no mode 'fast' "
                     "(known: 'ltp', 'quote', 'full')"),
    ("json", "", None),
    ("json", "full", "feed.mode: feed.protocol 'json' has no mode 'full' (leave it empty)"),
])
def test_feed_mode_is_checked_against_the_protocol(
    monkeypatch: pytest.MonkeyPatch, protocol: str, mode: str, problem: str | None,
) -> None:
    from tradeguard.config import config_from_mapping
    from tradeguard.errors import ConfigError
    from tradeguard.feed import PROTOCOLS

    monkeypatch.setitem(PROTOCOLS, "kite", PROTOCOLS.get("kite", PROTOCOLS["json"]))
    raw = {"feed": {"protocol": protocol, "mode": mode},
           "broker": {"api_key": "apikey1", "token": "access-SECRET"}}
    if problem is None:
        assert config_from_mapping(raw, {}).feed.mode == mode
    else:
        with pytest.raises(ConfigError) as caught:
            config_from_mapping(raw, {})
        assert problem in caught.value.problems


# Bench ----------------------------------------------------------------------


def test_bench_decode_kite_full_compares_with_the_sdk_parser_on_the_same_frames() -> None:
    from tradeguard.tools.bench import decode

    pytest.importorskip("kiteconnect")
    row = decode.kite_full(0.05)
    assert row["tradeguard_ticks_per_s"] > 0 and row["peer_ticks_per_s"] > 0
    assert row["ratio"] == pytest.approx(
        row["tradeguard_ticks_per_s"] / row["peer_ticks_per_s"], rel=0.01)
    print(f"\ndecode.kite_full ratio {row['ratio']} (quick run)")


def test_bench_reports_a_missing_peer_instead_of_faking_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from tradeguard.tools.bench import decode

    monkeypatch.setitem(sys.modules, "kiteconnect", None)
    row = decode.kite_full(0.02)
    assert row["tradeguard_ticks_per_s"] > 0
    assert row["peer_ticks_per_s"] is None and row["ratio"] is None
    assert "kiteconnect is not installed" in row["missing"]


def test_the_bench_frames_decode_to_what_the_sdk_reads() -> None:
    from tradeguard.tools.bench import decode

    master = decode._Master()
    frames = decode.full_frames(sorted(master.names))[:3]
    f = KiteFeed("", "k", lambda: "t", master, "full")
    f.target()
    f.subscribe(sorted(master.tokens))
    for data in frames:
        ours = [(master.token(t.symbol), t.price) for t in f.parse([data], 0.0).ticks]
        peer = sdk_prices(data)
        assert len(ours) == decode.PACKETS_PER_FRAME
        if peer is not None:
            assert ours == peer


# The feed actor on loopback -------------------------------------------------
# The Kite stand-in's ticker (tradeguard.sim.kite) behind the harness's fallback DNS, the
# real System, and KiteFeed over a tiny instrument master built from the stand-in's book.
# The closes go to the paper broker: these tests are about the feed (the Kite broker's own
# closes are the orders work's tests).


class _Token:
    """A token source a test can change (the venue's TokenSource in the service)."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.reads = 0

    def __call__(self) -> str:
        self.reads += 1
        return self.value


@pytest.fixture
def kite_ticker(monkeypatch: pytest.MonkeyPatch) -> Iterable[tuple[object, object, _Token]]:
    from tradeguard import brokers
    from tradeguard.feed import PROTOCOLS
    from tradeguard.sim.kite.book import KiteBook
    from tradeguard.sim.kite.ticker import KiteTickerServer

    book = KiteBook("apikey1", "good-SECRET")
    server = KiteTickerServer(book, heartbeat_interval=0.2)
    server.start()
    token = _Token("good-SECRET")
    master = Master({symbol: i.token for symbol, i in book.instruments.items()})

    def factory(cfg: object, venue: object = None) -> KiteFeed:
        return KiteFeed(cfg.feed.url, "apikey1", token, master,  # type: ignore[attr-defined]
                        cfg.feed.mode or "ltp")  # type: ignore[attr-defined]

    monkeypatch.setitem(PROTOCOLS, "kite", factory)
    if hasattr(brokers, "VENUES"):  # the Kite venue is not under test here
        monkeypatch.delitem(brokers.VENUES, "kite", raising=False)
    try:
        yield book, server, token
    finally:
        server.stop()


def _kite_sections(port: int, **feed: object) -> dict[str, dict[str, object]]:
    """`running()` keyword arguments: [feed] for Kite, and [broker] as config."""
    from tests.support.harness import FEED_HOST
    from tradeguard.config import BrokerConfig

    sections: dict[str, dict[str, object]] = {"feed": {
        "url": f"ws://{FEED_HOST}:{port}/", "protocol": "kite", "mode": "full",
        "ping_interval": 60.0, "ping_timeout": 5.0, "silence_timeout": 1.0,
        "reconnect_initial_delay": 0.05, "reconnect_max_delay": 1.0, **feed}}
    if "api_key" in BrokerConfig.__dataclass_fields__:  # the Kite keys, where they exist
        sections["broker_section"] = {"api_key": "apikey1", "token": "good-SECRET"}
    return sections


def _subscribed(server: object, token: int, mode: str = "full") -> bool:
    return any(subs.get(token) == mode for subs in server.subscriptions())  # type: ignore[attr-defined]


def test_a_heartbeat_only_connection_is_kept_alive(
    tmp_path: Path, kite_ticker: tuple[object, object, _Token],
) -> None:
    from tests.support.harness import running
    from tests.support.waiting import wait_until

    _, server, _ = kite_ticker
    with running(tmp_path, **_kite_sections(server.port)) as h:  # type: ignore[attr-defined]
        status = h.system.services.feed_status
        wait_until(lambda: status.connected, 10)
        errors = status.network_errors
        window = 3 * h.cfg.feed.silence_timeout  # nothing but 1-byte heartbeats meanwhile
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:  # watched over a window: nothing may happen in it
            assert status.connected
            age = status.last_message_age()
            assert age is not None and age < h.cfg.feed.silence_timeout
            time.sleep(0.05)
        assert status.network_errors == errors
        assert server.accepted == 1  # type: ignore[attr-defined]


def test_a_silent_connection_is_dropped_and_resubscribed(
    tmp_path: Path, kite_ticker: tuple[object, object, _Token],
) -> None:
    from tests.support.harness import running
    from tests.support.waiting import wait_until

    book, server, _ = kite_ticker
    with running(tmp_path, **_kite_sections(server.port)) as h:  # type: ignore[attr-defined]
        status = h.system.services.feed_status
        h.open_long("NSE:INFY", 1500.0, 1450.0)
        wait_until(lambda: _subscribed(server, INFY), 10)
        server.silent(True)  # type: ignore[attr-defined]
        wait_until(lambda: status.network_errors >= 1, 5)
        assert "silence" in str(status.last_error)
        server.silent(False)  # type: ignore[attr-defined]
        wait_until(lambda: server.accepted >= 2 and _subscribed(server, INFY), 10)  # type: ignore[attr-defined]
        book.set_price("NSE:INFY", 1512.5)  # type: ignore[attr-defined]
        wait_until(lambda: (q := h.system.services.cache.quote("NSE:INFY", 0)) is not None
                   and q.price == 1512.5, 5)


def test_a_breach_inside_a_50_packet_full_frame_closes_exactly_once(
    tmp_path: Path, kite_ticker: tuple[object, object, _Token],
) -> None:
    """One packet of fifty crosses the stop, the rest do not: one close, with the paper broker."""
    from tests.support.harness import running
    from tests.support.waiting import wait_until
    from tradeguard.sim.kite.packets import Quote

    _, server, _ = kite_ticker
    with running(tmp_path, **_kite_sections(server.port)) as h:  # type: ignore[attr-defined]
        h.open_long("NSE:INFY", 1500.0, 1450.0, quantity=10)
        wait_until(lambda: _subscribed(server, INFY), 10)
        prices = [1500.0 + i / 10 for i in range(50)]
        prices[23] = 1449.95  # the only breach, in the middle of the frame
        assert server.send_quotes(Quote(INFY, p) for p in prices) == 1  # type: ignore[attr-defined]
        wait_until(lambda: h.position("NSE:INFY").state == "closed", 10)
        assert server.send_quotes(Quote(INFY, p) for p in prices) == 1  # type: ignore[attr-defined]
        wait_until(lambda: (q := h.system.services.cache.quote("NSE:INFY", 0)) is not None
                   and q.price == prices[-1] and h.system.services.metrics.feed_ticks._value.get()
                   >= 100, 10)
        closes = [p for p in h.system.services.store.positions() if p.symbol == "NSE:INFY"]
        assert [(str(p.state), str(p.reason)) for p in closes] == [("closed", "stop_loss")]


def test_a_token_refused_at_the_handshake_is_one_critical_alert_and_no_storm(
    tmp_path: Path, kite_ticker: tuple[object, object, _Token],
) -> None:
    """SPEC §12: 403 at the ticker handshake -> one alert, token_ok false, retries every
    reconnect_max_delay (not the 0.05 s backoff), at once when a new token arrives."""
    from tests.support.harness import running
    from tests.support.waiting import wait_until

    book, server, token = kite_ticker
    token.value = "expired-SECRET"
    with running(tmp_path, telegram=True,
                 **_kite_sections(server.port)) as h:  # type: ignore[attr-defined]
        status = h.system.services.feed_status
        wait_until(lambda: server.refused >= 1, 10)  # type: ignore[attr-defined]
        first = time.monotonic()
        wait_until(lambda: server.refused >= 3, 10)  # type: ignore[attr-defined]
        spacing = (time.monotonic() - first) / 2
        print(f"\n403 retries every {spacing:.2f}s (reconnect_max_delay "
              f"{h.cfg.feed.reconnect_max_delay}s, initial delay "
              f"{h.cfg.feed.reconnect_initial_delay}s)")
        assert spacing >= 0.9 * h.cfg.feed.reconnect_max_delay
        assert status.token_ok is False and not status.connected
        assert status.network_errors == 0  # a refusal is not a network error
        refused_at = server.refused  # type: ignore[attr-defined]
        token.value = "good-SECRET"
        renewed = time.monotonic()
        wait_until(lambda: status.connected, 5)
        print(f"new token -> connected in {time.monotonic() - renewed:.2f}s")
        assert time.monotonic() - renewed < h.cfg.feed.reconnect_max_delay
        assert server.refused in (refused_at, refused_at + 1)  # type: ignore[attr-defined]
        assert status.token_ok is True
        assert h.telegram is not None
        wait_until(lambda: any("accepts the access token" in t for _, t in h.telegram.messages),
                   5)
        texts = [t for _, t in h.telegram.messages]
        refused = [t for t in texts if "refused the access token" in t]
        assert len(refused) == 1 and refused[0].startswith("CRITICAL")
        assert not any("Price feed lost" in t for t in texts)
        assert not any("SECRET" in t for t in texts)
        del book


# The transport ----------------------------------------------------------------


def _answer_handshakes(status: bytes, count: int) -> tuple[int, list[bytes], object]:
    """A loopback server answering up to `count` handshakes with `status`.

    Returns (port, the requests seen, the thread); it waits 0.5 s for each connection.
    """
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def answer() -> None:
        with listener:
            listener.settimeout(0.5)
            for _ in range(count):
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    return
                with conn:
                    seen.append(conn.recv(4096))
                    conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer)
    thread.start()
    return listener.getsockname()[1], seen, thread


@pytest.mark.parametrize("status", [b"403 Forbidden", b"401 Unauthorized"])
def test_a_refusal_at_the_handshake_is_token_rejected_and_no_other_address_is_tried(
    status: bytes,
) -> None:
    from tradeguard.errors import TokenRejected
    from tradeguard.feed import Target
    from tradeguard.feed.connection import FeedConnection

    port, seen, thread = _answer_handshakes(status, 2)
    url = f"ws://ws.kite.test:{port}/?api_key=k&access_token=tok-SECRET"
    with pytest.raises(TokenRejected, match=status[:3].decode()) as caught:
        FeedConnection.open(Target(url), ["127.0.0.1", "127.0.0.1"], connect_timeout=2.0)
    thread.join()  # type: ignore[attr-defined]
    assert len(seen) == 1
    assert "SECRET" not in str(caught.value)


def test_another_bad_status_is_a_plain_feed_error() -> None:
    from tradeguard.errors import TokenRejected
    from tradeguard.feed import Target
    from tradeguard.feed.connection import FeedConnection

    port, _, thread = _answer_handshakes(b"502 Bad Gateway", 1)
    with pytest.raises(FeedError, match="502") as caught:
        FeedConnection.open(Target(f"ws://ws.kite.test:{port}/?access_token=tok-SECRET"),
                            ["127.0.0.1"], connect_timeout=2.0)
    thread.join()  # type: ignore[attr-defined]
    assert not isinstance(caught.value, TokenRejected)
    assert "SECRET" not in str(caught.value)


def test_wss_ticker_through_the_fallback_dns_with_the_certificate_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The system resolver fails; the fallback DNS answers; TLS is verified on the hostname."""
    from tests.support.harness import FEED_HOST, running, tls_for
    from tests.support.waiting import wait_until
    from tradeguard import brokers
    from tradeguard.feed import PROTOCOLS
    from tradeguard.sim.kite.book import KiteBook
    from tradeguard.sim.kite.ticker import KiteTickerServer

    server_ctx, ca_file = tls_for(tmp_path, FEED_HOST)
    book = KiteBook("apikey1", "good-SECRET")
    server = KiteTickerServer(book, ssl_context=server_ctx, heartbeat_interval=0.2)
    server.start()
    master = Master({symbol: i.token for symbol, i in book.instruments.items()})
    monkeypatch.setitem(PROTOCOLS, "kite", lambda cfg, venue=None: KiteFeed(
        cfg.feed.url, "apikey1", lambda: "good-SECRET", master, "quote"))
    if hasattr(brokers, "VENUES"):
        monkeypatch.delitem(brokers.VENUES, "kite", raising=False)
    sections = _kite_sections(server.port, url=f"wss://{FEED_HOST}:{server.port}/",
                              ca_file=ca_file, mode="quote")
    try:
        with running(tmp_path, **sections) as h:  # type: ignore[arg-type]
            status = h.system.services.feed_status
            wait_until(lambda: status.connected, 10)
            assert status.resolved_via == f"fallback:{h.dns.address}"
            h.open_long("NSE:TCS", 4000.0, 3900.0)
            wait_until(lambda: _subscribed(server, TCS, "quote"), 10)
            book.set_price("NSE:TCS", 4012.35)
            wait_until(lambda: (q := h.system.services.cache.quote("NSE:TCS", 0)) is not None
                       and q.price == 4012.35, 5)
    finally:
        server.stop()


def test_tick_to_order_on_kite_full_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each of 30 breaches rides in a 50-packet full frame; every one reaches the (paper) broker.

    Timed from the stand-in's send to the broker receiving the close order (one monotonic
    clock); printed for the notes, asserted only to be finite (2 shared cores).
    """
    import threading

    from tests.support.harness import running
    from tests.support.waiting import wait_until
    from tradeguard import brokers
    from tradeguard.feed import PROTOCOLS
    from tradeguard.sim.kite.book import KiteBook
    from tradeguard.sim.kite.instruments import Instrument
    from tradeguard.sim.kite.packets import Quote
    from tradeguard.sim.kite.ticker import KiteTickerServer

    names = [f"SYM{i:02d}" for i in range(30)]
    book = KiteBook("apikey1", "good-SECRET", tuple(
        Instrument((5000 + i) << 8 | 1, name, name, "NSE", "NSE") for i, name in enumerate(names)))
    server = KiteTickerServer(book, heartbeat_interval=0.5)
    server.start()
    master = Master({symbol: i.token for symbol, i in book.instruments.items()})
    monkeypatch.setitem(PROTOCOLS, "kite", lambda cfg, venue=None: KiteFeed(
        cfg.feed.url, "apikey1", lambda: "good-SECRET", master, "full"))
    if hasattr(brokers, "VENUES"):
        monkeypatch.delitem(brokers.VENUES, "kite", raising=False)
    arrived: dict[str, float] = {}
    lock = threading.Lock()
    try:
        with running(tmp_path, **_kite_sections(server.port, silence_timeout=5.0)) as h:  # type: ignore[arg-type]
            broker = h.system.services.broker
            assert isinstance(broker, brokers.PaperBroker)

            def on_order(order: object, at: float) -> None:
                with lock:
                    arrived.setdefault(order.symbol, at)  # type: ignore[attr-defined]

            broker.on_order = on_order
            tokens = {f"NSE:{n}": i.token for n, i in
                      ((n, book.instruments[f"NSE:{n}"]) for n in names)}
            for symbol in tokens:
                h.open_long(symbol, 1000.0, 900.0)
            wait_until(lambda: all(_subscribed(server, t) for t in tokens.values()), 10)
            calm = [Quote(t, 1000.0) for t in tokens.values()]
            server.send_quotes(calm)
            millis = []
            for k, (symbol, token) in enumerate(tokens.items()):
                packets = [Quote(list(tokens.values())[(k + j) % len(tokens)], 1001.0)
                           for j in range(1, 50)]
                packets.insert(25, Quote(token, 899.0))
                sent = time.monotonic()
                server.send_quotes(packets)
                wait_until(lambda s=symbol: s in arrived, 10)  # type: ignore[misc]
                millis.append((arrived[symbol] - sent) * 1000)
            millis.sort()
            p50, p99 = millis[len(millis) // 2], millis[-1]
            print(f"\ntick-to-order on Kite full frames (50 packets, {len(millis)} breaches): "
                  f"p50 {p50:.2f} ms, p99 (max of 30) {p99:.2f} ms")
            assert len(millis) == len(tokens)
    finally:
        server.stop()


def test_run_needs_no_feed_url_with_kite(monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC §10: feed.url defaults to wss://ws.kite.trade for kite; json still needs one."""
    from tradeguard.config import BrokerConfig, config_from_mapping
    from tradeguard.errors import ConfigError
    from tradeguard.feed import PROTOCOLS

    monkeypatch.setitem(PROTOCOLS, "kite", PROTOCOLS.get("kite", PROTOCOLS["json"]))
    broker = {"api_key": "apikey1", "token": "access-SECRET"} \
        if "api_key" in BrokerConfig.__dataclass_fields__ else {}
    cfg = config_from_mapping({"feed": {"protocol": "kite"}, "broker": broker}, {},
                              require_feed=True)
    assert KiteFeed(cfg.feed.url, "k", lambda: "t", Master(SYMBOLS)).target().url.startswith(
        "wss://ws.kite.trade?")
    with pytest.raises(ConfigError, match=r"feed\.url: required"):
        config_from_mapping({}, {}, require_feed=True)


def test_with_the_kite_broker_a_breach_inside_a_50_packet_frame_is_one_order_with_kites_form(
    tmp_path: Path,
) -> None:
    """The whole Kite path: the stand-in's REST (instrument master, orders, positions) and
    ticker, the venue's KiteFeed and KiteBroker; one breaching packet of fifty, one order."""
    from tests.support.harness import FEED_HOST, running
    from tests.support.waiting import wait_until
    from tradeguard.sim.kite.packets import Quote
    from tradeguard.sim.kite.standin import ACCESS_TOKEN, API_KEY, KiteStandIn

    with KiteStandIn(heartbeat_interval=0.2) as kite_sim:
        kite_sim.book.hold("NSE:INFY", 10, 1500.0)
        kite_sim.book.set_price("NSE:INFY", 1500.0)
        sections = {"feed": {"url": f"ws://{FEED_HOST}:{kite_sim.ticker.port}/",
                             "protocol": "kite", "mode": "full", "ping_interval": 60.0,
                             "silence_timeout": 2.0}}
        broker = {"kind": "kite", "url": kite_sim.api_url, "api_key": API_KEY,
                  "token": ACCESS_TOKEN}
        with running(tmp_path, broker_section=broker, **sections) as h:  # type: ignore[arg-type]
            h.open_long("NSE:INFY", 1500.0, 1450.0, quantity=10)
            wait_until(lambda: _subscribed(kite_sim.ticker, INFY), 10)
            prices = [1500.0 + i / 10 for i in range(50)]
            prices[23] = 1449.95
            sent = time.monotonic()
            assert kite_sim.ticker.send_quotes(Quote(INFY, p) for p in prices) == 1
            wait_until(lambda: h.position("NSE:INFY").state == "closed", 10)
            print(f"\nbreach frame -> position closed at Kite in "
                  f"{(time.monotonic() - sent) * 1000:.1f} ms")
            assert kite_sim.ticker.send_quotes(Quote(INFY, p) for p in prices) == 1
            wait_until(lambda: (q := h.system.services.cache.quote("NSE:INFY", 0)) is not None
                       and q.price == prices[-1], 5)
            forms = kite_sim.book.forms
            assert len(forms) == 1, forms
            form = dict(forms[0])
            tag = form.pop("tag")
            assert form == {"tradingsymbol": "INFY", "exchange": "NSE",
                            "transaction_type": "SELL", "order_type": "MARKET",
                            "quantity": "10", "product": "MIS", "validity": "DAY",
                            "market_protection": "-1"}
            assert tag.isalnum() and len(tag) <= 20
            assert str(h.position("NSE:INFY").reason) == "stop_loss"
            assert kite_sim.book.net_quantity("NSE:INFY") == 0
