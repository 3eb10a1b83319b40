"""The feed's WebSocket: opened to a resolved address, read in batches of data frames.

`FeedConnection.open` connects TCP to the addresses the resolver ladder gave,
each in turn (a dead first A record must not keep the feed down, finding
A9), through `net.pinned`: TLS SNI, certificate verification and the HTTP
`Host` header stay on the URL's hostname, so a fallback-resolved address is
checked exactly like a system-resolved one. The opened socket is handed to
websocket-client for the handshake: it then never resolves a name, never
follows a proxy from the environment, and cannot be redirected elsewhere.

`read_batch` blocks (up to `read_timeout`) for one data frame, then takes
every frame already received without waiting for the network. It drains the
socket in large reads and `frames.FrameCutter` cuts the frames out (and
bounds what a hostile peer can make it hold, finding C10); websocket-client
only connects and sends. WebSocket control frames never leave the transport:
a ping is answered, a close ends the connection, and every byte received,
control frames included, counts in `bytes_received`, the watchdog's sign of
life. A batch stops taking frames after `max_batch_bytes`, and `read_batch`
returns within `read_timeout` even while bytes trickle in that never complete
a frame, so the watchdogs always get their turn (C10).
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import websocket

from tradeguard.errors import FeedError, TokenRejected
from tradeguard.feed import Frame, Target
from tradeguard.feed.frames import BINARY, MAX_FRAGMENTS, PING, PONG, TEXT, FrameCutter
from tradeguard.net.pinned import open_pinned, tls_context

__all__ = ["BINARY", "MAX_FRAGMENTS", "PING", "PONG", "TEXT", "FeedConnection"]

RECV_BYTES = 1 << 18  # one read takes ~4,000 one-tick frames or ~80 fifty-tick ones
MAX_MESSAGE_BYTES = 1 << 20  # a protocol may say otherwise (FeedProtocol.max_frame_bytes)
MAX_BATCH_BYTES = 1 << 22  # one batch holds at most this much plus one message
READ_TIMEOUT = 0.25
TOKEN_REFUSED = (401, 403)  # handshake answers that refuse the credentials (SPEC §12)


class FeedConnection:
    """One open feed WebSocket and what it received that `read_batch` has not returned.

    Used by one thread at a time (the feed reader).
    """

    def __init__(
        self,
        ws: websocket.WebSocket,
        ip: str,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.ip = ip
        self.bytes_received = 0
        self._ws = ws
        self._frames = FrameCutter(self._send, max_message_bytes)
        self._max_batch = max_batch_bytes
        self._read_timeout = read_timeout
        self._failure: FeedError | None = None
        self._sock = _socket_of(ws)
        self._sock.settimeout(read_timeout)
        self._readable = _readable(self._sock)

    @classmethod
    def open(
        cls,
        target: Target,
        addresses: Sequence[str],
        *,
        connect_timeout: float,
        ca_file: str = "",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        read_timeout: float = READ_TIMEOUT,
    ) -> FeedConnection:
        """Open the WebSocket at `target` through the first of `addresses` that works.

        `connect_timeout` bounds each address's TCP connect and TLS handshake,
        and the WebSocket handshake. FeedError if no address works;
        TokenRejected at once if the feed refuses the credentials (401/403:
        another address of the same feed would refuse them too).
        """
        host, port, secure = _parse_url(target.url)
        tls = _tls(ca_file) if secure else None
        left = list(addresses)
        failure = FeedError(f"no address to connect to for {host}")
        while left:
            sock, ip = _pin(host, port, left, connect_timeout, tls)
            left = left[left.index(ip) + 1:]
            try:
                ws = _handshake(target, sock, f"{host} at {ip}:{port}")
            except TokenRejected:
                raise
            except FeedError as exc:
                failure = exc
                continue
            return cls(ws, ip, max_message_bytes=max_message_bytes,
                       max_batch_bytes=max_batch_bytes, read_timeout=read_timeout)
        raise failure

    # Sending ------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Send a data frame: str as TEXT, bytes as BINARY. FeedError if that fails."""
        self._send(frame, BINARY if isinstance(frame, bytes) else TEXT)

    def ping(self, payload: bytes = b"") -> None:
        self._send(payload, PING)

    def close(self, timeout: float = 0.5) -> None:
        """Close politely (up to `timeout` for the peer's close), then drop the socket."""
        self._ws.close(timeout=timeout)

    def shutdown(self) -> None:
        self._ws.shutdown()  # type: ignore[no-untyped-call]

    @property
    def closed(self) -> bool:
        return self._ws.sock is None

    @property
    def socket(self) -> socket.socket:
        return self._sock

    @property
    def pongs(self) -> int:
        return self._frames.pongs

    @property
    def refused(self) -> int:
        return self._frames.refused

    def take_refused(self) -> int:
        """Messages dropped for size since the last call (a protocol counts them "too_large")."""
        return self._frames.take_refused()

    # Reading ------------------------------------------------------------

    def read_batch(self, max_frames: int) -> list[Frame]:
        """Wait for the next data frame, then take those already received.

        Returns data frames in arrival order (TEXT as str, BINARY as bytes),
        at most `max_frames` and about `max_batch_bytes`; an empty list means
        `read_timeout` passed with no complete data frame. The rest waits in
        the buffer for the next call.

        Raises FeedError when the peer closed the connection, the connection
        failed, or the peer broke the protocol (a text frame that is not UTF-8
        included); the socket is then shut down. Frames read before the failure
        are returned first and the next call raises.
        """
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if self.closed:
            raise FeedError("feed connection failed: the connection is already closed")
        batch: list[Frame] = []
        try:
            budget = self._max_batch - self._frames.take(batch, max_frames, self._max_batch)
            if not batch:
                budget -= self._wait_for_frame(batch, max_frames, budget)
            while len(batch) < max_frames and budget > 0 and self._readable() and self._receive():
                budget -= self._frames.take(batch, max_frames, budget)
        except FeedError as exc:
            self.shutdown()
            if not batch:
                raise
            self._failure = exc  # the frames before it (ticks that may breach a stop) go first
        return batch

    def _wait_for_frame(self, batch: list[Frame], max_frames: int, budget: int) -> int:
        """Receive until a data frame is complete or `read_timeout` passed; bytes taken."""
        deadline = time.monotonic() + self._read_timeout
        taken = 0
        try:
            while self._receive():
                taken += self._frames.take(batch, max_frames, budget - taken)
                left = deadline - time.monotonic()
                if batch or left <= 0:
                    break
                self._sock.settimeout(left)  # bytes trickle in: the rest of the wait only
        finally:
            if self._sock.gettimeout() != self._read_timeout and not self.closed:
                self._sock.settimeout(self._read_timeout)
        return taken

    def _receive(self) -> bool:
        """Append what the socket holds; False when the socket timeout passed first."""
        try:
            chunk = self._sock.recv(RECV_BYTES)
        except (TimeoutError, ssl.SSLWantReadError):
            return False
        except OSError as exc:
            raise FeedError(f"feed connection failed: {exc or type(exc).__name__}") from exc
        if not chunk:
            raise FeedError("feed connection failed: Connection to remote host was lost.")
        self.bytes_received += len(chunk)
        self._frames.append(chunk)
        return True

    def _send(self, data: str | bytes, opcode: int) -> None:
        try:
            self._ws.send(data, opcode)
        except (websocket.WebSocketException, OSError) as exc:
            raise FeedError(f"feed connection failed: {exc or type(exc).__name__}") from exc


