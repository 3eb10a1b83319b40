"""The feed WebSocket against real servers on loopback: pinning, TLS, batching, the simulator.

SimExchange (websockets) plays the exchange. A hand-written one-connection
server (`RawFeed`) sends what websockets never would: several frames in one
TLS record, fragments, pings, text that is not UTF-8.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import re
import select
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.waiting import wait_until
from tradeguard.errors import FeedError
from tradeguard.feed import Frame, Target
from tradeguard.feed.connection import (
    BINARY,
    MAX_BATCH_BYTES,
    MAX_FRAGMENTS,
    MAX_MESSAGE_BYTES,
    PING,
    PONG,
    TEXT,
    FeedConnection,
)
from tradeguard.feed.watchdog import Watchdog
from tradeguard.feed.wire_json import parse_frame, subscribe_frame
from tradeguard.sim.exchange import SimExchange

HOST = "feed.tradeguard.test"  # RFC 6761: the system resolver never knows it
IP = "127.0.0.1"
WAIT = 5.0


def until(condition: Callable[[], bool], within: float = WAIT) -> None:
    wait_until(condition, within, interval=0.005)


def open_feed(url: str, address: str = IP, *, connect_timeout: float = WAIT, ca_file: str = "",
              read_timeout: float = WAIT, max_batch_bytes: int = MAX_BATCH_BYTES,
              max_message_bytes: int = MAX_MESSAGE_BYTES) -> FeedConnection:
    return FeedConnection.open(Target(url), [address], connect_timeout=connect_timeout,
                               ca_file=ca_file, read_timeout=read_timeout,
                               max_batch_bytes=max_batch_bytes,
                               max_message_bytes=max_message_bytes)


# Fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, hostname: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(hostname).configure_cert(ctx)
    return ctx


@pytest.fixture
def exchanges() -> Iterator[Callable[..., SimExchange]]:
    started: list[SimExchange] = []

    def start(ssl_context: ssl.SSLContext | None = None) -> SimExchange:
        exchange = SimExchange(ssl_context=ssl_context).start()
        started.append(exchange)
        return exchange

    yield start
    for exchange in started:
        exchange.stop()


@pytest.fixture
def connect() -> Iterator[Callable[..., FeedConnection]]:
    """open_feed, with every opened connection shut at teardown."""
    opened: list[FeedConnection] = []

    def open_(url: str, ca_file: str = "", timeout: float = WAIT,
              max_batch_bytes: int = MAX_BATCH_BYTES,
              max_message_bytes: int = MAX_MESSAGE_BYTES) -> FeedConnection:
        conn = open_feed(url, ca_file=ca_file, read_timeout=timeout,
                         max_batch_bytes=max_batch_bytes, max_message_bytes=max_message_bytes)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        conn.shutdown()


def read_until(conn: FeedConnection, count: int) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + WAIT
    while len(frames) < count:
        assert time.monotonic() < deadline, f"only {len(frames)} of {count} frames arrived"
        frames += conn.read_batch(1000)
    return frames


def read_until_pongs(conn: FeedConnection, count: int) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + WAIT
    while conn.pongs < count:
        assert time.monotonic() < deadline, f"only {conn.pongs} of {count} pongs arrived"
        frames += conn.read_batch(1000)
    return frames


# Connecting ---------------------------------------------------------------


def test_ws_by_ip_carries_the_hostname_in_the_host_header(
    exchanges: Callable[..., SimExchange], connect: Callable[..., FeedConnection]
) -> None:
    exchange = exchanges()
    conn = connect(exchange.url_for(HOST))
    conn.send(subscribe_frame(["BOSCHLTD", "INFY"]))
    assert exchange.wait_until(lambda: exchange.subscriptions == [["BOSCHLTD", "INFY"]], WAIT)
    assert exchange.host_headers == [f"{HOST}:{exchange.port}"]
    assert conn.socket is not None
    assert conn.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_wss_to_an_ip_verifies_the_hostname_with_the_extra_ca(
    ca: trustme.CA,
    ca_file: str,
    exchanges: Callable[..., SimExchange],
    connect: Callable[..., FeedConnection],
) -> None:
    exchange = exchanges(server_context(ca, HOST))
    conn = connect(exchange.url_for(HOST), ca_file=ca_file)
    assert isinstance(conn.socket, ssl.SSLSocket)
    assert conn.socket.server_hostname == HOST
    assert exchange.wait_until(lambda: exchange.connected == 1, WAIT)
    exchange.send_tick("BOSCHLTD", 575.0)
    [data] = read_until(conn, 1)
    assert isinstance(data, str)
    assert [t.symbol for t in parse_frame(data, time.monotonic()).ticks] == ["BOSCHLTD"]
    assert exchange.host_headers == [f"{HOST}:{exchange.port}"]


def test_wss_with_a_certificate_for_another_host_is_refused(
    ca: trustme.CA, ca_file: str, exchanges: Callable[..., SimExchange]
) -> None:
    exchange = exchanges(server_context(ca, "other.test"))
    with pytest.raises(FeedError, match=f"certificate of {HOST}.*Hostname mismatch") as info:
        open_feed(exchange.url_for(HOST), IP, connect_timeout=WAIT, ca_file=ca_file)
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert exchange.accepted == 0


def test_wss_with_system_cas_only_refuses_a_private_ca(
    ca: trustme.CA, exchanges: Callable[..., SimExchange]
) -> None:
    exchange = exchanges(server_context(ca, HOST))
    with pytest.raises(FeedError, match=r"certificate of .*unable to get local issuer"):
        open_feed(exchange.url_for(HOST), IP, connect_timeout=WAIT)
    assert exchange.accepted == 0


def test_a_missing_ca_file_is_a_feed_error(
    ca: trustme.CA, tmp_path: Path, exchanges: Callable[..., SimExchange]
) -> None:
    exchange = exchanges(server_context(ca, HOST))
    with pytest.raises(FeedError, match="cannot load the feed CA file"):
        open_feed(exchange.url_for(HOST), IP, connect_timeout=WAIT, ca_file=str(tmp_path / "no"))


def test_connect_timeout_bounds_a_handshake_that_never_answers(
    exchanges: Callable[..., SimExchange],
) -> None:
    exchange = exchanges()
    exchange.half_open(True)  # TCP is accepted, the upgrade request is never read
    started = time.monotonic()
    with pytest.raises(FeedError, match="timed out"):
        open_feed(exchange.url_for(HOST), IP, connect_timeout=0.3)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("url", ["http://feed/ws", "ws:///ws", "ws://feed:notaport/ws", "feed"])
def test_a_bad_url_is_a_feed_error(url: str) -> None:
    with pytest.raises(FeedError, match="bad feed URL"):
        open_feed(url, IP, connect_timeout=WAIT)


def test_a_redirect_is_not_followed() -> None:
    with socket.create_server((IP, 0)) as listener:
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:1/ws\r\n\r\n")

        server = threading.Thread(target=answer)
        server.start()
        try:
            with pytest.raises(FeedError, match="Redirect"):
                open_feed(f"ws://{HOST}:{port}/ws", IP, connect_timeout=WAIT)
        finally:
            server.join()


def test_a_stopped_exchange_refuses_and_a_restarted_one_accepts_on_the_same_port(
    exchanges: Callable[..., SimExchange], connect: Callable[..., FeedConnection]
) -> None:
    exchange = exchanges()
    port = exchange.port
    connect(exchange.url_for(HOST)).close(timeout=WAIT)
    exchange.stop()
    with pytest.raises(FeedError, match=r"cannot connect to .*refused"):
        open_feed(exchange.url_for(HOST), IP, connect_timeout=WAIT)
    exchange.restart()
    assert exchange.port == port
    connect(exchange.url_for(HOST))
    assert exchange.wait_until(lambda: exchange.connected == 1, WAIT)
    assert exchange.accepted == 2


# Reading ------------------------------------------------------------------


def unread_bytes(sock: socket.socket | None) -> int:
    assert sock is not None
    buf = bytearray(4)
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    return int(struct.unpack("i", buf)[0])


def tcp_established_and_quiet(sock: socket.socket | None) -> bool:
    """Linux: the TCP state is ESTABLISHED and no data, EOF or error is waiting."""
    assert sock is not None
    established = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP | select.POLLERR | select.POLLHUP)
    return established and poller.poll(0) == []


def test_a_burst_already_received_comes_back_in_one_call(
    exchanges: Callable[..., SimExchange], connect: Callable[..., FeedConnection]
) -> None:
    exchange = exchanges()
    conn = connect(exchange.url_for(HOST))
    assert exchange.wait_until(lambda: exchange.connected == 1, WAIT)
    texts = [json.dumps({"symbol": f"S{i:03}", "price": 100.0 + i}) for i in range(100)]
    for text in texts:
        exchange.send_raw(text)
    until(lambda: unread_bytes(conn.socket) == sum(2 + len(t) for t in texts))
    frames = conn.read_batch(1000)
    assert frames == texts
    assert unread_bytes(conn.socket) == 0


def test_max_frames_bounds_a_batch_and_the_rest_waits_for_the_next_call(
    exchanges: Callable[..., SimExchange], connect: Callable[..., FeedConnection]
) -> None:
    exchange = exchanges()
    conn = connect(exchange.url_for(HOST))
    assert exchange.wait_until(lambda: exchange.connected == 1, WAIT)
    texts = [json.dumps({"symbol": f"S{i}", "price": 1.0 + i}) for i in range(10)]
    for text in texts:
        exchange.send_raw(text)
    until(lambda: unread_bytes(conn.socket) == sum(2 + len(t) for t in texts))
    assert conn.read_batch(3) == texts[:3]
    assert conn.read_batch(100) == texts[3:]


def test_a_binary_frame_is_reported_as_bytes_and_rejected_by_the_parser(
    exchanges: Callable[..., SimExchange], connect: Callable[..., FeedConnection]
) -> None:
    exchange = exchanges()
    conn = connect(exchange.url_for(HOST))
    assert exchange.wait_until(lambda: exchange.connected == 1, WAIT)
    exchange.send_raw(b'{"symbol": "A", "price": 1.0}')
    assert read_until(conn, 1) == [b'{"symbol": "A", "price": 1.0}']
    assert parse_frame(b"{}", 0.0).rejects == {"binary": 1}


def test_nothing_within_the_socket_timeout_is_an_empty_batch(
    exchanges: Callable[..., SimExchange], connect: Callable[..., FeedConnection]
) -> None:
    exchange = exchanges()
    conn = connect(exchange.url_for(HOST), timeout=0.05)
    assert conn.read_batch(10) == []
    exchange.send_tick("A", 1.0)
    assert len(read_until(conn, 1)) == 1


def test_ticks_before_a_close_are_returned_and_the_close_raises_next(
    exchanges: Callable[..., SimExchange], connect: Callable[..., FeedConnection]
) -> None:
    exchange = exchanges()
    conn = connect(exchange.url_for(HOST))
    assert exchange.wait_until(lambda: exchange.connected == 1, WAIT)
    exchange.send_tick("A", 1.0)
    stopper = threading.Thread(target=exchange.stop)  # it waits for our close reply
    stopper.start()
    frames: list[Frame] = []
    try:
        with pytest.raises(FeedError, match="feed closed the connection: 1001"):
            for _ in range(10):
                frames += conn.read_batch(100)
    finally:
        stopper.join()
    assert [parse_frame(d, 0.0).ticks[0].symbol for d in frames] == ["A"]
    with pytest.raises(FeedError, match="closed"):
        conn.read_batch(100)


def test_half_open_keeps_tcp_up_but_answers_no_ping(
    exchanges: Callable[..., SimExchange], connect: Callable[..., FeedConnection]
) -> None:
    exchange = exchanges()
    conn = connect(exchange.url_for(HOST), timeout=0.5)
    assert exchange.wait_until(lambda: exchange.connected == 1, WAIT)
    conn.ping(b"before")
    assert read_until_pongs(conn, 1) == []  # the control: pings are answered, not returned

    exchange.half_open(True)
    conn.ping(b"during")
    conn.send(subscribe_frame(["HELD"]))
    assert exchange.send_tick("A", 1.0) == 0
    received = conn.bytes_received
    assert conn.read_batch(10) == []  # waited the 0.5 s socket timeout: no pong
    assert (conn.bytes_received, conn.pongs) == (received, 1)
    assert exchange.connected == 1
    assert tcp_established_and_quiet(conn.socket)
    assert exchange.subscriptions == []

    exchange.half_open(False)
    assert read_until_pongs(conn, 2) == []
    assert conn.bytes_received > received
    assert exchange.wait_until(lambda: exchange.subscriptions == [["HELD"]], WAIT)


def test_random_walk_sends_every_symbol_each_interval_within_the_step(
    exchanges: Callable[..., SimExchange], connect: Callable[..., FeedConnection]
) -> None:
    exchange = exchanges()
    conn = connect(exchange.url_for(HOST))
    assert exchange.wait_until(lambda: exchange.connected == 1, WAIT)
    exchange.start_walk({"A": 100.0, "B": 200.0}, interval=0.01, step_pct=1.0, seed=7)
    frames = read_until(conn, 3)
    exchange.stop_walk()
    previous = {"A": 100.0, "B": 200.0}
    for data in frames[:3]:
        ticks = parse_frame(data, 0.0).ticks
        assert [t.symbol for t in ticks] == ["A", "B"]
        for tick in ticks:
            assert abs(tick.price / previous[tick.symbol] - 1) <= 0.0101
            assert tick.exchange_ts is not None
            previous[tick.symbol] = tick.price


# A hand-written server for frames websockets does not send -----------------

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    assert len(payload) < 126
    return any_frame(opcode, payload, fin)


class RawFeed:
    """Accepts one WebSocket client (in a thread) and lets the test write raw bytes.

    Hand-written because the hostile and unusual frames these tests need (several
    in one TLS record, pings between fragments, bad UTF-8, a header that lies about
    its length, floods of empty continuations) are exactly what a WebSocket library
    refuses to send. It never answers a ping.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server((IP, 0))
        self.port = self.listener.getsockname()[1]
        self._ssl = ssl_context
        self.conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._accept)
        self._thread.start()

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        sock.settimeout(WAIT)
        if self._ssl is not None:
            sock = self._ssl.wrap_socket(sock, server_side=True)
        request = b""
        while b"\r\n\r\n" not in request:
            request += sock.recv(4096)
        match = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.IGNORECASE)
        assert match is not None
        accept = base64.b64encode(hashlib.sha1(match.group(1) + _GUID).digest())
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.conn = sock

    def ready(self) -> socket.socket:
        self._thread.join(WAIT)
        assert self.conn is not None
        return self.conn

    def read_client_frame(self) -> tuple[int, bytes]:
        conn = self.ready()
        head = self._exactly(conn, 2)
        length = head[1] & 0x7F
        assert length < 126
        mask = self._exactly(conn, 4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._exactly(conn, length)))
        return head[0] & 0x0F, payload

    @staticmethod
    def _exactly(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            assert chunk, "client closed"
            data += chunk
        return data

    def close(self) -> None:
        self._thread.join(WAIT)
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def raw_feeds() -> Iterator[Callable[..., RawFeed]]:
    started: list[RawFeed] = []

    def start(ssl_context: ssl.SSLContext | None = None) -> RawFeed:
        feed = RawFeed(ssl_context)
        started.append(feed)
        return feed

    yield start
    for feed in started:
        feed.close()


def test_frames_decrypted_together_with_an_earlier_one_are_not_stranded(
    ca: trustme.CA,
    ca_file: str,
    raw_feeds: Callable[..., RawFeed],
    connect: Callable[..., FeedConnection],
) -> None:
    # Three frames in one TLS record: after the first, the others wait in the
    # SSL object where poll() cannot see them. A read that only polls the
    # socket would leave them there until more data came.
    feed = raw_feeds(server_context(ca, HOST))
    conn = connect(f"wss://{HOST}:{feed.port}/ws", ca_file=ca_file, timeout=0.2)
    feed.ready().sendall(b"".join(server_frame(TEXT, b'{"n": %d}' % i) for i in range(3)))
    assert conn.read_batch(10) == ['{"n": 0}', '{"n": 1}', '{"n": 2}']


def test_a_ping_is_answered_inside_and_fragments_are_joined(
    raw_feeds: Callable[..., RawFeed], connect: Callable[..., FeedConnection]
) -> None:
    feed = raw_feeds()
    conn = connect(f"ws://{HOST}:{feed.port}/ws")
    feed.ready().sendall(
        server_frame(TEXT, b'{"symbol": "A", ', fin=False)
        + server_frame(PING, b"are you there")  # control frames may come between fragments
        + server_frame(0x0, b'"price": 1.5}')
    )
    assert read_until(conn, 1) == ['{"symbol": "A", "price": 1.5}']  # the ping: not a frame
    assert feed.read_client_frame() == (PONG, b"are you there")


def test_text_that_is_not_utf8_fails_the_connection_after_the_frames_before_it(
    raw_feeds: Callable[..., RawFeed], connect: Callable[..., FeedConnection]
) -> None:
    feed = raw_feeds()
    conn = connect(f"ws://{HOST}:{feed.port}/ws")
    good = server_frame(TEXT, b'{"symbol": "A", "price": 1.5}')
    feed.ready().sendall(good + server_frame(TEXT, b"\xff\xfe"))
    until(lambda: unread_bytes(conn.socket) == len(good) + 4)
    assert conn.read_batch(10) == ['{"symbol": "A", "price": 1.5}']
    with pytest.raises(FeedError, match="not UTF-8"):
        conn.read_batch(10)
    assert conn.closed  # shut down, not left half-read


def any_frame(opcode: int, payload: bytes, fin: bool = True, length: int | None = None) -> bytes:
    """A server frame of any size; `length` may claim more than `payload` holds."""
    size = len(payload) if length is None else length
    first = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        return first + bytes([size]) + payload
    if size < 1 << 16:
        return first + bytes([126]) + size.to_bytes(2, "big") + payload
    return first + bytes([127]) + size.to_bytes(8, "big") + payload


def test_a9_a_dead_first_address_does_not_keep_the_feed_down(
    exchanges: Callable[..., SimExchange],
) -> None:
    """A9: the first resolved address refuses; the second one is tried and used."""
    exchange = exchanges()
    conn = FeedConnection.open(Target(exchange.url_for(HOST)), ["127.0.0.2", IP],
                               connect_timeout=WAIT)
    try:
        assert conn.ip == IP
        assert exchange.wait_until(lambda: exchange.connected == 1, WAIT)
    finally:
        conn.shutdown()


def test_every_address_failing_names_them_all(exchanges: Callable[..., SimExchange]) -> None:
    exchange = exchanges()
    exchange.stop()
    with pytest.raises(FeedError, match=r"cannot connect to .* at 127.0.0.2, 127.0.0.1:"):
        FeedConnection.open(Target(exchange.url_for(HOST)), ["127.0.0.2", IP],
                            connect_timeout=WAIT)


def test_the_target_headers_go_into_the_handshake() -> None:
    with socket.create_server((IP, 0)) as listener:
        port = listener.getsockname()[1]
        seen: list[bytes] = []

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                seen.append(conn.recv(4096))
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

        server = threading.Thread(target=answer)
        server.start()
        try:
            with pytest.raises(FeedError, match="403"):
                FeedConnection.open(Target(f"ws://{HOST}:{port}/ws", {"Authorization": "x y"}),
                                    [IP], connect_timeout=WAIT)
        finally:
            server.join()
    assert b"\r\nAuthorization: x y\r\n" in seen[0]


def test_c10_a_frame_over_the_limit_is_dropped_from_its_header_and_reading_goes_on(
    raw_feeds: Callable[..., RawFeed], connect: Callable[..., FeedConnection]
) -> None:
    """C10: a frame over the limit is refused before its payload is held, not after."""
    feed = raw_feeds()
    conn = connect(f"ws://{HOST}:{feed.port}/ws", timeout=0.2)
    big = 2 << 20
    feed.ready().sendall(server_frame(TEXT, b'"before"') + any_frame(TEXT, b"x" * 100, length=big))
    assert read_until(conn, 1) == ['"before"']
    until(lambda: conn.read_batch(10) == [] and conn.refused == 1)  # from the header alone
    rest = threading.Thread(target=feed.ready().sendall,
                            args=(b"y" * (big - 100) + server_frame(TEXT, b'"after"'),))
    rest.start()
    try:
        assert read_until(conn, 1) == ['"after"']
    finally:
        rest.join()
    assert conn.take_refused() == 1
    assert conn.take_refused() == 0


def test_c10_a_fragmented_message_over_the_limit_is_dropped_whole(
    raw_feeds: Callable[..., RawFeed], connect: Callable[..., FeedConnection]
) -> None:
    """C10: parts under the limit that add up to more are dropped; the next message is not."""
    feed = raw_feeds()
    conn = connect(f"ws://{HOST}:{feed.port}/ws", timeout=0.2, max_message_bytes=150)
    part = b"z" * 100
    feed.ready().sendall(
        any_frame(TEXT, part, fin=False) + any_frame(0x0, part, fin=False)
        + server_frame(PING, b"still here") + any_frame(0x0, part)
        + any_frame(BINARY, b"\x01" * 120, fin=False) + any_frame(0x0, b"\x02" * 200)
        + server_frame(TEXT, b'"next"')
    )
    assert read_until(conn, 1) == ['"next"']
    assert feed.read_client_frame() == (PONG, b"still here")
    assert conn.take_refused() == 2


def test_c10_a_flood_of_empty_continuations_is_refused(
    raw_feeds: Callable[..., RawFeed], connect: Callable[..., FeedConnection]
) -> None:
    """C10: zero-length continuation frames must not grow a list (or a sum) without end."""
    feed = raw_feeds()
    conn = connect(f"ws://{HOST}:{feed.port}/ws", timeout=0.2)
    flood = server_frame(TEXT, b"{", fin=False) + server_frame(0x0, b"", fin=False) * 5000
    feed.ready().sendall(flood)
    with pytest.raises(FeedError, match=f"more than {MAX_FRAGMENTS} fragments"):
        read_until(conn, 1)


def test_c10_trickling_bytes_still_return_within_the_read_timeout(
    raw_feeds: Callable[..., RawFeed], connect: Callable[..., FeedConnection]
) -> None:
    """C10: one byte at a time, never a whole frame: the watchdogs still get their turn."""
    feed = raw_feeds()
    conn = connect(f"ws://{HOST}:{feed.port}/ws", timeout=0.2)
    sent = threading.Event()
    stop = threading.Event()

    def trickle() -> None:
        for byte in any_frame(TEXT, b"x" * 120):
            feed.ready().sendall(bytes([byte]))
            sent.set()
            if stop.wait(0.02):
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        assert sent.wait(WAIT)
        started = time.monotonic()
        assert conn.read_batch(10) == []
        elapsed = time.monotonic() - started
        assert conn.bytes_received > 0
    finally:
        stop.set()
        sender.join()
    assert elapsed < 1.0, elapsed  # the whole frame takes 2.4 s to trickle in


def test_c10_a_batch_is_bounded_by_bytes_too(
    raw_feeds: Callable[..., RawFeed], connect: Callable[..., FeedConnection]
) -> None:
    """C10: 500 frames of a megabyte each must not all be held in one batch."""
    feed = raw_feeds()
    conn = connect(f"ws://{HOST}:{feed.port}/ws", max_batch_bytes=1000)
    texts = [json.dumps({"symbol": "A", "price": 1.0, "pad": "p" * 270}) for _ in range(10)]
    feed.ready().sendall(b"".join(any_frame(TEXT, t.encode()) for t in texts))
    until(lambda: unread_bytes(conn.socket) == sum(4 + len(t) for t in texts))
    first = conn.read_batch(100)
    assert len(first) == 4  # 302 bytes each: the fourth starts under the budget
    assert first + read_until(conn, 6) == texts


def test_c11_a_busy_feed_that_never_pongs_in_time_is_alive_and_a_silent_one_is_not(
    raw_feeds: Callable[..., RawFeed], connect: Callable[..., FeedConnection]
) -> None:
    """C11: the pong sits behind ticks; the ticks after the ping are the answer.

    RawFeed never answers a ping at all, the harshest case of a pong stuck
    behind data. While it keeps sending, the connection lives; once it falls
    silent, the same watchdog gives it up within `ping_timeout`.
    """
    feed = raw_feeds()
    conn = connect(f"ws://{HOST}:{feed.port}/ws", timeout=0.05)
    dog = Watchdog(ping_interval=0.1, ping_timeout=0.2, silence_timeout=30.0,
                   clock=time.monotonic)
    stop = threading.Event()

    def ticks() -> None:
        while not stop.wait(0.02):
            feed.ready().sendall(server_frame(TEXT, b'{"symbol": "A", "price": 1.0}'))

    sender = threading.Thread(target=ticks)
    sender.start()
    try:
        busy_until = time.monotonic() + 1.0  # five ping timeouts
        while time.monotonic() < busy_until:
            assert dog.failure() is None
            if dog.ping_due():
                conn.ping()
            conn.read_batch(100)
            dog.observe(conn.bytes_received)
    finally:
        stop.set()
        sender.join()
    assert conn.pongs == 0
    silent_since = time.monotonic()
    while dog.failure() is None:
        assert time.monotonic() - silent_since < WAIT
        if dog.ping_due():
            conn.ping()
        conn.read_batch(100)
        dog.observe(conn.bytes_received)
    assert "no pong" in str(dog.failure())
