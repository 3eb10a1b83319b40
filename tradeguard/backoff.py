"""The reconnect backoff schedule: exponential, capped, jittered, reset when stable."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays for successive reconnect attempts.

    Attempt n (from 1) waits `initial * 2**(n-1)` capped at `maximum`, plus a
    jitter drawn from 0..`jitter` times that delay. A connection that stayed up
    for `stable_after` seconds resets the schedule (`connected` / `disconnected`).
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        jitter: float,
        stable_after: float,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.stable_after = stable_after
        self._rand = rand
        self.attempts = 0
        self._connected_at: float | None = None

    def base_delay(self, attempt: int) -> float:
        """The delay before jitter for attempt `attempt` (1-based)."""
        # 2.0**1024 overflows; any smaller cap would stall a tiny `initial` below `maximum`
        exponent = min(max(attempt - 1, 0), 1023)
        return float(min(self.maximum, self.initial * 2.0**exponent))

    def next_delay(self) -> float:
        """Count one more failed attempt and return how long to wait before the next."""
        self.attempts += 1
        base = self.base_delay(self.attempts)
        return base + base * self.jitter * self._rand()

    def connected(self, now: float) -> None:
        self._connected_at = now

    def disconnected(self, now: float) -> None:
        """The connection ended; reset the schedule if it had been stable."""
        if self._connected_at is not None and now - self._connected_at >= self.stable_after:
            self.attempts = 0
        self._connected_at = None

    def check_stable(self, now: float) -> bool:
        """Reset the schedule once the current connection has been up long enough."""
        if self._connected_at is not None and now - self._connected_at >= self.stable_after:
            self.attempts = 0
            return True
        return False
