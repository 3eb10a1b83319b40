"""The Kite stand-in is faithful: Kite's official SDK (pykiteconnect) round-trips against it.

REST through `kiteconnect.KiteConnect(root=<stand-in>)`; ticker frames read off a real
WebSocket and decoded by `KiteTicker`'s own parser; the published test packets
(tests/data/kite/) decoded by that parser too. Everything on loopback, no mocks.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.waiting import wait_until
from tradeguard.sim.kite import ACCESS_TOKEN, API_KEY, KiteStandIn

kiteconnect = pytest.importorskip("kiteconnect")
from kiteconnect import KiteConnect, KiteTicker  # noqa: E402
from kiteconnect import exceptions as kex  # noqa: E402

DATA = Path(__file__).parent / "data" / "kite"
INFY = "NSE:INFY"


@pytest.fixture
def kite() -> Iterator[KiteStandIn]:
    with KiteStandIn(heartbeat_interval=0.2) as standin:
        standin.book.hold(INFY, 10, 1500.0)
        yield standin


@pytest.fixture
def sdk(kite: KiteStandIn) -> KiteConnect:
    client = KiteConnect(API_KEY, root=kite.api_url, timeout=5)
    client.set_access_token(ACCESS_TOKEN)
    return client


def _close(sdk: KiteConnect, quantity: int = 10, tag: str = "tg1a2b3c") -> str:
    return str(sdk.place_order(
        variety=sdk.VARIETY_REGULAR, exchange="NSE", tradingsymbol="INFY",
        transaction_type=sdk.TRANSACTION_TYPE_SELL, quantity=quantity, product=sdk.PRODUCT_MIS,
        order_type=sdk.ORDER_TYPE_MARKET, validity=sdk.VALIDITY_DAY, market_protection=-1,
        tag=tag))


def _parser() -> KiteTicker:
    return KiteTicker(API_KEY, ACCESS_TOKEN)


# REST ------------------------------------------------------------------------------------


def test_sdk_places_a_close_and_reads_it_back(kite: KiteStandIn, sdk: KiteConnect) -> None:
    """place_order -> order_history (last entry final) -> orders (by tag) -> positions (net)."""
    kite.set_price(INFY, 1480.0)
    order_id = _close(sdk)
    assert kite.book.forms == [{
        "variety": "regular", "exchange": "NSE", "tradingsymbol": "INFY",
        "transaction_type": "SELL", "quantity": "10", "product": "MIS", "order_type": "MARKET",
        "validity": "DAY", "market_protection": "-1", "tag": "tg1a2b3c"}]
    headers = kite.rest.seen[0][2] if kite.rest else {}
    assert headers["X-Kite-Version"] == "3"
    assert headers["Authorization"] == f"token {API_KEY}:{ACCESS_TOKEN}"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    last = sdk.order_history(order_id)[-1]
    final = (last["status"], last["filled_quantity"], last["average_price"])
    assert final == ("COMPLETE", 10, 1480.0)
    assert isinstance(last["order_timestamp"], datetime)  # the SDK parsed Kite's time format
    [found] = [o for o in sdk.orders() if "tg1a2b3c" in o["tags"]]
    assert (found["order_id"], found["tag"]) == (order_id, "tg1a2b3c")
    [net] = sdk.positions()["net"]
    assert (net["tradingsymbol"], net["quantity"], net["product"]) == ("INFY", 0, "MIS")


def test_a_wrong_or_rotated_token_is_a_403_token_exception(kite: KiteStandIn,
                                                            sdk: KiteConnect) -> None:
    expired: list[bool] = []
    sdk.set_session_expiry_hook(lambda: expired.append(True))
    kite.book.rotate_token("morningtoken2")
    with pytest.raises(kex.TokenException) as refused:
        sdk.positions()
    assert refused.value.code == 403 and expired == [True]
    sdk.set_access_token("morningtoken2")
    assert sdk.positions()["net"][0]["quantity"] == 10


def test_a_request_without_the_version_header_is_refused(kite: KiteStandIn) -> None:
    request = urllib.request.Request(f"{kite.api_url}/portfolio/positions", headers={
        "Authorization": f"token {API_KEY}:{ACCESS_TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 400
    assert json.loads(err.value.read())["error_type"] == "InputException"


def test_market_orders_need_market_protection(kite: KiteStandIn, sdk: KiteConnect) -> None:
    with pytest.raises(kex.InputException):
        sdk.place_order(variety="regular", exchange="NSE", tradingsymbol="INFY",
                        transaction_type="SELL", quantity=10, product="MIS", order_type="MARKET")
    assert kite.book.net_quantity(INFY) == 10


def test_rejection_and_partial_fill_are_final_history_entries(kite: KiteStandIn,
                                                               sdk: KiteConnect) -> None:
    kite.book.reject_next("RMS: blocked")
    rejected = sdk.order_history(_close(sdk, tag="tgr1"))[-1]
    assert (rejected["status"], rejected["status_message"]) == ("REJECTED", "RMS: blocked")
    assert kite.book.net_quantity(INFY) == 10
    kite.book.partial_next(4)
    partial = sdk.order_history(_close(sdk, tag="tgp1"))[-1]
    assert (partial["status"], partial["filled_quantity"]) == ("CANCELLED", 4)
    assert sdk.positions()["net"][0]["quantity"] == 6


def test_429_and_an_html_502_reach_the_sdk_as_kite_shows_them(kite: KiteStandIn,
                                                               sdk: KiteConnect) -> None:
    kite.book.fail_next(429, "/orders")
    with pytest.raises(kex.NetworkException) as slow:
        _close(sdk)
    assert slow.value.code == 429
    kite.book.fail_next(502, "/orders")
    with pytest.raises(kex.DataException, match="text/html"):
        _close(sdk)
    assert kite.book.forms == []  # neither reached the order book
    assert sdk.order_history(_close(sdk))[-1]["status"] == "COMPLETE"


def test_a_lost_answer_leaves_the_order_to_be_found_by_tag(kite: KiteStandIn,
                                                           sdk: KiteConnect) -> None:
    kite.book.drop_next_answer()
    with pytest.raises(Exception, match=r"(?i)connection|aborted|closed"):
        _close(sdk, tag="tglost1")
    assert [o["status"] for o in sdk.orders() if o["tag"] == "tglost1"] == ["COMPLETE"]


def test_a_position_closed_by_hand_at_the_broker(kite: KiteStandIn, sdk: KiteConnect) -> None:
    kite.set_price(INFY, 1490.0)
    kite.book.close_by_hand(INFY)
    assert sdk.positions()["net"][0]["quantity"] == 0
    [order] = sdk.orders()
    assert (order["tag"], order["tags"], order["placed_by"]) == (None, [], "KITEWEB")


def test_instruments_and_ltp(kite: KiteStandIn, sdk: KiteConnect) -> None:
    rows = {f"{r['exchange']}:{r['tradingsymbol']}": r for r in sdk.instruments()}
    assert rows[INFY]["instrument_token"] == 408065
    future = rows["NFO:NIFTY26DECFUT"]
    assert (future["lot_size"], future["tick_size"]) == (75, 0.1)
    assert rows["CDS:USDINR26DECFUT"]["instrument_token"] & 0xFF == 3
    assert [r["exchange"] for r in sdk.instruments("NFO")] == ["NFO"]
    assert sdk.ltp([INFY, "NSE:TCS"]) == {INFY: {"instrument_token": 408065, "last_price": 1500.0}}


def test_the_instrument_master_comes_gzipped_when_asked(kite: KiteStandIn) -> None:
    auth = {"X-Kite-Version": "3", "Authorization": f"token {API_KEY}:{ACCESS_TOKEN}"}
    request = urllib.request.Request(kite.instruments_url,
                                     headers={**auth, "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(answer.read()).decode()
    assert text.startswith("instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,")
    request = urllib.request.Request(f"{kite.instruments_url}.csv.gz", headers=auth)
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert gzip.decompress(answer.read()).decode() == text


def test_gtt_round_trip_and_trigger(kite: KiteStandIn, sdk: KiteConnect) -> None:
    """The backstop's shapes: two-leg OCO placed, modified, read; the price crosses the stop."""
    legs = [{"transaction_type": "SELL", "quantity": 10, "order_type": "LIMIT", "product": "MIS",
             "price": p} for p in (1380.0, 1660.0)]
    trigger_id = sdk.place_gtt(sdk.GTT_TYPE_OCO, "INFY", "NSE", [1400.0, 1650.0], 1500.0,
                               legs)["trigger_id"]
    assert sdk.modify_gtt(trigger_id, sdk.GTT_TYPE_OCO, "INFY", "NSE", [1410.0, 1650.0], 1500.0,
                          legs)["trigger_id"] == trigger_id
    gtt = sdk.get_gtt(trigger_id)
    assert (gtt["type"], gtt["status"]) == ("two-leg", "active")
    assert gtt["condition"]["trigger_values"] == [1410.0, 1650.0]
    kite.set_price(INFY, 1405.0)
    gtt = sdk.get_gtt(trigger_id)
    assert gtt["status"] == "triggered"
    result = gtt["orders"][0]["result"]["order_result"]
    assert result["status"] == "success"
    assert sdk.order_history(result["order_id"])[-1]["order_type"] == "LIMIT"
    assert sdk.positions()["net"][0]["quantity"] == 0
    assert [g["id"] for g in sdk.get_gtts()] == [trigger_id]
    with pytest.raises(kex.InputException):
        sdk.delete_gtt(trigger_id)  # a triggered GTT is no longer active


