"""ChildHandle: the stable address of a supervised child, whatever its incarnation.

Messages sent with `tell_durable` are held until the child acknowledges them
(`GuardActor` does, after handling) and are delivered again to the next
incarnation if the child dies first: at-least-once, so their handlers are
idempotent. A plain `tell` to a child that is down is dropped and counted.
`ask` waits for an incarnation to be up, within its timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Sized
from typing import Any

import pykka

from actors.messages import Durable

logger = logging.getLogger(__name__)

MAX_DELIVERIES = 3


def describe(message: object) -> str:
    """A message's type and size, for a log line: never its contents.

    A durable TickBatch can hold thousands of ticks; its repr would be one
    multi-megabyte line (C8). "TickBatch of 5000 ticks".
    """
    name = type(message).__name__
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        for f in dataclasses.fields(message):
            value = getattr(message, f.name)
            if isinstance(value, Sized) and not isinstance(value, str | bytes):
                return f"{name} of {len(value)} {f.name}"
    return name


class ChildHandle:
    """The stable address of a child, whatever its current incarnation."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._ref: pykka.ActorRef[Any] | None = None
        self._pending: dict[int, Durable] = {}
        self._seq = 0
        self.dropped = 0

    @property
    def up(self) -> bool:
        ref = self._ref
        return ref is not None and ref.is_alive()

    def tell(self, message: object) -> bool:
        """Deliver if the child is up; otherwise drop and count. Never blocks."""
        ref = self._ref
        if ref is not None:
            try:
                ref.tell(message)
                return True
            except pykka.ActorDeadError:
                pass
        with self._cond:
            self.dropped += 1
        return False

    def tell_durable(self, message: object) -> None:
        """Deliver now or to the next incarnation; kept until acknowledged."""
        with self._cond:
            self._seq += 1
            envelope = Durable(self._seq, message, deliveries=1)
            self._pending[envelope.seq] = envelope
            if self._ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    self._ref.tell(envelope)

    def ask(self, message: object, timeout: float) -> Any:
        """Ask the current incarnation, waiting for one to be up within `timeout`.

        Raises pykka.Timeout when no incarnation answered in time. Exceptions
        raised by the handler are re-raised here (Pykka's ask rules).
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            with self._cond:
                while self._ref is None and remaining > 0:
                    self._cond.wait(remaining)
                    remaining = deadline - time.monotonic()
                ref = self._ref
            if ref is None or remaining <= 0:
                raise pykka.Timeout(f"{self.name} did not answer within {timeout:.1f}s")
            try:
                return ref.ask(message, timeout=remaining)
            except pykka.ActorDeadError:
                with self._cond:
                    if self._ref is ref:
                        self._cond.wait(min(0.05, max(remaining, 0.0)))

    def ack(self, seq: int) -> None:
        with self._cond:
            self._pending.pop(seq, None)

    def pending_count(self) -> int:
        with self._cond:
            return len(self._pending)

    def _attach(self, ref: pykka.ActorRef[Any]) -> None:
        """A new incarnation is up: hand it what the last one left unacknowledged."""
        with self._cond:
            for seq in sorted(self._pending):
                envelope = self._pending[seq]
                if envelope.deliveries >= MAX_DELIVERIES:
                    logger.error("%s: dropping %s after %d deliveries", self.name,
                                 describe(envelope.message), envelope.deliveries)
                    del self._pending[seq]
                    continue
                try:
                    ref.tell(envelope)
                except pykka.ActorDeadError:
                    break  # died in on_start already: the next incarnation gets them
                envelope.deliveries += 1
            self._ref = ref
            self._cond.notify_all()

    def _detach(self) -> pykka.ActorRef[Any] | None:
        with self._cond:
            ref, self._ref = self._ref, None
            return ref
