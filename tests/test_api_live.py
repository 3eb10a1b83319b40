"""SPEC §6 against the running service: real HTTP to waitress, served by ApiActor.

tests/test_web_api.py holds the HTTP layer to its contract through Flask's
test client; this file proves the same contract holds once the app runs under
waitress inside the supervised system (tests/support/harness.py): every
endpoint's success and error paths, the token on every protected endpoint,
JSON for the errors waitress answers itself, the 64 KiB body limit however
the body is framed, /healthz following a hung actor, and no secret in any
answer or log line.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests.support.harness import API_TOKEN, BOT_TOKEN, Harness, running
from tests.support.waiting import wait_until
from tradeguard.brokers import CloseOrder
from tradeguard.sim.broker_server import BrokerServer
from tradeguard.web.api import load_openapi
from tradeguard.web.app import MAX_BODY_BYTES
from tradeguard.web.server import WIRE_BODY_LIMIT

BROKER_SIM_TOKEN = "api-live-broker-token-SECRET"
SECRETS = (API_TOKEN, BOT_TOKEN)  # the broker token: tests/test_run_refusals.py
LONG = {"symbol": "BOSCHLTD", "side": "long", "quantity": 2, "entry_price": 575.0,
        "stop_loss": 560.0, "take_profit": 600.0}
WRITES = [
    ("POST", "/api/v1/positions", LONG),
    ("PATCH", "/api/v1/positions/BOSCHLTD", {"stop_loss": 565.0}),
    ("POST", "/api/v1/monitoring/emergency-close-position", {"symbol": "BOSCHLTD"}),
    ("POST", "/api/v1/debug/fault", {"actor": "CacheActor", "kind": "crash"}),
]
READS = ["/api/v1/monitoring/connection-health", "/api/v1/positions", "/api/v1/status",
         "/api/v1/openapi.json"]
OPEN_PATHS = ["/healthz", "/metrics", "/"]


@dataclass
class Answer:
    status: int
    headers: Message
    text: str

    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", self.text
        return json.loads(self.text)


class Client:
    """Real HTTP to the live server; keeps every answer so a test can search them all."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[Answer] = []

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = API_TOKEN,
             data: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        sent = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=sent)
            resp = conn.getresponse()
            answer = Answer(resp.status, resp.headers, resp.read().decode("utf-8"))
        finally:
            conn.close()
        self.answers.append(answer)
        return answer