def test_gtt_delete(kite: KiteStandIn, sdk: KiteConnect) -> None:
    leg = [{"transaction_type": "SELL", "quantity": 10, "order_type": "LIMIT", "product": "MIS",
            "price": 1380.0}]
    trigger_id = sdk.place_gtt(sdk.GTT_TYPE_SINGLE, "INFY", "NSE", [1400.0], 1500.0,
                               leg)["trigger_id"]
    assert sdk.delete_gtt(trigger_id)["trigger_id"] == trigger_id
    assert sdk.get_gtt(trigger_id)["status"] == "deleted"
    kite.set_price(INFY, 1390.0)
    assert kite.book.net_quantity(INFY) == 10


# Ticker ----------------------------------------------------------------------------------


def _ticker(kite: KiteStandIn, token: str = ACCESS_TOKEN) -> ClientConnection:
    return connect(f"{kite.ticker_url}?api_key={API_KEY}&access_token={token}", open_timeout=5)


def _subscribe(kite: KiteStandIn, ws: ClientConnection, mode: str, tokens: list[int]) -> None:
    ws.send(json.dumps({"a": "subscribe", "v": tokens}))
    ws.send(json.dumps({"a": "mode", "v": [mode, tokens]}))
    wait_until(lambda: kite.ticker.subscriptions() == [dict.fromkeys(tokens, mode)], 5)


