"""When to ping the feed, and when to give a connection up for dead.

A half-open TCP connection (the peer gone without a FIN) looks exactly like a
quiet market, so the feed is pinged every `ping_interval`. Life is any byte
received from the peer: a tick, a heartbeat, a ping or a pong. A connection
is dead when no byte at all arrived for `silence_timeout`, or for
`ping_timeout` after a ping was sent.

While every market the feed prices is closed (SPEC §14), a quiet feed is
just the night: `quiet_ok` says so, and the silence then starts afresh. It is
asked only when the silence timeout has run out (not on every read), so
after the open a quiet feed is given up within one more silence timeout.
Pings still go out and an unanswered one still kills, so a dead connection
is still found at night.

A byte received after the ping counts as its answer (finding C11): in a burst
the pong sits behind ticks the reader has not parsed yet, and waiting for
the pong itself would drop a busy, healthy connection exactly when the market
moves.

Pure: the clock is injected (time.monotonic() in the service), nothing here
blocks or starts a thread, and a clock that steps backwards never kills.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class Watchdog:
    """The ping and silence rules of one connection, from when it opened."""

    def __init__(
        self,
        *,
        ping_interval: float,
        ping_timeout: float,
        silence_timeout: float,
        clock: Callable[[], float],
        quiet_ok: Callable[[], bool] = lambda: False,
    ) -> None:
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._silence_timeout = silence_timeout
        self._clock = clock
        self._quiet_ok = quiet_ok
        self._excused_at = -math.inf  # the last time silence was excused (markets closed)
        now = clock()
        self._last_life = now
        self._last_ping = now
        self._unanswered_since: float | None = None  # when the oldest unanswered ping went out
        self._bytes = 0

    def observe(self, bytes_received: int) -> None:
        """Note the connection's running count of bytes received; a rise is life."""
        if bytes_received != self._bytes:
            self._bytes = bytes_received
            self._last_life = self._clock()
            self._unanswered_since = None

    def ping_due(self) -> bool:
        """True when a ping should go out now; it is then counted as sent."""
        now = self._clock()
        if now - self._last_ping < self._ping_interval:
            return False
        self._last_ping = now
        if self._unanswered_since is None:
            self._unanswered_since = now
        return True

    def failure(self) -> str | None:
        """Why the connection is dead, or None while it is alive."""
        now = self._clock()
        silent = now - max(self._last_life, self._excused_at)
        if silent > self._silence_timeout:
            if not self._quiet_ok():
                return f"no frame for {silent:.1f}s (silence timeout)"
            self._excused_at = now
        pinged = self._unanswered_since
        if pinged is not None and now - pinged > self._ping_timeout:
            return f"no pong within {self._ping_timeout:.1f}s (half-open connection)"
        return None
