"""KiteBroker against the Kite stand-in on loopback: real HTTP, a real SQLite store, the Closer.

What is held to (SPEC §10, §4 Closing, §12): the headers and form fields of a
close; the fill read from the order's history; a lost answer found by its tag
with no second order; a 403 TokenException as one critical alert however many
calls are refused, and the new token used at once; a reduced or hand-closed
position never reversed; each error kind mapped to BrokerRefused or
BrokerUnavailable; Kite's 10/s pace.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import process
from tests.support.waiting import wait_until
from tradeguard.alerts import Alert
from tradeguard.brokers import CloseOrder
from tradeguard.brokers.kite.auth import TokenSource
from tradeguard.brokers.kite.orders import KiteBroker
from tradeguard.brokers.kite.rest import KiteRest, Limiter, TokenRejected
from tradeguard.closing import Closer
from tradeguard.errors import BrokerRefused, BrokerUnavailable, PositionError
from tradeguard.net.http import HttpClient
from tradeguard.notify.outbox import OutboxAlerts
from tradeguard.positions import Position, Reason, Side, State, past_stop
from tradeguard.sim.kite import ACCESS_TOKEN, API_KEY, KiteStandIn
from tradeguard.store import Store

INFY = "NSE:INFY"


class Alerts:
    """Collects what the Kite REST layer alerts (its on_alert callback)."""

    def __init__(self) -> None:
        self.seen: list[Alert] = []

    def __call__(self, alert: Alert) -> None:
        self.seen.append(alert)

    def kinds(self) -> list[str]:
        return [a.kind for a in self.seen]


@pytest.fixture
def kite() -> Iterator[KiteStandIn]:
    with KiteStandIn(heartbeat_interval=None) as standin:
        standin.set_price(INFY, 1500.0)
        yield standin


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "kite-token"
    path.write_text(ACCESS_TOKEN + "\n")
    return path


@pytest.fixture
def alerts() -> Alerts:
    return Alerts()


@pytest.fixture
def tokens(token_file: Path) -> TokenSource:
    return TokenSource("", str(token_file))


@pytest.fixture
def rest(kite: KiteStandIn, tokens: TokenSource, alerts: Alerts) -> Iterator[KiteRest]:
    client = HttpClient(None, timeout=2.0)
    yield KiteRest(kite.api_url, API_KEY, tokens, client, on_alert=alerts)
    client.close()


@pytest.fixture
def broker(rest: KiteRest) -> KiteBroker:
    return KiteBroker(rest, fill_wait=2.0, poll=0.02)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "tg.db")
    yield s
    s.close()


def _closer(store: Store, broker: KiteBroker) -> Closer:
    return Closer(store, broker, OutboxAlerts(store), max_retries=2, retry_delay=0.01)


def _open(store: Store, quantity: float = 10, side: Side = Side.LONG,
          symbol: str = INFY) -> Position:
    stop = 1400.0 if side is Side.LONG else 1600.0
    return store.add_position(Position(symbol, side, quantity, 1500.0, stop_loss=stop,
                                       take_profit=None, product="MIS",
                                       opened_at=1.0))


def _order(tag: str = "tg0123456789abcdef01", quantity: float = 10,
           side: str = "sell") -> CloseOrder:
    return CloseOrder(tag, INFY, side, quantity, "stop_loss", product="MIS")


# The order on the wire ---------------------------------------------------------


def test_a_close_carries_kites_headers_and_form_and_fills_from_history(
        kite: KiteStandIn, broker: KiteBroker) -> None:
    kite.book.hold(INFY, 10, 1450.0)
    fill = broker.place(_order())
    assert (fill.fill_price, fill.quantity) == (1500.0, 10)
    form = kite.book.forms[-1]
    assert form == {"tradingsymbol": "INFY", "exchange": "NSE", "transaction_type": "SELL",
                    "order_type": "MARKET", "quantity": "10", "product": "MIS",
                    "validity": "DAY", "market_protection": "-1",
                    "tag": "tg0123456789abcdef01"}
    assert kite.rest is not None
    method, path, headers = next(s for s in kite.rest.seen if s[0] == "POST")
    assert (method, path) == ("POST", "/orders/regular")
    assert headers["X-Kite-Version"] == "3"
    assert headers["Authorization"] == f"token {API_KEY}:{ACCESS_TOKEN}"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert kite.book.net_quantity(INFY) == 0


def test_the_closers_client_order_ids_are_valid_kite_tags(store: Store) -> None:
    """Kite's tag: at most 20 letters and digits; every attempt's id is one."""
    for _ in range(50):
        _open(store)
        claimed = store.claim_close(INFY, "stop_loss")
        assert claimed.client_order_id is not None
        assert claimed.client_order_id.isalnum() and len(claimed.client_order_id) <= 20
        store.finish_close(claimed.id or 0, "x", 1.0, 0.0, 1.0)


def test_a_fractional_quantity_is_refused_never_rounded(kite: KiteStandIn,
                                                        broker: KiteBroker) -> None:
    with pytest.raises(BrokerRefused, match="whole number"):
        broker.place(_order(quantity=2.5))
    assert kite.book.forms == []


# Exactly once ---------------------------------------------------------------------


def test_a_lost_answer_is_found_by_tag_and_no_second_order_goes_out(
        kite: KiteStandIn, broker: KiteBroker, store: Store) -> None:
    kite.book.hold(INFY, 10, 1450.0)
    position = _open(store)
    kite.book.drop_next_answer()
    result = _closer(store, broker).close(INFY, Reason.STOP_LOSS)
    assert result.position.state is State.CLOSED
    assert len(kite.book.forms) == 1, "one order, however the answer was lost"
    assert result.position.exit_price == 1500.0
    assert kite.book.net_quantity(INFY) == 0
    assert position.id is not None


def test_after_a_restart_the_lost_order_is_found_by_lookup(
        kite: KiteStandIn, rest: KiteRest) -> None:
    """A new process (a new KiteBroker) knows nothing of the tag: lookup reads the order book."""
    kite.book.hold(INFY, 10, 1450.0)
    kite.book.drop_next_answer()
    first = KiteBroker(rest, fill_wait=1.0, poll=0.02)
    with pytest.raises(BrokerUnavailable):
        first.place(_order())
    second = KiteBroker(rest, fill_wait=1.0, poll=0.02)
    fill = second.lookup("tg0123456789abcdef01")
    assert fill is not None and fill.fill_price == 1500.0
    assert second.lookup("tgneversent000000000") is None
    assert len(kite.book.forms) == 1


def test_a_partial_fill_is_a_partial_fill_and_a_rejection_is_refused(
        kite: KiteStandIn, broker: KiteBroker) -> None:
    kite.book.hold(INFY, 10, 1450.0)
    kite.book.partial_next(4)
    fill = broker.place(_order("tgpartial01"))
    assert fill.quantity == 4 and fill.partial(10)
    kite.book.reject_next("RMS: Margin exceeds")
    with pytest.raises(BrokerRefused, match="REJECTED: RMS: Margin exceeds"):
        broker.place(_order("tgrejected01", quantity=6))


def test_a_freeze_quantity_refusal_says_why_it_is_not_sliced(
        kite: KiteStandIn, broker: KiteBroker) -> None:
    kite.book.hold(INFY, 10, 1450.0)
    kite.book.reject_next("Quantity exceeds the freeze limit")
    with pytest.raises(BrokerRefused, match="does not slice"):
        broker.place(_order("tgfreeze01"))


# Never reverse --------------------------------------------------------------------


def test_a_reduced_holding_closes_only_what_kite_holds(
        kite: KiteStandIn, broker: KiteBroker, store: Store) -> None:
    kite.book.hold(INFY, 6, 1450.0)
    _open(store, quantity=10)
    result = _closer(store, broker).close(INFY, Reason.STOP_LOSS)
    assert result.position.state is State.CLOSED
    assert kite.book.forms[-1]["quantity"] == "6"
    assert kite.book.net_quantity(INFY) == 0, "flat, not short"


def test_a_position_closed_by_hand_sends_no_order(
        kite: KiteStandIn, broker: KiteBroker, store: Store) -> None:
    kite.book.hold(INFY, 10, 1450.0)
    _open(store)
    kite.book.close_by_hand(INFY)
    result = _closer(store, broker).close(INFY, Reason.STOP_LOSS)
    assert result.position.reason == Reason.CLOSED_AT_BROKER
    assert kite.book.forms == []
    assert kite.book.net_quantity(INFY) == 0


def test_holding_is_per_product(kite: KiteStandIn, broker: KiteBroker) -> None:
    kite.book.hold(INFY, 10, 1450.0, product="CNC")
    kite.book.hold(INFY, -3, 1450.0, product="MIS")
    cnc, mis = broker.holding(INFY, "CNC"), broker.holding(INFY)
    assert cnc is not None and (cnc.side, cnc.quantity) == (Side.LONG, 10)
    assert mis is not None and (mis.side, mis.quantity) == (Side.SHORT, 3)
    bare = broker.holding("INFY", "CNC")
    assert bare == cnc, "a bare symbol is NSE's"
    assert broker.holding(INFY, "D") == cnc and broker.holding(INFY, "I") == mis, "Upstox names"


# Errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_and_an_html_502_are_unavailable(
        kite: KiteStandIn, broker: KiteBroker, status: int) -> None:
    kite.book.fail_next(status, "/portfolio")
    with pytest.raises(BrokerUnavailable, match=f"HTTP {status}"):
        broker.holding(INFY)


def test_429_is_unavailable_and_slows_the_next_call(
        kite: KiteStandIn, tokens: TokenSource, alerts: Alerts) -> None:
    now = [100.0]
    slept: list[float] = []
    limiter = Limiter(clock=lambda: now[0], sleep=slept.append)
    client = HttpClient(None, timeout=2.0)
    rest = KiteRest(kite.api_url, API_KEY, tokens, client, on_alert=alerts, limiter=limiter)
    kite.book.fail_next(429, "/portfolio")
    with pytest.raises(BrokerUnavailable, match="429"):
        rest.get("/portfolio/positions", what="positions")
    rest.get("/portfolio/positions", what="positions")
    assert slept and slept[-1] >= 0.9, "a second of quiet after a 429"
    client.close()


def test_an_input_exception_is_refused(kite: KiteStandIn, broker: KiteBroker) -> None:
    with pytest.raises(BrokerRefused, match="InputException"):
        broker.place(CloseOrder("tgunknown01", "NSE:NOSUCH", "sell", 1, "stop_loss"))


# Tokens ------------------------------------------------------------------------------


def test_a_refused_token_is_one_critical_alert_and_no_storm(
        kite: KiteStandIn, broker: KiteBroker, store: Store, alerts: Alerts,
        token_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    kite.book.hold(INFY, 10, 1450.0)
    _open(store)
    kite.book.rotate_token("morningtoken0002")
    closer = _closer(store, broker)
    assert kite.rest is not None
    for _ in range(5):  # the sweep claiming the failed close again and again
        with pytest.raises(PositionError):
            closer.close(INFY, Reason.STOP_LOSS)
    assert alerts.kinds() == ["token_rejected"]
    assert alerts.seen[0].text.startswith("CRITICAL")
    refused = [s for s in kite.rest.seen if s[0] != "GET" or s[1] != "/instruments"]
    assert len(refused) == 1, "calls with a refused token are held back, not repeated"
    assert kite.book.forms == []
    # The morning routine: a new token in the file is used at once, and said to work.
    token_file.write_text("morningtoken0002\n")
    os.utime(token_file, ns=(1, 1))  # a new stamp even within one mtime tick
    result = closer.close(INFY, Reason.STOP_LOSS)
    assert result.position.state is State.CLOSED
    assert alerts.kinds() == ["token_rejected", "token_accepted"], "and back, once"
    for secret in (ACCESS_TOKEN, "morningtoken0002"):
        assert secret not in caplog.text


def test_a_token_refused_then_accepted_again_says_so(
        kite: KiteStandIn, tokens: TokenSource, alerts: Alerts) -> None:
    now = [0.0]
    probing = TokenSource("", "", clock=lambda: now[0], probe_every=60.0)
    probing.set(ACCESS_TOKEN, "test")
    client = HttpClient(None, timeout=2.0)
    rest = KiteRest(kite.api_url, API_KEY, probing, client, on_alert=alerts)
    kite.book.rotate_token("other")
    with pytest.raises(TokenRejected):
        rest.get("/orders", what="orders")
    with pytest.raises(TokenRejected, match="not sent"):
        rest.get("/orders", what="orders")
    kite.book.rotate_token(ACCESS_TOKEN)  # Kite changed its mind (a 403 in error)
    now[0] = 61.0
    assert rest.get("/orders", what="orders") == []
    assert alerts.kinds() == ["token_rejected", "token_accepted"]
    client.close()


def test_token_file_is_read_again_when_it_changes_and_on_reload(
        token_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = TokenSource("ignored", str(token_file))
    assert tokens() == ACCESS_TOKEN
    token_file.write_text("second\n")
    os.utime(token_file, ns=(2, 2))
    assert tokens() == "second"
    assert tokens.reload() is False, "nothing new"
    token_file.write_text("bad\r\nX-Evil: 1")
    os.utime(token_file, ns=(3, 3))
    assert tokens() == "second", "a token that would forge a header is refused"
    assert "second" not in caplog.text and ACCESS_TOKEN not in caplog.text


def test_an_order_update_from_the_ticker_ends_the_wait_for_the_fill(
        kite: KiteStandIn, broker: KiteBroker) -> None:
    """The ticker's final update for the order is its fill; the history is not asked."""
    kite.book.hold(INFY, 10, 1450.0)
    first_id = "260101000000001"  # the stand-in's first order id
    broker.order_update({"order_id": first_id, "status": "COMPLETE", "average_price": 1499.5,
                         "filled_quantity": 10, "quantity": 10})
    broker.order_update({"order_id": "other", "status": "OPEN"})  # not final: ignored
    fill = broker.place(_order("tgupdate01"))
    assert (fill.order_id, fill.fill_price) == (first_id, 1499.5)
    assert kite.rest is not None
    assert not [s for s in kite.rest.seen if s[1] == f"/orders/{first_id}"]