def _next_ticks(ws: ClientConnection) -> list[dict[str, Any]]:
    while True:
        message = ws.recv(timeout=5)
        if isinstance(message, bytes) and len(message) > 4:  # heartbeats skipped, as the SDK does
            return list(_parser()._parse_binary(message))


def test_a_wrong_token_is_refused_at_the_handshake(kite: KiteStandIn) -> None:
    with pytest.raises(InvalidStatus) as refused:
        _ticker(kite, "yesterdaystoken")
    assert refused.value.response.status_code == 403
    assert kite.ticker.refused == 1


SEGMENTS = [  # symbol, token, price, packet length in ltp / quote / full
    ("NSE:INFY", 408065, 1573.70, (8, 44, 184)),
    ("NFO:NIFTY26DECFUT", 13238530, 26187.40, (8, 44, 184)),
    ("CDS:USDINR26DECFUT", 883459, 84.1275, (8, 44, 184)),
    ("BCD:EURINR26DECFUT", 315910, 97.6425, (8, 44, 184)),
    ("BSE:SBIN", 128028676, 812.35, (8, 44, 184)),
    ("NSE:NIFTY 50", 256265, 26150.55, (8, 28, 32)),
]


@pytest.mark.parametrize("mode", ["ltp", "quote", "full"])
def test_the_sdk_parser_decodes_every_segment_and_kind(kite: KiteStandIn, mode: str) -> None:
    with _ticker(kite) as ws:
        _subscribe(kite, ws, mode, [token for _, token, _, _ in SEGMENTS])
        for symbol, token, price, lengths in SEGMENTS:
            kite.set_price(symbol, price)
            [tick] = _next_ticks(ws)
            assert (tick["instrument_token"], tick["mode"]) == (token, mode)
            assert tick["last_price"] == pytest.approx(price, abs=1e-9)
            assert tick["tradable"] is (token & 0xFF != 9)
            if mode != "ltp":
                assert tick["ohlc"]["high"] == pytest.approx(price, abs=1e-9)
            if mode == "full" and lengths[2] == 184:
                assert tick["depth"]["buy"][0]["orders"] == 1
                assert len(tick["depth"]["sell"]) == 5


