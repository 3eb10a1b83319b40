"""The messages actors exchange. Plain frozen dataclasses, one per intent."""

from __future__ import annotations

from dataclasses import dataclass

from tradeguard.prices import Tick


@dataclass(frozen=True, slots=True)
class Ping:
    """The supervisor's liveness probe; the answer is the incarnation number."""


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection: "crash" raises in the actor's thread, "hang" blocks it."""

    kind: str


@dataclass(slots=True)
class Durable:
    """A message that must not be lost: held by the child's handle until acknowledged."""

    seq: int
    message: object
    deliveries: int = 0


@dataclass(frozen=True, slots=True)
class TickBatch:
    """Every tick the feed drained from the socket in one go, in arrival order."""

    ticks: tuple[Tick, ...]
    received_mono: float  # time.monotonic() when the first frame of the batch arrived


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Symbols the feed must be subscribed to (added to what it has)."""

    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PositionsChanged:
    """The store's positions changed: reload them."""

    symbol: str | None = None


@dataclass(frozen=True, slots=True)
class Kick:
    """Something is waiting (an alert in the outbox, a check to run): look now."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Timer:
    """A periodic wake-up sent by the actor's own ticker thread."""

    name: str


@dataclass(frozen=True, slots=True)
class WorkerDone:
    """A worker thread owned by the actor finished a job; `error` is set if it raised."""

    job: str
    result: object = None
    error: BaseException | None = None
    symbol: str = ""  # the position a close job was for
