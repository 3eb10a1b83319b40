"""A one-for-one supervisor over Pykka actors, in the manner of Erlang/OTP.

Children start in order and stop in reverse. A child that dies (a failing
handler, a failing `on_start`, or no answer to the liveness ping within
`liveness_timeout`) is fenced and restarted after a backoff. More than
`max_restarts` restarts of one child within `within_seconds` and the
supervisor gives up: `gave_up` is set and `exit_code` becomes 70, and the
service stops everything so that systemd or supervisord restart the process.

The supervisor's own thread never blocks on a child: pings are sent as asks
and their futures checked against deadlines on later turns of the loop.

Other actors and the HTTP layer reach a child through its `ChildHandle`
(actors/handle.py), a stable address that survives restarts and holds the
messages that must not be lost while the child is between incarnations.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from actors.base import ChildContext
from actors.handle import ChildHandle
from actors.messages import Fault, Ping
from tradeguard.config import SupervisorConfig
from tradeguard.exits import EX_SOFTWARE

logger = logging.getLogger(__name__)



class Restart(enum.Enum):
    PERMANENT = "permanent"  # always restarted
    TEMPORARY = "temporary"  # never restarted


@dataclass(frozen=True)
class ChildSpec:
    name: str
    factory: Callable[[ChildContext], pykka.ActorRef[Any]]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0
    start_timeout: float = 15.0  # on_start must finish (first ping answered) within this


@dataclass(frozen=True)
class _Ping:
    """A liveness ping in flight: its answer, when it is overdue, and whom it asked."""

    answer: pykka.Future[Any]
    deadline: float
    incarnation: int


@dataclass
class _Child:
    spec: ChildSpec
    handle: ChildHandle
    incarnation: int = 0
    ctx: ChildContext | None = None
    restarts: int = 0
    recent: collections.deque[float] = field(default_factory=collections.deque)
    restart_at: float | None = None
    ping: _Ping | None = None
    last_reason: str = ""
    started: bool = False  # on_start finished: the first ping of this incarnation came back


@dataclass(frozen=True)
class _Death:
    name: str
    incarnation: int
    reason: str


class Supervisor:
    """Starts, watches and restarts children; gives up past the restart intensity."""

    def __init__(
        self,
        cfg: SupervisorConfig,
        make_context: Callable[[str, int, Callable[[str, int, str], None],
                                Callable[[int], None]], ChildContext],
        *,
        on_restart: Callable[[str, str, int], None] | None = None,
        on_give_up: Callable[[str, int], None] | None = None,
        on_liveness: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._make_context = make_context
        self._on_restart = on_restart or (lambda name, reason, n: None)
        self._on_give_up = on_give_up or (lambda name, n: None)
        self._on_liveness = on_liveness or (lambda ok: None)
        self._clock = clock
        self._children: dict[str, _Child] = {}
        self._events: queue.Queue[_Death | None] = queue.Queue()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next_liveness = 0.0
        self.gave_up = threading.Event()
        self.exit_code = 0

    # Building and running ------------------------------------------------

    def add(self, spec: ChildSpec) -> ChildHandle:
        if spec.name in self._children:
            raise ValueError(f"duplicate child {spec.name}")
        child = _Child(spec, ChildHandle(spec.name))
        self._children[spec.name] = child
        return child.handle

    def handle(self, name: str) -> ChildHandle:
        return self._children[name].handle

    @property
    def handles(self) -> dict[str, ChildHandle]:
        return {name: child.handle for name, child in self._children.items()}

    def start(self) -> None:
        """Start every child in order, then the watching thread."""
        for child in self._children.values():
            self._start_child(child)
        self._next_liveness = self._clock() + self.cfg.liveness_interval
        self._thread = threading.Thread(target=self._loop, name="supervisor")
        self._thread.start()

    def stop(self) -> None:
        """Stop the watching thread, then every child in reverse order."""
        self._stopping.set()
        self._events.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for child in reversed(list(self._children.values())):
            self._stop_child(child)

    def inject_fault(self, name: str, kind: str) -> None:
        """Make a child crash or hang while handling its next message."""
        if kind not in {"crash", "hang"}:
            raise ValueError(f"unknown fault kind {kind!r}")
        self._children[name].handle.tell(Fault(kind))

    def status(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                name: {
                    "alive": child.started and child.handle.up and child.restart_at is None,
                    "restarts": child.restarts,
                    "incarnation": child.incarnation,
                    "last_failure": child.last_reason or None,
                    "dropped_messages": child.handle.dropped,
                    "pending_messages": child.handle.pending_count(),
                }
                for name, child in self._children.items()
            }

    def all_up(self) -> bool:
        return all(s["alive"] for s in self.status().values())

    # The watching loop -----------------------------------------------------

    def _report_death(self, name: str, incarnation: int, reason: str) -> None:
        self._events.put(_Death(name, incarnation, reason))

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                event = self._events.get(timeout=self._wait_time())
            except queue.Empty:
                event = None
            if self._stopping.is_set():
                return
            try:
                if event is not None:
                    self._on_death(event)
                self._check_liveness()
                self._check_restarts()
            except Exception:
                # The supervisor's thread must outlive any bug below it.
                logger.exception("Supervisor: error while watching children")
            if self.gave_up.is_set():
                return

    def _wait_time(self) -> float:
        now = self._clock()
        deadlines = [self._next_liveness]
        if any(not c.started and c.restart_at is None for c in self._children.values()):
            deadlines.append(now + 0.01)  # a child is starting: notice it is up promptly
        for child in self._children.values():
            if child.restart_at is not None:
                deadlines.append(child.restart_at)
            if child.ping is not None:
                deadlines.append(child.ping.deadline)
        return max(0.0, min(min(deadlines) - now, 0.25))

    def _on_death(self, death: _Death) -> None:
        child = self._children.get(death.name)
        if (child is None or death.incarnation != child.incarnation
                or child.restart_at is not None):
            return  # a stale report from an incarnation already replaced
        self._mark_dead(child, death.reason)

    def _check_liveness(self) -> None:
        now = self._clock()
        for child in self._children.values():
            if child.restart_at is not None:
                continue
            if child.ping is not None:
                future, deadline, incarnation = (
                    child.ping.answer, child.ping.deadline, child.ping.incarnation)
                if incarnation != child.incarnation or _done(future):
                    child.ping = None
                    child.started = True
                elif now >= deadline:
                    child.ping = None
                    self._mark_dead(child, "no answer to liveness ping "
                                           f"within {self.cfg.liveness_timeout:.1f}s"
                                    if child.started else "did not finish starting within "
                                    f"{child.spec.start_timeout:.1f}s")
                    continue
            ref = child.handle._ref
            if ref is None or not ref.is_alive():
                self._mark_dead(child, child.last_reason or "actor stopped")
        if now >= self._next_liveness:
            self._next_liveness = now + self.cfg.liveness_interval
            self._on_liveness(all(c.started and c.restart_at is None and c.ping is None
                                  for c in self._children.values()))
            for child in self._children.values():
                ref = child.handle._ref
                if child.restart_at is None and child.ping is None and ref is not None:
                    try:
                        future = ref.ask(Ping(), block=False)
                    except pykka.ActorDeadError:
                        continue
                    child.ping = _Ping(future, now + self.cfg.liveness_timeout, child.incarnation)

    def _mark_dead(self, child: _Child, reason: str) -> None:
        now = self._clock()
        logger.error("Supervisor: %s (incarnation %d) died: %s",
                     child.spec.name, child.incarnation, reason)
        self._fence(child)
        with self._lock:
            child.last_reason = reason
            if child.spec.restart is Restart.TEMPORARY:
                child.restart_at = float("inf")
                return
            window = self.cfg.within_seconds
            while child.recent and now - child.recent[0] > window:
                child.recent.popleft()
            child.recent.append(now)
            if len(child.recent) > self.cfg.max_restarts:
                self.exit_code = EX_SOFTWARE
                child.restart_at = float("inf")
        if self.exit_code == EX_SOFTWARE:
            logger.critical("Supervisor: %s restarted more than %d times within %.0fs; giving up",
                            child.spec.name, self.cfg.max_restarts, window)
            self._on_give_up(child.spec.name, len(child.recent))
            self.gave_up.set()
            return
        delay = min(self.cfg.restart_backoff_max,
                    self.cfg.restart_backoff_min * 2 ** (len(child.recent) - 1))
        child.restart_at = now + delay

    def _check_restarts(self) -> None:
        now = self._clock()
        for child in self._children.values():
            if child.restart_at is not None and now >= child.restart_at:
                self._start_child(child)
                logger.warning("Supervisor: restarted %s (incarnation %d) after: %s",
                               child.spec.name, child.incarnation, child.last_reason)
                # Metrics and the alert first: whoever sees the new count sees them too.
                self._on_restart(child.spec.name, child.last_reason, child.restarts + 1)
                with self._lock:
                    child.restarts += 1

    # Children ----------------------------------------------------------------

    def _start_child(self, child: _Child) -> None:
        with self._lock:
            child.incarnation += 1
            child.restart_at = None
            child.ping = None
            child.started = False
        ctx = self._make_context(child.spec.name, child.incarnation, self._report_death,
                                 child.handle.ack)
        child.ctx = ctx
        try:
            ref = child.spec.factory(ctx)
        except Exception as exc:
            logger.exception("Supervisor: could not create %s", child.spec.name)
            self._report_death(child.spec.name, child.incarnation, f"create failed: {exc!r}")
            return
        child.handle._attach(ref)
        # Pings are answered only once on_start has returned: the first answer
        # is the moment the child is really up.
        with contextlib.suppress(pykka.ActorDeadError):
            child.ping = _Ping(ref.ask(Ping(), block=False),
                               self._clock() + child.spec.start_timeout, child.incarnation)

    def _fence(self, child: _Child) -> None:
        if child.ctx is not None:
            child.ctx.fence()
        ref = child.handle._detach()
        if ref is not None:
            _drain(ref)  # a hung actor never reads them: let what it was sent go
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=False)

    def _stop_child(self, child: _Child) -> None:
        ref = child.handle._detach()
        if child.ctx is not None:
            child.ctx.fence()
        if ref is None:
            return
        try:
            stopped = ref.stop(block=True, timeout=child.spec.shutdown_timeout)
        except pykka.Timeout:
            stopped = False
        except pykka.ActorDeadError:
            stopped = True
        if not stopped:
            logger.error("Supervisor: %s did not stop within %.1fs",
                         child.spec.name, child.spec.shutdown_timeout)


def _done(future: pykka.Future[Any]) -> bool:
    try:
        future.get(timeout=0)
    except pykka.Timeout:
        return False
    except Exception:  # noqa: BLE001 - a ping that raised still proves the thread runs
        return True
    return True


def _drain(ref: pykka.ActorRef[Any]) -> None:
    """Empty a fenced incarnation's mailbox (durable messages live on in its handle)."""
    inbox = ref.actor_inbox  # a queue.Queue for threading actors; the stubs type a Protocol
    if not isinstance(inbox, queue.Queue):
        return
    with contextlib.suppress(queue.Empty):
        while True:
            inbox.get_nowait()