def test_a_new_subscription_starts_in_quote_mode(kite: KiteStandIn) -> None:
    with _ticker(kite) as ws:
        ws.send(json.dumps({"a": "subscribe", "v": [408065]}))
        wait_until(lambda: kite.ticker.subscriptions() == [{408065: "quote"}], 5)
        kite.set_price(INFY, 1501.5)
        assert [t["mode"] for t in _next_ticks(ws)] == ["quote"]


def test_heartbeats_arrive_and_stop_when_silent(kite: KiteStandIn) -> None:
    with _ticker(kite) as ws:
        assert ws.recv(timeout=5) == b"\x00"
        kite.ticker.silent(True)
        with pytest.raises(TimeoutError):
            while True:  # drain what was in flight, then nothing
                ws.recv(timeout=0.6)


def test_order_updates_reach_the_sdk_callback(kite: KiteStandIn, sdk: KiteConnect) -> None:
    updates: list[dict[str, Any]] = []
    parser = _parser()
    parser.on_order_update = lambda ws, data: updates.append(data)
    with _ticker(kite) as ws:
        wait_until(lambda: kite.ticker.connected == 1, 5)
        order_id = _close(sdk)
        while not updates:
            message = ws.recv(timeout=5)
            if isinstance(message, str):
                parser._parse_text_message(message)
    assert (updates[0]["order_id"], updates[0]["status"]) == (order_id, "COMPLETE")


