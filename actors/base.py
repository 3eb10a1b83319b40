"""What every supervised actor shares: its context, liveness, faults, fencing, timers.

Pykka reports an actor's death three ways and the base class turns each into
one call to the supervisor: a `tell` handler that raises (Pykka calls
`on_failure`), an `on_start` that raises (Pykka calls nothing, so `on_start`
reports before re-raising), and a thread that stops answering (the supervisor's
liveness ping finds it; nothing here can report that).

Fencing: a hung thread cannot be killed in Python, so when the supervisor gives
up on an incarnation it sets that incarnation's `stop_event`. Every thread the
actor owns watches that event and leaves, every message the old actor would
send is dropped (`ChildContext.tell`), and if the old actor thread ever wakes
up it ignores its mailbox.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka

from actors.messages import Durable, Fault, Ping, Timer

if TYPE_CHECKING:
    from actors.handle import ChildHandle
    from actors.services import Services

logger = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised on purpose by the fault-injection message."""


@dataclass
class ChildContext:
    """What one incarnation of a child knows about its place in the tree."""

    name: str
    incarnation: int
    services: Services
    report_death: Callable[[str, int, str], None]
    ack: Callable[[int], None]
    stop_event: threading.Event = field(default_factory=threading.Event)
    on_fence: list[Callable[[], object]] = field(default_factory=list)

    @property
    def fenced(self) -> bool:
        return self.stop_event.is_set()

    def fence(self) -> None:
        """End this incarnation from outside: set its stop event, release what it owns.

        Called by the supervisor, whose thread must never block: each release
        (a pool's shutdown without waiting) returns at once. A hung actor never
        runs its own teardown, so without this its idle workers would live on.
        """
        self.stop_event.set()
        for release in self.on_fence:
            try:
                release()
            except Exception:
                logger.exception("%s: releasing a fenced incarnation failed", self.name)

    def handle(self, name: str) -> ChildHandle:
        return self.services.handles[name]

    def tell(self, name: str, message: object, *, durable: bool = False) -> None:
        """Send to a sibling by name, unless this incarnation has been fenced."""
        if self.fenced:
            return
        target = self.services.handles.get(name)
        if target is None:
            return
        if durable:
            target.tell_durable(message)
        else:
            target.tell(message)


class Ticker:
    """A thread that tells its actor a `Timer` message every `interval` seconds."""

    def __init__(
        self, ref: pykka.ActorRef[Any], name: str, interval: float, stop: threading.Event
    ) -> None:
        self._ref = ref
        self._name = name
        self._interval = interval
        self._stop = stop
        self._thread = threading.Thread(
            target=self._run, name=f"{name}-ticker", daemon=True
        )

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._ref.tell(Timer(self._name))
            except pykka.ActorDeadError:
                return

    def join(self, timeout: float) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


class GuardActor(pykka.ThreadingActor):
    """Base of the supervised actors. Subclasses implement `setup`, `handle`, `teardown`."""

    def __init__(self, ctx: ChildContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.services = ctx.services
        self._tickers: list[Ticker] = []
        self._threads: list[tuple[threading.Thread, float]] = []
        self._pools: list[ThreadPoolExecutor] = []

    # Subclass hooks ------------------------------------------------------

    def setup(self) -> None:
        """Start owned threads and load state; runs in the actor's thread."""

    def handle(self, message: object) -> object:
        logger.warning("%s: unexpected message %r", self.ctx.name, message)
        return None

    def teardown(self) -> None:
        """Stop owned threads; `ctx.stop_event` is already set."""

    # Helpers for subclasses ----------------------------------------------

    def every(self, name: str, interval: float) -> None:
        """Receive `Timer(name)` every `interval` seconds until this incarnation ends."""
        self._tickers.append(
            Ticker(self.actor_ref, f"{self.ctx.name}.{name}", interval, self.ctx.stop_event).start()
        )

    def own_thread(
        self, target: Callable[[], object], name: str, *, join_timeout: float = 1.0
    ) -> threading.Thread:
        """Start a thread this incarnation owns: joined (up to `join_timeout`) at teardown.

        The target must return soon after `ctx.stop_event` is set; a thread that
        does not is left behind as a daemon, fenced, rather than hang the stop.
        """
        thread = threading.Thread(target=target, name=name, daemon=True)
        # Forget finished ones: a thread per periodic check must not pile up for days.
        self._threads = [(t, j) for t, j in self._threads if t.is_alive()]
        self._threads.append((thread, join_timeout))
        thread.start()
        return thread

    def own_pool(self, workers: int, name: str) -> ThreadPoolExecutor:
        """A worker pool this incarnation owns: shut down at teardown, queued jobs cancelled.

        Jobs already running finish on their own; their outcome must be safe to
        drop (sent through `post`, which a fenced incarnation ignores).
        """
        pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._pools.append(pool)
        self.ctx.on_fence.append(lambda: pool.shutdown(wait=False, cancel_futures=True))
        return pool

    def post(self, message: object) -> None:
        """Tell this incarnation something from one of its own threads.

        Dropped once the incarnation is fenced or dead: a worker finishing late
        must not disturb the one that replaced it.
        """
        if self.ctx.fenced:
            return
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    # Pykka hooks -----------------------------------------------------------

    def on_start(self) -> None:
        try:
            if self.services.faults.take_start_failure(self.ctx.name):
                raise InjectedFault(f"{self.ctx.name}: injected start failure")
            self.setup()
        except Exception as exc:
            self.ctx.stop_event.set()
            self._teardown_quietly()
            self.ctx.report_death(self.ctx.name, self.ctx.incarnation, f"start failed: {exc!r}")
            raise

    def on_stop(self) -> None:
        self.ctx.stop_event.set()
        self._teardown_quietly()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.ctx.stop_event.set()
        self._teardown_quietly()
        self.ctx.report_death(self.ctx.name, self.ctx.incarnation, repr(exception_value))

    def on_receive(self, message: Any) -> Any:
        if self.ctx.fenced:
            return None
        if isinstance(message, Ping):
            return self.ctx.incarnation
        if isinstance(message, Fault):
            return self._fault(message.kind)
        if isinstance(message, Durable):
            result = self.handle(message.message)
            self.ctx.ack(message.seq)
            return result
        return self.handle(message)

    def _fault(self, kind: str) -> None:
        logger.warning("%s: injected fault %r", self.ctx.name, kind)
        if kind == "crash":
            raise InjectedFault(f"{self.ctx.name}: injected crash")
        # A hang blocks this thread until the process shuts down, like a stuck
        # syscall would; only the supervisor's liveness ping can notice it.
        self.services.shutdown.wait()

    def _teardown_quietly(self) -> None:
        for ticker in self._tickers:
            ticker.join(1.0)
        try:
            self.teardown()
        except Exception:
            logger.exception("%s: teardown failed", self.ctx.name)
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for thread, timeout in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
