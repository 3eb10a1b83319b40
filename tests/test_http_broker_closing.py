"""Closing positions through the HTTP broker, on the running service.

The broker is a real BrokerServer on loopback, reached by name
(broker.tradeguard.test) through the System's own resolver ladder: the
harness's system resolver fails, so the name resolves through the fallback DNS
server, which learns the record once the harness is up. The HttpBroker is built
here rather than from a [broker] config section because `running()` takes a
`broker` argument of its own; it is bound to the System's resolver at start.
"""

from __future__ import annotations

import functools
import math
import operator
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.harness import Harness, running
from tests.support.waiting import wait_until
from tradeguard.brokers import HttpBroker, PaperBroker
from tradeguard.net.http import Resolves
from tradeguard.net.resolver import Resolution
from tradeguard.sim.broker_server import BrokerServer

BROKER_HOST = "broker.tradeguard.test"
BROKER_TOKEN = "broker-token-SECRET-42"
FILL = 88.0


class SystemResolver:
    """The running System's resolver, which exists only once the System does."""

    def __init__(self) -> None:
        self.target: Resolves | None = None

    def resolve(self, host: str) -> Resolution:
        assert self.target is not None, "bound before the first close"
        return self.target.resolve(host)


@contextmanager
def with_http_broker(tmp_path: Path) -> Iterator[tuple[Harness, BrokerServer]]:
    server = BrokerServer(BROKER_TOKEN, price_for=lambda symbol: FILL).start()
    resolver = SystemResolver()
    broker = HttpBroker(f"http://{BROKER_HOST}:{server.port}", BROKER_TOKEN, 2.0, resolver)
    try:
        with running(tmp_path, telegram=True, broker=broker) as h:
            h.dns.set_record(BROKER_HOST, ["127.0.0.1"])
            resolver.target = h.system.services.resolver
            yield h, server
    finally:
        server.stop()


def ready(h: Harness, symbol: str) -> None:
    wait_until(lambda: h.system.services.feed_status.connected and any(
        symbol in s for s in h.exchange.subscriptions), 10)


def state(h: Harness, symbol: str) -> str:
    return str(h.position(symbol).state.value)


def phone(h: Harness) -> list[str]:
    assert h.telegram is not None
    return [text for _, text in h.telegram.messages]


def posts(server: BrokerServer) -> int:
    """Orders sent (a GET /positions comes before the first; this broker answers it 404)."""
    return server.calls.count("POST /orders")


def failed_alerts(h: Harness) -> list[str]:
    """Symbols of the close-failed alerts on the phone, sorted.

    Criticals of one kind that are pending together arrive as one message, the
    others' headlines under "Also:", so every line of every message counts.
    """
    suffix = ": close FAILED after 4 attempts"
    return sorted(line.removeprefix("CRITICAL: ").removesuffix(suffix)
                  for text in phone(h) for line in text.split("\n") if line.endswith(suffix))


def test_500s_then_success_is_one_order(tmp_path: Path) -> None:
    with with_http_broker(tmp_path) as (h, server):
        h.open_long("AAA", 100.0, 90.0)
        ready(h, "AAA")
        server.fail_next(2, status=500)
        h.exchange.send_ticks([("AAA", 95.0), ("AAA", 89.0), ("AAA", 95.0)])
        wait_until(lambda: state(h, "AAA") == "closed", 10)
        position = h.position("AAA")
        assert server.order_count == 1 and server.requests == 4  # 2 x 500, GET /positions 404, POST
        order = server.orders[position.client_order_id]
        assert order["side"] == "sell" and order["reason"] == "stop_loss"
        assert position.order_id == order["order_id"] and position.exit_price == FILL
        assert position.close_attempts == 2
        assert set(server.hosts) == {f"{BROKER_HOST}:{server.port}"}  # reached by name
        wait_until(lambda: any(t.startswith("AAA: position closed (stop-loss)")
                               for t in phone(h)), 10)


def test_broker_down_past_the_retries_then_closed_when_back(tmp_path: Path) -> None:
    with with_http_broker(tmp_path) as (h, server):
        h.open_long("AAA", 100.0, 90.0)
        h.open_long("BBB", 50.0, 45.0)
        ready(h, "AAA")
        server.down()
        h.exchange.send_tick("AAA", 89.0)
        status, body = h.call("POST", "/api/v1/monitoring/emergency-close-position",
                              {"symbol": "BBB"})
        assert status == 502, body
        wait_until(lambda: failed_alerts(h) == ["AAA", "BBB"], 10)
        # The sweep keeps trying (each cycle is 4 attempts), and raises no new alert.
        wait_until(lambda: h.position("AAA").close_attempts >= 8, 15)
        assert {state(h, "AAA"), state(h, "BBB")} <= {"close_failed", "closing"}
        assert server.order_count == 0

        server.up()
        wait_until(lambda: state(h, "AAA") == state(h, "BBB") == "closed", 20)
        assert server.order_count == 2
        assert {h.position(s).client_order_id for s in ("AAA", "BBB")} == set(server.orders)
        wait_until(lambda: sum("position closed" in t for t in phone(h)) == 2, 10)
        assert failed_alerts(h) == ["AAA", "BBB"]  # one per position, not one per retry


