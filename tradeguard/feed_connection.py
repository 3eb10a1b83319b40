"""The feed's WebSocket: opened to a resolved address, read in batches.

`open_feed` connects TCP to the address the resolver ladder chose, while TLS
SNI, certificate verification and the HTTP `Host` header stay on the URL's
hostname, so a fallback-resolved address is checked exactly like a
system-resolved one. We open and wrap the socket ourselves and hand it to
websocket-client: it then never resolves a name, never follows a proxy from
the environment, and cannot be redirected to another host. Verification is
never turned off; `ca_file` only adds trust.

`read_batch` blocks (up to the socket timeout the caller set) for one frame,
then takes every frame already received without waiting for the network.
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
from tradeguard.http_client import tls_context

logger = logging.getLogger(__name__)

TEXT = websocket.ABNF.OPCODE_TEXT
BINARY = websocket.ABNF.OPCODE_BINARY
PING = websocket.ABNF.OPCODE_PING
PONG = websocket.ABNF.OPCODE_PONG
_CLOSE = websocket.ABNF.OPCODE_CLOSE
_DATA = (TEXT, BINARY, websocket.ABNF.OPCODE_CONT)

Frame = tuple[int, str | bytes]

# A failure met after some frames were already read is raised by the next
# call, so that those frames (ticks that may breach a stop) reach the caller.
_pending_failures: weakref.WeakKeyDictionary[websocket.WebSocket, FeedError] = (
    weakref.WeakKeyDictionary()
)


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
    socket timeout passed with no complete frame; a partly received frame is
    kept for the next call.

    Raises FeedError when the peer closed the connection, the connection
    failed, or the peer broke the protocol (a text frame that is not UTF-8
    included). The WebSocket is then shut down. If frames were read before
    the failure, they are returned first and the next call raises.
    """
    failure = _pending_failures.pop(ws, None)
    if failure is not None:
        raise failure
    batch: list[Frame] = []
    try:
        while not batch:
            frame = _next_frame(ws)
            if frame is None:
                return batch
            _take(ws, frame, batch)
        buffered = _buffered_check(ws.sock)
        while len(batch) < max_frames and buffered():
            frame = _next_frame(ws)
            if frame is None:  # a frame cut short by the network: finish it next call
                break
            _take(ws, frame, batch)
    except FeedError as exc:
        ws.shutdown()  # type: ignore[no-untyped-call]
        if not batch:
            raise
        _pending_failures[ws] = exc
    return batch


def _next_frame(ws: websocket.WebSocket) -> websocket.ABNF | None:
    """The next frame off the wire, None when the socket timeout passed first."""
    try:
        return ws.recv_frame()  # type: ignore[no-untyped-call,no-any-return]
    except websocket.WebSocketTimeoutException:
        return None
    except (websocket.WebSocketException, OSError) as exc:
        raise FeedError(f"feed connection failed: {exc or type(exc).__name__}") from exc


def _buffered_check(sock: socket.socket | None) -> Callable[[], bool]:
    """A check whether a read would find data without waiting for the network.

    websocket-client asks the socket for exactly the bytes a frame needs, so
    nothing waits in its own buffer between frames; but TLS decrypts a whole
    record at once, and the rest of it sits in the SSL object where poll()
    cannot see it.
    """
    if sock is None:
        return lambda: False
    poller = select.poll()  # not select(): descriptors above 1023 are fine
    poller.register(sock, select.POLLIN)
    if isinstance(sock, ssl.SSLSocket):
        tls = sock
        return lambda: tls.pending() > 0 or bool(poller.poll(0))
    return lambda: bool(poller.poll(0))


def _take(ws: websocket.WebSocket, frame: websocket.ABNF, batch: list[Frame]) -> None:
    opcode = frame.opcode
    if opcode in _DATA:
        try:
            ws.cont_frame.validate(frame)
        except websocket.WebSocketProtocolException as exc:
            raise FeedError(f"feed broke the WebSocket protocol: {exc}") from exc
        ws.cont_frame.add(frame)
        if ws.cont_frame.is_fire(frame):
            opcode, message = ws.cont_frame.extract(frame)
            batch.append(_message(opcode, _payload(message)))
    elif opcode == PING:
        _send_control(ws, _payload(frame), PONG)
        batch.append((PING, _payload(frame)))
    elif opcode == PONG:
        batch.append((PONG, _payload(frame)))
    elif opcode == _CLOSE:
        reason = _close_reason(_payload(frame))
        logger.info("Feed closed the connection: %s", reason)
        _send_control(ws, _payload(frame)[:2], _CLOSE)  # echo the status, as RFC 6455 §5.5.1 asks
        raise FeedError(f"feed closed the connection: {reason}")


def _payload(frame: websocket.ABNF) -> bytes:
    # Received frames carry bytes; ABNF's type also allows str for frames being sent.
    data = frame.data
    return data if isinstance(data, bytes) else data.encode()


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