def test_the_sdk_ticker_itself_connects_subscribes_and_decodes(kite: KiteStandIn) -> None:
    """KiteTicker's own Twisted client (in a child: its reactor cannot restart) against the
    stand-in: handshake, subscribe and mode frames, a full tick."""
    script = textwrap.dedent(f"""
        import json, sys
        from kiteconnect import KiteTicker
        kws = KiteTicker({API_KEY!r}, {ACCESS_TOKEN!r}, root={kite.ticker_url!r})
        def on_connect(ws, response):
            ws.subscribe([408065]); ws.set_mode(ws.MODE_FULL, [408065])
        def on_ticks(ws, ticks):
            print(json.dumps([[t["mode"], t["last_price"]] for t in ticks]), flush=True)
            ws.stop()
        kws.on_connect, kws.on_ticks = on_connect, on_ticks
        kws.connect()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: kite.ticker.subscriptions() == [{408065: "full"}], 20)
        kite.set_price(INFY, 1573.70)
        out, _ = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait()
    assert json.loads(out.splitlines()[0]) == [["full", 1573.7]]
    assert {"a": "subscribe", "v": [408065]} in kite.ticker.requests


# Published vectors -----------------------------------------------------------------------


def _normalised(tick: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in tick.items() if k != "change"}
    for key in ("last_trade_time", "exchange_timestamp"):
        if isinstance(out.get(key), datetime):
            out[key] = int(out[key].timestamp())
    return out


@pytest.mark.parametrize("name", ["ticker_full", "ticker_quote"])
def test_kite_published_packets_decode_as_published(name: str) -> None:
    """kiteconnect-mocks' packets (rebuilt from gokiteconnect's expected values, see README)."""
    packet = base64.b64decode((DATA / f"{name}.packet").read_text())
    frame = len(packet).to_bytes(2, "big")
    [tick] = _parser()._parse_binary(b"\x00\x01" + frame + packet)
    expected = json.loads((DATA / f"{name}.expected.json").read_text())
    assert _normalised(tick) == expected
    assert (tick["instrument_token"], len(packet)) == (408065, 184 if "full" in name else 44)


def test_every_vector_frame_decodes_to_its_ticks() -> None:
    vectors = json.loads((DATA / "frames.json").read_text())["frames"]
    for vector in vectors:
        ticks = _parser()._parse_binary(base64.b64decode(vector["frame"]))
        got = [(t["instrument_token"], t["last_price"]) for t in ticks]
        want = [(t["instrument_token"], t["last_price"]) for t in vector["ticks"]]
        assert len(got) == len(want), vector["name"]
        for (gt, gp), (wt, wp) in zip(got, want, strict=True):
            assert gt == wt and gp == pytest.approx(wp, abs=1e-9), vector["name"]


def test_the_sdk_is_a_test_and_bench_peer_only() -> None:
    """kiteconnect comes from the test and bench extras: nothing else in tradeguard imports it."""
    root = Path(__file__).parent.parent / "tradeguard"
    bench = root / "tools" / "bench"
    pattern = re.compile(r"^\s*(from|import) kiteconnect\b", re.MULTILINE)
    importers = [path for path in root.rglob("*.py")
                 if bench not in path.parents and pattern.search(path.read_text())]
    assert importers == []


def test_https_and_wss_with_certificate_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a TLS context the stand-in is https:// and wss://, verified against a test CA."""
    import ssl

    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    with ca.cert_pem.tempfile() as ca_file, KiteStandIn(ssl_context=server) as kite:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
        kite.book.hold(INFY, 10, 1500.0)
        client = KiteConnect(API_KEY, root=kite.api_url, timeout=5)
        client.set_access_token(ACCESS_TOKEN)
        assert kite.api_url.startswith("https://")
        assert client.positions()["net"][0]["quantity"] == 10
        trusted = ssl.create_default_context(cafile=ca_file)
        url = f"{kite.ticker_url}?api_key={API_KEY}&access_token={ACCESS_TOKEN}"
        assert url.startswith("wss://")
        with connect(url, ssl=trusted, open_timeout=5) as ws:
            _subscribe(kite, ws, "ltp", [408065])
            kite.set_price(INFY, 1499.95)
            assert [t["last_price"] for t in _next_ticks(ws)] == [1499.95]
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(url, ssl=ssl.create_default_context(), open_timeout=5)


def test_a_burst_of_ticks_is_one_frame_in_the_clients_mode(kite: KiteStandIn) -> None:
    """50 full packets in one frame (a stop breached mid-frame must count), book at the last."""
    prices = [1500.0 - i * 0.05 for i in range(49)] + [1497.6]
    with _ticker(kite) as ws:
        _subscribe(kite, ws, "full", [408065])
        assert kite.send_burst(INFY, prices) == 1
        ticks = _next_ticks(ws)
    assert [t["last_price"] for t in ticks] == pytest.approx(prices, abs=1e-9)
    assert {t["mode"] for t in ticks} == {"full"}
    assert kite.book.price(INFY) == 1497.6


def test_the_rest_history_can_lag_the_order_update(kite: KiteStandIn, sdk: KiteConnect) -> None:
    kite.book.lag_history_next(60.0)
    order_id = _close(sdk)
    assert sdk.order_history(order_id)[-1]["status"] == "OPEN"
    assert [o["status"] for o in sdk.orders()] == ["OPEN"]
    assert kite.book.net_quantity(INFY) == 0  # filled at the exchange all the same


def test_kite_connection_and_token_limits(kite: KiteStandIn) -> None:
    """3 connections per api_key (a 4th is refused, 429 our choice); 3000 tokens each."""
    with _ticker(kite) as one, _ticker(kite), _ticker(kite):
        with pytest.raises(InvalidStatus) as refused:
            _ticker(kite)
        assert refused.value.response.status_code == 429
        one.send(json.dumps({"a": "subscribe", "v": list(range(1, 3002))}))
        while True:
            message = one.recv(timeout=5)
            if isinstance(message, str):
                break
        assert json.loads(message)["type"] == "error" and "1 not subscribed" in message
    assert max(len(s) for s in kite.ticker.subscriptions() or [{}]) <= 3000