def test_sighup_reads_the_token_file_again(token_file: Path) -> None:
    """actors.process: SIGHUP makes the venue read broker.token_file whatever its stamp."""
    tokens = TokenSource("", str(token_file))
    stamp = os.stat(token_file)

    class FakeSystem:
        def reload_token(self) -> None:
            tokens.reload()

    token_file.write_text("standintoken0002\n")  # same size, same mtime: only a read tells
    os.utime(token_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # a stamp that lies
    before = signal.getsignal(signal.SIGHUP)
    try:
        process._reload_token_on_sighup(FakeSystem())  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: tokens.generation == 2, 5.0)
    finally:
        signal.signal(signal.SIGHUP, before)
    assert tokens() == "standintoken0002"


def test_the_limiter_allows_ten_in_any_second_on_a_stepped_clock() -> None:
    """Kite's 10/s: of 25 calls at one instant ten go at once, ten a second later, five after."""
    now = [1000.0]
    slept: list[float] = []
    limiter = Limiter(clock=lambda: now[0], sleep=slept.append)
    waits = [limiter.wait() for _ in range(25)]
    assert waits[:10] == [0.0] * 10
    assert waits[10:20] == [pytest.approx(1.0)] * 10 and waits[20:] == [pytest.approx(2.0)] * 5
    now[0] += 10.0  # long after: no backlog
    assert limiter.wait() == 0
    limiter.pause(1.0)  # a 429
    assert limiter.wait() == pytest.approx(1.0)


