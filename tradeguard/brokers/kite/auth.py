"""Kite's access token: where it comes from, when it is read again, and whether Kite took it.

The token is `broker.token`, or the contents of `broker.token_file`. A Kite
token dies at 06:00 IST every day (brokers.md §2.1), and feeds that keep the
token they started with are dead every morning (openalgo#1419), so the file is
looked at again on every use (every REST call, every ticker connect): a `stat`
(about a microsecond) tells whether it changed (inode, size or mtime in
nanoseconds), and only then is it read. `reload()` reads it whatever the stat
says (SIGHUP).

A rejected token (Kite's 403 `TokenException`, a 403 at the ticker handshake)
is one critical alert per token, however many calls are refused (SPEC §12):
`rejected(token)` says whether this is the first refusal of that token, for
the REST calls and the ticker alike. While a token Kite's REST API refused
stays the same, `hold_off()` tells REST callers to wait instead of asking
Kite again (a ticker refusal alone holds no close back). A new token (changed
file, SIGHUP, POST /api/v1/broker/token) clears it and wakes whoever waits in
`wait_for_change`.

The token never appears in a log line or an error message: `scrub` takes it
out of any text that might hold it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tradeguard.alerts import Alert, Severity
from tradeguard.errors import BrokerError

logger = logging.getLogger(__name__)

PROBE_EVERY = 60.0  # seconds between calls with a token Kite refused (feed.reconnect_max_delay)

_Stamp = tuple[int, int, int]  # (inode, size, mtime_ns) of the token file


def token_rejected(where: str, detail: str) -> Alert:
    """The critical alert of a token Kite refused: what it means and what to do."""
    text = (f"CRITICAL: Kite refused the access token ({where}): {detail}\n"
            "No close order can reach Kite until a new token arrives: log in to Kite, then "
            "write the new access token to broker.token_file, send SIGHUP, or POST it to "
            "/api/v1/broker/token.")
    return Alert("token_rejected", Severity.CRITICAL, text)


def token_accepted(where: str) -> Alert:
    return Alert("token_accepted", Severity.INFO, f"Kite accepts the access token again ({where})")


class TokenSource:
    """The current access token; call it (`source()`) to get the token to send now."""

    def __init__(self, token: str = "", token_file: str = "", *,
                 clock: Callable[[], float] = time.monotonic,
                 probe_every: float = PROBE_EVERY) -> None:
        self._file = Path(token_file) if token_file else None
        self._clock = clock
        self._probe_every = probe_every
        self._changed = threading.Condition()
        self._token = token.strip()
        self._stamp: _Stamp | None = None
        self._rejected: str | None = None  # the token Kite refused, while it is current
        self._down = False  # a refusal was alerted and no token has been accepted since
        self._held: str | None = None  # the token REST calls are held back for (see hold_off)
        self._last_probe = 0.0
        self.generation = 0  # goes up with every new token
        if self._file is not None:
            self.reload()

    def __call__(self) -> str:
        """The token to send now; the file is read again if it changed since last time."""
        if self._file is not None and self._file_stamp() != self._stamp:
            self.reload()
        with self._changed:
            return self._token

    def reload(self) -> bool:
        """Read the token file now (SIGHUP, a reconnect); True if the token changed."""
        if self._file is None:
            return False
        stamp = self._file_stamp()
        try:
            text = self._file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            logger.error("[KITE] cannot read broker.token_file %s: %s", self._file,
                         type(exc).__name__)
            self._stamp = stamp
            return False
        self._stamp = stamp
        try:
            return self.set(text, "broker.token_file")
        except BrokerError as exc:
            logger.error("[KITE] broker.token_file %s: %s", self._file, exc)
            return False

    def set(self, token: str, where: str) -> bool:
        """Use `token` from now on; True if it differs from the current one."""
        token = token.strip()
        check_header_safe(token)
        with self._changed:
            if token == self._token:
                return False
            self._token, self._rejected = token, None
            self.generation += 1
            self._changed.notify_all()
        logger.info("[KITE] new access token from %s", where)  # the token itself never
        return True

    def rejected(self, token: str) -> bool:
        """Kite refused `token`: True the first time (the caller sends the one alert)."""
        with self._changed:
            if token != self._token or token == self._rejected:
                return False
            self._rejected, self._down = token, True
            return True

    def refused_at_rest(self, token: str) -> None:
        """Kite's REST API refused `token`: REST calls with it are held back (`hold_off`).

        Only a REST refusal holds REST calls back: a ticker handshake refused
        for another reason must not stop a close from being tried.
        """
        with self._changed:
            if token == self._token:
                self._held, self._last_probe = token, self._clock()

    def accepted(self, token: str) -> bool:
        """Kite took `token`: True the first time after a refusal (the one "accepted" alert),
        whether it is the refused token taken back or a new one."""
        with self._changed:
            if token != self._token:
                return False
            if token == self._held:
                self._held = None
            if not self._down:
                return False
            self._rejected, self._down = None, False
            return True

    @property
    def ok(self) -> bool:
        """False while the current token is one Kite refused."""
        with self._changed:
            return self._rejected is None or self._rejected != self._token

    def hold_off(self) -> bool:
        """True if a call now would only be refused again: the token is refused, unchanged.

        Once every `probe_every` seconds it answers False, so one call finds out
        whether Kite changed its mind.
        """
        self()  # a changed file clears the refusal
        with self._changed:
            if self._held is None or self._held != self._token:
                return False
            if self._clock() - self._last_probe >= self._probe_every:
                self._last_probe = self._clock()
                return False
            return True

    def wait_for_change(self, generation: int, timeout: float) -> bool:
        """Block until the token generation passes `generation`, or `timeout`; True if it did."""
        with self._changed:
            return self._changed.wait_for(lambda: self.generation > generation, timeout)

    def scrub(self, text: str) -> str:
        """`text` with the current token taken out."""
        with self._changed:
            token = self._token
        return text.replace(token, "[token]") if token else text

    def _file_stamp(self) -> _Stamp | None:
        assert self._file is not None
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns


def check_header_safe(token: str) -> None:
    """A CR, LF or other control character would let a token forge headers: refuse it."""
    if not (token.isascii() and token.isprintable()):
        raise BrokerError("the Kite access token has characters not allowed in an HTTP header")