# Opening --------------------------------------------------------------------


def _parse_url(url: str) -> tuple[str, int, bool]:
    """Hostname, port and whether TLS is used; FeedError for a URL that is not ws(s)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FeedError(f"bad feed URL: {exc}") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise FeedError("bad feed URL: expected ws://HOST/... or wss://HOST/...")
    secure = parts.scheme == "wss"
    return parts.hostname, port or (443 if secure else 80), secure


def _tls(ca_file: str) -> ssl.SSLContext:
    try:
        return tls_context(ca_file)
    except OSError as exc:  # ssl.SSLError included: a file that is not PEM
        raise FeedError(f"cannot load the feed CA file {ca_file!r}: {exc}") from exc


def _pin(
    host: str, port: int, addresses: Sequence[str], timeout: float, tls: ssl.SSLContext | None
) -> tuple[socket.socket, str]:
    """TCP (and TLS) to the first of `addresses` that answers; FeedError if none does."""
    where = f"{host} at {', '.join(addresses)}:{port}"
    try:
        pinned = open_pinned(host, port, addresses, timeout=timeout, tls=tls)
    except ssl.SSLCertVerificationError as exc:
        raise FeedError(f"TLS certificate of {where} rejected: {exc.verify_message}") from exc
    except OSError as exc:
        raise FeedError(f"cannot connect to {where}: {exc}") from exc
    return pinned.sock, pinned.ip


def _handshake(target: Target, sock: socket.socket, where: str) -> websocket.WebSocket:
    """The WebSocket upgrade over `sock` (closed if it fails); FeedError then."""
    headers = [f"{name}: {value}" for name, value in target.headers.items()]
    try:
        ws = websocket.WebSocket(skip_utf8_validation=True)
        ws.connect(  # type: ignore[no-untyped-call]
            target.url, socket=sock, redirect_limit=0, header=headers
        )
    except websocket.WebSocketBadStatusException as exc:
        sock.close()
        if exc.status_code in TOKEN_REFUSED:
            # Not the exception's text: the answer may echo what was sent. The
            # URL (which carries the token) is never in a message.
            raise TokenRejected(f"the feed at {where} refused the credentials at the "
                                f"handshake (HTTP {exc.status_code})") from None
        raise FeedError(f"cannot open the feed WebSocket to {where}: HTTP "
                        f"{exc.status_code}") from None
    except (OSError, websocket.WebSocketException) as exc:
        sock.close()
        raise FeedError(f"cannot open the feed WebSocket to {where}: {exc}") from exc
    return ws


def _socket_of(ws: websocket.WebSocket) -> socket.socket:
    sock = ws.sock
    if sock is None:
        raise FeedError("feed connection failed: socket is already closed")
    return sock


# Frames ---------------------------------------------------------------------


def _readable(sock: socket.socket) -> Callable[[], bool]:
    """A check whether a read would find data without waiting for the network.

    TLS decrypts a whole record at once, and the rest of it sits in the SSL
    object where poll() cannot see it.
    """
    poller = select.poll()  # not select(): descriptors above 1023 are fine
    poller.register(sock, select.POLLIN)
    if isinstance(sock, ssl.SSLSocket):
        tls = sock
        return lambda: tls.pending() > 0 or bool(poller.poll(0))
    return lambda: bool(poller.poll(0))


