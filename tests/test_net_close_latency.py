"""A8, measured: during the seed incident a second close reaches a broker that is up at once.

The incident: the system resolver hangs and UDP/53 is filtered. Before, every
close attempt ran the whole ladder (head start, then `dns.timeout` for the
fallbacks, then serve-stale): about 5.2 s with the default settings, per
attempt, plus a new TCP (and TLS) connection. Now the answer is cached for
its TTL and the connection is kept alive, so neither the resolver nor a
handshake stands between the breach and its order. The tests assert the
mechanism (nobody asked, the same connection carried the order) and print the
figure, which is not asserted: a loaded CI machine must not make them flaky.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tradeguard.brokers import CloseOrder, HttpBroker
from tradeguard.net.http import HttpClient
from tradeguard.net.resolver import MAX_TTL, Resolver
from tradeguard.sim.broker_server import BrokerServer
from tradeguard.sim.dns_server import DnsServer
from tradeguard.store import Store

logger = logging.getLogger(__name__)

HOST = "broker.tradeguard.test"
TOKEN = "brk-s3cret-Zq9x7Lw2"
DEFAULT_HEAD_START, DEFAULT_TIMEOUT = 0.2, 5.0  # config.py's dns defaults


class HangingSystem:
    """The host's resolver during the incident: every lookup blocks until teardown."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, host: str) -> list[str]:
        self.calls += 1
        self.release.wait(timeout=30)
        raise OSError("released at teardown")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Resolver, DnsServer, HangingSystem, BrokerServer,
                                             Clock]]:
    system, clock = HangingSystem(), Clock()
    dns = DnsServer().start()
    dns.set_record(HOST, ["127.0.0.1"], ttl=60)
    store = Store(tmp_path / "t.db")
    resolver = Resolver([dns.address], DEFAULT_TIMEOUT, DEFAULT_HEAD_START, True,
                        memory=store, system=system, clock=clock)
    broker = BrokerServer(TOKEN, keep_alive=True).start()
    yield resolver, dns, system, broker, clock
    system.release.set()
    broker.stop()
    resolver.close()
    dns.stop()
    store.close()


def close_order(cid: str) -> CloseOrder:
    return CloseOrder(cid, "BOSCHLTD", "sell", 2.0, "stop_loss")


def report(what: str, seconds: float) -> None:
    line = (f"[A8] {what}: {seconds * 1000:.1f} ms (the old ladder: "
            f"~{(DEFAULT_HEAD_START + DEFAULT_TIMEOUT) * 1000:.0f} ms of DNS per attempt)")
    logger.warning("%s", line)
    print(line)


def test_a8_a_second_close_through_http_broker_does_not_wait_for_dns(world) -> None:
    """A8: with the system resolver hung and DNS filtered, the next order skips the ladder."""
    resolver, dns, system, broker, _ = world
    http_broker = HttpBroker(f"http://{HOST}:{broker.port}", TOKEN, 2.0, resolver)
    http_broker.place(close_order("tg-1"))  # resolved by the fallback after the head start
    dns.mode = "silent"  # UDP/53 filtered from here on
    calls, queries = system.calls, dns.queries

    started = time.monotonic()
    fill = http_broker.place(close_order("tg-2"))
    elapsed = time.monotonic() - started

    assert fill.fill_price > 0 and "tg-2" in broker.orders
    assert (system.calls, dns.queries) == (calls, queries)  # the resolver asked nobody
    report("second close through HttpBroker (cached answer)", elapsed)


def test_a8_a_kept_alive_connection_carries_the_order_after_the_ttl_too(world) -> None:
    """A8: past every TTL, the order still goes out at once on the kept-alive connection."""
    resolver, dns, system, broker, clock = world
    client = HttpClient(resolver, timeout=2.0)
    url = f"http://{HOST}:{broker.port}/orders"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"client_order_id": "tg-1", "symbol": "BOSCHLTD", "side": "sell", "quantity": 2,
            "type": "market", "reason": "stop_loss"}
    assert client.request_json("POST", url, body=body, headers=auth).status == 200
    dns.mode = "silent"
    clock.now += MAX_TTL + 1  # no cached answer left: only the connection can help
    calls, queries = system.calls, dns.queries

    started = time.monotonic()
    resp = client.request_json("POST", url, body={**body, "client_order_id": "tg-2"},
                               headers=auth, idempotent=True)
    elapsed = time.monotonic() - started
    client.close()

    assert resp.status == 200 and broker.order_count == 2
    assert client.connections_opened == 1  # the same TCP connection
    assert (system.calls, dns.queries) == (calls, queries)
    report("second close through HttpClient (kept-alive connection)", elapsed)