def raw(port: int, head: bytes, chunks: Iterable[bytes] = ()) -> Answer:
    """Send bytes as given (framing a client library would fix), read the answer to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the server answered early and closed: read what it said
        received = b""
        while True:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break  # closed with some of our bytes unread, after its answer
            if not part:
                break
            received += part
    head_part, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head_part.decode("latin-1").split("\r\n")
    headers = Message()
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name] = value.strip()
    return Answer(int(status_line.split(" ")[1]), headers, body.decode("utf-8"))


def assert_error(answer: Answer, code: int, containing: str = "") -> str:
    """Exactly {"status": "error", "error": message}, with the code; returns the message."""
    assert answer.status == code, answer.text
    body = answer.json()
    assert set(body) == {"status", "error"} and body["status"] == "error", body
    assert isinstance(body["error"], str) and containing in body["error"], body
    return str(body["error"])


def chunked(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        part = data[start:start + size]
        yield b"%x\r\n%s\r\n" % (len(part), part)
    yield b"0\r\n\r\n"


def request_head(method: str, path: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             f"Authorization: Bearer {API_TOKEN}", "Content-Type: application/json", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def padded(body: dict[str, Any], size: int) -> bytes:
    """`body` as JSON of exactly `size` bytes (whitespace padding is still valid JSON)."""
    data = json.dumps(body).encode()
    return data + b" " * (size - len(data))


@pytest.fixture
def live(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Harness]:
    caplog.set_level(logging.DEBUG)
    with running(tmp_path, telegram=True) as h:
        yield h


@pytest.fixture
def client(live: Harness) -> Client:
    return Client(live.system.api_port)


def feed_ready(h: Harness, symbol: str) -> bool:
    return h.system.services.feed_status.connected and any(
        symbol in s for s in h.exchange.subscriptions)


def price_known(h: Harness, symbol: str, price: float) -> bool:
    quote = h.system.services.cache.quote(symbol, 0)
    return quote is not None and quote.price == price


# Success paths -------------------------------------------------------------------


def test_a_position_is_opened_listed_moved_and_closed(live: Harness, client: Client) -> None:
    opened = client.call("POST", "/api/v1/positions", LONG)
    assert opened.status == 201 and opened.json()["state"] == "open"
    wait_until(lambda: feed_ready(live, "BOSCHLTD"), 10)
    live.exchange.send_tick("BOSCHLTD", 580.0)
    wait_until(lambda: price_known(live, "BOSCHLTD", 580.0), 5)

    moved = client.call("PATCH", "/api/v1/positions/BOSCHLTD", {"stop_loss": 565.0})
    assert moved.status == 200 and moved.json()["stop_loss"] == 565.0
    listed = client.call("GET", "/api/v1/positions").json()["positions"]
    assert [(p["symbol"], p["state"], p["stop_loss"]) for p in listed] == [
        ("BOSCHLTD", "open", 565.0)]

    closed = client.call("POST", "/api/v1/monitoring/emergency-close-position",
                         {"symbol": "BOSCHLTD"})
    assert closed.status == 200, closed.text
    result = closed.json()
    assert result["status"] == "success" and result["reason"] == "emergency"
    assert result["exit_price"] == 580.0 and result["pnl"] == pytest.approx(10.0)
    assert 0 <= result["price_age_seconds"] < 30 and result["order_id"]
    assert result["client_order_id"]
    after = client.call("GET", "/api/v1/positions").json()["positions"]
    assert after[0]["state"] == "closed" and after[0]["exit_price"] == 580.0


def test_every_read_answers_with_the_live_state(live: Harness, client: Client) -> None:
    client.call("POST", "/api/v1/positions", LONG)
    wait_until(lambda: feed_ready(live, "BOSCHLTD"), 10)
    live.exchange.send_tick("BOSCHLTD", 577.5)
    wait_until(lambda: price_known(live, "BOSCHLTD", 577.5), 5)

    health = client.call("GET", "/api/v1/monitoring/connection-health").json()
    ws = health["websocket"]
    assert ws["connected"] is True and ws["host"] == "feed.tradeguard.test"
    assert ws["connected_ip"] == "127.0.0.1"
    assert ws["resolved_via"] == f"fallback:{live.dns.address}"  # the system resolver fails
    entry = health["price_cache"]["cache_entries"]["BOSCHLTD"]
    assert entry["price"] == 577.5 and entry["is_stale"] is False
    assert health["positions"] == {**health["positions"], "open": 1, "blind": []}
    assert set(health["actors"]) == {"CacheActor", "NotifierActor", "MonitorActor",
                                     "DnsHealthActor", "FeedActor", "ApiActor"}

    status = client.call("GET", "/api/v1/status").json()
    row = status["positions"][0]
    assert (row["symbol"], row["price"], row["freshness"]) == ("BOSCHLTD", 577.5, "fresh")
    assert client.call("GET", "/api/v1/openapi.json").json() == load_openapi()
    assert client.call("GET", "/healthz").json() == {"status": "ok"}
    metrics = client.call("GET", "/metrics")
    assert metrics.status == 200 and metrics.headers.get_content_type() == "text/plain"
    assert 'tradeguard_price_age_seconds{symbol="BOSCHLTD"}' in metrics.text
    page = client.call("GET", "/")
    assert page.status == 200 and page.headers.get_content_type() == "text/html"
    assert "BOSCHLTD" in page.text and "₹577.50" in page.text


def test_a_fault_is_accepted_and_the_actor_restarted(live: Harness, client: Client) -> None:
    accepted = client.call("POST", "/api/v1/debug/fault", {"actor": "CacheActor",
                                                           "kind": "crash"})
    assert accepted.status == 202
    assert accepted.json() == {"status": "accepted", "actor": "CacheActor", "kind": "crash"}
    wait_until(lambda: live.system.supervisor.status()["CacheActor"]["restarts"] == 1
               and live.system.supervisor.all_up(), 15)


# Error paths ---------------------------------------------------------------------


def test_bad_position_requests_are_400_and_store_nothing(live: Harness, client: Client) -> None:
    bodies = [{**LONG, "quantity": 0}, {**LONG, "stop_loss": 580.0},
              {**LONG, "stop_loss": None, "take_profit": None}, {**LONG, "leverage": 3}, [LONG]]
    for body in bodies:
        assert_error(client.call("POST", "/api/v1/positions", body), 400)
    assert_error(client.call("POST", "/api/v1/positions", data=b'{"symbol": NaN}'), 400, "JSON")
    assert_error(client.call("POST", "/api/v1/positions", data=json.dumps(LONG).encode(),
                             headers={"Content-Type": "text/plain"}), 400, "Content-Type")
    assert client.call("GET", "/api/v1/positions").json() == {"positions": []}


def test_a_second_position_for_a_symbol_is_409(client: Client) -> None:
    assert client.call("POST", "/api/v1/positions", LONG).status == 201
    assert_error(client.call("POST", "/api/v1/positions", {**LONG, "quantity": 1}), 409)
    [only] = client.call("GET", "/api/v1/positions").json()["positions"]
    assert only["quantity"] == 2


def test_patch_errors(client: Client) -> None:
    assert_error(client.call("PATCH", "/api/v1/positions/NOSUCH", {"stop_loss": 1.0}), 404)
    client.call("POST", "/api/v1/positions", LONG)
    assert_error(client.call("PATCH", "/api/v1/positions/BOSCHLTD", {"stop_loss": 590.0}),
                 400, "stop_loss")
    assert_error(client.call("PATCH", "/api/v1/positions/BOSCHLTD", {}), 400)
    assert_error(client.call("PATCH", "/api/v1/positions/bad%20symbol", {"stop_loss": 1.0}),
                 400, "symbol")


def test_close_errors(live: Harness, client: Client) -> None:
    path = "/api/v1/monitoring/emergency-close-position"
    assert_error(client.call("POST", path, {"symbol": "NOSUCH"}), 404)
    client.call("POST", "/api/v1/positions", LONG)
    assert_error(client.call("POST", path, {"symbol": "BOSCHLTD", "reason": "blind"}), 400)
    assert_error(client.call("POST", path, {}), 400, "symbol")
    # No price has ever been seen: the paper broker cannot fill, every retry fails.
    assert_error(client.call("POST", path, {"symbol": "BOSCHLTD"}), 502, "broker")
    [failed] = client.call("GET", "/api/v1/positions").json()["positions"]
    assert failed["state"] == "close_failed" and failed["exit_price"] is None


def test_a_close_under_way_is_409_for_a_second_close_and_404_for_a_patch(
    live: Harness, client: Client
) -> None:
    client.call("POST", "/api/v1/positions", LONG)
    wait_until(lambda: feed_ready(live, "BOSCHLTD"), 10)
    live.exchange.send_tick("BOSCHLTD", 580.0)
    wait_until(lambda: price_known(live, "BOSCHLTD", 580.0), 5)
    at_broker, release = threading.Event(), threading.Event()

    def hold(order: CloseOrder, arrived: float) -> None:
        at_broker.set()
        release.wait(10)

    live.system.services.broker.on_order = hold  # type: ignore[attr-defined]
    path = "/api/v1/monitoring/emergency-close-position"
    first: list[Answer] = []
    closing = threading.Thread(target=lambda: first.append(
        client.call("POST", path, {"symbol": "BOSCHLTD"})))
    closing.start()
    try:
        assert at_broker.wait(10), "the close never reached the broker"
        assert_error(client.call("POST", path, {"symbol": "BOSCHLTD"}), 409)
        assert_error(client.call("PATCH", "/api/v1/positions/BOSCHLTD", {"stop_loss": 570.0}),
                     404)
    finally:
        release.set()
        closing.join(15)
    assert first[0].status == 200 and first[0].json()["exit_price"] == 580.0


def test_bad_faults_are_400(client: Client) -> None:
    path = "/api/v1/debug/fault"
    assert_error(client.call("POST", path, {"actor": "NoSuchActor", "kind": "crash"}), 400)
    assert_error(client.call("POST", path, {"actor": "CacheActor", "kind": "explode"}), 400)


def test_the_fault_endpoint_is_404_unless_enabled(tmp_path: Path) -> None:
    with running(tmp_path, debug={"fault_injection": False}) as h:
        client = Client(h.system.api_port)
        body = {"actor": "CacheActor", "kind": "crash"}
        assert_error(client.call("POST", "/api/v1/debug/fault", body), 404, "fault_injection")
        assert h.system.supervisor.status()["CacheActor"]["restarts"] == 0


def test_routing_errors_stay_json_through_waitress(client: Client) -> None:
    """The routing table itself is tests/test_web_api.py's; here only that waitress keeps
    the app's JSON body and its Allow header."""
    assert_error(client.call("GET", "/api/v1/nowhere"), 404)
    answer = client.call("DELETE", "/api/v1/positions")
    assert_error(answer, 405)
    assert {"GET", "POST"} <= set(answer.headers["Allow"].split(", "))