def test_orders_waiting_for_a_slot_go_worst_first() -> None:
    """Issue 14: in a mass stop-out the close furthest past its stop takes the next slot."""
    now = [0.0]
    gate, sleeping = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        sleeping.set()
        gate.wait(10)  # the caller taking its slot holds here until the others queue
        now[0] += seconds

    limiter = Limiter(rate=1, clock=lambda: now[0], sleep=sleep)
    limiter.wait()  # this second's one slot is taken
    served: list[str] = []

    def close(name: str, urgency: float) -> None:
        limiter.wait(urgency)
        served.append(name)

    first = threading.Thread(target=close, args=("first", 0.0))
    first.start()  # takes the next slot and sleeps for it
    assert sleeping.wait(10)
    others = [threading.Thread(target=close, args=args)
              for args in (("mild", 0.01), ("worst", 0.2), ("middle", 0.05))]
    for thread in others:
        thread.start()
    wait_until(lambda: limiter.queued() == 3, 10)
    gate.set()
    for thread in (first, *others):
        thread.join(10)
    assert served == ["first", "worst", "middle", "mild"]


def test_past_stop_measures_how_far_through_the_stop_a_price_is() -> None:
    long = Position(INFY, Side.LONG, 1, 100.0, 90.0, None)
    short = Position(INFY, Side.SHORT, 1, 100.0, 110.0, None)
    assert past_stop(long, 81.0) == pytest.approx(0.1) and past_stop(long, 95.0) == 0.0
    assert past_stop(short, 121.0) == pytest.approx(0.1) and past_stop(short, 105.0) == 0.0
    assert past_stop(Position(INFY, Side.LONG, 1, 100.0, None, 120.0), 50.0) == 0.0


def test_a_ticker_refusal_alerts_once_with_rest_but_holds_no_close_back(
        kite: KiteStandIn, rest: KiteRest, tokens: TokenSource, alerts: Alerts) -> None:
    """The ticker and REST share one alert per refused token; only REST's own refusal holds
    REST calls back, so a close is still tried after a handshake refused for another reason."""
    assert tokens.rejected(ACCESS_TOKEN) is True  # the ticker's 403: it sends the one alert
    assert rest.get("/orders", what="orders") == []  # REST is not held back, and it works
    assert alerts.kinds() == ["token_accepted"], "the ticker's refusal is over: said once"
    kite.book.rotate_token("other")
    with pytest.raises(TokenRejected):
        rest.get("/orders", what="orders")
    assert alerts.kinds() == ["token_accepted", "token_rejected"]
    assert tokens.rejected(ACCESS_TOKEN) is False, "the ticker does not alert it again"
