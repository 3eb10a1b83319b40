"""Brokers: paper on a real price cache, HTTP against a real broker on loopback."""

from __future__ import annotations

import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tradeguard.brokers import CloseOrder, Fill, Holding, HttpBroker, PaperBroker
from tradeguard.errors import BrokerError, BrokerRefused, BrokerUnavailable, ResolverError
from tradeguard.net.http import request_json
from tradeguard.net.resolver import Resolution
from tradeguard.positions import Side
from tradeguard.prices import PriceCache, Tick
from tradeguard.sim.broker_server import BrokerServer

TOKEN = "brk-s3cret-Zq9x7Lw2"
HOST = "broker.tradeguard.test"


def order(cid: str = "tg-1", symbol: str = "BOSCHLTD", hint: Tick | None = None) -> CloseOrder:
    return CloseOrder(cid, symbol, "sell", 2.0, "stop_loss", hint)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StubLadder:
    """Stands in for the resolver ladder: knows one name, answers like a fallback server."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolve(self, host: str) -> Resolution:
        self.asked.append(host)
        if host != HOST:
            raise ResolverError(f"{host}: no resolver answered")
        return Resolution(host, ("127.0.0.1",), "fallback:test")


# Paper broker ----------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000.0)


@pytest.fixture
def cache() -> PriceCache:
    cache = PriceCache(stale_after=30.0, unusable_after=300.0)
    cache.put(Tick("BOSCHLTD", 575.0, received_at=1_000.0))
    return cache


@pytest.fixture
def paper(cache: PriceCache, clock: Clock) -> PaperBroker:
    return PaperBroker(lambda symbol: cache.quote(symbol, clock()), clock, max_age=300.0)


def test_paper_fills_at_cached_price_and_reports_its_age(paper: PaperBroker, clock: Clock) -> None:
    clock.now = 1_040.0  # stale (> 30 s) but usable
    assert paper.place(order()) == Fill("paper-1", 575.0, 40.0)


def test_paper_fills_at_a_hint_newer_than_the_cache(paper: PaperBroker, clock: Clock) -> None:
    clock.now = 1_046.0
    fill = paper.place(order(hint=Tick("BOSCHLTD", 560.0, received_at=1_045.0)))
    assert (fill.fill_price, fill.price_age) == (560.0, 1.0)


def test_paper_ignores_a_hint_older_than_the_cache(paper: PaperBroker, clock: Clock) -> None:
    clock.now = 1_010.0
    fill = paper.place(order(hint=Tick("BOSCHLTD", 600.0, received_at=990.0)))
    assert (fill.fill_price, fill.price_age) == (575.0, 10.0)


def test_paper_refuses_prices_older_than_cache_timeout(paper: PaperBroker, clock: Clock) -> None:
    clock.now = 1_301.0
    old_hint = Tick("BOSCHLTD", 570.0, received_at=1_000.5)
    with pytest.raises(BrokerError, match="no usable price for BOSCHLTD"):
        paper.place(order(hint=old_hint))
    assert paper.orders == []
    assert paper.lookup("tg-1") is None


def test_paper_refuses_an_unknown_symbol(paper: PaperBroker) -> None:
    with pytest.raises(BrokerError, match="no usable price for INFY"):
        paper.place(order(symbol="INFY"))


def test_paper_uses_a_fresh_hint_when_the_cache_is_unusable(
    paper: PaperBroker, clock: Clock
) -> None:
    clock.now = 1_400.0
    fill = paper.place(order(hint=Tick("BOSCHLTD", 540.0, received_at=1_399.5)))
    assert (fill.fill_price, fill.price_age) == (540.0, 0.5)


def test_paper_is_idempotent_and_reports_each_order_once(
    paper: PaperBroker, cache: PriceCache, clock: Clock
) -> None:
    seen: list[tuple[str, float]] = []
    paper.on_order = lambda o, at: seen.append((o.client_order_id, at))
    before = time.monotonic()
    first = paper.place(order("tg-a"))
    cache.put(Tick("BOSCHLTD", 500.0, received_at=1_001.0))
    clock.now = 1_002.0
    assert paper.place(order("tg-a")) == first
    second = paper.place(order("tg-b"))
    assert second == Fill("paper-2", 500.0, 1.0)
    assert paper.orders == ["tg-a", "tg-b"]
    assert [cid for cid, _ in seen] == ["tg-a", "tg-b"]
    assert before <= seen[0][1] <= time.monotonic()
    assert paper.lookup("tg-a") == first
    assert paper.lookup("tg-unknown") is None


def test_paper_fills_at_the_last_received_tick_of_a_frame(
    paper: PaperBroker, cache: PriceCache, clock: Clock
) -> None:
    """A16: ticks of a frame share a receive time; the later (cached) one wins, not the higher."""
    cache.put(Tick("BOSCHLTD", 95.0, received_at=1_005.0))  # the frame's last tick
    clock.now = 1_006.0
    fill = paper.place(order(hint=Tick("BOSCHLTD", 100.0, received_at=1_005.0)))
    assert (fill.fill_price, fill.price_age) == (95.0, 1.0)
    assert paper.holding("BOSCHLTD") is None  # paper cannot tell what is held


def test_paper_concurrent_duplicates_make_one_order(paper: PaperBroker) -> None:
    start = threading.Barrier(8)
    fills: list[Fill] = []

    def send() -> None:
        start.wait()
        fills.append(paper.place(order("tg-race")))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert len(fills) == 8
    assert set(fills) == {Fill("paper-1", 575.0, 0.0)}
    assert paper.orders == ["tg-race"]


# HTTP broker -------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[BrokerServer]:
    with BrokerServer(TOKEN, price_for={"BOSCHLTD": 575.5}) as server:
        yield server


def http_broker(server: BrokerServer, timeout: float = 2.0, token: str = TOKEN) -> HttpBroker:
    return HttpBroker(server.url, token, timeout, resolver=None)


def test_http_order_is_sent_as_the_spec_says_and_filled(server: BrokerServer) -> None:
    """A13: a whole quantity goes on the wire as an integer, not 2.0."""
    fill = http_broker(server).place(order("tg-1"))
    assert fill == Fill("sim-1", 575.5, None)
    assert type(server.orders["tg-1"]["quantity"]) is int
    assert server.orders["tg-1"] == {
        "client_order_id": "tg-1",
        "symbol": "BOSCHLTD",
        "side": "sell",
        "quantity": 2.0,
        "type": "market",
        "reason": "stop_loss",
        "order_id": "sim-1",
        "status": "filled",
        "fill_price": 575.5,
        "filled_quantity": 2,
    }


def test_http_wrong_token_is_refused_by_the_broker(server: BrokerServer) -> None:
    with pytest.raises(BrokerRefused, match="HTTP 401") as caught:
        http_broker(server, token="not-the-token").place(order())
    assert "not-the-token" not in str(caught.value)
    assert server.order_count == 0


def test_http_same_client_order_id_twice_is_one_order(server: BrokerServer) -> None:
    broker = http_broker(server)
    assert broker.place(order("tg-7")) == broker.place(order("tg-7"))
    assert (server.requests, server.order_count) == (2, 1)


def test_http_server_error_is_a_broker_error(server: BrokerServer) -> None:
    server.fail_next(1, status=503)
    broker = http_broker(server)
    with pytest.raises(BrokerUnavailable, match="HTTP 503: simulated 503"):
        broker.place(order())
    assert broker.place(order()).order_id == "sim-1"  # the next try goes through


def test_http_hang_fails_within_the_timeout(server: BrokerServer) -> None:
    server.hang(True)
    started = time.monotonic()
    with pytest.raises(BrokerError, match=r"no answer within 0\.3s"):
        http_broker(server, timeout=0.3).place(order())
    assert 0.25 <= time.monotonic() - started < 1.5


def test_http_broker_down_then_up(server: BrokerServer) -> None:
    broker = http_broker(server)
    server.down()
    with pytest.raises(BrokerError, match="ConnectionRefused"):
        broker.place(order())
    server.up()
    assert broker.place(order()).fill_price == 575.5


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("<html>bad gateway</html>", "not a JSON object"),
        ("", "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        ('{"status": "filled", "fill_price": 1.0}', "no valid order_id"),
        ('{"order_id": "x", "status": "pending", "fill_price": 1.0}', "status is 'pending'"),
        ('{"order_id": "x", "status": "partially_filled", "fill_price": 1.0}',
         "needs a filled_quantity"),
        ('{"order_id": "x", "fill_price": 1.0}', "status is None"),
        ('{"order_id": "x", "status": "filled"}', "invalid fill_price None"),
        ('{"order_id": "x", "status": "filled", "fill_price": "575"}', "invalid fill_price"),
        ('{"order_id": "x", "status": "filled", "fill_price": 0}', "invalid fill_price 0"),
        ('{"order_id": "x", "status": "filled", "fill_price": -3}', "invalid fill_price -3"),
        ('{"order_id": "x", "status": "filled", "fill_price": Infinity}', "invalid fill_price"),
        ('{"order_id": true, "status": "filled", "fill_price": 5}', "no valid order_id"),
    ],
)
def test_http_malformed_answers_are_broker_errors(
    server: BrokerServer, body: str, complaint: str
) -> None:
    server.fail_next(1, status=200, body=body)
    with pytest.raises(BrokerError, match=complaint):
        http_broker(server).place(order())


def test_http_rejected_is_refused_and_stays_refused(server: BrokerServer) -> None:
    """A2: 'rejected' is BrokerRefused, for that id for good (a new attempt needs a new id)."""
    broker = http_broker(server)
    server.reject_next(1)
    with pytest.raises(BrokerRefused, match="status is 'rejected'"):
        broker.place(order("tg-r1"))
    with pytest.raises(BrokerRefused):
        broker.place(order("tg-r1"))
    with pytest.raises(BrokerRefused):
        broker.lookup("tg-r1")
    assert broker.place(order("tg-r2")) == Fill("sim-2", 575.5, None)
    server.fail_next(1, status=400)
    with pytest.raises(BrokerRefused, match="HTTP 400"):
        broker.place(order("tg-r3"))
    server.fail_next(1, status=429)
    with pytest.raises(BrokerUnavailable, match="HTTP 429"):
        broker.place(order("tg-r3"))


def test_http_partial_fill_reports_the_filled_quantity(server: BrokerServer) -> None:
    """A2: 'partially_filled' with filled_quantity is a Fill of that quantity only."""
    broker = http_broker(server)
    server.partial_next(0.5)
    fill = broker.place(order("tg-p"))
    assert fill == Fill("sim-1", 575.5, None, 0.5)
    assert fill.partial(2.0) and not Fill("x", 1.0, None).partial(2.0)
    assert broker.lookup("tg-p") == fill


def test_http_holding_from_get_positions(server: BrokerServer) -> None:
    """A1: GET /positions tells what the broker holds; 404 means it cannot tell."""
    broker = http_broker(server)
    assert broker.holding("BOSCHLTD") is None
    assert server.requests == 1
    assert broker.holding("BOSCHLTD") is None  # the 404 is remembered a while
    assert server.requests == 1
    server.hold("BOSCHLTD", "long", 10)
    server.hold("INFY", "short", 3)
    broker = http_broker(server)
    assert broker.holding("BOSCHLTD") == Holding(Side.LONG, 10.0)
    assert broker.holding("INFY") == Holding(Side.SHORT, 3.0)
    assert broker.holding("TCS") == Holding(Side.LONG, 0.0)
    server.close_by_hand("BOSCHLTD")
    assert broker.holding("BOSCHLTD").on_side(Side.LONG) == 0.0  # type: ignore[union-attr]
    broker.place(order("tg-h", symbol="INFY"))  # a sell of 2 deepens the short
    assert server.held("INFY") == -5.0
    server.fail_next(1, status=200, body='{"positions": "none"}')
    with pytest.raises(BrokerUnavailable, match="not a positions list"):
        broker.holding("BOSCHLTD")


@pytest.mark.parametrize("price", [math.nan, -1.0, 0.0])
def test_http_bad_fill_price_from_the_broker_is_refused(price: float) -> None:
    with (
        BrokerServer(TOKEN, price_for=lambda _symbol: price) as server,
        pytest.raises(BrokerError, match="invalid fill_price"),
    ):
        http_broker(server).place(order())


def test_http_lookup_finds_known_orders_and_not_unknown_ones(server: BrokerServer) -> None:
    broker = http_broker(server)
    odd_id = "tg-a/b c?d"  # must be URL-quoted to round-trip
    placed = broker.place(order(odd_id))
    assert broker.lookup(odd_id) == placed
    assert broker.lookup("tg-never-sent") is None
    server.fail_next(1, status=500)
    with pytest.raises(BrokerError, match="lookup of order tg-x failed: answered HTTP 500"):
        broker.lookup("tg-x")


def test_http_slow_broker_keeps_the_order_for_reconciliation(server: BrokerServer) -> None:
    """The client gives up, but the broker has the order: lookup finds it, a resend is no copy."""
    server.slow(5.0)
    broker = http_broker(server, timeout=0.3)
    with pytest.raises(BrokerError, match="no answer"):
        broker.place(order("tg-slow"))
    assert server.order_count == 1
    server.slow(0)
    found = broker.lookup("tg-slow")
    assert found is not None
    assert broker.place(order("tg-slow")) == found
    assert server.order_count == 1


def test_http_token_never_in_errors_or_logs(
    server: BrokerServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = http_broker(server, timeout=0.3)
    errors: list[BrokerError] = []

    def fails(action: Callable[[], object]) -> None:
        with pytest.raises(BrokerError) as caught:
            action()
        errors.append(caught.value)

    echo = json.dumps({"error": f"rejected Authorization: Bearer {TOKEN}"})
    server.fail_next(1, status=403, body=echo)
    fails(lambda: broker.place(order()))
    server.fail_next(1, status=200, body=echo)
    fails(lambda: broker.lookup("tg-1"))
    server.hang(0.6)
    fails(lambda: broker.place(order()))
    server.hang(False)
    server.down()
    fails(lambda: broker.place(order()))
    fails(lambda: HttpBroker("http://nowhere.invalid", TOKEN, 1.0, StubLadder()).place(order()))
    fails(lambda: HttpBroker(server.url, TOKEN + "\r\nX: y", 1.0, None))

    assert len(errors) == 6
    assert "[token]" in str(errors[0])  # the echo was scrubbed, not just absent
    for error in errors:
        cause: BaseException | None = error
        while cause is not None:
            assert TOKEN not in str(cause)
            cause = cause.__cause__
    assert caplog.records
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


def test_http_broker_is_resolved_through_the_ladder(server: BrokerServer) -> None:
    ladder = StubLadder()
    broker = HttpBroker(f"http://{HOST}:{server.port}/", TOKEN, 2.0, ladder)
    assert broker.place(order()).fill_price == 575.5
    assert ladder.asked == [HOST]
    assert server.hosts == [f"{HOST}:{server.port}"]


def test_http_unresolvable_broker_is_a_broker_error() -> None:
    broker = HttpBroker("http://broker.elsewhere.test:9", TOKEN, 1.0, StubLadder())
    with pytest.raises(BrokerError, match="cannot resolve the broker host"):
        broker.place(order())


# The loopback broker itself ------------------------------------------------------


def test_hung_requests_are_released_by_stop(server: BrokerServer) -> None:
    answers: list[int] = []

    def ask() -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        resp = request_json("GET", server.url + "/orders/x", headers=auth, timeout=10)
        answers.append(resp.status)

    server.hang(30.0)  # finite, so that a regression fails the test instead of hanging it
    client = threading.Thread(target=ask)
    client.start()
    wait_until(lambda: server.requests == 1)
    started = time.monotonic()
    server.stop()
    client.join(timeout=5)
    assert time.monotonic() - started < 2.0
    assert answers == [404]


def test_server_refuses_bad_orders(server: BrokerServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = {"client_order_id": "tg-1", "symbol": "X", "side": "hold", "quantity": 1,
           "type": "market", "reason": "emergency"}
    resp = request_json("POST", server.url + "/orders", body=bad, headers=auth)
    assert (resp.status, resp.body["error"]) == (400, "side must be 'sell' or 'buy'")
    resp = request_json("POST", server.url + "/orders", body={"symbol": "X"}, headers=auth)
    assert resp.status == 400
    assert server.order_count == 0


# HTTPS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA, name: str) -> BrokerServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(context)
    return BrokerServer(TOKEN, ssl_context=context)


def test_https_broker_verified_against_the_hostname(ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with tls_server(ca, HOST) as server:
        url = f"https://{HOST}:{server.port}"
        broker = HttpBroker(url, TOKEN, 2.0, StubLadder(), ca_file=str(ca_file))
        assert broker.place(order()).fill_price == 100.0
        assert server.hosts == [f"{HOST}:{server.port}"]
        untrusting = HttpBroker(url, TOKEN, 2.0, StubLadder())  # system CAs only
        with pytest.raises(BrokerError, match="certificate verify failed"):
            untrusting.place(order("tg-2"))
    assert server.order_count == 1


def test_https_certificate_for_another_name_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with tls_server(ca, "other.tradeguard.test") as server:
        broker = HttpBroker(
            f"https://{HOST}:{server.port}", TOKEN, 2.0, StubLadder(), ca_file=str(ca_file)
        )
        with pytest.raises(BrokerError, match="certificate verify failed"):
            broker.place(order())
        assert server.order_count == 0


def test_http_broker_keeps_its_connection_alive() -> None:
    """A8: the positions check, the order and the next order share one connection."""
    with BrokerServer(TOKEN, keep_alive=True) as server:
        server.hold("BOSCHLTD", "long", 10)
        broker = http_broker(server)
        broker.holding("BOSCHLTD")
        broker.place(order("tg-k1"))
        broker.place(order("tg-k2"))
        assert broker._client.connections_opened == 1
        broker.close()
