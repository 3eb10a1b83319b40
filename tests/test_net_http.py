"""HttpClient against real HTTP(S) servers on loopback: kept-alive, every address, one retry."""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from tradeguard.net.http import HttpClient, request_json
from tradeguard.net.resolver import Resolution
from tradeguard.sim.broker_server import BrokerServer

HOST = "broker.tradeguard.test"
TOKEN = "brk-s3cret-Zq9x7Lw2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEAD = "127.0.0.2"  # nothing listens there: refused at once
ORDER = {"client_order_id": "tg-1", "symbol": "BOSCHLTD", "side": "sell", "quantity": 2,
         "type": "market", "reason": "stop_loss"}


class Ladder:
    """Stands in for the resolver ladder: fixed addresses, and a record of what it was told."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses or ("127.0.0.1",)
        self.asked: list[str] = []
        self.confirmed: list[tuple[str, str]] = []
        self.forgotten: list[str] = []

    def resolve(self, host: str) -> Resolution:
        self.asked.append(host)
        return Resolution(host, self.addresses, "fallback:test")

    def confirm(self, host: str, ip: str) -> None:
        self.confirmed.append((host, ip))

    def forget(self, host: str) -> None:
        self.forgotten.append(host)


class Unanswering(BaseHTTPRequestHandler):
    """Answers the first request of each connection; reads the second and hangs up on it."""

    protocol_version = "HTTP/1.1"
    seen: list[str]

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._handle()

    def _handle(self) -> None:
        self.seen.append(self.command)
        served = getattr(self, "served", 0)  # one handler object per connection
        self.served = served + 1
        if served:
            self.close_connection = True  # as a server that timed the idle connection out
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def broker() -> Iterator[BrokerServer]:
    with BrokerServer(TOKEN, keep_alive=True) as server:
        yield server


@pytest.fixture
def hangs_up() -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (Unanswering,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def client() -> Iterator[Any]:
    made: list[HttpClient] = []

    def make(resolver: Any, **options: Any) -> HttpClient:
        made.append(HttpClient(resolver, timeout=2.0, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_a9_request_json_tries_the_next_address_when_the_first_is_dead(
    broker: BrokerServer,
) -> None:
    """A9: the broker's first A record is down; the order still reaches the broker."""
    ladder = Ladder(DEAD, "127.0.0.1")

    resp = request_json("POST", f"http://{HOST}:{broker.port}/orders", body=ORDER,
                        headers=AUTH, timeout=2.0, resolver=ladder)

    assert resp.status == 200
    assert broker.order_count == 1
    assert ladder.confirmed == [(HOST, "127.0.0.1")]


def test_a_kept_alive_connection_serves_the_next_request_without_the_resolver(
    broker: BrokerServer, client: Any
) -> None:
    ladder = Ladder()
    http = client(ladder)
    url = f"http://{HOST}:{broker.port}/orders"

    for cid in ("tg-1", "tg-2", "tg-3"):
        assert http.request_json("POST", url, body={**ORDER, "client_order_id": cid},
                                 headers=AUTH).status == 200

    assert http.connections_opened == 1
    assert ladder.asked == [HOST]
    assert broker.hosts == [f"{HOST}:{broker.port}"] * 3  # Host on the name, not the IP


def test_no_address_answering_makes_the_resolver_forget_the_answer(
    broker: BrokerServer, client: Any
) -> None:
    ladder = Ladder(DEAD, "127.0.0.3")
    with pytest.raises(ConnectionRefusedError):
        client(ladder).request_json("GET", f"http://{HOST}:{broker.port}/orders/x")
    assert ladder.forgotten == [HOST]
    assert ladder.confirmed == []


def test_a_connection_the_server_closed_while_idle_is_replaced(
    broker: BrokerServer, client: Any
) -> None:
    http = client(Ladder())
    url = f"http://{HOST}:{broker.port}/orders/tg-1"
    assert http.request_json("GET", url, headers=AUTH).status == 404
    broker.down()  # cuts the kept-alive connection, as a restarting backend does
    broker.up()

    assert http.request_json("GET", url, headers=AUTH).status == 404
    assert http.connections_opened == 2


@pytest.mark.parametrize(("method", "idempotent", "retried"), [
    ("GET", None, True), ("POST", True, True), ("POST", None, False),
])
def test_a_dropped_reused_connection_is_retried_once_only_when_safe(
    hangs_up: tuple[int, list[str]], client: Any, method: str, idempotent: bool | None,
    retried: bool,
) -> None:
    port, seen = hangs_up
    http = client(Ladder())
    url = f"http://{HOST}:{port}/x"
    body = {} if method == "POST" else None
    assert http.request_json(method, url, body=body).status == 200

    if retried:
        assert http.request_json(method, url, body=body, idempotent=idempotent).status == 200
        assert http.connections_opened == 2
    else:  # a Telegram message sent twice is delivered twice
        with pytest.raises(http_client_dropped()):
            http.request_json(method, url, body=body, idempotent=idempotent)
    assert len(seen) == (3 if retried else 2)


def http_client_dropped() -> tuple[type[BaseException], ...]:
    return (http.client.RemoteDisconnected, ConnectionError)


def test_concurrent_requests_each_get_a_connection_of_their_own(
    broker: BrokerServer, client: Any
) -> None:
    http = client(Ladder())
    url = f"http://{HOST}:{broker.port}/orders"
    broker.slow(0.2)  # every request is in flight at the same time
    results: list[int] = []

    def send(cid: str) -> None:
        body = {**ORDER, "client_order_id": cid}
        results.append(http.request_json("POST", url, body=body, headers=AUTH).status)

    threads = [threading.Thread(target=send, args=(f"tg-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    broker.slow(0)

    assert results == [200] * 4
    assert broker.order_count == 4
    opened = http.connections_opened
    assert http.request_json("GET", url + "/tg-0", headers=AUTH).status == 200
    assert http.connections_opened == opened  # the pool kept them


# HTTPS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_https_keeps_one_verified_connection(ca: trustme.CA, tmp_path: Path, client: Any) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(HOST).configure_cert(context)
    with BrokerServer(TOKEN, ssl_context=context, keep_alive=True) as server:
        http = client(Ladder(DEAD, "127.0.0.1"), ca_file=str(ca_file))
        url = f"https://{HOST}:{server.port}/orders/tg-1"
        assert [http.request_json("GET", url, headers=AUTH).status for _ in range(3)] == [404] * 3
        assert http.connections_opened == 1
        assert server.hosts == [f"{HOST}:{server.port}"] * 3
        with pytest.raises(ssl.SSLCertVerificationError):
            client(Ladder()).request_json("GET", url.replace(HOST, "other.tradeguard.test"))