# Bodies: 64 KiB, however they are framed -------------------------------------------------

POSITIONS = "/api/v1/positions"


def test_a_body_of_exactly_64_kib_is_read_with_or_without_chunking(live: Harness) -> None:
    port = live.system.api_port
    data = padded(LONG, MAX_BODY_BYTES)
    by_length = raw(port, request_head("POST", POSITIONS, f"Content-Length: {len(data)}") + data)
    assert by_length.status == 201, by_length.text
    other = padded({**LONG, "symbol": "INFY"}, MAX_BODY_BYTES)
    by_chunks = raw(port, request_head("POST", POSITIONS, "Transfer-Encoding: chunked"),
                    chunked(other))
    assert by_chunks.status == 201, by_chunks.text


def test_a_body_over_64_kib_is_413_json_with_a_length(live: Harness) -> None:
    data = padded(LONG, MAX_BODY_BYTES + 1)
    answer = raw(live.system.api_port,
                 request_head("POST", POSITIONS, f"Content-Length: {len(data)}") + data)
    assert_error(answer, 413)
    assert live.system.services.store.live_positions() == []


def test_a_chunked_body_over_64_kib_is_413_json(live: Harness) -> None:
    # No Content-Length: waitress joins the chunks, then the app sees the size.
    data = padded(LONG, MAX_BODY_BYTES + 4096)
    answer = raw(live.system.api_port,
                 request_head("POST", POSITIONS, "Transfer-Encoding: chunked"), chunked(data))
    assert_error(answer, 413)
    assert live.system.services.store.live_positions() == []


