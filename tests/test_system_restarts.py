"""Every actor, every way it can die: restarted, counted, nothing lost.

The whole service runs on loopback (tests/support/harness.py). For each actor
and death mode, a position is open with a cached price; while the actor is
down an alert is raised, a position is opened and a breach is sent; after the
restart the prices and positions are intact, the alert reaches Telegram, and
the new position's breach closes it exactly once.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest

from tests.support.harness import Harness, running
from tests.support.waiting import wait_until
from tradeguard import alerts
from tradeguard.positions import Position, Side

ACTORS = ["FeedActor", "DnsHealthActor", "CacheActor", "MonitorActor", "NotifierActor",
          "ApiActor"]
MODES = ["crash", "hang", "start"]


def restarted(h: Harness, actor: str, times: int = 1) -> bool:
    status = h.system.supervisor.status()[actor]
    return status["restarts"] >= times and h.system.supervisor.all_up()


def feed_ready(h: Harness, symbol: str) -> bool:
    return h.system.services.feed_status.connected and any(
        symbol in s for s in h.exchange.subscriptions)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("actor", ACTORS)
def test_actor_death_loses_nothing(tmp_path: Path, actor: str, mode: str) -> None:
    with running(tmp_path, telegram=True) as h:
        services = h.system.services
        h.open_long("AAA", 100.0, 90.0)
        wait_until(lambda: feed_ready(h, "AAA"), 10)
        h.exchange.send_tick("AAA", 101.0)
        wait_until(lambda: services.cache.quote("AAA", 0) is not None, 5)

        h.system.inject_fault(actor, mode)
        # During the gap (or the hang, before it is noticed): an alert, a new position.
        services.alerts.alert(alerts.feed_lost("during-the-gap.test", "test"))
        status, body = h.call("POST", "/api/v1/positions", {
            "symbol": "BBB", "side": "long", "quantity": 5, "entry_price": 50.0,
            "stop_loss": 45.0, "take_profit": None}) if actor != "ApiActor" else (None, None)
        if actor == "ApiActor":
            h.system.guard.open_position(Position("BBB", Side.LONG, 5, 50.0, 45.0, None))
        else:
            assert status == 201, body

        wait_until(lambda: restarted(h, actor), 15,
                   message=f"{actor} not restarted: {h.system.supervisor.status()[actor]}")
        assert services.metrics.registry.get_sample_value(
            "tradeguard_actor_restarts_total", {"actor": actor}) >= 1

        # State intact: the cached price and both positions.
        assert services.cache.quote("AAA", 0) is not None
        assert {p.symbol for p in services.store.live_positions()} == {"AAA", "BBB"}

        # The alert raised during the gap is delivered.
        assert h.telegram is not None
        wait_until(lambda: any("during-the-gap.test" in text
                               for _, text in h.telegram.messages), 15)

        # The position opened during the gap is monitored: its breach closes it, once.
        wait_until(lambda: feed_ready(h, "BBB"), 15)
        h.exchange.send_ticks([("BBB", 49.0), ("BBB", 44.0), ("BBB", 49.0)])
        wait_until(lambda: h.position("BBB").state.value == "closed", 10)
        assert h.system.services.broker.orders.count(h.position("BBB").client_order_id) == 1
        assert h.call("GET", "/healthz", token=None)[0] == 200


def test_crash_to_recovered_over_100_crashes(tmp_path: Path) -> None:
    """Measured for the notes: how long the tree is missing a child after a crash."""
    with running(tmp_path, supervisor={"max_restarts": 1000, "within_seconds": 30,
                                       "restart_backoff_min": 0.01,
                                       "restart_backoff_max": 0.01}) as h:
        actors = ["CacheActor", "MonitorActor", "NotifierActor", "FeedActor", "DnsHealthActor"]
        times = []
        for i in range(100):
            actor = actors[i % len(actors)]
            before = h.system.supervisor.status()[actor]["restarts"]
            started = time.monotonic()
            h.system.inject_fault(actor, "crash")
            wait_until(lambda a=actor, b=before: h.system.supervisor.status()[a]["restarts"] > b
                       and h.system.supervisor.all_up(), 10)
            times.append(time.monotonic() - started)
        median = statistics.median(times) * 1000
        print(f"\ncrash-to-recovered over 100 crashes: median {median:.1f} ms,"
              f" worst {max(times)*1000:.1f} ms")
        assert not h.system.supervisor.gave_up.is_set()


def test_many_http_clients_while_children_crash(tmp_path: Path) -> None:
    """No deadlock: every request is answered while actors die under it."""
    with running(tmp_path) as h:
        h.open_long("AAA", 100.0, 90.0)
        answers: list[int] = []
        lock = threading.Lock()

        def client(n: int) -> None:
            for i in range(15):
                path = ["/api/v1/monitoring/connection-health", "/api/v1/positions",
                        "/healthz", "/metrics"][(n + i) % 4]
                try:
                    status = h.call("GET", path)[0] if path != "/metrics" else 200
                except OSError:
                    status = -1
                with lock:
                    answers.append(status)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
        for t in threads:
            t.start()
        for i in range(8):
            h.system.inject_fault(["CacheActor", "MonitorActor", "FeedActor",
                                   "NotifierActor"][i % 4], "crash")
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a request never returned"
        assert len(answers) == 150 and set(answers) <= {200, 503}
        wait_until(h.system.supervisor.all_up, 10)


def test_a_hung_monitors_close_workers_leave_when_it_is_replaced(tmp_path: Path) -> None:
    """Chaos RSS growth: a hung actor never runs its teardown, so its idle close workers
    lived on (one pool per hang). Fencing it now shuts its pool down from the supervisor."""
    with running(tmp_path) as h:
        h.open_long("AAA", 100.0, 90.0)
        wait_until(lambda: feed_ready(h, "AAA"), 10)
        h.exchange.send_tick("AAA", 89.0)  # a close: the monitor's pool starts a worker
        wait_until(lambda: h.system.services.store.live_position("AAA") is None, 10)
        workers = [t for t in threading.enumerate() if t.name.startswith("close")]
        assert workers, "the close ran on one of the monitor's own workers"

        h.system.inject_fault("MonitorActor", "hang")
        wait_until(lambda: restarted(h, "MonitorActor"), 15)
        wait_until(lambda: not any(t.is_alive() for t in workers), 10,
                   message="the hung incarnation's close workers are still alive")


@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_requests_made_while_the_api_actor_restarts_are_answered(tmp_path: Path,
                                                                 mode: str) -> None:
    """Chaos found API requests refused while ApiActor was replaced. The listening socket
    now outlives the incarnation: a request made in the gap waits and is answered."""
    with running(tmp_path) as h:
        answers: list[int] = []
        errors: list[str] = []
        done = threading.Event()

        def ask_forever() -> None:
            while not done.is_set():
                try:
                    status, _ = h.call("GET", "/api/v1/positions")
                    answers.append(status)
                except OSError as exc:
                    errors.append(repr(exc))

        asker = threading.Thread(target=ask_forever)
        asker.start()
        wait_until(lambda: len(answers) >= 5, 10)
        h.system.inject_fault("ApiActor", mode)
        wait_until(lambda: restarted(h, "ApiActor"), 20)
        count = len(answers)
        wait_until(lambda: len(answers) > count + 5, 10)  # the new incarnation answers
        done.set()
        asker.join(30)
        assert errors == [], errors[:3]
        assert set(answers) == {200}
