"""FeedActor: the price WebSocket, kept alive through DNS failures and dead connections.

The actor owns one reader thread that does the blocking work: resolve the
host through the ladder, connect to that IP with TLS on the hostname,
subscribe, then read. Everything the socket already holds is drained into one
`TickBatch`, told to CacheActor and MonitorActor (never one message per tick).
A connection is dropped and re-made when a ping goes unanswered for
`ping_timeout` or nothing at all arrives for `silence_timeout` (a half-open
TCP connection looks exactly like a quiet market otherwise). Reconnects follow
the backoff schedule forever; every `dns_check_every` failed attempts the
DnsHealthActor is asked for a check. Feed lost and restored are one alert
each per transition.

The actor's own mailbox only takes `Subscribe` messages (and the reader's
death notice), so it always answers the supervisor's ping promptly.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import websocket

from actors.base import GuardActor
from actors.messages import Kick, Subscribe, TickBatch
from tradeguard import alerts
from tradeguard.backoff import Backoff
from tradeguard.errors import FeedError, ResolverError
from tradeguard.feed.connection import open_feed, read_batch
from tradeguard.feed.wire_json import parse_frames, subscribe_frame

logger = logging.getLogger(__name__)

MAX_BATCH_FRAMES = 500
READ_TIMEOUT = 0.25  # how often the reader looks at its watchdogs when the feed is quiet
REJECT_LOG_EVERY = 10.0
_DATA_OPCODES = (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY)


@dataclass(frozen=True)
class ReaderDied:
    error: BaseException


class FeedActor(GuardActor):
    def setup(self) -> None:
        cfg = self.services.cfg.feed
        self.url = cfg.url
        self.host = urlsplit(cfg.url).hostname or ""
        self._lock = threading.Lock()
        self._wanted: set[str] = set(cfg.symbols)
        self._wanted |= {p.symbol for p in self.services.store.live_positions()}
        self._unsent: set[str] = set()
        self.services.feed_status.update(host=self.host, connected=False)
        self._reader = threading.Thread(target=self._read_forever, name="feed-reader")
        self._reader.start()

    def teardown(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.join(self.services.cfg.feed.connect_timeout + 2.0)

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

    def take_unsent(self, everything: bool) -> list[str]:
        with self._lock:
            symbols = set(self._wanted) if everything else set(self._unsent)
            self._unsent.clear()
            return sorted(symbols)


class _Reader:
    """The reader thread's state: one connection at a time, forever, until stopped."""

    def __init__(self, actor: FeedActor) -> None:
        self.actor = actor
        self.ctx = actor.ctx
        self.services = actor.services
        self.cfg = actor.services.cfg.feed
        self.status = actor.services.feed_status
        self.stop = actor.ctx.stop_event
        self.backoff = Backoff(self.cfg.reconnect_initial_delay, self.cfg.reconnect_max_delay,
                               self.cfg.reconnect_jitter, self.cfg.stable_after)
        self.failures = 0
        self.down_since: float | None = None
        self.last_reject_log = 0.0
        self.ever_connected = False

    def run(self) -> None:
        while not self.stop.is_set():
            ws = self._connect()
            if ws is None:
                self._wait_before_retry()
                continue
            try:
                self._read(ws)
            except (FeedError, OSError, websocket.WebSocketException) as exc:
                self._lost(str(exc) or type(exc).__name__)
            finally:
                ws.close(timeout=0.5)
                self.status.update(connected=False)
                self.backoff.disconnected(time.monotonic())
            if not self.stop.is_set():
                self._wait_before_retry()

    def _connect(self) -> websocket.WebSocket | None:
        host = self.actor.host
        try:
            resolution = self.services.resolver.resolve(host)
            ws = open_feed(self.actor.url, resolution.address,
                           connect_timeout=self.cfg.connect_timeout, ca_file=self.cfg.ca_file)
        except (ResolverError, FeedError) as exc:
            self._lost(str(exc))
            return None
        ws.settimeout(READ_TIMEOUT)
        now = time.monotonic()
        self.backoff.connected(now)
        self.status.update(connected=True, connected_ip=resolution.address,
                           resolved_via=resolution.via, connected_since=now,
                           last_message_mono=now)
        logger.info("[FEED] Connected to %s at %s (via %s)", host, resolution.address,
                    resolution.via)
        if self.down_since is not None:
            down_for = time.time() - self.down_since
            self.services.alerts.alert(alerts.feed_restored(host, resolution.address,
                                                            resolution.via, down_for))
            self.down_since = None
        self.ever_connected = True
        self._subscribe(ws, everything=True)
        return ws

    def _lost(self, error: str) -> None:
        self.failures += 1
        self.status.count_error(error)
        self.services.metrics.feed_network_errors.inc()
        logger.warning("[FEED] %s: %s", self.actor.host, error)
        if self.down_since is None:
            self.down_since = time.time()
            self.services.alerts.alert(alerts.feed_lost(self.actor.host, error))
        if self.failures % self.cfg.dns_check_every == 0:
            self.ctx.tell("DnsHealthActor", Kick("feed reconnect failures"))

    def _wait_before_retry(self) -> None:
        delay = self.backoff.next_delay()
        self.status.count_attempt()
        self.services.metrics.feed_reconnect_attempts.inc()
        logger.info("[FEED] Reconnecting in %.2fs (attempt %d)", delay, self.backoff.attempts)
        self.stop.wait(delay)

    def _subscribe(self, ws: websocket.WebSocket, *, everything: bool) -> None:
        symbols = self.actor.take_unsent(everything)
        if symbols:
            ws.send(subscribe_frame(symbols))
            self.status.add_subscribed(symbols)

    def _read(self, ws: websocket.WebSocket) -> None:
        cfg = self.cfg
        last_frame = last_ping = time.monotonic()
        pong_due: float | None = None
        while not self.stop.is_set():
            now = time.monotonic()
            if now - last_frame > cfg.silence_timeout:
                raise FeedError(f"no frame for {now - last_frame:.1f}s (silence timeout)")
            if pong_due is not None and now > pong_due:
                raise FeedError(f"no pong within {cfg.ping_timeout:.1f}s (half-open connection)")
            if now - last_ping >= cfg.ping_interval:
                ws.ping()
                last_ping = now
                pong_due = pong_due or now + cfg.ping_timeout
            self._subscribe(ws, everything=False)
            self.backoff.check_stable(now)
            frames = read_batch(ws, MAX_BATCH_FRAMES)
            if not frames:
                continue
            received = time.monotonic()
            last_frame = received
            if any(opcode == websocket.ABNF.OPCODE_PONG for opcode, _ in frames):
                pong_due = None
            self._forward(frames, received)

    def _forward(self, frames: list[tuple[int, bytes | str]], received: float) -> None:
        self.status.last_message_mono = received
        parsed = parse_frames([data for opcode, data in frames if opcode in _DATA_OPCODES],
                              time.time())
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

    def _count_rejects(self, rejects: list[str]) -> None:
        self.status.count_rejects(rejects)
        for reason in rejects:
            self.services.metrics.feed_rejected.labels(reason=reason).inc()
        now = time.monotonic()
        if now - self.last_reject_log >= REJECT_LOG_EVERY:
            self.last_reject_log = now
            logger.warning("[FEED] rejected %d bad tick(s) (%s); totals in connection-health",
                           len(rejects), ", ".join(sorted(set(rejects))))