def test_twenty_threads_closing_one_position(tmp_path: Path) -> None:
    with with_http_broker(tmp_path) as (h, server):
        h.open_long("RACE", 100.0, 90.0)
        server.slow(0.3)  # the winner's order is in flight while the others arrive
        barrier = threading.Barrier(20)
        answers: list[tuple[int, Any]] = []
        lock = threading.Lock()

        def close() -> None:
            barrier.wait()
            answer = h.call("POST", "/api/v1/monitoring/emergency-close-position",
                            {"symbol": "RACE"})
            with lock:
                answers.append(answer)

        threads = [threading.Thread(target=close) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        codes = [status for status, _ in answers]
        assert len(codes) == 20 and codes.count(200) == 1, codes
        assert set(codes) <= {200, 404, 409}, codes
        assert server.order_count == 1 and posts(server) == 1
        winner = next(body for status, body in answers if status == 200)
        assert winner["client_order_id"] == h.position("RACE").client_order_id
        assert state(h, "RACE") == "closed"


def test_breach_tick_to_order_latency(tmp_path: Path) -> None:
    arrivals: dict[str, float] = {}
    broker = PaperBroker(lambda symbol: None, max_age=math.inf)
    broker.on_order = lambda order, at: arrivals.__setitem__(order.symbol, at)
    with running(tmp_path, broker=broker) as h:
        symbols = [f"LAT{i}" for i in range(5)]
        for symbol in symbols:
            h.open_long(symbol, 100.0, 90.0)
        for symbol in symbols:
            ready(h, symbol)
        latencies = []
        for symbol in symbols:
            frame = [(symbol, 99.0)] * 20 + [(symbol, 89.0)]
            sent = time.monotonic()
            h.exchange.send_ticks(frame)
            wait_until(functools.partial(operator.contains, arrivals, symbol), 10)
            latencies.append((arrivals[symbol] - sent) * 1000)
        print(f"\ntick-to-order latency (paper broker, {len(latencies)} breaches): "
              f"min {min(latencies):.1f} ms, median {statistics.median(latencies):.1f} ms, "
              f"max {max(latencies):.1f} ms")
        assert all(lat > 0 for lat in latencies)
        assert broker.orders == [h.position(s).client_order_id for s in symbols]


def test_a_rejected_close_is_closed_later_under_a_new_id(tmp_path: Path) -> None:
    """A2: a 'rejected' close (a lower circuit) is not stuck: the sweep's round sends a new id."""
    with with_http_broker(tmp_path) as (h, server):
        h.open_long("AAA", 100.0, 90.0)
        server.reject_next(1)
        status, body = h.call("POST", "/api/v1/monitoring/emergency-close-position",
                              {"symbol": "AAA"})
        assert status == 502, body
        assert state(h, "AAA") == "close_failed"
        wait_until(lambda: state(h, "AAA") == "closed", 15)
        rejected, filled = server.orders.values()
        assert (rejected["status"], filled["status"]) == ("rejected", "filled")
        assert rejected["client_order_id"] != filled["client_order_id"]
        assert h.position("AAA").client_order_id == filled["client_order_id"]
        wait_until(lambda: any("position closed" in t for t in phone(h)), 10)
        assert sum("close FAILED" in t for t in phone(h)) == 1


def test_a_position_closed_by_hand_at_the_broker_is_never_reversed(tmp_path: Path) -> None:
    """A1: the broker serves GET /positions and holds nothing: no order, closed_at_broker."""
    with with_http_broker(tmp_path) as (h, server):
        server.hold("AAA", "long", 10)
        h.open_long("AAA", 100.0, 90.0, quantity=10)
        ready(h, "AAA")
        server.close_by_hand("AAA")
        h.exchange.send_tick("AAA", 89.0)
        wait_until(lambda: state(h, "AAA") == "closed", 10)
        position = h.position("AAA")
        assert (position.reason, position.exit_price) == ("closed_at_broker", None)
        assert server.order_count == 0 and server.held("AAA") == 0
        wait_until(lambda: any("already closed at the broker" in t for t in phone(h)), 10)


def test_an_emergency_close_racing_a_stop_sends_one_order(tmp_path: Path) -> None:
    """A3: the monitor's 409 leaves the API's close alone: one POST, no lookup, closed."""
    with with_http_broker(tmp_path) as (h, server):
        h.open_long("AAA", 100.0, 90.0)
        ready(h, "AAA")
        server.slow(0.5)
        answers: list[tuple[int, Any]] = []
        api = threading.Thread(target=lambda: answers.append(h.call(
            "POST", "/api/v1/monitoring/emergency-close-position", {"symbol": "AAA"})))
        api.start()
        wait_until(lambda: server.order_count == 1, 10)
        h.exchange.send_ticks([("AAA", 89.0)] * 3)  # the stop fires while the order is out
        api.join(15)
        assert answers and answers[0][0] == 200, answers
        wait_until(lambda: any("position closed" in t for t in phone(h)), 10)
        time.sleep(0.3)  # let a wrong reconcile show itself
        assert [c for c in server.calls if "/orders" in c] == ["POST /orders"]
        assert state(h, "AAA") == "closed"
        assert sum("position closed" in t for t in phone(h)) == 1
