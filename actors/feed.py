"""FeedActor: the price WebSocket, kept alive through DNS failures and dead connections.

The actor owns one reader thread that does the blocking work: ask the feed
protocol where to connect, resolve the host through the ladder, connect to
the first of its addresses that answers (TLS on the hostname), subscribe,
then read. Everything the socket already holds is parsed into one
`TickBatch`, told to CacheActor and MonitorActor (never one message per tick).
A `Watchdog` decides when to ping and when a connection is dead (a half-open
TCP connection looks exactly like a quiet market otherwise). Reconnects
follow the backoff schedule forever; every `dns_check_every` failed attempts
the DnsHealthActor is asked for a check. Feed lost and restored are one alert
each per transition.

A handshake that refuses the credentials (401/403, `TokenRejected`) is not
a network error (SPEC §12): one critical alert per refused token,
`token_ok` false, no DNS check, and no reconnect storm: the next attempt
waits `reconnect_max_delay`, unless the protocol's `credential()` changes
first (a new token in the file, SIGHUP, the API), and then goes at once.

The subscription is `feed.symbols` plus the symbols of live positions:
`Subscribe` adds to it at once, and each reconnect rebuilds it from the
store, so a closed position's symbol is no longer asked for (finding C14).

While every market of the subscription is closed (SPEC §14), a quiet feed
is the night, not a dead connection: the watchdog's silence timeout does not
count (its pings still do).

The actor's own mailbox only takes `Subscribe` messages (and the reader's
death notice), so it always answers the supervisor's ping promptly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

from actors.base import GuardActor
from actors.messages import Kick, Subscribe, TickBatch
from tradeguard import alerts
from tradeguard.backoff import Backoff
from tradeguard.errors import FeedError, ResolverError, TokenRejected
from tradeguard.feed import FeedProtocol, Frame, make_protocol
from tradeguard.feed.connection import READ_TIMEOUT, FeedConnection
from tradeguard.feed.watchdog import Watchdog

logger = logging.getLogger(__name__)

MAX_BATCH_FRAMES = 500
REJECT_LOG_EVERY = 10.0
TOKEN_POLL = 0.25  # seconds between looks for a new token while the feed refuses the old one

__all__ = ["MAX_BATCH_FRAMES", "READ_TIMEOUT", "FeedActor"]


@dataclass(frozen=True)
class ReaderDied:
    error: BaseException


def _normal(symbol: str) -> str:
    return symbol.strip().upper()  # as positions.validate_symbol and the json protocol do


class FeedActor(GuardActor):
    def setup(self) -> None:
        cfg = self.services.cfg.feed
        self.protocol: FeedProtocol = make_protocol(self.services.cfg, self.services.venue)
        self.host = urlsplit(cfg.url).hostname or ""
        self._lock = threading.Lock()
        self._always = {_normal(s) for s in cfg.symbols if s.strip()}
        self._wanted: set[str] = set()
        self._unsent: set[str] = set()
        self.services.feed_status.update(host=self.host, connected=False)
        self.own_thread(self._read_forever, "feed-reader", join_timeout=cfg.connect_timeout + 2.0)

    def handle(self, message: object) -> object:
        if isinstance(message, Subscribe):
            with self._lock:
                new = set(message.symbols) - self._wanted
                self._wanted |= new
                self._unsent |= new
        elif isinstance(message, ReaderDied):
            raise FeedError("feed reader thread died") from message.error
        else:
            return super().handle(message)
        return None

    # The reader thread ---------------------------------------------------------

    def _read_forever(self) -> None:
        try:
            _Reader(self).run()
        except Exception as exc:
            logger.exception("[FEED] reader thread died")
            self.post(ReaderDied(exc))

    def subscription(self) -> list[str]:
        """Everything to subscribe on a new connection: always-on symbols and live positions."""
        live = {p.symbol for p in self.services.store.live_positions()}
        with self._lock:
            self._wanted = self._always | live
            self._unsent.clear()
            return sorted(self._wanted)

    def quiet_is_night(self) -> bool:
        """True while every exchange of the subscription is closed: silence is expected."""
        market = self.services.market
        if market is None:
            return False
        with self._lock:
            wanted = set(self._wanted)
        return market.all_closed(wanted)

    def take_unsent(self) -> list[str]:
        """Symbols added since the last subscribe on this connection."""
        with self._lock:
            symbols = sorted(self._unsent)
            self._unsent.clear()
            return symbols


class _Reader:
    """The reader thread's state: one connection at a time, forever, until stopped."""

    def __init__(self, actor: FeedActor) -> None:
        self.actor = actor
        self.ctx = actor.ctx
        self.services = actor.services
        self.protocol = actor.protocol
        self.cfg = actor.services.cfg.feed
        self.status = actor.services.feed_status
        self.stop = actor.ctx.stop_event
        self.backoff = Backoff(self.cfg.reconnect_initial_delay, self.cfg.reconnect_max_delay,
                               self.cfg.reconnect_jitter, self.cfg.stable_after)
        self.host = actor.host
        self.failures = 0
        self.down_since: float | None = None  # time.monotonic()
        self.last_reject_log = 0.0
        self.seen_bytes = 0
        self.refused: str | None = None  # the credential the feed refused, until one works

    def run(self) -> None:
        while not self.stop.is_set():
            conn = self._connect()
            if conn is None:
                self._wait()
                continue
            try:
                self._read(conn)
            except (FeedError, OSError) as exc:
                self._lost(str(exc) or type(exc).__name__)
            finally:
                conn.close()
                self.status.update(connected=False)
                self.backoff.disconnected(time.monotonic())
            if not self.stop.is_set():
                self._wait()

    def _connect(self) -> FeedConnection | None:
        try:
            target = self.protocol.target()  # asked anew: it may be a one-time URL
            self.host = urlsplit(target.url).hostname or self.host
            resolution = self.services.resolver.resolve(self.host)
        except TokenRejected as exc:
            self._refused(str(exc))
            return None
        except (ResolverError, FeedError) as exc:
            self._lost(str(exc))
            return None
        try:
            conn = FeedConnection.open(
                target, resolution.addresses, connect_timeout=self.cfg.connect_timeout,
                ca_file=self.cfg.ca_file, max_message_bytes=self.protocol.max_frame_bytes)
        except TokenRejected as exc:
            self._refused(str(exc))  # the address answered: nothing to forget
            return None
        except FeedError as exc:
            self.services.resolver.forget(self.host)  # the next attempt asks DNS again
            self._lost(str(exc))
            return None
        self.services.resolver.confirm(self.host, conn.ip)
        self._connected(conn.ip, resolution.via)
        return conn

    def _connected(self, ip: str, via: str) -> None:
        now = time.monotonic()
        self.backoff.connected(now)
        self.seen_bytes = 0
        self.status.update(host=self.host, connected=True, connected_ip=ip, resolved_via=via,
                           connected_since=now, last_message_mono=now, token_ok=True)
        logger.info("[FEED] Connected to %s at %s (via %s)", self.host, ip, via)
        if self.refused is not None:
            self.refused, self.down_since = None, None  # one alert says both
            if self.protocol.token_accepted():
                self.services.alerts.alert(alerts.feed_token_accepted(self.host))
        if self.down_since is not None:
            down_for = now - self.down_since
            self.services.alerts.alert(alerts.feed_restored(self.host, ip, via, down_for))
            self.down_since = None

    def _lost(self, error: str) -> None:
        self.failures += 1
        self.status.count_error(error)
        self.services.metrics.feed_network_errors.inc()
        logger.warning("[FEED] %s: %s", self.host, error)
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.services.alerts.alert(alerts.feed_lost(self.host, error))
        if self.failures % self.cfg.dns_check_every == 0:
            self.ctx.tell("DnsHealthActor", Kick("feed reconnect failures"))

    def _refused(self, error: str) -> None:
        """The feed refused the credentials: one alert per refused one, never a storm."""
        self.status.update(token_ok=False, last_error=error)
        logger.warning("[FEED] %s: %s", self.host, error)
        credential = self.protocol.credential()
        if credential != self.refused and self.protocol.token_rejected():
            self.services.alerts.alert(alerts.feed_token_rejected(self.host, error))
        self.refused = credential

    def _wait(self) -> None:
        if self.refused is None:
            self._wait_before_retry()
        else:
            self._wait_for_token()

    def _wait_for_token(self) -> None:
        """Until `reconnect_max_delay` passed or the credentials changed, whichever is first."""
        self.status.count_attempt()
        self.services.metrics.feed_reconnect_attempts.inc()
        delay = self.cfg.reconnect_max_delay
        logger.info("[FEED] Token refused: trying again in %.2fs, or at once with a new token",
                    delay)
        deadline = time.monotonic() + delay
        while not self.stop.is_set() and self.protocol.credential() == self.refused:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(TOKEN_POLL, left))

    def _wait_before_retry(self) -> None:
        delay = self.backoff.next_delay()
        self.status.count_attempt()
        self.services.metrics.feed_reconnect_attempts.inc()
        logger.info("[FEED] Reconnecting in %.2fs (attempt %d)", delay, self.backoff.attempts)
        self.stop.wait(delay)

    def _subscribe(self, conn: FeedConnection, symbols: list[str], *, everything: bool) -> None:
        if symbols:
            for frame in self.protocol.subscribe(symbols):
                conn.send(frame)
        if everything:
            self.status.update(subscribed=set(symbols))  # the current subscription (E3)
        elif symbols:
            self.status.add_subscribed(symbols)

    def _read(self, conn: FeedConnection) -> None:
        cfg = self.cfg
        dog = Watchdog(ping_interval=cfg.ping_interval, ping_timeout=cfg.ping_timeout,
                       silence_timeout=cfg.silence_timeout, clock=time.monotonic,
                       quiet_ok=self.actor.quiet_is_night)
        self._subscribe(conn, self.actor.subscription(), everything=True)
        while not self.stop.is_set():
            failure = dog.failure()
            if failure is not None:
                raise FeedError(failure)
            if dog.ping_due():
                conn.ping()
            self._subscribe(conn, self.actor.take_unsent(), everything=False)
            self.backoff.check_stable(time.monotonic())
            frames = conn.read_batch(MAX_BATCH_FRAMES)
            dog.observe(conn.bytes_received)
            self._note_life(conn.bytes_received)
            if frames:
                self._forward(frames)
            refused = conn.take_refused()
            if refused:
                self._count_rejects(Counter(too_large=refused))

    def _note_life(self, received: int) -> None:
        if received != self.seen_bytes:
            self.seen_bytes = received
            self.status.last_message_mono = time.monotonic()

    def _forward(self, frames: list[Frame]) -> None:
        received = time.monotonic()
        parsed = self.protocol.parse(frames, received)
        # A venue's order updates (Kite's ticker) go to its venue: a close waiting
        # for its fill hears it at once. The broker-truth mirror (SPEC §12) is to come.
        if parsed.messages and self.services.venue is not None:
            self.services.venue.feed_messages(parsed.messages)
        if parsed.messages and self.services.market is not None:
            self.services.market.feed_messages(parsed.messages)  # market status (SPEC §14)
        if parsed.rejects:
            self._count_rejects(parsed.rejects)
        if parsed.ticks:
            batch = TickBatch(tuple(parsed.ticks), received)
            self.ctx.tell("CacheActor", batch)
            # Held until the monitor has checked it, and handed to its next incarnation
            # if it dies first: a one-tick breach during a monitor restart still fires.
            self.ctx.tell("MonitorActor", batch, durable=True)
            # Counted once told, so the count never runs ahead of the actors' mailboxes.
            self.services.metrics.feed_ticks.inc(len(parsed.ticks))

    def _count_rejects(self, rejects: Counter[str]) -> None:
        self.status.count_rejects(list(rejects.elements()))
        for reason, count in rejects.items():
            self.services.metrics.feed_rejected.labels(reason=reason).inc(count)
        now = time.monotonic()
        if now - self.last_reject_log >= REJECT_LOG_EVERY:
            self.last_reject_log = now
            logger.warning("[FEED] rejected %d bad part(s) of frames (%s); totals in "
                           "connection-health", rejects.total(), ", ".join(sorted(rejects)))