def test_a_huge_body_is_refused_before_it_is_sent(live: Harness) -> None:
    # Only the head goes out: waitress must answer from the declared length alone,
    # not wait for (and buffer) ten megabytes.
    answer = raw(live.system.api_port,
                 request_head("POST", POSITIONS, "Content-Length: 10485760"))
    assert_error(answer, 413)


def test_a_chunked_body_is_cut_off_at_the_wire_limit(live: Harness) -> None:
    # Chunks that never end: the server stops reading at its limit and answers.
    endless = (b"1000\r\n" + b" " * 4096 + b"\r\n" for _ in range(WIRE_BODY_LIMIT // 4096 + 8))
    answer = raw(live.system.api_port,
                 request_head("POST", POSITIONS, "Transfer-Encoding: chunked"), endless)
    assert_error(answer, 413)


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (b"Bad Header Line\r\n\r\n", 400),
        (b"Transfer-Encoding: gzip\r\n\r\n", 501),
        (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"X-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431),
    ],
    ids=["malformed-header", "unknown-encoding", "bad-chunk-size", "header-too-large"],
)
def test_requests_waitress_refuses_itself_are_json(live: Harness, extra: bytes,
                                                   code: int) -> None:
    head = b"POST /api/v1/positions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra
    assert_error(raw(live.system.api_port, head), code)


# Auth ------------------------------------------------------------------------------


def test_every_write_needs_the_token(live: Harness, client: Client) -> None:
    for method, path, body in WRITES:
        for token in (None, "wrong-token", API_TOKEN + "x", API_TOKEN[:-1]):
            answer = client.call(method, path, body, token=token)
            assert_error(answer, 401, "token")
            assert answer.headers["WWW-Authenticate"] == "Bearer"
        basic = client.call(method, path, body, headers={"Authorization": f"Basic {API_TOKEN}"})
        assert_error(basic, 401)
    assert live.system.services.store.positions() == []
    assert live.system.supervisor.status()["CacheActor"]["restarts"] == 0


def test_reads_are_open_on_loopback_and_need_the_token_when_protected(
    live: Harness, client: Client
) -> None:
    client.call("POST", "/api/v1/positions", LONG)
    for path in READS:
        assert client.call("GET", path, token=None).status == 200, path
    # What api.host = 0.0.0.0 sets (tests/test_run_refusals.py starts one for real);
    # here the server stays on loopback.
    live.system.guard.protect_reads = True
    for path in READS:
        assert_error(client.call("GET", path, token=None), 401)
        assert_error(client.call("GET", path, token="wrong-token"), 401)
        assert client.call("GET", path).status == 200, path
    for path in OPEN_PATHS:
        assert client.call("GET", path, token=None).status == 200, path
    page = client.call("GET", "/", token=None).text
    assert "BOSCHLTD" not in page and 'data-loaded="empty"' in page


def test_healthz_is_503_while_an_actor_is_hung_then_200_after_its_restart(
    tmp_path: Path,
) -> None:
    # A one-second restart backoff keeps the hung actor's gap wide enough to see.
    slow_restart = {"restart_backoff_min": 1.0, "restart_backoff_max": 1.0}
    with running(tmp_path, supervisor=slow_restart) as h:
        client = Client(h.system.api_port)
        assert client.call("GET", "/healthz").status == 200
        hang = client.call("POST", "/api/v1/debug/fault", {"actor": "MonitorActor",
                                                           "kind": "hang"})
        assert hang.status == 202
        wait_until(lambda: client.call("GET", "/healthz").status == 503, 15, interval=0.02,
                   message="/healthz never said 503 while MonitorActor was hung")
        degraded = client.answers[-1].json()
        assert degraded == {"status": "degraded", "down": ["MonitorActor"]}
        wait_until(lambda: client.call("GET", "/healthz").status == 200, 15)
        assert h.system.supervisor.status()["MonitorActor"]["restarts"] == 1


# Secrets -------------------------------------------------------------------------------


def test_no_secret_in_any_answer_or_log_line(
    live: Harness, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert live.telegram is not None
    live.telegram.fail_next(2, status=401)  # a refused bot token is the riskiest error text
    client.call("POST", "/api/v1/positions", LONG)
    wait_until(lambda: feed_ready(live, "BOSCHLTD"), 10)
    live.exchange.send_tick("BOSCHLTD", 578.0)
    wait_until(lambda: price_known(live, "BOSCHLTD", 578.0), 5)
    for token in (API_TOKEN, None, "wrong-token", API_TOKEN + "x"):
        for method, path, body in WRITES[1:3]:
            client.call(method, path, body, token=token)
        for path in READS + OPEN_PATHS + ["/api/v1/nowhere", f"/api/v1/nowhere?t={API_TOKEN}"]:
            client.call("GET", path, token=token)
    client.call("POST", "/api/v1/debug/fault", {"actor": "NotifierActor", "kind": "crash"})
    wait_until(lambda: live.system.supervisor.status()["NotifierActor"]["restarts"] == 1, 15)
    wait_until(lambda: live.telegram is not None and live.telegram.requests >= 3, 15)
    client.call("GET", "/api/v1/status")
    client.call("GET", "/api/v1/monitoring/connection-health")

    assert len(client.answers) > 40 and caplog.records
    for answer in client.answers:
        for secret in SECRETS:
            assert secret not in answer.text and secret not in str(answer.headers)
    for record in caplog.records:
        for secret in SECRETS:
            assert secret not in record.getMessage(), f"{record.name}: {record.getMessage()}"
    for secret in SECRETS:
        assert secret not in caplog.text  # formatted, tracebacks included


# Findings: slow closes and a dead serving thread ---------------------------------------------


def quick_get(port: int, path: str) -> int:
    """The status of a GET that must answer within 3 s (a monitor's patience)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_c5_reads_keep_answering_while_four_closes_wait_on_the_broker(tmp_path: Path) -> None:
    """C5: four emergency closes held by a hung broker leave /healthz, /metrics and / alive."""
    broker = BrokerServer(BROKER_SIM_TOKEN).start()
    broker.hang()
    try:
        with running(tmp_path, broker_section={"kind": "http", "url": broker.url,
                                               "token": BROKER_SIM_TOKEN, "timeout": 20.0},
                     monitor={"max_close_retries": 0}) as h:
            symbols = ["AAA", "BBB", "CCC", "DDD", "EEE"]
            for symbol in symbols:
                h.open_long(symbol, 100.0, 90.0)
            client = Client(h.system.api_port)
            closes = [threading.Thread(target=client.call, args=(
                "POST", "/api/v1/monitoring/emergency-close-position", {"symbol": s}))
                for s in symbols[:4]]
            for thread in closes:
                thread.start()
            wait_until(lambda: sum(1 for p in h.system.services.store.live_positions()
                                   if p.state == "closing") == 4, 10)
            for path in ("/healthz", "/metrics", "/", "/api/v1/positions"):
                assert quick_get(h.system.api_port, path) == 200, path
            fifth = client.call("POST", "/api/v1/monitoring/emergency-close-position",
                                {"symbol": "EEE"})
            assert_error(fifth, 503, "under way")
            broker.hang(False)
            for thread in closes:
                thread.join(30)
            assert not any(thread.is_alive() for thread in closes)
    finally:
        broker.stop()


class Bomb:
    """An entry in waitress's socket map whose first poll raises, as a loop bug would."""

    def readable(self) -> bool:
        raise RuntimeError("injected: the serving loop broke")

    writable = readable

    def close(self) -> None:
        """The listener closes every entry when the loop ends."""


def test_c6_a_dead_serving_thread_restarts_the_api_actor(live: Harness) -> None:
    """C6: if the HTTP loop dies, ApiActor dies with it and the supervisor restarts it."""
    ref = pykka.ActorRegistry.get_by_class_name("ApiActor")[0]
    listener = ref.proxy().listener.get()
    listener.socket_map[-1] = Bomb()
    wait_until(lambda: live.system.supervisor.status()["ApiActor"]["restarts"] == 1, 10,
               message="ApiActor was not restarted")
    assert "serving thread died" in live.system.supervisor.status()["ApiActor"]["last_failure"]
    assert live.system.wait_started(10)
    assert quick_get(live.system.api_port, "/healthz") == 200


def test_d2_waitress_passes_the_host_header_to_the_allow_list(live: Harness) -> None:
    """D2 on the wire: a rebound name is refused, loopback spelled any way is answered."""
    port = live.system.api_port
    for host, code in (("evil.example", 421), (f"127.0.0.1:{port}", 200),
                       (f"localhost:{port}", 200), (f"[::1]:{port}", 200)):
        head = f"GET /api/v1/positions HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        answer = raw(port, head.encode())
        assert answer.status == code, (host, answer.text)
        if code == 421:
            assert_error(answer, 421, "host")
