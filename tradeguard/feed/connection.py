"""The feed's WebSocket: opened to a resolved address, read in batches.

`open_feed` connects TCP to the address the resolver ladder chose, while TLS
SNI, certificate verification and the HTTP `Host` header stay on the URL's
hostname, so a fallback-resolved address is checked exactly like a
system-resolved one. We open and wrap the socket ourselves and hand it to
websocket-client: it then never resolves a name, never follows a proxy from
the environment, and cannot be redirected to another host. Verification is
never turned off; `ca_file` only adds trust.

`read_batch` blocks (up to the socket timeout the caller set) for one frame,
then takes every frame already received without waiting for the network. It
drains the socket in large reads and cuts the frames out itself; websocket-
client is used to connect and to send (subscribe, ping, pong, close).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import time
import weakref
from collections.abc import Callable
from urllib.parse import urlsplit

import websocket

from tradeguard.errors import FeedError
from tradeguard.net.http import tls_context

logger = logging.getLogger(__name__)

TEXT = websocket.ABNF.OPCODE_TEXT
BINARY = websocket.ABNF.OPCODE_BINARY
PING = websocket.ABNF.OPCODE_PING
PONG = websocket.ABNF.OPCODE_PONG
_CLOSE = websocket.ABNF.OPCODE_CLOSE
_CONT = websocket.ABNF.OPCODE_CONT
_FIN_TEXT = 0x80 | TEXT

RECV_BYTES = 1 << 18  # one read takes ~4,000 one-tick frames or ~80 fifty-tick ones
MAX_MESSAGE_BYTES = 1 << 24  # far above any tick frame; bounds what a broken peer makes us hold

Frame = tuple[int, str | bytes]


def open_feed(
    url: str, address: str, *, connect_timeout: float, ca_file: str = ""
) -> websocket.WebSocket:
    """Open the WebSocket at `url` through `address`; FeedError if it cannot be done.

    `connect_timeout` bounds the whole attempt (TCP, TLS and the WebSocket
    handshake). The returned socket keeps that timeout until the caller sets
    its own with `ws.settimeout`.
    """
    host, port, secure = _target(url)
    tls = _tls(ca_file) if secure else None
    deadline = time.monotonic() + connect_timeout
    where = f"{host} at {address}:{port}"
    try:
        sock = socket.create_connection((address, port), timeout=connect_timeout)
    except OSError as exc:
        raise FeedError(f"cannot connect to {where}: {exc}") from exc
    try:
        for option in websocket.DEFAULT_SOCKET_OPTION:  # TCP_NODELAY, keepalive
            sock.setsockopt(*option)
        if tls is not None:
            sock.settimeout(_remaining(deadline))
            sock = tls.wrap_socket(sock, server_hostname=host)
        sock.settimeout(_remaining(deadline))
        ws = websocket.WebSocket(skip_utf8_validation=True)
        ws.connect(url, socket=sock, redirect_limit=0)  # type: ignore[no-untyped-call]
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise FeedError(f"TLS certificate of {where} rejected: {exc.verify_message}") from exc
    except (OSError, websocket.WebSocketException) as exc:
        sock.close()
        raise FeedError(f"cannot open the feed WebSocket to {where}: {exc}") from exc
    return ws


def _target(url: str) -> tuple[str, int, bool]:
    """Hostname, port and whether TLS is used; FeedError for a URL that is not ws(s)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FeedError(f"bad feed URL {url!r}: {exc}") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise FeedError(f"bad feed URL {url!r}: expected ws://HOST/... or wss://HOST/...")
    secure = parts.scheme == "wss"
    return parts.hostname, port or (443 if secure else 80), secure


def _tls(ca_file: str) -> ssl.SSLContext:
    try:
        return tls_context(ca_file)
    except OSError as exc:  # ssl.SSLError included: a file that is not PEM
        raise FeedError(f"cannot load the feed CA file {ca_file!r}: {exc}") from exc


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("connect timeout")
    return left


def read_batch(ws: websocket.WebSocket, max_frames: int) -> list[Frame]:
    """Wait for the next frame, then take those already received, up to `max_frames`.

    Returns (opcode, data) pairs in arrival order: TEXT frames as str, BINARY
    as bytes, and PING and PONG (a PING is answered here; both are reported
    because any frame shows the peer is alive). An empty list means the
    socket timeout passed with no complete frame; a partly received frame,
    and frames past `max_frames`, are kept for the next call.

    Raises FeedError when the peer closed the connection, the connection
    failed, or the peer broke the protocol (a text frame that is not UTF-8
    included). The WebSocket is then shut down. If frames were read before
    the failure, they are returned first and the next call raises.
    """
    inbox = _inboxes.get(ws)
    if inbox is None:
        inbox = _inboxes[ws] = _Inbox()
    if inbox.failure is not None:
        failure, inbox.failure = inbox.failure, None
        raise failure
    batch: list[Frame] = []
    try:
        inbox.take_frames(ws, batch, max_frames)
        while not batch:
            if not inbox.receive(ws):
                return batch
            inbox.take_frames(ws, batch, max_frames)
        readable = _readable(ws.sock)
        while len(batch) < max_frames and readable() and inbox.receive(ws):
            inbox.take_frames(ws, batch, max_frames)
    except FeedError as exc:
        ws.shutdown()  # type: ignore[no-untyped-call]
        if not batch:
            raise
        inbox.failure = exc  # the frames before it (ticks that may breach a stop) go first
    return batch


