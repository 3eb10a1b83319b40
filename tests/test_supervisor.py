"""The supervisor on its own, with small real Pykka actors: every way a child dies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pykka
import pytest

from actors.base import ChildContext, GuardActor
from actors.services import Faults
from actors.supervisor import ChildSpec, Restart, Supervisor
from tests.support.waiting import wait_until
from tradeguard.config import SupervisorConfig


class Recorder(GuardActor):
    """Keeps what it was told in a list that outlives incarnations (like the store)."""

    def setup(self) -> None:
        shared = self.services.shared
        shared.starts.append(self.ctx.incarnation)
        if shared.fail_starts > 0:
            shared.fail_starts -= 1
            raise RuntimeError("on_start failed on purpose")

    def handle(self, message: object) -> object:
        shared = self.services.shared
        if message == "boom":
            raise RuntimeError("handler failed on purpose")
        if message == "incarnation":
            return self.ctx.incarnation
        if isinstance(message, tuple) and message[0] == "slow":
            time.sleep(message[1])
            return "slept"
        shared.received.append(message)
        return len(shared.received)


def make_supervisor(
    cfg: SupervisorConfig, names: tuple[str, ...] = ("A", "B", "C"), **kwargs: Any
) -> tuple[Supervisor, SimpleNamespace]:
    shared = SimpleNamespace(starts=[], received=[], fail_starts=0, stops=[])
    services = SimpleNamespace(shared=shared, shutdown=threading.Event(), handles={},
                               faults=Faults())

    def make_context(name: str, incarnation: int, report: Any, ack: Any) -> ChildContext:
        return ChildContext(name, incarnation, services, report, ack)  # type: ignore[arg-type]

    sup = Supervisor(cfg, make_context, **kwargs)
    for name in names:
        sup.add(ChildSpec(name, Recorder.start, kwargs_restart(name), shutdown_timeout=2.0))
    services.handles = sup.handles
    services.supervisor = sup
    return sup, services


def kwargs_restart(name: str) -> Restart:
    return Restart.TEMPORARY if name == "T" else Restart.PERMANENT


FAST = SupervisorConfig(max_restarts=5, within_seconds=30, restart_backoff_min=0.02,
                        restart_backoff_max=0.2, liveness_interval=0.3, liveness_timeout=0.2)


@pytest.fixture
def system() -> Iterator[tuple[Supervisor, SimpleNamespace]]:
    sup, services = make_supervisor(FAST)
    sup.start()
    yield sup, services
    services.shutdown.set()
    sup.stop()
    pykka.ActorRegistry.stop_all()


def test_children_start_in_order_and_answer(system: Any) -> None:
    sup, _ = system
    assert [sup.handle(n).ask("incarnation", 2.0) for n in "ABC"] == [1, 1, 1]
    wait_until(sup.all_up, 2.0)


def test_handler_failure_is_restarted_and_counted(system: Any) -> None:
    sup, _ = system
    sup.handle("B").tell("boom")
    wait_until(lambda: sup.status()["B"]["restarts"] == 1, 5.0)
    assert sup.handle("B").ask("incarnation", 2.0) == 2
    assert sup.status()["A"]["restarts"] == 0
    assert "handler failed on purpose" in sup.status()["B"]["last_failure"]


def test_on_start_failure_is_restarted() -> None:
    sup, services = make_supervisor(FAST, names=("A",))
    services.shared.fail_starts = 2
    sup.start()
    try:
        wait_until(lambda: sup.status()["A"]["restarts"] == 2 and sup.all_up(), 5.0)
        assert services.shared.starts == [1, 2, 3]
        assert sup.handle("A").ask("incarnation", 2.0) == 3
    finally:
        sup.stop()


def test_hung_child_fails_liveness_and_is_fenced(system: Any) -> None:
    sup, services = system
    sup.inject_fault("C", "hang")
    wait_until(lambda: sup.status()["C"]["restarts"] == 1, 5.0)
    assert "liveness" in sup.status()["C"]["last_failure"]
    assert sup.handle("C").ask("incarnation", 2.0) == 2
    # The hung incarnation is fenced: when it wakes it ignores its mailbox.
    before = len(services.shared.received)
    sup.handle("C").tell("after")
    wait_until(lambda: len(services.shared.received) == before + 1, 2.0)


def test_injected_crash(system: Any) -> None:
    sup, _ = system
    sup.inject_fault("A", "crash")
    wait_until(lambda: sup.status()["A"]["restarts"] == 1 and sup.all_up(), 5.0)


def test_durable_messages_sent_during_the_gap_are_delivered(system: Any) -> None:
    sup, services = system
    handle = sup.handle("B")
    handle.tell("boom")
    for i in range(20):  # some land before the death is noticed, some while it is down
        handle.tell_durable(("alert", i))
    wait_until(lambda: sup.status()["B"]["restarts"] == 1 and sup.all_up(), 5.0)
    wait_until(lambda: handle.pending_count() == 0, 5.0)
    got = [m for m in services.shared.received if isinstance(m, tuple) and m[0] == "alert"]
    assert sorted(set(got)) == [("alert", i) for i in range(20)]


def test_plain_tells_to_a_dead_child_are_counted() -> None:
    sup, _ = make_supervisor(
        FAST.__class__(**{**FAST.__dict__, "restart_backoff_min": 1.0,
                          "restart_backoff_max": 1.0}), names=("A",))
    sup.start()
    try:
        wait_until(sup.all_up, 5.0)
        sup.handle("A").tell("boom")
        wait_until(lambda: not sup.all_up(), 5.0)
        for _ in range(5):
            sup.handle("A").tell("tick")
        assert sup.status()["A"]["dropped_messages"] >= 5
    finally:
        sup.stop()


def test_restart_intensity_exceeded_gives_up() -> None:
    cfg = SupervisorConfig(max_restarts=2, within_seconds=30, restart_backoff_min=0.01,
                           restart_backoff_max=0.02, liveness_interval=1, liveness_timeout=0.5)
    gave_up: list[tuple[str, int]] = []
    sup, _ = make_supervisor(cfg, on_give_up=lambda n, k: gave_up.append((n, k)))
    sup.start()
    try:
        for _ in range(3):
            incarnation = sup.handle("B").ask("incarnation", 2.0)
            sup.handle("B").tell("boom")
            wait_until(lambda i=incarnation: sup.gave_up.is_set()
                       or sup.status()["B"]["incarnation"] > i, 5.0)
        assert sup.gave_up.wait(5.0)
        assert sup.exit_code == 70
        assert gave_up == [("B", 3)]
    finally:
        sup.stop()


def test_temporary_child_is_not_restarted() -> None:
    sup, _ = make_supervisor(FAST, names=("A", "T"))
    sup.start()
    try:
        sup.handle("T").tell("boom")
        wait_until(lambda: not sup.status()["T"]["alive"], 5.0)
        time.sleep(0.1)  # give a wrong restart a chance to happen
        assert sup.status()["T"]["restarts"] == 0
    finally:
        sup.stop()


def test_stop_is_in_reverse_order(system: Any) -> None:
    sup, _ = system
    order: list[str] = []
    original = sup._stop_child

    def spy(child: Any) -> None:
        order.append(child.spec.name)
        original(child)

    sup._stop_child = spy  # type: ignore[method-assign]
    sup.stop()
    assert order == ["C", "B", "A"]


def test_many_threads_asking_while_children_crash(system: Any) -> None:
    sup, _ = system
    results: list[str] = []
    lock = threading.Lock()

    def asker(n: int) -> None:
        for i in range(30):
            name = "ABC"[(n + i) % 3]
            try:
                sup.handle(name).ask(("n", n, i), 3.0)
                outcome = "answered"
            except pykka.Timeout:
                outcome = "timeout"
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=asker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for _ in range(6):
        sup.inject_fault("ABC"[_ % 3], "crash")
        time.sleep(0.05)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "an ask never returned: deadlock"
    assert len(results) == 12 * 30
    assert results.count("answered") > len(results) * 0.9
    wait_until(sup.all_up, 5.0)


def test_a_fenced_incarnation_ignores_its_mailbox_when_it_wakes() -> None:
    sup, services = make_supervisor(FAST, names=("A",))
    sup.start()
    try:
        wait_until(sup.all_up, 5.0)
        old = sup.handle("A")._ref
        sup.inject_fault("A", "hang")
        sup.handle("A").tell("late")  # queued behind the hang, in the old mailbox
        wait_until(lambda: sup.status()["A"]["restarts"] == 1 and sup.all_up(), 5.0)
        assert old is not None and sup.handle("A")._ref is not old
        services.shutdown.set()  # wakes the hung thread, as a process stop would
        wait_until(lambda: not old.is_alive(), 5.0)
        assert "late" not in services.shared.received
    finally:
        sup.stop()