class _Inbox:
    """What one WebSocket received and `read_batch` has not returned yet.

    The socket is drained with large reads and frames are cut out of the
    buffer here: websocket-client reads every frame with two or three system
    calls of exactly the bytes it needs, which costs more than all the rest
    of handling a one-tick frame.
    """

    def __init__(self) -> None:
        self.data = b""
        self.fragments: list[bytes] = []  # a fragmented message so far (RFC 6455 §5.4)
        self.fragment_opcode = 0
        self.failure: FeedError | None = None

    def receive(self, ws: websocket.WebSocket) -> bool:
        """Append what the socket holds; False when the socket timeout passed first."""
        sock = ws.sock
        if sock is None:
            raise FeedError("feed connection failed: socket is already closed")
        try:
            chunk = sock.recv(RECV_BYTES)
        except (TimeoutError, ssl.SSLWantReadError):
            return False
        except OSError as exc:
            raise FeedError(f"feed connection failed: {exc or type(exc).__name__}") from exc
        if not chunk:
            raise FeedError("feed connection failed: Connection to remote host was lost.")
        self.data = self.data + chunk if self.data else chunk
        return True

    def take_frames(self, ws: websocket.WebSocket, batch: list[Frame], max_frames: int) -> None:
        """Move the complete frames in the buffer to `batch`, up to `max_frames`."""
        data, pos, end = self.data, 0, len(self.data)
        try:
            while len(batch) < max_frames and end - pos >= 2:
                head, length = _frame_size(data, pos, end)
                if head == 0 or end - pos < head + length:
                    break  # the rest of this frame is still on its way
                first = data[pos]
                payload = data[pos + head:pos + head + length]
                pos += head + length
                if first == _FIN_TEXT and not self.fragment_opcode:
                    batch.append(_message(TEXT, payload))  # the usual frame, first
                else:
                    self._take(ws, first, payload, batch)
        finally:
            self.data = data[pos:]

    def _take(self, ws: websocket.WebSocket, first: int, payload: bytes,
              batch: list[Frame]) -> None:
        fin, opcode = first & 0x80, first & 0x0F
        if first & 0x70:
            raise _broken("reserved bits set without an extension")
        if opcode in (TEXT, BINARY):
            if self.fragment_opcode:
                raise _broken("a new message inside a fragmented one")
            if fin:
                batch.append(_message(opcode, payload))
            else:
                self.fragment_opcode, self.fragments = opcode, [payload]
        elif opcode == _CONT:
            if not self.fragment_opcode:
                raise _broken("a continuation frame with no message to continue")
            self.fragments.append(payload)
            if sum(map(len, self.fragments)) > MAX_MESSAGE_BYTES:
                raise _broken(f"a message over {MAX_MESSAGE_BYTES} bytes")
            if fin:
                message = b"".join(self.fragments)
                opcode, self.fragment_opcode, self.fragments = self.fragment_opcode, 0, []
                batch.append(_message(opcode, message))
        elif opcode in (PING, PONG, _CLOSE):
            if not fin or len(payload) > 125:
                raise _broken("a fragmented or oversized control frame")
            _control(ws, opcode, payload, batch)
        else:
            raise _broken(f"unknown opcode {opcode}")


# What each open WebSocket received and read_batch has not returned yet.
_inboxes: weakref.WeakKeyDictionary[websocket.WebSocket, _Inbox] = weakref.WeakKeyDictionary()


def _frame_size(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(header bytes, payload bytes) of the frame at `pos`; (0, 0) if its header is cut."""
    second = data[pos + 1]
    if second & 0x80:
        raise _broken("a masked frame from the server")
    length = second & 0x7F
    if length < 126:
        return 2, length
    head = 4 if length == 126 else 10
    if end - pos < head:
        return 0, 0
    length = int.from_bytes(data[pos + 2:pos + head], "big")
    if length > MAX_MESSAGE_BYTES:
        raise _broken(f"a frame over {MAX_MESSAGE_BYTES} bytes")
    return head, length


def _control(ws: websocket.WebSocket, opcode: int, payload: bytes, batch: list[Frame]) -> None:
    if opcode == PING:
        _send_control(ws, payload, PONG)
        batch.append((PING, payload))
    elif opcode == PONG:
        batch.append((PONG, payload))
    else:
        reason = _close_reason(payload)
        logger.info("Feed closed the connection: %s", reason)
        _send_control(ws, payload[:2], _CLOSE)  # echo the status, as RFC 6455 §5.5.1 asks
        raise FeedError(f"feed closed the connection: {reason}")


def _broken(what: str) -> FeedError:
    return FeedError(f"feed broke the WebSocket protocol: {what}")


def _readable(sock: socket.socket | None) -> Callable[[], bool]:
    """A check whether a read would find data without waiting for the network.

    TLS decrypts a whole record at once, and the rest of it sits in the SSL
    object where poll() cannot see it.
    """
    if sock is None:
        return lambda: False
    poller = select.poll()  # not select(): descriptors above 1023 are fine
    poller.register(sock, select.POLLIN)
    if isinstance(sock, ssl.SSLSocket):
        tls = sock
        return lambda: tls.pending() > 0 or bool(poller.poll(0))
    return lambda: bool(poller.poll(0))


def _message(opcode: int, data: bytes) -> Frame:
    if opcode == BINARY:
        return BINARY, data
    try:
        return TEXT, data.decode()
    except UnicodeDecodeError as exc:
        # RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection.
        raise FeedError("feed sent a text frame that is not UTF-8") from exc


def _send_control(ws: websocket.WebSocket, data: bytes, opcode: int) -> None:
    """Send a PONG or CLOSE answer; FeedError if that fails."""
    try:
        ws.send(data, opcode)
    except (websocket.WebSocketException, OSError) as exc:
        raise FeedError(f"feed connection failed: {exc or type(exc).__name__}") from exc


def _close_reason(data: bytes) -> str:
    if len(data) < 2:
        return "no status"
    (code,) = struct.unpack("!H", data[:2])
    text = data[2:].decode(errors="replace")
    return f"{code} {text}".strip()
